"""State machines of the example archiver (python-statemachine autodiscovers this module)."""

from __future__ import annotations

import os
import time
from datetime import timedelta

from django.db import transaction
from django.db.models import F
from django.utils import timezone
from statemachine import State

from machine.conf import machine_settings
from machine.models import Machine, Process
from workers.models import BaseStateMachine

from .models import ArchiveResult, ArchiveResultStatus, Effect, Task, TaskStatus

#: How soon a started ArchiveResult looks at its Process again.
POLL_SECONDS = 0.2


class ArchiveResultMachine(BaseStateMachine):
    """queued -> started -> succeeded | failed: queue a Process, then follow it until it exits."""

    model_attr_name = "archiveresult"

    queued = State(value=ArchiveResultStatus.QUEUED, initial=True)
    started = State(value=ArchiveResultStatus.STARTED)
    succeeded = State(value=ArchiveResultStatus.SUCCEEDED, final=True)
    failed = State(value=ArchiveResultStatus.FAILED, final=True)

    tick = (
        queued.to(started)
        | started.to.itself(unless="process_exited")
        | started.to(succeeded, cond="process_succeeded")
        | started.to(failed, cond="process_exited")
    )

    def _process(self) -> Process | None:
        pk = self.archiveresult.process_id
        return Process.objects.filter(pk=pk).first() if pk else None

    def process_exited(self) -> bool:
        process = self._process()
        return process is not None and process.status == Process.StatusChoices.EXITED

    def process_succeeded(self) -> bool:
        process = self._process()
        return self.process_exited() and process.exit_code == 0

    def on_enter_started(self, source: State) -> None:
        """Queue the Process (once): the Process row and our link to it commit together."""
        result = self.archiveresult
        if source == self.queued:
            cmd = [str(arg).replace("{url}", result.url) for arg in result.cmd]
            pwd = machine_settings.data_dir / "archive" / str(result.pk) / result.plugin
            pwd.mkdir(parents=True, exist_ok=True)
            with transaction.atomic():
                process = Process.objects.create(
                    machine=Machine.current(),
                    process_type=Process.TypeChoices.HOOK,
                    cmd=cmd,
                    pwd=str(pwd),
                    timeout=60,
                    url=result.url,
                )
                moved = ArchiveResult.objects.filter(pk=result.pk, status=ArchiveResultStatus.QUEUED).update(
                    process=process, status=ArchiveResultStatus.STARTED, retry_at=_soon()
                )
                if moved != 1:  # someone else started it: roll our Process back
                    raise RuntimeError(f"{result} was started by another worker")
            result.process = process
        else:
            ArchiveResult.objects.filter(pk=result.pk).update(retry_at=_soon())
        result.refresh_from_db(fields=["process", "status", "retry_at"])

    def on_enter_succeeded(self) -> None:
        self._finish(ArchiveResultStatus.SUCCEEDED)

    def on_enter_failed(self) -> None:
        self._finish(ArchiveResultStatus.FAILED)

    def _finish(self, status: str) -> None:
        result = self.archiveresult
        process = self._process()
        output = (process.stdout or "").strip()[:1000] if process else ""
        ArchiveResult.objects.filter(pk=result.pk).update(status=status, retry_at=None, output_str=output)
        result.refresh_from_db(fields=["status", "retry_at", "output_str"])


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


def _soon():
    return timezone.now() + timedelta(seconds=POLL_SECONDS)
