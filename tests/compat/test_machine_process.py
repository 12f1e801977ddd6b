"""machine.models.Process against the original's API (issue 9, item 3).

Each test states the original's behaviour; where ours deliberately differs, the docstring names the
row of docs/compatibility.md ("## machine.models") that says why, and the test asserts ours.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import sys
import time
from datetime import timedelta
from types import SimpleNamespace

import psutil
import pytest
from django.db.models import QuerySet
from django.utils import timezone

from machine import process_utils
from machine.hook_runs import dispatch_record
from machine.models import Binary, Machine, NetworkInterface, Process
from machine.processes import UNKNOWN_EXIT_CODE, UNKNOWN_EXIT_NOTE, ForeignMachineError
from machine.sealing import SealedSecretError
from tests.archiver.models import ArchiveResult, Crawl, Snapshot
from tests.compat.machine_helpers import alive, foreign_sleeper, launched, own_start, popen, reaped_identity
from tests.machine_factories import make_machine

pytestmark = pytest.mark.django_db

__all__ = ["launched", "popen"]  # fixtures


def _running_row(pid: int, started_at, **fields) -> Process:
    return Process.objects.create(
        machine=fields.pop("machine", None) or Machine.current(),
        status=Process.StatusChoices.RUNNING,
        pid=pid,
        started_at=started_at,
        **fields,
    )


# -- 1. poll() -------------------------------------------------------------------------------------


def test_poll_of_an_exited_row_answers_an_int_and_a_recorded_minus_one_becomes_137():
    """Original: poll() of an EXITED row saves a recorded -1 as 137 and returns it; any other recorded
    code is returned as is."""
    pid, started = reaped_identity()
    minus_one = Process.objects.create(
        machine=Machine.current(), status="exited", pid=pid, started_at=started, exit_code=-1
    )
    assert minus_one.poll() == 137
    assert Process.objects.get(pk=minus_one.pk).exit_code == 137
    three = Process.objects.create(machine=Machine.current(), status="exited", exit_code=3, stderr="boom\n")
    assert three.poll() == 3
    assert Process.objects.get(pk=three.pk).stderr == "boom\n"


def test_poll_records_an_unknowable_exit_as_137_with_a_note():
    """Original: an EXITED row without a code makes poll() return None (it looks like "still running");
    a RUNNING row whose process is gone is recorded with 143 for a hook, 0 otherwise.

    Ours (row "poll() / unknown exit codes"): one rule, never a made-up 0 and never None: the row is
    recorded as 137 with a one-line note appended to stderr.
    """
    no_code = Process.objects.create(machine=Machine.current(), status="exited", stderr="partial")
    assert no_code.poll() == UNKNOWN_EXIT_CODE == 137
    row = Process.objects.get(pk=no_code.pk)
    assert (row.exit_code, row.stderr) == (137, f"partial\n{UNKNOWN_EXIT_NOTE}\n")
    assert no_code.poll() == 137 and Process.objects.get(pk=no_code.pk).stderr == row.stderr  # once

    for process_type in ("hook", "cli"):
        pid, started = reaped_identity()
        gone = _running_row(pid, started, process_type=process_type)
        assert gone.poll() == 137
        row = Process.objects.get(pk=gone.pk)
        assert (row.status, row.exit_code, row.stderr) == ("exited", 137, UNKNOWN_EXIT_NOTE + "\n")
        assert row.ended_at is not None


def test_cleanup_stale_running_closes_with_the_same_rule():
    """Original: cleanup_stale_running() closes a gone process's row with its recorded code, else 143
    for a hook / 0 otherwise.

    Ours (row "poll() / unknown exit codes"): the batched close applies the one rule in SQL: a recorded
    code is kept (normalised), an unknown one is 137 with the note on a line of its own.
    """
    rows = {}
    for name, fields in {
        "empty": {}, "no_newline": {"stderr": "partial"}, "newline": {"stderr": "line\n"},
        "recorded": {"exit_code": 3, "stderr": "x"}, "signal": {"exit_code": -15},
    }.items():  # fmt: skip
        pid, started = reaped_identity()
        rows[name] = _running_row(pid, started, **fields)
    assert Process.cleanup_stale_running() == 5
    stored = {name: Process.objects.get(pk=row.pk) for name, row in rows.items()}
    note = UNKNOWN_EXIT_NOTE + "\n"
    assert {name: (row.exit_code, row.stderr) for name, row in stored.items()} == {
        "empty": (137, note), "no_newline": (137, "partial\n" + note), "newline": (137, "line\n" + note),
        "recorded": (3, "x"), "signal": (143, ""),
    }  # fmt: skip


def test_poll_never_overwrites_a_recorded_code(launched):
    """Original: poll() is None while the process runs; once it has ended, our own child's code is
    recorded, and when the process of a RUNNING row is gone, a code already on the row is kept."""
    pid, started = reaped_identity()
    row = _running_row(pid, started, exit_code=0)
    assert row.poll() == 0
    assert (Process.objects.get(pk=row.pk).status, Process.objects.get(pk=row.pk).exit_code) == ("exited", 0)
    process = launched(["sh", "-c", "sleep 0.3; exit 5"])
    process.launch(background=True)
    assert process.poll() is None
    deadline = time.monotonic() + 10
    while process.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert process.exit_code == 5 and UNKNOWN_EXIT_NOTE not in process.stderr


def test_poll_leaves_queued_rows_and_other_machines_rows_alone():
    """Original: poll() marks any row whose process is not running here exited (a QUEUED row, and a row
    of another machine, whose pid means nothing on this host).

    Ours (rows "QUEUED rows" and "rows of another machine"): None, the row untouched.
    """
    queued = Process.objects.create(machine=Machine.current(), cmd=["true"])
    assert queued.poll() is None
    remote = _running_row(os.getpid(), own_start(), machine=make_machine("other-host"))
    assert remote.poll() is None
    assert set(Process.objects.values_list("status", flat=True)) == {"queued", "running"}


# -- 2. kill() -------------------------------------------------------------------------------------


def test_kill_of_a_gone_process_closes_the_row_and_answers_false():
    """Original: kill() of a process that is gone (or whose pid was reused) marks the row exited and
    returns False; the exit code is left as it is (usually None).

    Ours: the same, with the one rule for the code (row "poll() / unknown exit codes"): 137 and a note.
    """
    pid, started = reaped_identity()
    row = _running_row(pid, started)
    assert row.kill() is False
    stored = Process.objects.get(pk=row.pk)
    assert (stored.status, stored.exit_code) == ("exited", 137)
    assert stored.stderr.endswith(UNKNOWN_EXIT_NOTE + "\n") and stored.ended_at is not None


def test_kill_never_signals_a_pid_that_is_not_proven_ours(popen):
    """Original: a pid whose start time does not match the row is not this row's process: no signal,
    the row is marked exited, False."""
    proc, start = foreign_sleeper(popen)
    reused = Process.objects.create(
        machine=Machine.current(),
        cmd=["sleep", "30"],
        pid=proc.pid,
        os_start_time=start - 60,  # the row's process started a minute earlier: the pid was reused
        started_at=timezone.now() - timedelta(minutes=1),
        status="running",
    )
    assert reused.kill() is False
    time.sleep(0.05)
    assert alive(proc.pid)
    assert Process.objects.get(pk=reused.pk).exit_code == 137


def test_kill_refuses_rows_of_another_machine(popen):
    """Original: kill() of a row whose process cannot be resolved here marks the row exited (False).

    Ours (row "rows of another machine"): a row of another machine is never signalled or closed here:
    kill(), terminate() and kill_tree() refuse it with ForeignMachineError (a ValueError) naming both
    hosts, and the process and the row stay as they are.
    """
    proc, start = foreign_sleeper(popen)
    remote = Process.objects.create(
        machine=make_machine("other-host"), cmd=["sleep", "30"], pid=proc.pid, os_start_time=start,
        started_at=timezone.now(), status="running",
    )  # fmt: skip
    for act in (remote.kill, lambda: remote.kill(9), remote.terminate, remote.kill_tree):
        with pytest.raises(ForeignMachineError, match="of machine other-host"):
            act()
    time.sleep(0.05)
    assert alive(proc.pid)
    assert Process.objects.get(pk=remote.pk).status == "running"


# -- 3. wait() -------------------------------------------------------------------------------------


def test_wait_uses_timeout_or_the_row_timeout_and_never_kills(launched):
    """Original: wait(timeout=None) waits `timeout or self.timeout` seconds (so 0 also means the row's
    timeout), polling; past it raises TimeoutError("Process <id> did not exit within <t>s") and does
    not kill the process. It returns the int exit code."""
    process = launched(["sleep", "30"], timeout=1)
    process.launch(background=True)
    started = time.monotonic()
    with pytest.raises(TimeoutError) as exc:
        process.wait(0)
    assert 0.9 <= time.monotonic() - started < 5
    assert str(exc.value) == f"Process {process.id} did not exit within 1s"
    assert process.is_running and Process.objects.get(pk=process.pk).status == "running"
    assert inspect.signature(Process.wait).parameters["timeout"].default is None
    quick = launched(["sh", "-c", "exit 4"])
    quick.launch(background=True)
    assert quick.wait() == 4


def test_wait_of_a_gone_foreign_process_returns_the_recorded_unknown_code():
    """Original: wait() returns poll()'s int once the row is exited."""
    pid, started = reaped_identity()
    assert _running_row(pid, started, timeout=5).wait() == 137


