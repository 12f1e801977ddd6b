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
