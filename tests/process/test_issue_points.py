"""One group of tests per numbered point of the Process issue, against real processes and PIDs."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from datetime import timedelta

import psutil
import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from machine import process_utils
from machine.choices import ProcessStatus, ProcessType
from machine.models import Machine, Process
from machine.processes import UNKNOWN_EXIT_NOTE, ProcessInputError

from .conftest import needs_pid_control, wait_gone

pytestmark = pytest.mark.django_db


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _foreign_row(proc: subprocess.Popen, cmd, marker: str = "", start: float | None = None) -> Process:
    """A RUNNING row for a process this test process did not launch through Process (as another worker's)."""
    start = psutil.Process(proc.pid).create_time() if start is None else start
    return Process.objects.create(
        machine=Machine.current(),
        cmd=list(cmd),
        pid=proc.pid,
        os_start_time=start,
        started_at=timezone.now(),
        launch_marker=marker,
        status=ProcessStatus.RUNNING,
        retry_at=None,
    )


# -- 1. PID reuse, for real ------------------------------------------------------------------------


def _assert_not_ours(old: Process, new_pid: int) -> None:
    """The old RUNNING row must not claim the new owner of its pid, and clean-up must close it."""
    old = Process.objects.get(pk=old.pk)
    assert old.status == ProcessStatus.RUNNING
    assert old.is_running is False
    assert old.proc is None
    assert Process.objects.get_by_pid(new_pid) is None
    assert Process.cleanup_stale_running() == 1
    assert Process.objects.get(pk=old.pk).status == ProcessStatus.EXITED
    # The in-memory instance still says RUNNING: signalling through it must still be refused.
    assert old.kill() is False
    assert old.kill(signal.SIGKILL) is False
    assert old.terminate(graceful_timeout=0.1) is False
    assert old.kill_tree(graceful_timeout=0.1) == 0
    time.sleep(0.05)
    assert _alive(new_pid), "a reused pid's new owner was signalled"


@needs_pid_control
def test_reused_pid_same_command_within_a_second_is_not_ours(popen, spawn_with_pid):
    cmd = ["sleep", "30"]
    for attempt in range(5):
        marker = f"reuse-test-marker-{attempt}"
        old_proc = popen(cmd, env={**os.environ, process_utils.MARKER_ENV: marker})
        old_start = psutil.Process(old_proc.pid).create_time()
        old_proc.kill()
        old_proc.wait()
        # Same pid, same command line, well within one second (usually on the same start tick).
        new_proc = spawn_with_pid(old_proc.pid, cmd)
        if new_proc is not None:
            break
    else:
        pytest.fail("could not get a pid reused (the host keeps taking it)")
    old = _foreign_row(old_proc, cmd, marker, start=old_start)
    assert abs(psutil.Process(new_proc.pid).create_time() - old_start) < 1.0
    assert new_proc.pid == old.pid
    _assert_not_ours(old, new_proc.pid)


@needs_pid_control
def test_reused_pid_of_our_own_launched_child_is_not_signalled(make_process, spawn_with_pid):
    for _attempt in range(5):
        process = make_process(["sleep", "30"])
        process.launch(background=True)
        pid = process.pid
        os.kill(pid, signal.SIGKILL)  # it dies behind our back (test code, not the model)
        wait_gone(pid)
        process_utils.reap(pid, process.os_start_time, marker=process.launch_marker)
        new_proc = spawn_with_pid(pid, ["sleep", "30"])
        if new_proc is not None:
            break
        Process.objects.filter(pk=process.pk).delete()
    else:
        pytest.fail("could not get a pid reused (the host keeps taking it)")
    _assert_not_ours(process, new_proc.pid)
    row = Process.objects.get(pk=process.pk)
    assert (row.status, row.exit_code) == (ProcessStatus.EXITED, 137)  # the true code, kept from the reap


def test_command_mismatch_is_not_ours(popen):
    proc = popen(["sleep", "30"])
    row = _foreign_row(proc, ["other-program", "30"])
    assert row.proc is None and row.is_running is False
    assert row.kill() is False
    assert proc.poll() is None


def test_start_time_mismatch_is_not_ours(popen):
    proc = popen(["sleep", "30"])
    row = _foreign_row(proc, ["sleep", "30"])
    Process.objects.filter(pk=row.pk).update(os_start_time=row.os_start_time - 0.5)
    row.refresh_from_db()
    assert row.proc is None
    assert Process.objects.get_by_pid(proc.pid) is None
    assert row.kill_tree(graceful_timeout=0) == 0
    assert proc.poll() is None


# -- 2. No escaped descendants ---------------------------------------------------------------------

DAEMONIZE = textwrap.dedent(
    """
    import os, sys, time
    pid_file = sys.argv[1]
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            with open(pid_file + ".tmp", "w") as f:
                f.write(str(os.getpid()))
            os.rename(pid_file + ".tmp", pid_file)
            time.sleep(60)
        os._exit(0)
    time.sleep(float(sys.argv[2]))
    """
)


def _grandchild_pid(pid_file, timeout=5.0) -> int:
    deadline = time.monotonic() + timeout
    while not pid_file.exists():
        assert time.monotonic() < deadline, "daemon did not start"
        time.sleep(0.01)
    return int(pid_file.read_text())


def test_kill_tree_ends_a_double_forked_setsid_grandchild(make_process, workdir):
    script = workdir / "daemonize.py"
    script.write_text(DAEMONIZE)
    pid_file = workdir / "grandchild.pid"
    process = make_process([sys.executable, str(script), str(pid_file), "60"])
    process.launch(background=True)
    grandchild = _grandchild_pid(pid_file)
    # It escaped: not in the OS tree under our child, and in another session.
    assert grandchild not in [p.pid for p in psutil.Process(process.pid).children(recursive=True)]
    assert os.getsid(grandchild) != os.getsid(process.pid)
    assert grandchild in process.get_children_pids()
    killed = process.kill_tree(graceful_timeout=1.0)
    assert killed >= 2
    wait_gone(grandchild)
    assert not _alive(process.pid)
    assert Process.objects.get(pk=process.pk).status == ProcessStatus.EXITED


def test_foreground_timeout_ends_the_escaped_grandchild_and_records_137(make_process, workdir):
    script = workdir / "daemonize.py"
    script.write_text(DAEMONIZE)
    pid_file = workdir / "grandchild.pid"
    process = make_process([sys.executable, str(script), str(pid_file), "60"], timeout=1)
    started = time.monotonic()
    process.launch()
    assert time.monotonic() - started < 10
    assert (process.status, process.exit_code) == (ProcessStatus.EXITED, 137)
    wait_gone(_grandchild_pid(pid_file))


# -- 3. Zombies are not running --------------------------------------------------------------------


def test_a_zombie_is_not_running_and_poll_reaps_it(make_process):
    process = make_process(["sh", "-c", "exit 5"])
    process.launch(background=True)
    deadline = time.monotonic() + 5
    while psutil.Process(process.pid).status() != psutil.STATUS_ZOMBIE:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert psutil.Process(process.pid).is_running() is True  # psutil's view
    assert process.is_running is False  # ours
    assert process.poll() == 5
    assert not psutil.pid_exists(process.pid)  # reaped
    assert Process.objects.get(pk=process.pk).exit_code == 5


# -- 4. True exit codes ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("script", "code"),
    [("exit 0", 0), ("exit 3", 3), ("kill -TERM $$", 143), ("kill -KILL $$", 137), ("kill -INT $$", 130)],
)
@pytest.mark.parametrize("background", [False, True])
def test_true_exit_codes(make_process, script, code, background):
    process = make_process(["sh", "-c", script])
    process.launch(background=background)
    if background:
        assert process.wait(timeout=10) == code
    assert process.exit_code == code
    row = Process.objects.get(pk=process.pk)
    assert (row.status, row.exit_code) == (ProcessStatus.EXITED, code)