# -- 4. hook_name / plugin -------------------------------------------------------------------------


def test_hook_name_and_plugin_come_from_the_archiveresult_only(launched):
    """Original: hook_name and plugin read the downstream `archiveresult` OneToOne, and are '' without
    one (never the hook script's name)."""
    hook = launched([sys.executable, "/plugins/wget/on_Snapshot__50_wget.py"], process_type="hook")
    hook.save()
    assert (hook.hook_name, hook.plugin) == ("", "")
    assert hook.hook_script_name == "on_Snapshot__50_wget.py"
    snapshot = Snapshot.objects.create(
        crawl=Crawl.objects.create(urls="https://example.com"), url="https://example.com"
    )
    ArchiveResult.objects.create(
        snapshot=snapshot, plugin="wget", hook_name="on_Snapshot__50_wget.py", process=hook
    )
    hook = Process.objects.get(pk=hook.pk)
    assert (hook.hook_name, hook.plugin) == ("on_Snapshot__50_wget.py", "wget")


# -- 5. hook_script_name ---------------------------------------------------------------------------


HOOK_SCRIPT_CASES = [
    ("hook", ["node", "--trace", "/p/chrome/on_Crawl__10_chrome.daemon.bg.js", "--url=x"], "on_Crawl__10_chrome.daemon.bg.js"),
    ("hook", ["sh", "/p/x/on_install.sh"], "on_install.sh"),  # any on_*.py/.js/.sh name
    ("hook", ["python", "--on_x.py", "/p/on_Snapshot__1_a.txt", "/p/on_Snapshot__2_b.py"], "on_Snapshot__2_b.py"),
    ("hook", ["python", "/p/onSnapshot.py"], None),
    ("hook", [], None),
    ("cli", ["python", "/p/wget/on_Snapshot__50_wget.py"], None),  # not a hook process
]  # fmt: skip


