"""`manage.py cleanup`: close RUNNING rows whose process is gone, recycled or past its limits."""

from __future__ import annotations

from django.core.management.base import BaseCommand

from machine.models import Process
from workers.console import Console


class Command(BaseCommand):
    help = "Mark stale RUNNING process rows of this machine as exited."

    def handle(self, *, verbosity, **options) -> None:
        closed = Process.cleanup_stale_running()
        Console.for_command(self, "stdout", verbosity, **options).line(
            f"Closed {closed} stale process row(s)"
        )
