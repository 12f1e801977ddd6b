"""Issue 10: detached descendants end with their tree; rows of Process.current() close at exit."""

from __future__ import annotations

import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from django.utils import timezone

from machine import process_utils
from machine.choices import ProcessStatus
from machine.models import Machine, Process

from .conftest import ROOT, run_manage

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(
        sys.platform != "linux" or not (shutil.which("setsid") and shutil.which("env")),
        reason="needs Linux with setsid(1) and env(1)",
    ),
]

SETSID, ENV, SH, SLEEP = (shutil.which(name) for name in ("setsid", "env", "sh", "sleep"))


def _daemon(pidfile: Path, *, clean_env: bool = False, double_fork: bool = False) -> str:
    """Shell text that starts a detached `sleep 1000` (its pid in pidfile) and waits until it is up."""
    inner = f"echo $$ > {pidfile}; exec {SLEEP} 1000"
    start = f"{SETSID} {SH} -c {shlex.quote(inner)}"
    if clean_env:  # no MACHINE_PROCESS_MARKER: no environ scan can find it
        start = f"{ENV} -i {start}"
    # From a subshell that exits at once, it is no longer in the tree even while the tree runs.
    start = f"( {start} & )" if double_fork else f"{start} &"
    return f"{start}\nwhile [ ! -s {pidfile} ]; do sleep 0.01; done"


def _survivor(pidfile: Path, since: float, timeout: float = 3.0) -> psutil.Process | None:
    """The daemon named in pidfile if it still runs after `timeout` seconds (zombies do not count)."""
    pid = int(pidfile.read_text())
    deadline = time.monotonic() + timeout
    while True:
        try:
            proc = psutil.Process(pid)
            if proc.create_time() < since - 1 or proc.cmdline() != [SLEEP, "1000"]:
                return None  # (its pid went to another process)
            if proc.status() == psutil.STATUS_ZOMBIE:
                return None
        except psutil.Error:
            return None
        if time.monotonic() >= deadline:
            return proc
        time.sleep(0.05)


def _kill(proc: psutil.Process | None) -> None:
    if proc is not None:
        try:
            proc.kill()
        except psutil.Error:
            pass


def _cli_rows(last_arg: str) -> list[Process]:
    return [row for row in Process.objects.filter(process_type="cli") if row.cmd[-1:] == [last_arg]]


@pytest.fixture
def pidfile(tmp_path) -> Path:
    return tmp_path / "daemon.pid"


def test_run_setsid_daemon_ends_with_the_tree(subprocess_env, pidfile):
    since = process_utils.start_clock_now()
    done = run_manage("run", "--", "sh", "-c", _daemon(pidfile), env=subprocess_env)
    survivor = _survivor(pidfile, since)
    try:
        assert done.returncode == 0, done.stderr
        assert survivor is None, f"setsid daemon {survivor.pid} outlived `run`"
    finally:
        _kill(survivor)


@pytest.mark.parametrize("timeout", [0, 2], ids=["normal-exit", "timeout-kill"])
def test_run_env_i_daemon_ends_with_the_tree(subprocess_env, pidfile, timeout):
    script = _daemon(pidfile, clean_env=True, double_fork=True) + ("\nsleep 30" if timeout else "")
    since = process_utils.start_clock_now()
    done = run_manage("run", "--timeout", str(timeout), "--", "sh", "-c", script, env=subprocess_env)
    survivor = _survivor(pidfile, since)
    try:
        assert done.returncode == (137 if timeout else 0), done.stderr
        assert survivor is None, f"env -i setsid daemon {survivor.pid} outlived `run`"
        (row,) = Process.objects.filter(cmd=["sh", "-c", script])
        assert row.status == ProcessStatus.EXITED and row.exit_code == done.returncode
    finally:
        _kill(survivor)


@pytest.mark.parametrize("background", [False, True], ids=["foreground", "background+wait"])
def test_launch_leaves_no_setsid_daemon(make_process, pidfile, background):
    since = process_utils.start_clock_now()
    process = make_process(["sh", "-c", _daemon(pidfile)], timeout=30)
    process.launch(background=background)
    if background:
        assert process.wait(timeout=10) == 0
    survivor = _survivor(pidfile, since, timeout=0)
    try:
        assert process.exit_code == 0
        assert survivor is None, f"setsid daemon {survivor.pid} outlived its launch"
    finally:
        _kill(survivor)