def test_hook_script_name_rules(tmp_path):
    """Original: only for hook processes; the first argument not starting with `-` whose file name starts
    with `on_` and has the suffix .py, .js or .sh; else None. (The original's runtime_dir used it; ours
    is the row's own folder: see the runtime_dir row of docs/compatibility.md.)"""
    for process_type, cmd, expected in HOOK_SCRIPT_CASES:
        process = Process(machine=Machine.current(), process_type=process_type, cmd=cmd, pwd=str(tmp_path))
        assert process.hook_script_name == expected, cmd


# -- 6.-8. get_descendants(), get_memory_info(), get_cpu_percent() ---------------------------------


def test_get_descendants_is_a_queryset():
    """Original: get_descendants(include_self=False) collects the DB descendants breadth first and
    returns a QuerySet (order unspecified)."""
    machine = Machine.current()
    root = Process.objects.create(machine=machine)
    child = Process.objects.create(machine=machine, parent=root)
    grandchild = Process.objects.create(machine=machine, parent=child)
    descendants = root.get_descendants()
    assert isinstance(descendants, QuerySet)
    assert set(descendants) == {child, grandchild}
    assert set(root.get_descendants(include_self=True).filter(parent__isnull=False)) == {child, grandchild}
    assert root in root.get_descendants(include_self=True)


