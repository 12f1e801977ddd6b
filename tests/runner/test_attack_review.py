"""Adversarial review (attack branch): short leases, exact codes, at-most-once."""

from __future__ import annotations

import collections
import time

import pytest

from machine.models import Machine, Process

from .conftest import wait_for

pytestmark = pytest.mark.django_db(transaction=True)


def _queue(tmp_path, count, script):
    machine = Machine.current()
    runs = tmp_path / "runs"
    rows = []
    for i in range(count):
        pwd = tmp_path / f"p{i}"
        pwd.mkdir()
        rows.append(
            Process.objects.create(
                machine=machine, cmd=["sh", "-c", f"echo {i} >> {runs}; {script}"], pwd=str(pwd), timeout=60
            )
        )
    return rows, runs


def _summary(rows, runs):
    got = list(Process.objects.filter(pk__in=[r.pk for r in rows]).values_list("status", "exit_code"))
    launched = collections.Counter(runs.read_text().split()) if runs.exists() else {}
    return collections.Counter(got), {k: v for k, v in launched.items() if v > 1}, len(launched)


@pytest.mark.parametrize("script", ["sleep 0.3; exit 3", "sleep 2.5; exit 3"])
@pytest.mark.parametrize("lock", ["0.3", "1.5"])
def test_short_lease_keeps_exact_codes_and_runs_once(start_runner, tmp_path, lock, script):
    rows, runs = _queue(tmp_path, 30, script)
    runner = start_runner(
        "--workers=2", "--models=machine.Process", "--poll=0.05", f"--lock-seconds={lock}", "--heartbeat=0.1"
    )
    try:
        wait_for(
            lambda: not Process.objects.filter(pk__in=[r.pk for r in rows]).exclude(status="exited").exists(),
            90,
            "all rows exited",
        )
    finally:
        time.sleep(2)
        summary = _summary(rows, runs)
        print(lock, summary)
        out = runner.output()
    assert summary[0] == {("exited", 3): 30} and not summary[1] and summary[2] == 30, (summary, out[-5000:])


def test_a_tick_that_adopts_a_launch_in_doubt_keeps_following_it(start_runner, subprocess_env, tmp_path):
    """A queued row in doubt (its launcher, a `manage.py shell`, was SIGKILLed after the spawn), older
    than SETTLE_AFTER, is ticked by a runner: the tick adopts the live process. _adopt() writes retry_at
    through the claim guard, which replaces the claim's token: the worker's follow-up renewal then
    finds its claim gone, and nobody polls the row until LAUNCHER_ABANDONED_AFTER (60 s)."""
    from tests.process.test_launch_in_doubt import _later, _launch_and_die, _runs

    runs = tmp_path / "runs"
    pwd = tmp_path / "w"
    pwd.mkdir()
    row = Process.objects.create(
        machine=Machine.current(),
        cmd=["sh", "-c", f"echo $$ >> {runs}; sleep 5; exit 5"],
        pwd=str(pwd),
        timeout=60,
    )
    _launch_and_die(row, subprocess_env, tmp_path, wait=False)
    (pid,) = _runs(runs)
    _later(Process.objects.get(pk=row.pk))
    runner = start_runner("--workers=1", "--models=machine.Process", "--poll=0.05", "--heartbeat=0.2")
    try:
        wait_for(lambda: Process.objects.get(pk=row.pk).status == "running", 20, "the adoption")
        t0 = time.monotonic()
        wait_for(lambda: Process.objects.get(pk=row.pk).status == "exited", 30, "the adopted row to close")
        took = time.monotonic() - t0
    finally:
        out = runner.output()
    row = Process.objects.get(pk=row.pk)
    assert took < 9 and "claim lost" not in out, (took, row.exit_code, out[-3000:])


def test_run_hook_rows_are_not_raced_by_a_runner(start_runner, tmp_path):
    """run_hook() creates its row QUEUED and due now, then launches it itself: a runner driving
    machine.Process can claim the same row in between. Each hook must run exactly once, by run_hook,
    and run_hook must report the hook's own exit code."""
    from machine.hook_runs import run_hook

    runs = tmp_path / "runs"
    hook = tmp_path / "on_Test__10_probe.sh"
    hook.write_text(f"#!/bin/sh\necho $$ >> {runs}\nsleep 0.2\nexit 3\n")
    hook.chmod(0o755)
    runner = start_runner("--workers=2", "--models=machine.Process", "--poll=0.01", "--heartbeat=0.2")
    time.sleep(3)
    results = []
    for i in range(40):
        process = run_hook(hook, tmp_path / f"out{i}", timeout=30)
        results.append((process.pk, process.exit_code, process.stderr[-200:]))
    time.sleep(2)
    out = runner.output()
    final = dict(Process.objects.filter(pk__in=[r[0] for r in results]).values_list("pk", "exit_code"))
    bad = [r for r in results if r[1] != 3 or final[r[0]] != 3]
    nruns = len(runs.read_text().split())
    assert not bad and nruns == 40, (nruns, bad[:5], out[-3000:])


def test_run_hook_when_the_runner_wins_the_race(start_runner, tmp_path, monkeypatch):
    """As above, with run_hook's own launch a little slower (a busy host: 0.3 s before its mark) so
    that the runner, woken by the row's creation, marks it first. run_hook must not then record the
    hook as 'could not be run' over the row the runner is running, nor run it a second time."""
    from machine import launch_doubt
    from machine.hook_runs import run_hook

    real = launch_doubt.mark_launching

    def slow_mark(process):
        time.sleep(0.3)
        return real(process)

    monkeypatch.setattr(launch_doubt, "mark_launching", slow_mark)
    runs = tmp_path / "runs"
    hook = tmp_path / "on_Test__10_probe.sh"
    hook.write_text(f"#!/bin/sh\necho $$ >> {runs}\nsleep 1\nexit 3\n")
    hook.chmod(0o755)
    start_runner("--workers=2", "--models=machine.Process", "--poll=0.01", "--heartbeat=0.2")
    time.sleep(3)
    process = run_hook(hook, tmp_path / "out", timeout=30)
    seen = (process.status, process.exit_code, process.stderr)
    time.sleep(3)
    row = Process.objects.get(pk=process.pk)
    nruns = len(runs.read_text().split()) if runs.exists() else 0
    assert seen[1] == 3 and row.exit_code == 3 and nruns == 1, (seen, row.exit_code, row.stderr, nruns)
