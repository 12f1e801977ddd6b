"""The example archiver's rows: an ArchiveResult that runs its work as a Process, and a plain Task.

Nothing here reaches into the library's internals: the models subclass ModelWithStateMachine, point
at state machines in statemachines.py, and link to machine.Process / machine.Machine like any
downstream app would.
"""

from __future__ import annotations

from django.db import models
from django.utils import timezone

from machine.models import Machine, Process
from workers.models import ModelWithStateMachine


class ArchiveResultStatus(models.TextChoices):
    QUEUED = "queued", "Queued"  #: waiting for a worker to queue its Process
    STARTED = "started", "Started"  #: its Process is queued or running
    SUCCEEDED = "succeeded", "Succeeded"  #: the Process exited 0
    FAILED = "failed", "Failed"  #: the Process exited non-zero


class ArchiveResult(ModelWithStateMachine):
    """One plugin run for one URL; the work is a machine.Process the runner launches and polls."""

    StatusChoices = ArchiveResultStatus

    url = models.CharField(max_length=2048)
    plugin = models.CharField(max_length=63)
    hook_name = models.CharField(max_length=255, blank=True, default="")
    #: The command the Process runs; `{url}` is replaced by the URL.
    cmd = models.JSONField(default=list)
    process = models.OneToOneField(
        Process, on_delete=models.SET_NULL, null=True, blank=True, related_name="archiveresult"
    )
    output_str = models.TextField(blank=True, default="")

    status = ModelWithStateMachine.StatusField(
        choices=ArchiveResultStatus.choices, default=ArchiveResultStatus.QUEUED
    )
    retry_at = ModelWithStateMachine.RetryAtField(default=timezone.now)

    state_machine_name = "tests.exampleapp.statemachines.ArchiveResultMachine"

    def __str__(self) -> str:
        return f"ArchiveResult[{self.pk}] {self.plugin} {self.url} ({self.status})"


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

    def __str__(self) -> str:
        return f"Task[{self.pk}] {self.name} ({self.status})"


class Effect(models.Model):
    """The side effect of a Task: written in the same transaction that marks the task done."""

    task = models.ForeignKey(Task, on_delete=models.CASCADE, related_name="effects")
    pid = models.IntegerField()
    created_at = models.DateTimeField(default=timezone.now)