def test_memory_info_is_a_dict_and_cpu_percent_takes_no_arguments(launched):
    """Original: get_memory_info() -> {"rss": ..., "vms": ...} or None; get_cpu_percent() takes no
    arguments (cpu_percent over 0.1 s) -> float or None."""
    assert list(inspect.signature(Process.get_cpu_percent).parameters) == ["self"]
    process = launched(["sleep", "30"])
    process.launch(background=True)
    memory = process.get_memory_info()
    assert isinstance(memory, dict) and set(memory) == {"rss", "vms"} and memory["rss"] > 0
    assert isinstance(process.get_cpu_percent(), float)
    process.kill()
    assert process.get_memory_info() is None and process.get_cpu_percent() is None


# -- 9. cleanup_orphaned_workers() -----------------------------------------------------------------


def test_cleanup_orphaned_workers_follows_the_original_rule(popen):
    """Original: for each RUNNING worker/hook row: not running -> closed; its own root (standalone) ->
    kept; root of type orchestrator/server/update/add/search/cli and running -> kept; anything else
    -> closed in the DB (no signal). Returns the count. Exit code: the recorded one, else 143 for a
    hook / 0 for a worker.

    Ours (rows "cleanup_orphaned_workers()" and "poll() / unknown exit codes"): only this machine's
    rows, and an unknown code is 137 with a note.
    """
    me_start = own_start()
    sleeper, _start = foreign_sleeper(popen)
    sleeper_start = psutil.Process(sleeper.pid).create_time()
    machine = Machine.current()
    live_cli = _running_row(os.getpid(), me_start, process_type="cli")
    live_binary_root = _running_row(os.getpid(), me_start, process_type="binary")
    dead_pid, dead_start = reaped_identity()
    dead_cli = _running_row(dead_pid, dead_start, process_type="cli")

    def child(parent, process_type="hook", **fields):
        return Process.objects.create(
            machine=fields.pop("machine", machine), parent=parent, process_type=process_type,
            cmd=["sleep", "30"], pid=sleeper.pid, os_start_time=sleeper_start,
            started_at=timezone.now(), status="running", **fields,
        )  # fmt: skip

    standalone = child(None, "worker")
    kept = child(live_cli)
    orphan = child(dead_cli)
    orphan_with_code = child(dead_cli, "worker", exit_code=3)
    under_binary = child(live_binary_root)
    gone_pid, gone_start = reaped_identity()
    gone = _running_row(gone_pid, gone_start, process_type="worker", parent=live_cli)
    remote = child(None, "hook", machine=make_machine("other-host"))

    assert Process.cleanup_orphaned_workers() == 4
    status = dict(Process.objects.values_list("pk", "status"))
    assert [status[p.pk] for p in (standalone, kept, remote)] == ["running"] * 3
    assert [status[p.pk] for p in (orphan, orphan_with_code, under_binary, gone)] == ["exited"] * 4
    codes = dict(Process.objects.values_list("pk", "exit_code"))
    assert (codes[orphan.pk], codes[orphan_with_code.pk], codes[gone.pk]) == (137, 3, 137)
    assert Process.objects.get(pk=orphan.pk).stderr == UNKNOWN_EXIT_NOTE + "\n"
    assert alive(sleeper.pid)  # closed in the database, never signalled
    assert list(inspect.signature(Process.cleanup_orphaned_workers).parameters) == []


# -- 10. update_and_requeue / safe_update / mark_running / heartbeat / mark_exited ------------------


