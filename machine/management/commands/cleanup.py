"""`manage.py cleanup`: close RUNNING rows whose process is gone, recycled or past its limits."""

from __future__ import annotations

from django.core.management.base import BaseCommand

from machine.models import Process


class Command(BaseCommand):
    help = "Mark stale RUNNING process rows of this machine as exited."

    def handle(self, **options) -> None:
        closed = Process.cleanup_stale_running()
        self.stdout.write(f"Closed {closed} stale process row(s)")
