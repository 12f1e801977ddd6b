"""State machines of the example archiver (python-statemachine autodiscovers this module)."""

from __future__ import annotations

import math
import os
import re
import signal
import subprocess
import time

from django.db.models import F
from django.utils import timezone
from statemachine import State

from workers.fencing import fenced, fenced_update
from workers.models import BaseStateMachine
from workers.sql import DbNow

from .models import Effect, NoopStatus, ProbeMode, ProbeResult, ProbeTick, Task, TaskStatus


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
        # It reads the row before writing, the everyday Django idiom (on SQLite select_for_update()
        # is a plain read): with deferred transactions two workers doing this fail with "database
        # is locked", which is what the app's IMMEDIATE transactions on SQLite prevent.
        with fenced(task):
            current = Task.objects.select_for_update().get(pk=task.pk)
            if current.status != TaskStatus.QUEUED:
                return
            Task.objects.filter(pk=task.pk).update(status=TaskStatus.DONE, retry_at=None)
            Effect.objects.create(task=task, pid=os.getpid())


class NoopMachine(BaseStateMachine):
    """queued -> done, persisted the way a downstream machine persists: one update_and_requeue."""

    model_attr_name = "noop"

    queued = State(value=NoopStatus.QUEUED, initial=True)
    done = State(value=NoopStatus.DONE, final=True)

    tick = queued.to(done)

    def on_enter_done(self) -> None:
        self.noop.update_and_requeue(status=NoopStatus.DONE, retry_at=None, refresh=False)


class ProbeMachine(BaseStateMachine):
    """queued -> done, with the misbehaviours the fault-injection tests need (see ProbeMode)."""

    model_attr_name = "probe"

    queued = State(value=NoopStatus.QUEUED, initial=True)
    done = State(value=NoopStatus.DONE, final=True)

    tick = queued.to(done)

    def on_enter_done(self) -> None:
        probe = self.probe
        tick = ProbeTick.objects.create(probe=probe, pid=os.getpid(), started_at=DbNow())
        try:
            self._work(probe)
            with fenced(probe):
                fenced_update(probe, status=NoopStatus.DONE, retry_at=None)
                ProbeResult.objects.create(probe=probe, pid=os.getpid())
                ProbeTick.objects.filter(pk=tick.pk).update(ended_at=DbNow(), committed=True)
        finally:
            ProbeTick.objects.filter(pk=tick.pk, ended_at__isnull=True).update(ended_at=DbNow())

    def _work(self, probe) -> None:
        mode = probe.mode
        if mode == ProbeMode.FAIL:
            raise ValueError(f"probe {probe.pk} always fails")
        if mode == ProbeMode.FAIL_RESCHEDULE:
            probe.update_and_requeue(retry_at=timezone.now())
            raise ValueError(f"probe {probe.pk} asked to be due now, then failed")
        if mode == ProbeMode.KILL:
            os.kill(os.getpid(), signal.SIGKILL)
        if mode == ProbeMode.CHILD:
            subprocess.Popen(["sleep", "600"], stdin=subprocess.DEVNULL)
        if mode == ProbeMode.GIL:
            hold_the_gil(probe.work_seconds)
        else:
            time.sleep(probe.work_seconds)


def hold_the_gil(seconds: float) -> None:
    """Backtrack in the re module (which never releases the GIL) for about `seconds`, in one call."""
    began = time.monotonic()
    re.match(r"(a+)+$", "a" * 16 + "b")  # calibrate: each more "a" doubles the time
    unit = max(time.monotonic() - began, 1e-6)
    re.match(r"(a+)+$", "a" * (16 + max(0, math.ceil(math.log2(max(seconds, 0.01) / unit)))) + "b")
