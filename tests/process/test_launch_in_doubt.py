"""Issue 10: a launcher killed between the spawn and recording it never makes its command run twice.

The launch runs in `manage.py shell` under tests/launch_fault_settings.py, which SIGKILLs that
process right after the spawn: the row stays queued. Before, the next tick launched it again.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import psutil
import pytest
from django.utils import timezone

from machine.choices import ProcessStatus
from machine.launch_doubt import INTERRUPTED_NOTE, SETTLE_AFTER, LaunchInDoubtError
from machine.models import Process
from machine.processes import UNKNOWN_EXIT_NOTE

from .conftest import run_manage, wait_gone

pytestmark = pytest.mark.django_db(transaction=True)


def _runs(path: Path) -> list[int]:
    """The pids that ran the command (each run appends its $$)."""
    return [int(line) for line in path.read_text().split()] if path.exists() else []


def _launch_and_die(row: Process, subprocess_env: dict, tmp_path: Path, *, wait: bool) -> None:
    """launch() the row in another process that is SIGKILLed right after the spawn (after the
    child ended when `wait`)."""
    flag = tmp_path / "launcher-died"
    env = {
        **subprocess_env,
        "DJANGO_SETTINGS_MODULE": "tests.launch_fault_settings",
        "TEST_DIE_AFTER_SPAWN": str(flag),
        "TEST_DIE_AFTER_SPAWN_WAIT": "1" if wait else "",
    }
    script = f"from machine.models import Process; Process.objects.get(pk='{row.pk}').launch(background=True)"
    result = run_manage("shell", "-c", script, env=env)
    assert result.returncode == -9 and flag.exists(), result.stderr


def _later(row: Process) -> Process:
    """The row as a look SETTLE_AFTER later finds it (its launcher cannot still be at it)."""
    marked = timezone.now() - SETTLE_AFTER - timedelta(seconds=1)
    Process.objects.filter(pk=row.pk).update(started_at=marked)
    return Process.objects.get(pk=row.pk)


def _gone(pid: int, timeout: float = 15) -> None:
    wait_gone(pid, timeout)


def _queued(make_process, runs: Path, script: str) -> Process:
    row = make_process(["sh", "-c", f"echo $$ >> {runs}; {script}"])
    row.save()
    return row


def test_a_tick_adopts_the_launch_whose_launcher_died_and_never_runs_it_again(
    make_process, subprocess_env, tmp_path
):
    runs = tmp_path / "runs"
    row = _queued(make_process, runs, "sleep 2; exit 5")
    _launch_and_die(row, subprocess_env, tmp_path, wait=False)
    row = Process.objects.get(pk=row.pk)
    assert (row.status, row.pid) == (ProcessStatus.QUEUED, None) and row.launch_marker  # in doubt
    (pid,) = _runs(runs)

    row = _later(row)
    row.sm.tick()
    row = Process.objects.get(pk=row.pk)
    assert (row.status, row.pid, row.exit_code) == (ProcessStatus.RUNNING, pid, None)
    assert row.os_start_time == pytest.approx(psutil.Process(pid).create_time(), abs=0.02)
    assert row.is_running

    _gone(pid)
    row.sm.tick()  # not our child: its status went to its real parent (unknown here)
    row = Process.objects.get(pk=row.pk)
    assert row.status == ProcessStatus.EXITED and row.exit_code in (5, 137)
    assert _runs(runs) == [pid]


@pytest.mark.parametrize("how", ["tick", "launch"])
def test_a_launch_whose_launcher_died_and_that_ended_is_closed_not_run_again(
    make_process, subprocess_env, tmp_path, how
):
    runs = tmp_path / "runs"
    row = _queued(make_process, runs, "echo out; exit 3")
    _launch_and_die(row, subprocess_env, tmp_path, wait=True)
    (pid,) = _runs(runs)
    _gone(pid)

    row = _later(row)
    if how == "tick":
        row.sm.tick()
    else:
        assert row.launch() is row  # (the contract's foreground launch: settles the doubt, returns)
    row = Process.objects.get(pk=row.pk)
    assert (row.status, row.exit_code, row.pid) == (ProcessStatus.EXITED, 137, None)
    assert row.stdout == "out\n"  # what it wrote before its launcher's death was recorded
    assert INTERRUPTED_NOTE in row.stderr and row.stderr.endswith(UNKNOWN_EXIT_NOTE + "\n")
    assert row.retry_at is None and row.ended_at is not None
    assert _runs(runs) == [pid]


def test_a_launch_in_doubt_marked_moments_ago_is_left_to_its_launcher(make_process, subprocess_env, tmp_path):
    """Its launcher may still be about to record it: a tick leaves it queued, launch() refuses."""
    runs = tmp_path / "runs"
    row = _queued(make_process, runs, "exit 0")
    _launch_and_die(row, subprocess_env, tmp_path, wait=True)
    row = Process.objects.get(pk=row.pk)
    row.sm.tick()
    with pytest.raises(LaunchInDoubtError):
        Process.objects.get(pk=row.pk).launch()
    row = Process.objects.get(pk=row.pk)
    assert (row.status, row.pid, row.exit_code) == (ProcessStatus.QUEUED, None, None) and row.launch_marker
    _later(Process.objects.get(pk=row.pk)).sm.tick()
    assert Process.objects.get(pk=row.pk).exit_code == 137
    assert len(_runs(runs)) == 1


def test_a_stale_instance_cannot_launch_a_row_another_launcher_marked(make_process, tmp_path):
    runs = tmp_path / "runs"
    row = _queued(make_process, runs, "exit 0")
    stale = Process.objects.get(pk=row.pk)
    Process.objects.filter(pk=row.pk).update(launch_marker="a" * 32)  # another launcher got there first
    with pytest.raises(LaunchInDoubtError):
        stale.launch(background=True)
    assert _runs(runs) == []
    assert Process.objects.get(pk=row.pk).status == ProcessStatus.QUEUED


def test_a_plain_launch_writes_its_marker_before_the_spawn(make_process, monkeypatch):
    """The marker is on the row (still queued) when the child starts, and it is the child's."""
    seen = {}
    real_spawn = __import__("machine.process_utils", fromlist=["spawn"]).spawn

    def spawn(*args, **kwargs):
        seen["row"] = Process.objects.values("status", "launch_marker", "pid").get(pk=row.pk)
        seen["marker"] = kwargs["marker"]
        return real_spawn(*args, **kwargs)

    monkeypatch.setattr("machine.process_utils.spawn", spawn)
    row = make_process(["true"])
    row.save()
    row.launch()
    assert seen["row"] == {"status": ProcessStatus.QUEUED, "launch_marker": seen["marker"], "pid": None}
    row = Process.objects.get(pk=row.pk)
    assert (row.status, row.exit_code, row.launch_marker) == (ProcessStatus.EXITED, 0, seen["marker"])
