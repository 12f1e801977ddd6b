"""Issue 10: the runner records exit facts as they happened (pidfd wake-ups, the launcher keeps its rows)."""

from __future__ import annotations

import pytest

from machine.models import Machine, Process

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