def test_update_and_requeue_is_a_cas_on_modified_at_and_retry_at():
    """Original: Process.safe_update(update_fields, *, refresh=True, extra_filter=None) is one UPDATE
    guarded by the modified_at the instance saw (plus extra_filter), refreshes, returns bool;
    update_and_requeue(**kwargs) adds the retry_at guard."""
    process = Process.objects.create(machine=Machine.current(), cmd=["true"])
    stale = Process.objects.get(pk=process.pk)
    assert process.update_and_requeue(url="https://a.example") is True  # retry_at unchanged
    assert process.url == "https://a.example" and process.modified_at > stale.modified_at
    assert stale.update_and_requeue(url="https://b.example") is False  # modified_at moved on
    assert stale.url == "https://a.example"  # refreshed either way
    assert stale.safe_update({"pwd": "/x"}, extra_filter={"status": "running"}) is False
    assert stale.safe_update({"pwd": "/x"}) is True and Process.objects.get(pk=process.pk).pwd == "/x"


def test_mark_running_heartbeat_and_mark_exited(launched):
    """Original: mark_running(*, process_type=None, pwd=None, url=None, worker_type="", timeout=None)
    sets running, clears retry_at and writes only changed details; heartbeat() bumps modified_at;
    mark_exited(*, exit_code=0) closes the row (ended_at kept if set, retry_at cleared), and is a
    no-op when it already has that code.

    Ours: mark_exited closes through the one close path (the output is captured, the pid file goes,
    the code follows the one rule).
    """
    process = launched(["sleep", "30"])
    process.launch(background=True)
    process.mark_running(process_type="worker", pwd=process.pwd, url="https://x.example", worker_type="w")
    row = Process.objects.get(pk=process.pk)
    assert (row.status, row.retry_at, row.process_type, row.url, row.worker_type) == (
        "running", None, "worker", "https://x.example", "w",
    )  # fmt: skip
    before = row.modified_at
    process.heartbeat()
    assert Process.objects.get(pk=process.pk).modified_at > before
    assert process.pid_file.exists()
    process.mark_exited(exit_code=-1)
    row = Process.objects.get(pk=process.pk)
    assert (row.status, row.exit_code, row.retry_at) == ("exited", 137, None) and row.ended_at
    assert not process.pid_file.exists()
    ended = row.ended_at
    process.mark_exited(exit_code=137)  # already so: nothing written
    assert Process.objects.get(pk=process.pk).modified_at == row.modified_at
    process.mark_exited(exit_code=2)  # another code overwrites, ended_at stays
    row = Process.objects.get(pk=process.pk)
    assert (row.exit_code, row.ended_at) == (2, ended)


# -- 11. from_json ---------------------------------------------------------------------------------


def test_from_json_only_returns_an_existing_row():
    """Original: Process.from_json(record, overrides=None) is a staticmethod: the row with record["id"],
    else None; it never creates or changes a row (an invalid id raises ValidationError there).

    Ours: an invalid id gives None. The creating form is Process.queue_from_json(); a hook's
    `{"type": "Process"}` record therefore can no longer create a Process.
    """
    assert isinstance(inspect.getattr_static(Process, "from_json"), staticmethod)
    process = Process.objects.create(machine=Machine.current(), cmd=["true"])
    assert Process.from_json({"id": str(process.id)}) == process
    record = {"type": "Process", "id": "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b", "cmd": ["echo", "hi"]}
    assert Process.from_json(record) is None
    assert Process.from_json({"cmd": ["echo", "hi"]}) is None
    assert Process.from_json({"id": "not-a-uuid"}) is None
    assert dispatch_record(record) is None
    assert Process.objects.count() == 1
    queued = Process.queue_from_json({"cmd": ["echo", "hi"], "pwd": "/tmp"})
    assert queued.status == "queued" and Process.objects.count() == 2


# -- 12. hydrate_binary_from_context ---------------------------------------------------------------


def test_hydrate_binary_from_context_tries_env_then_cmd0_and_writes_nothing(django_assert_num_queries):
    """Original: references are the values of _get_process_binary_env_keys(...) in order, then cmd[0];
    the first Binary found (by abspath, then name) is set on self.binary in memory only (no DB
    write) and returned; None if nothing matches."""
    machine = Machine.current()
    node = Binary.objects.create(machine=machine, name="node", abspath="/usr/bin/node", version="20")
    chrome = Binary.objects.create(machine=machine, name="chromium", abspath="/usr/bin/chromium", version="1")
    process = Process.objects.create(
        machine=machine, cmd=["/usr/bin/node", "x.js"], env={"CHROME_BINARY": "/usr/bin/chromium"}
    )
    with django_assert_num_queries(1):  # found by abspath; no UPDATE
        assert (
            process.hydrate_binary_from_context(plugin_name="chrome", hook_path="/p/on_X__1_y.js") == chrome
        )
    assert process.binary == chrome and Process.objects.get(pk=process.pk).binary_id is None
    fallback = Process(machine=machine, cmd=["/usr/bin/node", "x.js"], env={})
    assert fallback.hydrate_binary_from_context() == node
    unknown = Process(machine=machine, cmd=["/opt/nothing"], env={})
    assert unknown.hydrate_binary_from_context() is None and unknown.binary_id is None


