"""Rows the runner tests drive: a Task that works for a while and writes one Effect.

Nothing here reaches into the library's internals: the models subclass ModelWithStateMachine, point
at state machines in statemachines.py, and link to machine.Process / machine.Machine like any
downstream app would.
"""

from __future__ import annotations

from django.db import models
from django.utils import timezone

from machine.models import Machine, rows_of_this_machine
from workers.models import ModelWithStateMachine


class TaskStatus(models.TextChoices):
    QUEUED = "queued", "Queued"  #: not done yet
    DONE = "done", "Done"  #: its Effect is written


class Task(ModelWithStateMachine):
    """A unit of work of one machine: a tick sleeps `work_seconds`, then writes one Effect row."""

    StatusChoices = TaskStatus
    active_state = TaskStatus.QUEUED  # (no separate working state: a tick works while queued)

    machine = models.ForeignKey(Machine, on_delete=models.CASCADE, related_name="+")
    name = models.CharField(max_length=63)
    work_seconds = models.FloatField(default=0.0)
    #: Ticks that began working on this task (committed before the work, so a killed tick counts too).
    attempts = models.PositiveIntegerField(default=0)

    status = ModelWithStateMachine.StatusField(choices=TaskStatus.choices, default=TaskStatus.QUEUED)
    retry_at = ModelWithStateMachine.RetryAtField(default=timezone.now)

    state_machine_name = "tests.exampleapp.statemachines.TaskMachine"

    @classmethod
    def claim_filter(cls) -> models.Q:
        """A task is done by a runner of its own machine."""
        return rows_of_this_machine()

    def __str__(self) -> str:
        return f"Task[{self.pk}] {self.name} ({self.status})"


class Effect(models.Model):
    """The side effect of a Task: written in the same transaction that marks the task done."""

    task = models.ForeignKey(Task, on_delete=models.CASCADE, related_name="effects")
    pid = models.IntegerField()
    created_at = models.DateTimeField(default=timezone.now)


class NoopStatus(models.TextChoices):
    QUEUED = "queued", "Queued"  #: not ticked yet
    DONE = "done", "Done"  #: ticked once


class Noop(ModelWithStateMachine):
    """A row whose one tick does nothing but record that it happened: what the runner itself costs.

    Not bound to a machine (any runner may tick it), so it also stands for a downstream app's shared rows.
    """

    StatusChoices = NoopStatus
    active_state = NoopStatus.QUEUED

    modified_at = models.DateTimeField(auto_now=True)
    status = ModelWithStateMachine.StatusField(choices=NoopStatus.choices, default=NoopStatus.QUEUED)
    retry_at = ModelWithStateMachine.RetryAtField(default=timezone.now)

    state_machine_name = "tests.exampleapp.statemachines.NoopMachine"


class ProbeMode(models.TextChoices):
    SLEEP = "sleep", "sleep"  #: sleep work_seconds (releases the GIL)
    GIL = (
        "gil",
        "hold the GIL",
    )  #: a regular expression that backtracks for about work_seconds, holding the GIL
    FAIL = "fail", "raise"  #: raise ValueError
    FAIL_RESCHEDULE = "fail_reschedule", "reschedule, then raise"  #: ask to be due now, then raise
    KILL = "kill", "SIGKILL its worker"  #: the tick kills the process running it (as an OOM kill would)
    CHILD = "child", "start a child, then sleep"  #: start `sleep 600` in the background, then sleep


class Probe(ModelWithStateMachine):
    """A row for the fault-injection tests: each tick is logged (ProbeTick) and its result is one
    ProbeResult committed with the state change in a fenced transaction, so lost, duplicated and
    concurrent ticks can be counted exactly."""

    StatusChoices = NoopStatus
    active_state = NoopStatus.QUEUED

    mode = models.CharField(max_length=16, choices=ProbeMode.choices, default=ProbeMode.SLEEP)
    work_seconds = models.FloatField(default=0.0)
    status = ModelWithStateMachine.StatusField(choices=NoopStatus.choices, default=NoopStatus.QUEUED)
    retry_at = ModelWithStateMachine.RetryAtField(default=timezone.now)

    state_machine_name = "tests.exampleapp.statemachines.ProbeMachine"


class ProbeTick(models.Model):
    """One tick of a Probe: when it began and ended by the database's clock, and whether its result committed."""

    probe = models.ForeignKey(Probe, on_delete=models.CASCADE, related_name="ticks")
    pid = models.IntegerField()
    started_at = models.DateTimeField()
    ended_at = models.DateTimeField(null=True)
    committed = models.BooleanField(default=False)


class ProbeResult(models.Model):
    """The side effect of a Probe's tick, written in the same fenced transaction as its final state."""

    probe = models.ForeignKey(Probe, on_delete=models.CASCADE, related_name="results")
    pid = models.IntegerField()
