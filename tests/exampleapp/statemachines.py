"""State machines of the example archiver (python-statemachine autodiscovers this module)."""

from __future__ import annotations

import os
import time

from django.db.models import F
from statemachine import State

from workers.fencing import fenced
from workers.models import BaseStateMachine

from .models import Effect, NoopStatus, Task, TaskStatus


class TaskMachine(BaseStateMachine):
    """queued -> done: work for `work_seconds`, then write the Effect and the new status together."""

    model_attr_name = "task"

    queued = State(value=TaskStatus.QUEUED, initial=True)
    done = State(value=TaskStatus.DONE, final=True)

    tick = queued.to(done)

    def on_enter_done(self) -> None:
        task = self.task
        Task.objects.filter(pk=task.pk).update(attempts=F("attempts") + 1)
        time.sleep(task.work_seconds)
        # The side effect and the state change commit in one transaction, fenced by the tick's claim
        # (and guarded by the status): a worker killed before the commit leaves no effect behind, so
        # the retry runs it exactly once, and a ticker whose claim was taken over commits nothing.
        with fenced(task):
            moved = Task.objects.filter(pk=task.pk, status=TaskStatus.QUEUED).update(
                status=TaskStatus.DONE, retry_at=None
            )
            if moved == 1:
                Effect.objects.create(task=task, pid=os.getpid())


class NoopMachine(BaseStateMachine):
    """queued -> done, persisted the way a downstream machine persists: one update_and_requeue."""

    model_attr_name = "noop"

    queued = State(value=NoopStatus.QUEUED, initial=True)
    done = State(value=NoopStatus.DONE, final=True)

    tick = queued.to(done)

    def on_enter_done(self) -> None:
        self.noop.update_and_requeue(status=NoopStatus.DONE, retry_at=None, refresh=False)
