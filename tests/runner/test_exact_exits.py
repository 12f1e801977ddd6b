"""Issue 10: the runner records exit facts as they happened (pidfd wake-ups, the launcher keeps its rows)."""

from __future__ import annotations

import time

import psutil
import pytest

from machine.models import Machine, Process

from .conftest import wait_for

pytestmark = pytest.mark.django_db(transaction=True)


def _queue(tmp_path, count: int, script: str) -> list[Process]:
    """`count` queued rows running `script` ({i} is the row's index)."""
    machine = Machine.current()
    rows = []
    for i in range(count):
        pwd = tmp_path / f"p{i}"
        pwd.mkdir()
        cmd = ["sh", "-c", script.format(i=i, pause=(i % 5) * 0.3)]
        rows.append(Process.objects.create(machine=machine, cmd=cmd, pwd=str(pwd), timeout=60))
    return rows


def test_ended_at_is_the_exit_time_not_the_next_poll(start_runner, tmp_path):
    """Before: a worker learnt of an exit at its next poll, a second later (`sleep 0.3` took 1 s)."""
    rows = _queue(tmp_path, 4, "sleep 0.3")
    runner = start_runner("--workers=1", "--until-idle", "--models=machine.Process")
    assert runner.wait(60) == 0, runner.output()
    for row in rows:
        row.refresh_from_db()
        assert (row.status, row.exit_code) == ("exited", 0)
        took = (row.ended_at - row.started_at).total_seconds()
        # (0.3 s of sleep; the margin is for a loaded machine, the old poll would give >= 1 s)
        assert 0.29 <= took < 0.8, f"recorded duration {took:.3f}s for a 0.3 s process"


def test_a_killed_workers_launches_keep_their_true_exit_codes(start_runner, tmp_path):
    """SIGKILL the worker while its children run: the orchestrator (their subreaper now) records them.

    Before: the orphans went to init, their exit status was lost, and their rows were closed as
    unknown (137 and a note) once abandoned.
    """
    rows = _queue(tmp_path, 3, "sleep 2; exit 7")
    runner = start_runner("--workers=1", "--models=machine.Process", "--poll=0.05", "--heartbeat=0.2")

    def launched():
        return all(row.pid for row in Process.objects.filter(pk__in=[r.pk for r in rows]))

    wait_for(launched, 30, "the three launches")
    worker = next(
        child for child in psutil.Process(runner.pid).children() if "--worker" in " ".join(child.cmdline())
    )
    worker.kill()
    try:
        wait_for(
            lambda: all(r.status == "exited" for r in Process.objects.filter(pk__in=[r.pk for r in rows])),
            60,
            "the rows to close",
        )
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{runner.output()[-6000:]}") from None
    for row in rows:
        row.refresh_from_db()
        assert (row.exit_code, row.stderr) == (7, ""), row.stderr
        assert 1.9 <= (row.ended_at - row.started_at).total_seconds() < 3.5


def test_a_gigabyte_of_output_under_the_runner_is_stored_bounded(start_runner, tmp_path):
    """Before: "string or blob too big" (SQLite) / NUL refused (PostgreSQL); the row stayed running
    for ever, retried every 5 minutes, and `--until-idle` never ended."""
    (row,) = _queue(tmp_path, 1, "head -c 1073741824 /dev/zero; echo done")
    runner = start_runner("--workers=1", "--until-idle", "--models=machine.Process", "--poll=0.05")
    assert runner.wait(180) == 0, runner.output()
    row.refresh_from_db()
    assert (row.status, row.exit_code) == ("exited", 0)
    assert row.stdout.endswith("\u2400done\n") and len(row.stdout.encode()) <= 3 * 1024 * 1024 + 200
    assert row.stdout_file.stat().st_size <= 16 * 1024 * 1024 + 2 * 4096 + 200


def test_a_runaway_log_is_capped_while_the_runner_watches(start_runner, tmp_path):
    """`yes` under the runner: its worker keeps the log within MACHINE_LOG_MAX_BYTES while it runs."""
    (row,) = _queue(tmp_path, 1, "yes")
    runner = start_runner("--workers=1", "--models=machine.Process", "--poll=0.05")
    wait_for(lambda: Process.objects.get(pk=row.pk).pid, 30, "the launch")
    row.refresh_from_db()
    sizes = []
    for _ in range(20):
        time.sleep(0.1)
        sizes.append(row.stdout_file.stat().st_size)
    assert row.kill_tree(graceful_timeout=0) >= 1
    # (16 MiB plus what `yes` writes between two checks, 0.2 s apart)
    assert max(sizes) < 16 * 1024 * 1024 + 600 * 1024 * 1024, sizes
    assert sizes[-1] < 16 * 1024 * 1024 + 600 * 1024 * 1024
    assert b"bytes cut: the log keeps its first and last" in row.stdout_file.read_bytes()[: 9 * 1024 * 1024]
    runner.signal(15)
    assert runner.wait(30) == 0