def test_missing_program_exits_127_with_a_message(make_process):
    process = make_process(["/no/such/program", "x"])
    process.launch()
    assert (process.status, process.exit_code) == (ProcessStatus.EXITED, 127)
    assert "/no/such/program" in process.stderr and "No such file" in process.stderr


def test_not_executable_exits_126_with_a_message(make_process, workdir):
    script = workdir / "not-executable.sh"
    script.write_text("#!/bin/sh\necho hi\n")
    script.chmod(0o644)
    process = make_process([str(script)])
    process.launch(background=True)
    assert (process.status, process.exit_code) == (ProcessStatus.EXITED, 126)
    assert "Permission denied" in process.stderr


# -- 5. ProcessMachine really launches -------------------------------------------------------------


def test_process_machine_launches_polls_and_exits_with_the_code(make_process):
    process = make_process(["sh", "-c", "sleep 0.5; exit 3"])
    process.save()
    process.sm.tick()
    row = Process.objects.get(pk=process.pk)
    assert row.status == ProcessStatus.RUNNING
    assert row.pid and row.started_at and row.os_start_time and row.exit_code is None
    assert _alive(row.pid)
    process.sm.tick()  # still running: stays running
    assert Process.objects.get(pk=process.pk).status == ProcessStatus.RUNNING
    process_utils.wait(row.pid, row.os_start_time, timeout=10, marker=row.launch_marker)
    process.sm.tick()
    row = Process.objects.get(pk=process.pk)
    assert (row.status, row.exit_code, row.retry_at) == (ProcessStatus.EXITED, 3, None)


