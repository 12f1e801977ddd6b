"""The contract's Process items: fields, managers, identity, hierarchy, files, lifecycle, queries, JSON."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta

import psutil
import pytest
from django.utils import timezone

import machine.models as mm
from machine.choices import ProcessStatus, ProcessType
from machine.models import Binary, Machine, Process, ProcessMachine
from machine.processes import exit_code_from_status
from tests.machine_factories import make_machine

from .conftest import wait_gone

pytestmark = pytest.mark.django_db


# -- model shape -----------------------------------------------------------------------------------


def test_fields_indexes_and_choices():
    names = {f.name for f in Process._meta.get_fields()}
    for name in (
        "machine parent process_type worker_type pwd cmd env timeout pid exit_code stdout stderr "
        "started_at ended_at binary iface url status retry_at children"
    ).split():
        assert name in names, name
    indexes = {tuple(index.fields) for index in Process._meta.indexes}
    assert {("machine", "status", "retry_at"), ("binary", "exit_code")} <= indexes
    assert Process._meta.get_field("timeout").default == 120
    assert Process._meta.get_field("process_type").default == "cli"
    assert Process._meta.get_field("machine").remote_field.related_name == "process_set"
    assert Process._meta.get_field("iface").remote_field.related_name == "process_set"
    assert set(ProcessStatus.values) == {"queued", "running", "exited"}
    assert ProcessType.values == [
        "supervisord", "orchestrator", "server", "update", "add", "search", "worker", "cli", "hook", "binary",
    ]  # fmt: skip
    assert (Process.INITIAL_STATE, Process.ACTIVE_STATE, Process.FINAL_STATES) == (
        "queued",
        "running",
        ["exited"],
    )
    assert (
        exit_code_from_status(-1) == 137
        and exit_code_from_status(-15) == 143
        and exit_code_from_status(3) == 3
    )


# -- current(), get_by_pid(), type and parent detection --------------------------------------------


def test_current_registers_this_os_process():
    process = Process.objects.current()
    assert process is Process.current() is mm._CURRENT_PROCESS
    me = psutil.Process()
    assert process.pid == os.getpid() and process.status == ProcessStatus.RUNNING
    assert process.cmd == me.cmdline()
    assert process.os_start_time == me.create_time()
    assert abs(process.started_at.timestamp() - me.create_time()) < 0.01
    assert process.machine == Machine.current() and process.iface_id is not None
    assert process.is_running and process.proc.pid == os.getpid()
    assert Process.objects.get_by_pid(os.getpid()) == process


def test_get_by_pid_rejects_unknown_dead_and_out_of_window_rows(popen):
    assert Process.objects.get_by_pid(4_000_000) is None
    assert Process.objects.get_by_pid(-1) is None
    proc = popen(["sleep", "30"])
    start = psutil.Process(proc.pid).create_time()
    machine = Machine.current()
    legacy = Process.objects.create(
        machine=machine, cmd=["sleep"], pid=proc.pid, status=ProcessStatus.RUNNING,
        started_at=timezone.now() - mm.PID_REUSE_WINDOW - timedelta(minutes=1),
    )  # fmt: skip
    assert Process.objects.get_by_pid(proc.pid) is None  # no exact start time and outside the window
    Process.objects.filter(pk=legacy.pk).update(started_at=datetime.fromtimestamp(start + 3, tz=UTC))
    assert Process.objects.get_by_pid(proc.pid) == legacy  # within START_TIME_TOLERANCE
    proc.kill()
    proc.wait()
    assert Process.objects.get_by_pid(proc.pid) is None


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["/usr/bin/supervisord", "-c", "x.conf"], "supervisord"),
        (["archivebox", "manage", "runner_watch", "--pidfile=x"], "worker"),
        (["archivebox", "run"], "orchestrator"),
        (["/usr/local/bin/archivebox", "add", "https://example.com"], "add"),
        (["/usr/local/bin/archivebox", "add", "--bg", "https://example.com"], "cli"),
        (["/usr/bin/python3", "/usr/bin/supervisord", "--configuration=/x.conf"], "supervisord"),
        (["python", "manage.py", "runworker", "--worker"], "worker"),
        (["python", "manage.py", "run", "--", "ls"], "cli"),
        (["/usr/bin/wget", "https://example.com"], "binary"),
    ],
)
def test_detect_process_type(monkeypatch, argv, expected):
    monkeypatch.setattr(sys, "argv", argv)
    assert Process._detect_process_type() == expected


def test_process_type_patterns_are_a_setting(monkeypatch, settings):
    settings.MACHINE_PROCESS_TYPE_PATTERNS = (("my-daemon", "worker"),)
    monkeypatch.setattr(sys, "argv", ["/opt/my-daemon", "--foreground"])
    assert Process._detect_process_type() == "worker"


CHILD_CURRENT = (
    "import django, json; django.setup(); from machine.models import Process; "
    "p = Process.current(); print(json.dumps({'id': str(p.id), 'parent': str(p.parent_id), 'pid': p.pid}))"
)


@pytest.mark.django_db(transaction=True)
def test_child_finds_its_parent_row_through_the_validated_ppid(subprocess_env, data_dir):
    me = Process.current()
    out = subprocess.run(
        [sys.executable, "-c", CHILD_CURRENT], env=subprocess_env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    child = json.loads(out.stdout.strip().splitlines()[-1])
    assert child["parent"] == str(me.id)
    assert Process.objects.get(pk=child["id"]).parent == me


@pytest.mark.django_db(transaction=True)
def test_a_launched_python_child_reuses_its_launched_row(subprocess_env, make_process):
    process = make_process([sys.executable, "-c", CHILD_CURRENT], env=subprocess_env)
    process.launch()
    assert process.exit_code == 0, process.stderr
    child = json.loads(process.stdout.strip().splitlines()[-1])
    assert child["id"] == str(process.id) and child["pid"] == process.pid
    assert Process.objects.filter(pid=process.pid).count() == 1


# -- hierarchy -------------------------------------------------------------------------------------


def test_hierarchy_helpers():
    machine = Machine.current()
    root = Process.objects.create(machine=machine, cmd=["root"])
    child = Process.objects.create(machine=machine, cmd=["child"], parent=root)
    grandchild = Process.objects.create(machine=machine, cmd=["gc"], parent=child)
    sibling = Process.objects.create(machine=machine, cmd=["sib"], parent=root)
    assert grandchild.root == root and root.root == root
    assert grandchild.ancestors == [child, root] and root.ancestors == []
    assert (root.depth, child.depth, grandchild.depth) == (0, 1, 2)
    assert list(root.get_descendants()) == [child, grandchild, sibling]  # a QuerySet, oldest first
    assert list(child.get_descendants(include_self=True)) == [child, grandchild]
    assert list(grandchild.get_descendants()) == []
    assert list(root.children.order_by("created_at")) == [child, sibling]


# -- files, tail, pipe, records --------------------------------------------------------------------


def test_runtime_files_of_plain_and_hook_processes(make_process, workdir, data_dir):
    plain = make_process(["echo", "hi"])
    # Each row has its own folder under MACHINE_DATA_DIR, not pwd (see docs/compatibility.md).
    assert plain.runtime_dir == data_dir / "processes" / str(plain.id)
    assert (plain.stdout_file.name, plain.stderr_file.name, plain.pid_file.name, plain.cmd_file.name) == (
        "stdout.log", "stderr.log", "process.pid", "cmd.sh",
    )  # fmt: skip
    assert {p.parent for p in (plain.stdout_file, plain.stderr_file, plain.pid_file)} == {plain.runtime_dir}
    hook = make_process(
        [sys.executable, "/plugins/wget/on_Snapshot__50_wget.py", "--url=x"], process_type=ProcessType.HOOK
    )
    assert hook.hook_script_name == "on_Snapshot__50_wget.py"
    assert hook.runtime_dir == data_dir / "processes" / str(hook.id)
    assert hook.hook_name == "" and hook.plugin == ""  # no downstream ArchiveResult
    assert plain.hook_script_name is None and plain.hook_name == ""
    hook.ensure_log_files()
    assert hook.stdout_file.exists() and hook.stderr_file.exists()
    assert list(workdir.iterdir()) == []  # nothing written into the working directory


def test_pid_file_lives_while_running_with_start_time_mtime(make_process):
    process = make_process(["sleep", "30"])
    process.launch(background=True)
    assert process.pid_file.read_text().strip() == str(process.pid)
    assert process.pid_file.stat().st_mtime == pytest.approx(process.os_start_time, abs=0.01)
    process.kill()
    assert process.status == ProcessStatus.EXITED and not process.pid_file.exists()


def test_tail_and_pipe_share_one_implementation(make_process, capsys):
    process = make_process(["sh", "-c", "for i in 1 2 3 4 5; do echo out$i; echo err$i >&2; done"])
    process.launch()
    assert list(process.tail_stdout(lines=2)) == ["out4", "out5"]
    assert list(process.tail_stderr(lines=3)) == ["err3", "err4", "err5"]
    process.pipe_stdout(lines=1, follow=False)
    process.pipe_stderr(lines=2, follow=False)
    captured = capsys.readouterr()
    assert captured.out == "out5\n" and captured.err == "err4\nerr5\n"


def test_tail_follow_streams_until_the_process_ends(make_process):
    process = make_process(["sh", "-c", "echo a; sleep 0.3; echo b; sleep 0.3; echo c"])
    process.launch(background=True)
    assert list(process.tail_stdout(lines=10, follow=True)) == ["a", "b", "c"]


def test_records_from_stdout(make_process):
    text = '{"type": "Binary", "name": "wget"}\nnot json\n{"no": "type"}\n[1]\n{"type": "Snapshot"}\n'
    assert [r["type"] for r in Process.parse_records_from_text(text)] == ["Binary", "Snapshot"]
    process = make_process(["printf", "%s", text])
    process.launch()
    assert [r["type"] for r in process.get_records()] == ["Binary", "Snapshot"]


# -- lifecycle -------------------------------------------------------------------------------------


def test_background_poll_wait_and_wait_timeout(make_process):
    process = make_process(["sh", "-c", "sleep 0.3; exit 2"])
    process.launch(background=True)
    assert process.status == ProcessStatus.RUNNING and process.poll() is None
    row = Process.objects.get(pk=process.pk)
    assert row.status == ProcessStatus.RUNNING and row.pid == process.pid
    with pytest.raises(TimeoutError):
        process.wait(timeout=0.05)
    assert process.wait() == 2
    assert process.ended_at and process.ended_at >= process.started_at


def test_launch_refuses_a_running_row(make_process):
    process = make_process(["sleep", "30"])
    process.launch(background=True)
    with pytest.raises(RuntimeError, match="already running"):
        process.launch(background=True)


def test_kill_records_128_plus_signal(make_process):
    term = make_process(["sleep", "30"])
    term.launch(background=True)
    assert term.kill() is True
    assert (term.status, term.exit_code) == (ProcessStatus.EXITED, 143)
    hard = make_process(["sleep", "30"])
    hard.launch(background=True)
    assert hard.kill(9) is True and hard.exit_code == 137
    assert hard.kill() is False  # nothing left to signal


def test_terminate_escalates_to_sigkill(make_process):
    stubborn = make_process(["sh", "-c", "trap '' TERM; echo ready; while :; do sleep 0.05; done"])
    stubborn.launch(background=True)
    while "ready" not in stubborn.stdout_file.read_text():
        time.sleep(0.01)
    started = time.monotonic()
    assert stubborn.terminate(graceful_timeout=0.3) is True
    assert time.monotonic() - started < 5
    assert (stubborn.status, stubborn.exit_code) == (ProcessStatus.EXITED, 137)
    assert stubborn.terminate() is False
    polite = make_process(["sleep", "30"])
    polite.launch(background=True)
    assert polite.terminate() is True and polite.exit_code == 143


def test_kill_tree_kills_plain_children(make_process):
    process = make_process(["sh", "-c", "sleep 30 & sleep 30 & wait"])
    process.launch(background=True)
    deadline = time.monotonic() + 5
    while len(process.get_children_pids()) < 2:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    children = process.get_children_pids()
    assert process.kill_tree(graceful_timeout=1) == 3
    for pid in children:
        wait_gone(pid)
    assert process.status == ProcessStatus.EXITED


def test_kill_children_db(make_process):
    parent = make_process(["sleep", "30"])
    parent.launch(background=True)
    kids = [make_process(["sleep", "30"], parent=parent) for _ in range(2)]
    for kid in kids:
        kid.launch(background=True)
    assert parent.kill_children_db() == 2
    assert all(Process.objects.get(pk=k.pk).status == ProcessStatus.EXITED for k in kids)
    assert parent.is_running


def test_memory_cpu_and_children_of_a_live_process(make_process):
    process = make_process(["sleep", "30"])
    process.launch(background=True)
    memory = process.get_memory_info()
    assert set(memory) == {"rss", "vms"} and memory["rss"] > 0
    assert process.get_cpu_percent() is not None
    assert process.get_children_pids() == []
    process.kill()
    assert process.get_memory_info() is None and process.get_cpu_percent() is None


# -- class queries ---------------------------------------------------------------------------------


def test_running_queries_and_stop_all(make_process):
    workers = [make_process(["sleep", "30"], process_type=ProcessType.WORKER) for _ in range(2)]
    for worker in workers:
        worker.launch(background=True)
    hook = make_process(["sleep", "30"], process_type=ProcessType.HOOK)
    hook.launch(background=True)
    assert Process.get_running_count(ProcessType.WORKER) == 2
    assert set(Process.get_running(ProcessType.WORKER)) == set(workers)
    assert Process.get_running_count() == 3
    assert Process.get_next_worker_id() == 2
    assert Process.get_running_count(machine=make_machine("other-host")) == 0
    assert Process.stop_all(ProcessType.WORKER) == 2
    assert Process.get_running_count(ProcessType.WORKER) == 0 and hook.is_running
    assert Process.stop_all(graceful=False) == 1


def test_cleanup_stale_running_closes_dead_rows_only(make_process, popen):
    live = make_process(["sleep", "30"])
    live.launch(background=True)
    done = popen(["true"])
    done.wait()
    machine = Machine.current()
    dead = Process.objects.create(
        machine=machine, cmd=["true"], pid=done.pid, started_at=timezone.now(), status=ProcessStatus.RUNNING
    )
    assert Process.cleanup_stale_running() == 1
    assert Process.objects.get(pk=dead.pk).status == ProcessStatus.EXITED
    assert Process.objects.get(pk=live.pk).status == ProcessStatus.RUNNING


def test_cleanup_orphaned_workers(make_process):
    parent = make_process(["true"])
    parent.launch()
    orphan = make_process(["sleep", "30"], process_type=ProcessType.WORKER, parent=parent)
    orphan.launch(background=True)
    assert Process.cleanup_orphaned_workers() == 1
    assert Process.objects.get(pk=orphan.pk).status == ProcessStatus.EXITED


def test_cleanup_orphaned_chrome(data_dir, popen):
    assert Process.cleanup_orphaned_chrome() == 0
    browser = popen(["bash", "-c", "exec -a chromium-headless sleep 60"])
    deadline = time.monotonic() + 5
    while "chromium" not in " ".join(psutil.Process(browser.pid).cmdline()):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    start = psutil.Process(browser.pid).create_time()
    pid_dir = data_dir / "crawls" / "c1" / "chrome"
    pid_dir.mkdir(parents=True)
    unprovable = pid_dir / "other.pid"
    unprovable.write_text(f"{browser.pid}\n")
    os.utime(unprovable, (start - 3600, start - 3600))  # the mtime is not this process's start
    assert Process.cleanup_orphaned_chrome(min_age=0) == 0 and browser.poll() is None
    pid_file = pid_dir / "chrome.pid"
    pid_file.write_text(f"{browser.pid}\n")
    os.utime(pid_file, (start, start))
    assert Process.cleanup_orphaned_chrome() == 0  # younger than 5 minutes: may belong to a live crawl
    assert Process.cleanup_orphaned_chrome(min_age=0) == 1
    assert browser.wait(timeout=5) is not None and not pid_file.exists()


# -- JSON, binaries, state machine -----------------------------------------------------------------


def test_to_json_and_from_json(make_process, workdir):
    process = make_process(["echo", "x"], env={"A": "1", "MY_TOKEN": "t0ps3cret"}, url="https://example.com")
    process.launch()
    data = process.to_json()
    assert data["type"] == "Process" and data["id"] == str(process.id)
    assert data["cmd"] == ["echo", "x"] and data["exit_code"] == 0 and data["status"] == "exited"
    assert data["env"] == {"A": "1", "MY_TOKEN": "********"}
    json.dumps(data)
    assert Process.from_json(data) == process  # known id: the existing row
    record = {"cmd": ["echo", "y"], "pwd": str(workdir), "timeout": 5, "process_type": "hook"}
    assert Process.from_json(record) is None  # from_json never creates
    new = Process.queue_from_json(record, overrides={"url": "https://example.org"})
    assert (new.status, new.cmd, new.timeout, new.url, new.process_type) == (
        "queued", ["echo", "y"], 5, "https://example.org", "hook",
    )  # fmt: skip
    assert Process.queue_from_json({"id": str(new.id)}) == new
    for bad in (
        "x",
        {},
        {"cmd": "echo y"},
        {"cmd": [1]},
        {"cmd": ["x"], "timeout": -1},
        {"id": "not-a-uuid"},
    ):
        assert Process.queue_from_json(bad) is None
        assert Process.from_json(bad) is None
    assert Process.objects.count() == 2


def test_update_and_requeue_is_guarded(make_process):
    process = make_process(["true"])
    process.save()
    stale = Process.objects.get(pk=process.pk)
    assert process.update_and_requeue(retry_at=timezone.now(), url="https://a.example") is True
    assert stale.update_and_requeue(url="https://b.example") is False
    assert Process.objects.get(pk=process.pk).url == "https://a.example"


def test_hydrate_binary_from_context(make_process, django_assert_num_queries):
    machine = Machine.current()
    wget = Binary.objects.create(machine=machine, name="wget", abspath="/usr/bin/wget", version="1.21")
    curl = Binary.objects.create(machine=machine, name="curl", abspath="/usr/bin/curl", version="8")
    process = make_process(["x"], env={"WGET_BINARY": "/usr/bin/wget"})
    process.save()
    assert (
        process.hydrate_binary_from_context(plugin_name="wget", hook_path="/p/wget/on_Snapshot__50_wget.py")
        == wget
    )
    assert process.binary == wget
    assert Process.objects.get(pk=process.pk).binary is None  # in memory only: the caller saves
    by_cmd = make_process(["/usr/bin/curl", "-s"], env={"WGET_BINARY": "/opt/unknown/wget9"})
    assert by_cmd.hydrate_binary_from_context(plugin_name="wget") == curl  # cmd[0] as the last resort
    nothing = make_process(["/opt/x/unknown"], env={"WGET_BINARY": "/opt/unknown/wget9"})
    assert nothing.hydrate_binary_from_context(plugin_name="wget") is None and nothing.binary_id is None


def test_process_machine_shape():
    assert [s.value for s in ProcessMachine.states] == ["queued", "running", "exited"]
    assert {e.id for e in ProcessMachine.events} >= {"tick", "launch", "kill"}
    assert repr(ProcessMachine(Process(machine=Machine.current()))).startswith("ProcessMachine[")


def test_launch_event_launches(make_process):
    process = make_process(["sh", "-c", "exit 6"])
    process.save()
    process.sm.launch()
    assert Process.objects.get(pk=process.pk).status == ProcessStatus.RUNNING
    assert process.wait(timeout=10) == 6


def test_stream_output_copies_both_logs(make_process):
    process = make_process(["sh", "-c", "echo one; echo two >&2; sleep 0.2; echo three"])
    out, err = io.StringIO(), io.StringIO()
    assert process.run_attached(out, err) == 0
    assert out.getvalue() == "one\nthree\n" and err.getvalue() == "two\n"


@pytest.mark.django_db
def test_str_redacts_secret_looking_arguments():
    from machine.models import Machine, Process

    process = Process(
        machine=Machine.current(), cmd=["curl", "--token=abc123", "--password", "hunter2", "API_KEY=zzz"]
    )
    text = str(process)
    assert "abc123" not in text and "hunter2" not in text and "zzz" not in text
    assert "curl" in text and "********" in text
