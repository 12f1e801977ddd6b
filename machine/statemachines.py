"""BinaryMachine and ProcessMachine (re-exported by machine.models)."""

from __future__ import annotations

from datetime import timedelta

from django.utils import timezone
from statemachine import State

from machine import launch_doubt
from machine.choices import BinaryStatus, ProcessStatus
from workers import fencing
from workers.models import BaseStateMachine


class BinaryInstallError(RuntimeError):
    """No allowed provider hook found or installed the binary."""


class BinaryMachine(BaseStateMachine):
    """queued -> installed: a tick finds or installs the binary; a failure keeps it queued.

    Binary.run() writes the outcome itself, one UPDATE each way (machine/binaries.py): success fills
    the row, sets installed, clears retry_at, counts a success and links lib/bin; failure keeps it
    queued with retry_at = now + 5 min and counts a failure, then on_install raises
    BinaryInstallError so the transition is aborted. Binary.tick_claimed() treats that as a normal
    outcome (returns True); a bare `sm.tick()` lets it propagate, with the row already consistent.
    """

    model_attr_name = "binary"

    queued = State(value=BinaryStatus.QUEUED, initial=True)
    installed = State(value=BinaryStatus.INSTALLED, final=True)

    tick = queued.to.itself(unless="can_install") | queued.to(installed, cond="can_install", on="on_install")

    def can_install(self) -> bool:
        return bool(self.binary.name and self.binary.binproviders)

    def on_install(self) -> None:
        """Run the provider hooks; raising aborts the transition, so a failed install stays queued."""
        if not self.binary.run():
            raise BinaryInstallError(f"no allowed provider could install {self.binary.name!r}")


class ProcessMachine(BaseStateMachine):
    """queued -> running -> exited: a tick launches the process in the background, later ticks poll it.

    The launch happens in the transition's `on` callback (not on entering `running`:
    `running.to.itself()` re-enters that state on every poll). `is_exited()` polls first, so a tick
    on a running row records the true exit code as soon as the process has ended.
    """

    model_attr_name = "process"
    #: How often a worker ticks a running process to poll it.
    poll_interval = timedelta(seconds=1)

    queued = State(value=ProcessStatus.QUEUED, initial=True)
    running = State(value=ProcessStatus.RUNNING)
    exited = State(value=ProcessStatus.EXITED, final=True)

    tick = (
        queued.to.itself(unless="can_start")
        | queued.to(running, cond="can_start", on="on_launch")
        | running.to.itself(unless="is_exited", on="on_wait")
        | running.to(exited, cond="is_exited")
    )
    launch = queued.to(running, cond="can_start")
    kill = running.to(exited)

    def can_start(self) -> bool:
        # A launch in doubt marked moments ago may still be its launcher's: the tick leaves it
        # queued (its claim runs out, then it is ticked again and settled: machine.launch_doubt).
        return bool(self.process.cmd and self.process.machine_id) and not launch_doubt.under_way(self.process)

    def is_exited(self) -> bool:
        """Poll the OS first; True once an exit code is recorded, or the process is gone.

        A process this worker did not launch (e.g. launched by a worker that restarted) leaves no
        exit status to us: poll() records it exited with 137 and a note in stderr (unknown, not a
        guessed 0).
        """
        if self.process.exit_code is None:
            self.process.poll()
        return self.process.exit_code is not None or self.process.status == ProcessStatus.EXITED

    def on_launch(self) -> None:
        """Spawn the command in the background (pid, exact start time, launch marker recorded).

        A row that cannot be launched as written (bad cmd, missing pwd, negative timeout) is
        recorded as exited with code 126 and the reason in stderr, instead of being retried forever.
        """
        try:
            self.process.launch(background=True)
        except ValueError as exc:  # ProcessInputError
            self.process.record_launch_failure(str(exc))
        # launch() saved the row itself (running, or closed when it could not run or was settled):
        # after_transition need not write it again.
        self._saved_by_launch = self.process.status

    def on_wait(self) -> None:
        """Still running: look again after POLL_INTERVAL."""
        self.process.retry_at = timezone.now() + self.poll_interval

    def on_kill(self) -> None:
        """End the process and its whole OS tree, recording how it ended."""
        self.process.kill_tree()

    def after_transition(self, target: State) -> None:
        # The machine wrote the new status on the instance; persist it with the schedule. Never
        # over an end already recorded: the launcher's watcher may have closed the row meanwhile.
        process = self.process
        saved_by_launch, self._saved_by_launch = getattr(self, "_saved_by_launch", None), None
        if saved_by_launch == ProcessStatus.EXITED:
            process.status = ProcessStatus.EXITED  # (the machine entered `running` after the close)
            return  # closed by the one close path (supervisor.close) in this tick: all is written
        if target.final and process.exit_code is not None and process.ended_at is not None:
            return  # closed by the one close path (supervisor.close) in this tick: all is written
        if target.final:
            process.retry_at = None
        if fencing.claim_for(process) is not None:
            # In a runner's tick: the schedule goes to the runner (which keeps the row claimed while
            # it is due again soon) and the status is written only while the claim holds.
            written = saved_by_launch == process.status
            values = {} if written else {"status": process.status, "modified_at": timezone.now()}
            fencing.fenced_update(process, retry_at=process.retry_at, **values)
            return
        process.modified_at = timezone.now()  # the instance stays in step (safe_update compares it)
        type(process)._default_manager.filter(pk=process.pk).exclude(status=ProcessStatus.EXITED).update(
            status=process.status, retry_at=process.retry_at, modified_at=process.modified_at
        )