def test_leftovers_are_left_alone_while_the_main_process_runs(make_process, pidfile):
    process = make_process(["sh", "-c", _daemon(pidfile) + "\nsleep 30"])
    process.launch(background=True)
    since = process_utils.start_clock_now() - 5
    deadline = time.monotonic() + 10
    while not pidfile.exists() or not pidfile.read_text().strip():
        assert time.monotonic() < deadline, "the daemon did not start"
        time.sleep(0.02)
    try:
        # Its tree is not over yet: nothing is killed, whoever closes the row meanwhile.
        assert process_utils.end_leftovers(process.launch_marker) == 0
        assert _survivor(pidfile, since, timeout=0) is not None
        process.kill_tree(graceful_timeout=0)
        assert _survivor(pidfile, since, timeout=0) is None
    finally:
        _kill(_survivor(pidfile, since, timeout=0))


def test_runs_leave_no_running_cli_rows(subprocess_env):
    for _ in range(5):
        assert run_manage("run", "--", "true", env=subprocess_env).returncode == 0
    rows = _cli_rows("true")
    assert len(rows) == 5
    assert {(row.status, row.exit_code) for row in rows} == {(ProcessStatus.EXITED, 0)}
    assert all(row.ended_at is not None for row in rows)


def test_cli_row_closes_with_the_exit_code_of_run(subprocess_env):
    done = run_manage("run", "--", "sh", "-c", "exit 3", env=subprocess_env)
    assert done.returncode == 3
    (cli,) = _cli_rows("exit 3")
    assert (cli.status, cli.exit_code) == (ProcessStatus.EXITED, 3)
    (child,) = Process.objects.filter(parent=cli)
    assert child.exit_code == 3


def test_cli_row_of_an_unhandled_exception_closes_with_1(subprocess_env):
    code = (
        "import django; django.setup()\n"
        "from machine.models import Process\n"
        "Process.current()\n"
        "raise RuntimeError('boom')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, "manage.py-marker"], env=subprocess_env, capture_output=True, text=True
    )
    assert done.returncode == 1 and "boom" in done.stderr
    (row,) = _cli_rows("manage.py-marker")
    assert (row.status, row.exit_code) == (ProcessStatus.EXITED, 1)


def test_a_database_gone_at_exit_gives_one_warning_and_no_traceback(subprocess_env, tmp_path):
    code = (
        "import sys, django; django.setup()\n"
        "from django.db import connection\n"
        "from machine.models import Process\n"
        "Process.current()\n"
        "connection.close()\n"
        f"connection.settings_dict['NAME'] = {str(tmp_path / 'gone' / 'db')!r}\n"
        "sys.exit(4)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, "manage.py-gone"], env=subprocess_env, capture_output=True, text=True
    )
    assert done.returncode == 4
    assert "Traceback" not in done.stderr
    assert done.stderr.count("could not close Process") == 1, done.stderr
    (row,) = _cli_rows("manage.py-gone")
    assert row.status == ProcessStatus.RUNNING  # (nothing could be written: the next look closes it)
    row.delete()


def test_runner_ends_an_adopted_env_i_daemon_once_its_tree_is_over(
    subprocess_env, pidfile, workdir, tmp_path
):
    script = _daemon(pidfile, clean_env=True, double_fork=True)
    row = Process.objects.create(
        machine=Machine.current(),
        cmd=["sh", "-c", script],
        pwd=str(workdir),
        status=ProcessStatus.QUEUED,
        retry_at=timezone.now(),
    )
    since = process_utils.start_clock_now()
    log = tmp_path / "runner.log"
    with open(log, "wb") as out:
        runner = subprocess.Popen(
            [sys.executable, str(ROOT / "manage.py"), "runworker", "--models=machine.Process", "--workers=1",
             "--poll=0.05", "--heartbeat=0.2"],
            env=subprocess_env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    survivor = None
    try:
        deadline = time.monotonic() + 30
        while not pidfile.exists() or not pidfile.read_text().strip():
            assert runner.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        # While the runner runs on: its heartbeat ends the orphan once the row has exited.
        survivor = _survivor(pidfile, since, timeout=10)
        assert survivor is None, f"env -i daemon {survivor.pid} outlived its tree under the runner"
        assert runner.poll() is None
        row.refresh_from_db()
        assert (row.status, row.exit_code) == (ProcessStatus.EXITED, 0)
    finally:
        _kill(survivor)
        runner.send_signal(signal.SIGTERM)
        try:
            runner.wait(30)
        except subprocess.TimeoutExpired:
            runner.kill()
            runner.wait()
