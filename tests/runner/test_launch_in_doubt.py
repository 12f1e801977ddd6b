"""Issue 10: a worker SIGKILLed between a spawn and its record: the orchestrator settles the launch.

The workers run under tests/launch_fault_settings.py: the first spawn kills its worker right away.
Before, the row stayed queued, counted a failure and was launched a second time on its retry.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from machine.launch_doubt import INTERRUPTED_NOTE
from machine.models import Machine, Process
from machine.processes import UNKNOWN_EXIT_NOTE

from .conftest import wait_for

pytestmark = pytest.mark.django_db(transaction=True)


def _runs(path: Path) -> list[int]:
    return [int(line) for line in path.read_text().split()] if path.exists() else []


def _run_with_a_worker_killed_after_its_spawn(start_runner, tmp_path, script: str, *, wait: bool) -> Process:
    runs = tmp_path / "runs"
    pwd = tmp_path / "p"
    pwd.mkdir()
    row = Process.objects.create(
        machine=Machine.current(), cmd=["sh", "-c", f"echo $$ >> {runs}; {script}"], pwd=str(pwd), timeout=60
    )
    flag = tmp_path / "worker-died"
    env = {
        "DJANGO_SETTINGS_MODULE": "tests.launch_fault_settings",
        "TEST_DIE_AFTER_SPAWN": str(flag),
        "TEST_DIE_AFTER_SPAWN_WAIT": "1" if wait else "",
        "WORKERS_RETRY_BASE": "0.1",  # (before: the failed row came back at once, and ran again)
    }
    runner = start_runner(
        "--workers=1", "--models=machine.Process", "--poll=0.05", "--heartbeat=0.2", env=env
    )
    try:
        wait_for(lambda: Process.objects.get(pk=row.pk).status == "exited", 60, "the row to close")
        wait_for(flag.exists, 5, "the worker's death")
        time.sleep(1.5)  # a relaunch (the bug) would be due within a second: give it the time to show
        assert runner.popen.poll() is None
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{runner.output()[-6000:]}") from None
    runner.signal(15)
    assert runner.wait(30) == 0, runner.output()[-6000:]
    row.refresh_from_db()
    row.runs = _runs(runs)
    return row


def test_the_orchestrator_adopts_the_running_launch_of_a_worker_killed_before_recording_it(
    start_runner, tmp_path
):
    row = _run_with_a_worker_killed_after_its_spawn(start_runner, tmp_path, "sleep 1.5; exit 7", wait=False)
    assert len(row.runs) == 1, row.runs
    # Adopted as running; the orchestrator (its subreaper) recorded its true exit code.
    assert (row.status, row.pid, row.exit_code, row.stderr) == ("exited", row.runs[0], 7, "")
    assert 1.4 <= (row.ended_at - row.started_at).total_seconds() < 4


def test_the_orchestrator_closes_the_ended_launch_of_a_worker_killed_before_recording_it(
    start_runner, tmp_path
):
    row = _run_with_a_worker_killed_after_its_spawn(start_runner, tmp_path, "exit 3", wait=True)
    assert len(row.runs) == 1, row.runs
    assert (row.status, row.pid, row.exit_code) == ("exited", None, 137)  # may have run: not run again
    assert INTERRUPTED_NOTE in row.stderr and row.stderr.endswith(UNKNOWN_EXIT_NOTE + "\n")
