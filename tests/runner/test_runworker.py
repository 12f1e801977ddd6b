"""The runner with real worker processes: exactly-once ticking, claim renewal, signals and crashes."""

from __future__ import annotations

import io
import json
import signal
import time
from datetime import timedelta

import psutil
import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.utils import timezone

from machine.models import Process
from tests.exampleapp.models import Effect, Task
from tests.runner.conftest import wait_for
from tests.runner.factories import make_tasks
from workers.models import TickFailure

pytestmark = pytest.mark.django_db(transaction=True)

RUNNER_TYPES = ["orchestrator", "worker"]


def runner_rows():
    return Process.objects.filter(process_type__in=RUNNER_TYPES)


def effects_per_task() -> dict[int, int]:
    counts = {task.pk: 0 for task in Task.objects.all()}
    for task_id in Effect.objects.values_list("task_id", flat=True):
        counts[task_id] += 1
    return counts


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def test_four_workers_tick_every_row_exactly_once_and_register_themselves(start_runner):
    make_tasks(300, work_seconds=0.002)
    # Due once all four workers are up, so they race for the same rows.
    Task.objects.update(retry_at=timezone.now() + timedelta(seconds=4))

    runner = start_runner("--workers=4", "--until-idle", "--batch=5", "--poll=0.05")
    assert runner.wait(90) == 0, runner.output()

    assert set(Task.objects.values_list("status", flat=True)) == {"done"}
    assert set(Task.objects.values_list("attempts", flat=True)) == {1}  # no tick ran twice
    assert set(effects_per_task().values()) == {1}
    orchestrator = runner_rows().get(process_type="orchestrator")
    workers = list(runner_rows().filter(process_type="worker"))
    assert orchestrator.pid == runner.pid and orchestrator.parent_id is None
    assert len(workers) == 4
    assert {w.parent_id for w in workers} == {orchestrator.pk}
    assert {w.status for w in [orchestrator, *workers]} == {"exited"}
    assert {w.exit_code for w in [orchestrator, *workers]} == {0}
    # The work really was shared: effects were written by more than one worker process.
    assert len(set(Effect.objects.values_list("pid", flat=True))) > 1
    assert set(Effect.objects.values_list("pid", flat=True)) <= {w.pid for w in workers}


def test_a_claim_is_renewed_while_a_long_tick_runs(start_runner):
    # Work takes 3 s, a claim 1 s: without renewal the idle worker would take the row after 1 s.
    (task,) = make_tasks(1, work_seconds=3.0)

    runner = start_runner("--workers=2", "--until-idle", "--lock-seconds=1", "--poll=0.05", "--heartbeat=0.1")
    wait_for(lambda: Task.objects.filter(attempts=1).exists(), 30, "the tick to start")
    wait_for(lambda: runner_rows().filter(process_type="worker").count() == 2, 10, "both workers")
    # The busy worker's row beats while it works (modified_at moves on, status stays running).
    first_beats = dict(runner_rows().filter(process_type="worker").values_list("pk", "modified_at"))
    busy = wait_for(
        lambda: [
            row
            for row in runner_rows().filter(process_type="worker", status="running")
            if row.modified_at > first_beats[row.pk] + timedelta(milliseconds=500)
        ],
        5,
        "heartbeats",
    )
    assert busy
    assert runner.wait(60) == 0, runner.output()

    task.refresh_from_db()
    assert task.status == "done"
    assert task.attempts == 1
    assert Effect.objects.filter(task=task).count() == 1


def test_sigterm_lets_the_tick_in_flight_finish_and_hands_the_rest_back(start_runner):
    make_tasks(10, work_seconds=1.0)

    runner = start_runner("--workers=1", "--batch=10", "--grace=20", "--poll=0.1")
    wait_for(lambda: Task.objects.filter(attempts=1).exists(), 30, "a tick to start")
    # `ps` shows the runner while it works: the orchestrator and its worker, parent-linked.
    out = io.StringIO()
    call_command("ps", "--json", stdout=out)
    shown = {r["process_type"]: r for r in map(json.loads, out.getvalue().splitlines())}
    assert shown["orchestrator"]["pid"] == runner.pid
    assert shown["worker"]["parent_id"] == shown["orchestrator"]["id"]
    runner.signal(signal.SIGTERM)
    assert runner.wait(30) == 0, runner.output()

    done = Task.objects.filter(status="done")
    assert done.count() >= 1  # the tick in flight finished within the grace period
    assert set(done.values_list("attempts", flat=True)) == {1}
    queued = Task.objects.filter(status="queued")
    assert queued.count() >= 1
    # The rest of the claimed batch is back in the queue, due now, not left to expire.
    assert all(t.retry_at <= timezone.now() for t in queued)
    assert not Effect.objects.filter(task__status="queued").exists()
    assert set(runner_rows().values_list("status", flat=True)) == {"exited"}
    for row in runner_rows():
        assert not alive(row.pid)


def test_sigterm_past_the_grace_period_interrupts_the_tick_and_requeues_its_row(start_runner):
    (task,) = make_tasks(1, work_seconds=60.0)

    runner = start_runner("--workers=1", "--grace=1", "--poll=0.1")
    wait_for(lambda: Task.objects.filter(attempts=1).exists(), 30, "the tick to start")
    began = time.monotonic()
    runner.signal(signal.SIGTERM)
    assert runner.wait(30) == 0, runner.output()
    assert time.monotonic() - began < 10

    task.refresh_from_db()
    assert task.status == "queued"
    assert task.retry_at <= timezone.now()  # handed back, not left claimed for 60 s
    assert not Effect.objects.exists()
    assert set(runner_rows().values_list("status", flat=True)) == {"exited"}


