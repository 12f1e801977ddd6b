"""`manage.py prune [--days N] [--dry-run]`: delete old exited Process rows and their log folders."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from machine.conf import machine_settings
from machine.pruning import prune
from workers.argtypes import non_negative_int
from workers.console import Console, configure_logging


def _size(count: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if count < 1024 or unit == "GB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return ""


class Command(BaseCommand):
    help = (
        "Delete this machine's exited Process rows older than --days (and the log folders the app "
        "wrote for them under MACHINE_DATA_DIR/processes/); never a process's working directory."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument(
            "--days",
            type=non_negative_int,
            default=None,
            help="Age in days of the rows to delete (default: MACHINE_PRUNE_DAYS, 30)",
        )
        parser.add_argument(
            "--dry-run", action="store_true", help="Only say what would be deleted (default: %(default)r)"
        )

    def handle(self, *, days: int | None, dry_run: bool, verbosity: int, **options) -> None:
        if days is None:
            days = machine_settings.PRUNE_DAYS
            if isinstance(days, bool) or not isinstance(days, int) or days < 0:
                raise CommandError(f"MACHINE_PRUNE_DAYS must be a whole number of days >= 0, got {days!r}")
        configure_logging(verbosity, self.stderr._out)
        result = prune(days, dry_run=dry_run)
        console = Console.for_command(self, "stdout", verbosity, **options)
        verb = "Would delete" if dry_run else "Deleted"
        console.line(
            f"{verb} {result.rows} process row(s) and {result.folders} log folder(s) "
            f"({_size(result.bytes)}) older than {days} day(s)"
        )
        if result.kept:
            console.line(f"Kept {result.kept} old exited row(s) that other rows refer to")
