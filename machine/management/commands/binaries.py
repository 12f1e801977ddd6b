"""`manage.py binaries`: list the binaries known on this machine."""

from __future__ import annotations

import json

from django.core.management.base import BaseCommand

from machine.models import Binary, Machine
from machine.reporting import binaries_table


class Command(BaseCommand):
    help = "List the binaries recorded for this machine, newest first."

    def add_arguments(self, parser):
        parser.add_argument(
            "--json", action="store_true", help="Print JSONL records only (default: %(default)r)"
        )

    def handle(self, *, json: bool = False, **options):
        rows = Binary.objects.filter(machine=Machine.current()).order_by("name", "-modified_at")
        if json:
            for binary in rows:
                self.stdout.write(_dumps(binary.to_json()))
        else:
            self.stdout.write(binaries_table(rows))


def _dumps(record: dict) -> str:
    return json.dumps(record, default=str)
