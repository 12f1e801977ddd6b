"""State machines of the example archiver (python-statemachine autodiscovers this module)."""

from __future__ import annotations

import os
import time

from django.db import transaction
from django.db.models import F
from statemachine import State

from workers.models import BaseStateMachine

from .models import Effect, Task, TaskStatus


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
        # The side effect and the state change commit in one transaction, guarded by the status: a
        # worker killed before the commit leaves no effect behind, so the retry after its claim
        # expires runs it exactly once, and a stale ticker could never add a second effect.
        # It reads the row before writing, the everyday Django idiom (on SQLite select_for_update()
        # is a plain read): with deferred transactions two workers doing this fail with "database
        # is locked", which is what the app's IMMEDIATE transactions on SQLite prevent.
        with transaction.atomic():
            current = Task.objects.select_for_update().get(pk=task.pk)
            if current.status != TaskStatus.QUEUED:
                return
            Task.objects.filter(pk=task.pk).update(status=TaskStatus.DONE, retry_at=None)
            Effect.objects.create(task=task, pid=os.getpid())
