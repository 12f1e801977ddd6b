"""BinaryMachine and ProcessMachine (re-exported by machine.models)."""

from __future__ import annotations

from statemachine import State

from machine.choices import BinaryStatus, ProcessStatus
from workers.models import BaseStateMachine


class BinaryInstallError(RuntimeError):
    """No allowed provider hook found or installed the binary."""


class BinaryMachine(BaseStateMachine):
    """queued -> installed: a tick finds or installs the binary; a failure keeps it queued."""

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
    """queued -> running -> exited: a tick launches the process, later ticks poll it."""

    model_attr_name = "process"

    queued = State(value=ProcessStatus.QUEUED, initial=True)
    running = State(value=ProcessStatus.RUNNING)
    exited = State(value=ProcessStatus.EXITED, final=True)

    tick = (
        queued.to.itself(unless="can_start")
        | queued.to(running, cond="can_start")
        | running.to.itself(unless="is_exited")
        | running.to(exited, cond="is_exited")
    )
    launch = queued.to(running)
    kill = running.to(exited)

    def can_start(self) -> bool:
        return bool(self.process.cmd and self.process.machine_id)

    def is_exited(self) -> bool:
        return self.process.exit_code is not None
