"""`manage.py install NAME [NAME ...]`: queue binaries and install them now, with live progress."""

from __future__ import annotations

import json
import time

from django.core.management.base import BaseCommand, CommandError

from machine import installer
from machine.choices import BinaryStatus
from machine.management.tables import binary_rows
from workers.console import Console, configure_logging


class Command(BaseCommand):
    help = "Find or install binaries with the provider hooks, then show what was found."

    def add_arguments(self, parser):
        parser.add_argument("names", nargs="+", metavar="NAME", help="Binary names, e.g. git cowsay.")
        parser.add_argument(
            "--binproviders",
            default="env,pip,npm",
            help="Comma list of allowed providers, * for any (default: %(default)r)",
        )
        parser.add_argument(
            "--overrides",
            default=None,
            help='JSON object keyed by provider, e.g. \'{"pip": {"install_args": ["cowsay==6.1"]}}\' (default: %(default)r)',
        )
        parser.add_argument(
            "--json", action="store_true", help="Print JSONL records only (default: %(default)r)"
        )

    def handle(self, *, names, binproviders, overrides, verbosity, json: bool = False, **options):
        try:
            request = installer.build_request(names, binproviders, overrides)
        except installer.InstallRequestError as err:
            raise CommandError(str(err), returncode=2) from None
        configure_logging(verbosity, self.stderr._out)
        progress = Console.for_command(self, "stderr", verbosity, **options)
        results = []
        for binary in installer.queue(request):
            started = time.monotonic()
            with progress.status(f"installing {binary.name} ({binary.binproviders})"):
                result = installer.install_one(binary)
            progress.line(_outcome(result, time.monotonic() - started))
            results.append(result)
        if json:
            for binary in results:
                self.stdout.write(_dumps(binary.to_json()))
        else:
            headers, rows = binary_rows(results, verbosity)
            Console.for_command(self, "stdout", verbosity, **options).table(headers, rows)
        failed = [b.name for b in results if b.status != BinaryStatus.INSTALLED]
        if failed:
            raise CommandError(
                f"not installed (still queued, retried later): {', '.join(failed)}", returncode=1
            )


def _outcome(binary, seconds: float) -> str:
    if binary.status == BinaryStatus.INSTALLED:
        return f"ok   {binary.name} {binary.version} via {binary.binprovider} ({seconds:.1f}s)"
    reason = installer.failure_reason(binary) or "no allowed provider found it"
    return f"FAIL {binary.name} ({seconds:.1f}s): {reason}"


def _dumps(record: dict) -> str:
    return json.dumps(record, default=str)
