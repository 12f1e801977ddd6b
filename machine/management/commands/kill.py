"""`manage.py kill ID` / `--pid PID`: terminate a tracked process, only when it is provably ours."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from machine.models import Process
from workers.console import Console


class Command(BaseCommand):
    help = "Terminate a tracked process (SIGTERM, then SIGKILL) and its whole tree."

    def add_arguments(self, parser) -> None:
        parser.add_argument("id", nargs="?", default=None, help="Process row id")
        parser.add_argument("--pid", type=int, default=None, help="OS pid of a tracked process")
        parser.add_argument(
            "--grace",
            type=float,
            default=5.0,
            help="Seconds between SIGTERM and SIGKILL (default: %(default)r)",
        )

    def handle(self, *, id: str | None, pid: int | None, grace: float, verbosity, **options) -> None:
        if (id is None) == (pid is None):
            raise CommandError("give exactly one of ID or --pid")
        try:
            process, killed = Process.kill_by_reference(row_id=id, pid=pid, graceful_timeout=grace)
        except (LookupError, ValueError) as exc:  # not ours, or another machine's row
            raise CommandError(str(exc)) from None
        Console.for_command(self, "stdout", verbosity, **options).line(
            f"Terminated {process.pid} ({killed} process(es) ended), exit code {process.exit_code}"
        )