def test_a_second_signal_exits_at_once(start_runner):
    make_tasks(1, work_seconds=60.0)

    runner = start_runner("--workers=1", "--grace=50", "--poll=0.1")
    wait_for(lambda: Task.objects.filter(attempts=1).exists(), 30, "the tick to start")
    worker_pid = runner_rows().get(process_type="worker").pid
    began = time.monotonic()
    runner.signal(signal.SIGINT)
    time.sleep(0.3)
    runner.signal(signal.SIGINT)
    assert runner.wait(30) == 128 + signal.SIGINT, runner.output()
    assert time.monotonic() - began < 8  # far less than the 50 s grace period
    wait_for(lambda: not alive(worker_pid), 5, "the worker to be gone")
    assert set(runner_rows().values_list("status", flat=True)) == {"exited"}


def test_a_sigkilled_worker_is_replaced_its_row_counts_a_failure_and_the_rest_is_handed_back(start_runner):
    make_tasks(4, work_seconds=1.0)

    env = {"WORKERS_RETRY_BASE": "120"}
    runner = start_runner(
        "--workers=1", "--until-idle", "--lock-seconds=30", "--batch=4", "--poll=0.1", env=env
    )
    wait_for(lambda: Task.objects.filter(attempts=1).exists(), 30, "a tick to start")
    victim = runner_rows().get(process_type="worker")
    killed_task = Task.objects.get(attempts=1)
    psutil.Process(victim.pid).send_signal(signal.SIGKILL)
    began = time.monotonic()
    assert runner.wait(60) == 0, runner.output()
    # The other three were handed back at once (not after the 30 s claim) and done by the replacement.
    assert time.monotonic() - began < 20
    assert Task.objects.filter(status="done").count() == 3
    killed_task.refresh_from_db()
    assert killed_task.status == "queued"  # backing off: the killed tick counts as a failure of its row
    failure = TickFailure.objects.get(model="exampleapp.Task", object_id=str(killed_task.pk))
    assert failure.attempts == 1 and "SIGKILL" in failure.error
    assert f"exampleapp.Task {killed_task.pk}" in runner.output()  # listed as waiting for a retry
    victim.refresh_from_db()
    assert (victim.status, victim.exit_code) == ("exited", 128 + signal.SIGKILL)
    replacement = runner_rows().filter(process_type="worker").exclude(pk=victim.pk).get()
    assert replacement.parent_id == victim.parent_id

    out = io.StringIO()
    call_command("requeue", "--all", stdout=out)  # (it is not parked: --all takes rows backing off too)
    assert out.getvalue().strip() == "Re-queued 1 row(s)"
    again = start_runner("--workers=1", "--until-idle", "--poll=0.1", env=env)
    assert again.wait(60) == 0, again.output()
    assert set(Task.objects.values_list("status", flat=True)) == {"done"}
    assert set(effects_per_task().values()) == {1}  # nothing lost, nothing done twice
    assert Task.objects.get(pk=killed_task.pk).attempts == 2
    assert not TickFailure.objects.exists()  # a clean tick forgets the failure


def test_a_restarted_runner_closes_stale_rows_and_finishes_the_work_of_a_killed_one(start_runner):
    make_tasks(6, work_seconds=1.0)

    first = start_runner("--workers=2", "--lock-seconds=2", "--batch=3", "--poll=0.1")
    wait_for(lambda: Task.objects.filter(attempts=1).count() >= 2, 30, "two ticks to start")
    stale = list(runner_rows())
    for row in stale:
        psutil.Process(row.pid).send_signal(signal.SIGKILL)
    first.wait(10)
    assert {row.status for row in runner_rows()} == {"running"}  # nobody could close them

    second = start_runner("--workers=2", "--until-idle", "--lock-seconds=2", "--poll=0.1")
    assert second.wait(60) == 0, second.output()

    for row in stale:
        row.refresh_from_db()
        assert (row.status, row.exit_code) == ("exited", 137)
    assert set(Task.objects.values_list("status", flat=True)) == {"done"}
    assert set(effects_per_task().values()) == {1}
    assert Task.objects.filter(attempts=2).count() >= 2  # the killed ticks ran again, once


def test_models_option_restricts_the_queues():
    with pytest.raises(CommandError, match="unknown state-machine model 'nosuch.Model'"):
        call_command("runworker", "--models=nosuch.Model", "--until-idle")


@pytest.mark.parametrize("arg", ["--workers=0", "--poll=0", "--batch=x", "--grace=-1"])
def test_bad_options_are_clear_errors(arg):
    with pytest.raises(CommandError):
        call_command("runworker", arg)


def test_until_idle_waits_for_the_processes_its_workers_launched_and_records_their_exit_codes(
    start_runner, tmp_path
):
    from machine.models import Machine

    machine = Machine.current()
    rows = []
    for i in range(3):
        pwd = tmp_path / f"p{i}"
        pwd.mkdir()
        rows.append(
            Process.objects.create(
                machine=machine, cmd=["sh", "-c", "sleep 1.5; exit 3"], pwd=str(pwd), timeout=30
            )
        )

    runner = start_runner("--workers=2", "--until-idle", "--poll=0.05", "--models=machine.Process")
    assert runner.wait(60) == 0, runner.output()

    for row in rows:
        row.refresh_from_db()
        # Polled and reaped by the worker that launched it (only it can learn the exit code).
        assert (row.status, row.exit_code) == ("exited", 3)