def test_process_machine_picks_up_a_row_in_a_fresh_instance(make_process):
    process = make_process(["sh", "-c", "exit 4"])
    process.save()
    Process.objects.get(pk=process.pk).sm.tick()  # launch from one instance
    row = Process.objects.get(pk=process.pk)
    assert row.status == ProcessStatus.RUNNING
    process_utils.wait(row.pid, row.os_start_time, timeout=10, marker=row.launch_marker)
    Process.objects.get(pk=process.pk).sm.tick()  # poll from another
    row = Process.objects.get(pk=process.pk)
    assert (row.status, row.exit_code) == (ProcessStatus.EXITED, 4)


def test_process_machine_closes_a_row_whose_foreign_process_is_gone(popen):
    done = popen(["sleep", "30"])
    row = _foreign_row(done, ["sleep", "30"], marker="foreign-launch-marker")
    Process.objects.filter(pk=row.pk).update(retry_at=timezone.now())
    done.kill()
    done.wait()
    row = Process.objects.get(pk=row.pk)
    row.sm.tick()
    row = Process.objects.get(pk=row.pk)
    assert (row.status, row.exit_code) == (ProcessStatus.EXITED, 137)  # unknown, not a guessed 0
    assert row.stderr.endswith(UNKNOWN_EXIT_NOTE + "\n")


def test_process_machine_kill_event_ends_the_tree(make_process):
    process = make_process(["sleep", "30"])
    process.save()
    process.sm.tick()
    pid = process.pid
    process.sm.kill()
    wait_gone(pid)
    row = Process.objects.get(pk=process.pk)
    assert row.status == ProcessStatus.EXITED and row.exit_code in (143, 137)


def test_process_machine_without_cmd_stays_queued(make_process):
    process = make_process([])
    process.save()
    process.sm.tick()
    assert Process.objects.get(pk=process.pk).status == ProcessStatus.QUEUED


# -- 6. Secrets stay out of storage ----------------------------------------------------------------


SECRETS = {
    "API_TOKEN": "tok-9f8e7d6c",
    "AWS_SECRET_ACCESS_KEY": "aws-secret-1234",
    "DB_PASSWORD": "pw-hunter22",
    "SESSION_COOKIE": "cookie-abcdef",
}


CHILD = (
    "import hashlib, os, sys; "
    "keys = sys.argv[1:]; "
    "[print(k, hashlib.sha256(os.environ[k].encode()).hexdigest()) for k in keys]; "
    "[print(f'{k}={os.environ[k]}') for k in keys]; "
    "print(os.environ['PLAIN'], file=sys.stderr)"
)


