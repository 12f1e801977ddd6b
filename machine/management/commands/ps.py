"""`manage.py ps`: list the running processes of this machine (a table, or JSONL with --json)."""

from __future__ import annotations

import json

from django.core.management.base import BaseCommand

from machine.choices import ProcessType
from machine.management.tables import process_rows
from machine.models import Process
from workers.console import Console


class Command(BaseCommand):
    help = "List running processes tracked on this machine (-v 2: whole commands)."

    def add_arguments(self, parser) -> None:
        parser.add_argument(
            "--type", dest="process_type", choices=ProcessType.values, default=None,
            help="Only this process type (default: %(default)r)",
        )  # fmt: skip
        parser.add_argument("--json", action="store_true", help="One JSON object per line on stdout")

    def handle(self, *, process_type: str | None, json: bool, verbosity, **options) -> None:
        Process.cleanup_stale_running()  # so the list shows live processes, not rows of dead ones
        rows = Process.get_running(process_type).defer("stdout", "stderr").order_by("started_at")
        if json:
            for process in rows:
                self.stdout.write(_dumps(process.to_json()))
            return
        headers, table = process_rows(rows, verbosity)
        Console.for_command(self, "stdout", verbosity, **options).table(headers, table)


def _dumps(record: dict) -> str:
    return json.dumps(record, default=str, separators=(",", ":"))