# -- 13. cmd_version, bin_abspath, create_for_archiveresult, _build_env ----------------------------


def test_cmd_version_and_bin_abspath():
    """Original: the linked Binary's version / abspath, else ''."""
    machine = Machine.current()
    binary = Binary.objects.create(machine=machine, name="wget", abspath="/usr/bin/wget", version="1.21")
    assert (Process(machine=machine).cmd_version, Process(machine=machine).bin_abspath) == ("", "")
    linked = Process(machine=machine, binary=binary)
    assert (linked.cmd_version, linked.bin_abspath) == ("1.21", "/usr/bin/wget")


def test_create_for_archiveresult(tmp_path, monkeypatch):
    """Original: ProcessManager.create_for_archiveresult(archiveresult, **kwargs): iface = kwargs iface or
    NetworkInterface.current(); defaults machine=iface.machine, pwd=<snapshot.output_dir>/<plugin>,
    cmd=[], status queued, timeout 120, env {}; then every kwarg wins (also falsy ones); create."""
    monkeypatch.setattr("machine.models.get_host_network", _fake_network)
    result = SimpleNamespace(plugin="wget", snapshot=SimpleNamespace(output_dir=tmp_path / "snap"))
    process = Process.objects.create_for_archiveresult(result)
    assert process.pk and process.iface == NetworkInterface.current() and process.machine == Machine.current()
    assert (process.pwd, process.cmd, process.status, process.timeout, process.env) == (
        str(tmp_path / "snap" / "wget"), [], "queued", 120, {},
    )  # fmt: skip
    custom = Process.objects.create_for_archiveresult(result, cmd=["wget"], timeout=5, pwd="", url=None)
    assert (custom.cmd, custom.timeout, custom.pwd) == (["wget"], 5, "")


def _fake_network():
    return {
        "mac_address": "02:00:00:00:00:09", "ip_public": "", "ip_local": "10.9.9.9", "dns_server": "10.9.9.1",
        "hostname": "h", "iface": "eth9", "isp": "", "city": "", "region": "", "country": "",
    }  # fmt: skip


CHILD_ENV = (
    "import hashlib, json, os; seen = {k: os.environ.get(k) for k in "
    "('INHERITED', 'FLAG', 'OFF', 'NUM', 'RATIO', 'DATA', 'PLAIN')}; "
    "seen['sha256 of the value'] = hashlib.sha256(os.environ['API_TOKEN'].encode()).hexdigest(); "
    "print(json.dumps(seen))"
)


