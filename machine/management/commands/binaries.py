"""`manage.py binaries`: list the binaries known on this machine."""

from __future__ import annotations

import json

from django.core.management.base import BaseCommand

from machine.management.tables import binary_rows
from machine.models import Binary, Machine
from workers.console import Console


class Command(BaseCommand):
    help = "List the binaries recorded for this machine (-v 2: also health, sha256 and id)."

    def add_arguments(self, parser):
        parser.add_argument(
            "--json", action="store_true", help="Print JSONL records only (default: %(default)r)"
        )

    def handle(self, *, verbosity, json: bool = False, **options):
        rows = Binary.objects.filter(machine=Machine.current()).order_by("name", "-modified_at")
        if json:
            for binary in rows:
                self.stdout.write(_dumps(binary.to_json()))
            return
        headers, table = binary_rows(rows, verbosity)
        Console.for_command(self, "stdout", verbosity, **options).table(headers, table)


def _dumps(record: dict) -> str:
    return json.dumps(record, default=str)