def test_secrets_reach_the_child_but_not_the_db_cmd_sh_or_logs(make_process):
    process = make_process([sys.executable, "-c", CHILD, *SECRETS], env={**SECRETS, "PLAIN": "visible"})
    process.launch()
    assert process.exit_code == 0, process.stderr
    for key, value in SECRETS.items():  # the child saw the real value
        assert f"{key} {hashlib.sha256(value.encode()).hexdigest()}" in process.stdout
        assert f"{key}={process_utils.REDACTED}" in process.stdout  # and printing it left no trace
    stored_env, stored_out = Process.objects.filter(pk=process.pk).values_list("env", "stdout").get()
    stored = repr(stored_env) + stored_out + process.stdout_file.read_text() + process.cmd_file.read_text()
    for value in SECRETS.values():
        assert value not in stored
    assert stored_env["PLAIN"] == "visible" and stored_env["API_TOKEN"] == process_utils.REDACTED
    assert "visible" in process.stderr
    assert process.to_json()["env"]["DB_PASSWORD"] == process_utils.REDACTED


def test_cmd_sh_is_shlex_quoted_and_runnable(make_process, workdir):
    weird = 'it\'s a "file" $HOME; rm -rf /'
    process = make_process(["printf", "%s\n", weird])
    process.launch()
    assert process.stdout == weird + "\n"
    assert (
        process.cmd_file.read_text()
        .rstrip()
        .endswith("exec printf '%s\n' 'it'\"'\"'s a \"file\" $HOME; rm -rf /'")
    )
    rerun = subprocess.run(["sh", str(process.cmd_file)], capture_output=True, text=True, timeout=10)
    assert rerun.stdout == weird + "\n"


# -- 7. Bad input ----------------------------------------------------------------------------------


@pytest.mark.parametrize("cmd", ["echo hi", [], [""], ["echo", 3], None, [b"echo"]])
def test_bad_cmd_is_refused_before_anything_is_written(make_process, workdir, cmd):
    process = make_process(cmd)
    with pytest.raises(ProcessInputError, match="cmd"):
        process.launch()
    assert Process.objects.count() == 0
    assert list(workdir.iterdir()) == []


def test_missing_pwd_and_negative_timeout_are_refused(make_process, workdir):
    with pytest.raises(ProcessInputError, match="does not exist"):
        make_process(["true"], pwd=str(workdir / "missing")).launch()
    with pytest.raises(ProcessInputError, match="timeout"):
        make_process(["true"], timeout=-1).launch()
    assert Process.objects.count() == 0


def test_bad_input_leaves_a_queued_row_untouched(make_process):
    process = make_process(["true"], timeout=-5)
    process.save()
    with pytest.raises(ProcessInputError):
        process.launch(background=True)
    row = Process.objects.get(pk=process.pk)
    assert (row.status, row.pid, row.started_at) == (ProcessStatus.QUEUED, None, None)


def test_process_machine_records_a_row_it_cannot_launch(make_process, workdir):
    process = make_process(["true"], pwd=str(workdir / "missing"))
    process.save()
    process.sm.tick()  # one tick: the row is closed, in memory as in the database
    assert process.status == ProcessStatus.EXITED
    row = Process.objects.get(pk=process.pk)
    assert (row.status, row.exit_code, row.pid) == (ProcessStatus.EXITED, 126, None)
    assert "working directory does not exist" in row.stderr


def test_cleanup_handles_rows_without_pid_or_started_at():
    machine = Machine.current()
    Process.objects.create(machine=machine, cmd=["x"], status=ProcessStatus.RUNNING, pid=None)
    Process.objects.create(machine=machine, cmd=["x"], status=ProcessStatus.RUNNING, pid=os.getpid())
    assert Process.cleanup_stale_running() == 2
    assert Process.objects.running().count() == 0


# -- 8. Live rows stay live ------------------------------------------------------------------------


def test_a_long_running_registered_process_is_never_retired():
    me = Process.current()
    hours_ago = timezone.now() - timedelta(hours=5)
    Process.objects.filter(pk=me.pk).update(started_at=hours_ago, timeout=1)
    assert Process.cleanup_stale_running() == 0
    assert Process.objects.get(pk=me.pk).status == ProcessStatus.RUNNING