def test_build_env_is_the_one_env_rule_of_a_launch(launched, monkeypatch):
    """Original: _build_env() starts from os.environ and overlays self.env: None skipped (the inherited
    value stays), str as is, bool "True"/"False", int/float str(), anything else json.dumps(default=str);
    launch() gives the child exactly that.

    Ours: the same rule, and the caller's real secret reaches the child. A value that still holds the
    mask (a row read back from the database whose sealed value is gone) is never replaced by this
    process's own value: `_build_env()` raises and `launch()` is refused; the launch marker is added
    on top.
    """
    monkeypatch.setenv("INHERITED", "from-parent")
    monkeypatch.setenv("API_TOKEN", "the-worker's-own-token")
    env = {
        "INHERITED": None, "FLAG": True, "OFF": False, "NUM": 3, "RATIO": 1.5, "DATA": {"a": [1, None]},
        "API_TOKEN": "the-caller's-token", "PLAIN": "x",
    }  # fmt: skip
    expected = {
        "INHERITED": "from-parent", "FLAG": "True", "OFF": "False", "NUM": "3", "RATIO": "1.5",
        "DATA": '{"a": [1, null]}', "API_TOKEN": "the-caller's-token", "PLAIN": "x",
    }  # fmt: skip
    built = Process(env={**env, "WHEN": timedelta(seconds=1)})._build_env()
    assert {key: built.get(key) for key in expected} == expected
    assert (
        built["WHEN"] == json.dumps(timedelta(seconds=1), default=str) and built["PATH"] == os.environ["PATH"]
    )
    with pytest.raises(SealedSecretError, match="API_TOKEN"):
        Process(env={**env, "API_TOKEN": process_utils.REDACTED})._build_env()
    process = launched([sys.executable, "-c", CHILD_ENV], env=env)
    process.launch()
    assert process.exit_code == 0, process.stderr
    seen = json.loads(process.stdout.strip().splitlines()[-1])
    del expected["API_TOKEN"]  # (printed as a hash: a child printing `"API_TOKEN": ...` is masked)
    assert seen == {**expected, "sha256 of the value": hashlib.sha256(b"the-caller's-token").hexdigest()}
    masked = launched([sys.executable, "-c", CHILD_ENV], env={**env, "API_TOKEN": process_utils.REDACTED})
    with pytest.raises(SealedSecretError):
        masked.launch()


# -- 14. fields and process types ------------------------------------------------------------------


def test_process_fields_and_choices_are_the_originals():
    """Original: process_type default "cli"; TypeChoices supervisord, orchestrator, server, update, add,
    search, worker, cli, hook, binary (labels Supervisord ... Binary); url a URLField(max_length=2048,
    default=None, null=True, blank=True); iface related_name "process_set"; status max_length 16."""
    field = Process._meta.get_field
    assert field("process_type").default == "cli" and Process().process_type == "cli"
    assert Process.TypeChoices.choices == [
        ("supervisord", "Supervisord"), ("orchestrator", "Orchestrator"), ("server", "Server"),
        ("update", "Update"), ("add", "Add"), ("search", "Search"), ("worker", "Worker"), ("cli", "CLI"),
        ("hook", "Hook"), ("binary", "Binary"),
    ]  # fmt: skip
    url = field("url")
    assert (type(url).__name__, url.max_length, url.default, url.null, url.blank) == (
        "URLField", 2048, None, True, True,
    )  # fmt: skip
    assert Process().url is None
    assert field("iface").remote_field.related_name == "process_set"
    assert field("status").max_length == 16
    assert field("timeout").help_text == "Timeout in seconds"


DETECT_CASES = [
    (["/usr/bin/supervisord", "-n"], "supervisord"),
    (["python", "-m", "x", "--configuration=/etc/s.conf"], "supervisord"),
    (["archivebox", "manage", "runner_watch", "--bind-url=http://127.0.0.1:8000"], "worker"),
    (["archivebox", "server", "0.0.0.0:8000"], "server"),
    (["archivebox", "update"], "update"),
    (["archivebox", "add", "https://example.com"], "add"),
    (["archivebox", "add", "--bg", "https://example.com"], "cli"),
    (["archivebox", "search", "x"], "search"),
    (["archivebox", "list"], "search"),
    (["archivebox", "run", "--daemon"], "orchestrator"),
    (["archivebox", "status"], "cli"),
    (["/usr/bin/wget", "https://example.com"], "binary"),
    (["python", "manage.py", "runworker", "--worker"], "worker"),  # this app's own commands too
    (["python", "manage.py", "runworker"], "orchestrator"),
]


def test_detect_process_type_knows_the_originals_commands(monkeypatch):
    """Original: supervisord (program name, or a --configuration= argument) > runner_watch (worker) >
    archivebox server / update > archivebox add (cli with --bg, else add) > archivebox search / list >
    archivebox run (orchestrator) > archivebox (cli) > binary. (Ours also knows this app's commands;
    the patterns are the MACHINE_PROCESS_TYPE_PATTERNS setting.)"""
    for argv, expected in DETECT_CASES:
        monkeypatch.setattr(sys, "argv", argv)
        assert Process._detect_process_type() == expected, argv