def test_a_live_hook_past_timeout_is_retired_without_being_killed(make_process):
    hook = make_process(["sleep", "30"], process_type=ProcessType.HOOK, timeout=1)
    hook.launch(background=True)
    Process.objects.filter(pk=hook.pk).update(started_at=timezone.now() - timedelta(minutes=5))
    assert Process.cleanup_stale_running() == 1
    assert Process.objects.get(pk=hook.pk).status == ProcessStatus.EXITED
    assert _alive(hook.pid)  # retired in the database only


def test_current_serves_one_row_for_the_whole_life(django_assert_num_queries):
    import machine.models as mm

    first = Process.current()
    with django_assert_num_queries(0):
        assert Process.current() is first
    first.__dict__["_checked_at"] = 0.0  # the recheck interval has passed
    Process.objects.filter(pk=first.pk).update(status=ProcessStatus.EXITED)  # someone closed it
    assert Process.current().pk == first.pk
    mm._CURRENT_PROCESS = None  # cache lost (e.g. module reset): found again, not re-inserted
    assert Process.current().pk == first.pk
    assert Process.objects.filter(pid=os.getpid()).count() == 1
    assert Process.objects.get(pk=first.pk).status == ProcessStatus.RUNNING


def test_current_creates_no_files_in_the_working_directory(tmp_path, monkeypatch):
    empty = tmp_path / "cwd"
    empty.mkdir()
    monkeypatch.chdir(empty)
    Process.current()
    assert list(empty.iterdir()) == []


# -- 9. Scale --------------------------------------------------------------------------------------


def _stale_rows(count: int) -> None:
    machine = Machine.current()
    now = timezone.now()
    Process.objects.bulk_create(
        Process(
            machine=machine,
            cmd=["sleep", "1"],
            pid=4_000_000 + i,  # above pid_max: never alive
            started_at=now,
            os_start_time=now.timestamp(),
            status=ProcessStatus.RUNNING,
            stdout="x" * 100,
        )
        for i in range(count)
    )


def test_cleanup_is_batched_and_keeps_the_live_row():
    me = Process.current()
    _stale_rows(1200)
    with CaptureQueriesContext(connection) as queries:
        assert Process.cleanup_stale_running() == 1200
    sql = [q["sql"] for q in queries.captured_queries]
    assert len(sql) <= 8, sql
    assert not any('"stdout"' in s for s in sql)
    assert Process.objects.get(pk=me.pk).status == ProcessStatus.RUNNING
    assert Process.objects.running().count() == 1


def test_get_by_pid_is_one_indexed_query(django_assert_num_queries):
    me = Process.current()
    _stale_rows(50)
    with django_assert_num_queries(1):
        assert Process.objects.get_by_pid(os.getpid()) == me


def test_get_by_pid_query_uses_the_machine_pid_status_index():
    if connection.vendor != "sqlite":
        pytest.skip("PostgreSQL's planner may prefer a sequential scan on a tiny test table")
    _stale_rows(200)
    machine = Machine.current()
    plan = Process.objects.filter(
        machine_id=machine.pk, pid=os.getpid(), status=ProcessStatus.RUNNING
    ).explain()
    assert "USING INDEX" in plan and "(machine_id=? AND pid=? AND status=?)" in plan, plan


@pytest.mark.django_db
def test_a_child_that_execs_into_another_program_is_still_ours_and_keeps_its_exit_code(tmp_path, monkeypatch):
    """`sh -c 'exec sleep ...'` (like a pyenv shim) changes argv and exe; the row must not be disowned."""
    from machine import process_utils
    from machine.models import Machine, Process

    process = Process.objects.create(
        machine=Machine.current(), cmd=["sh", "-c", "exec sleep 0.6; exit 4"], pwd=str(tmp_path), timeout=30
    )
    process.launch(background=True)
    time.sleep(0.3)  # sh has exec'd into sleep by now
    assert process.is_running and process.poll() is None
    # Another worker (no registry of our children) proves it through the launch marker instead.
    monkeypatch.setattr(process_utils, "_children", {})
    fresh = Process.objects.get(pk=process.pk)
    assert fresh.is_running and fresh.proc is not None
    monkeypatch.undo()
    assert process.wait(timeout=10) == 0  # the exec'd sleep's own exit status, not a guess
    assert Process.objects.get(pk=process.pk).exit_code == 0
