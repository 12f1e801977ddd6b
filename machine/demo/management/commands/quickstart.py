"""`manage.py quickstart`: the main job (migrate, register, install a manifest, run demo processes, report)."""

from __future__ import annotations

import json
from pathlib import Path

from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError

from machine.demo.quickstart import (
    ManifestError,
    default_manifest_path,
    load_manifest,
    print_summary,
    quickstart,
    summary_records,
)
from workers.argtypes import from_check
from workers.console import Console, configure_logging
from workers.runner import OPTION_LIMITS


class Command(BaseCommand):
    help = (
        "Migrate, register this machine and interface, install the manifest's binaries and run its demo "
        "processes with the workers until idle, then print a summary."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--manifest",
            type=Path,
            default=None,
            help="Manifest JSON (default: the bundled machine/demo/manifest.json)",
        )
        parser.add_argument(
            "--workers",
            type=from_check(OPTION_LIMITS["workers"].check, "workers"),
            default=2,
            help="Worker processes, at most WORKERS_MAX_WORKERS (default: %(default)r)",
        )
        parser.add_argument("--no-progress", action="store_true", help="No live progress display")
        parser.add_argument("--json", action="store_true", help="Print JSONL records only on stdout")

    def handle(self, *, manifest, workers, no_progress, json: bool = False, verbosity, **options):
        try:
            loaded = load_manifest(manifest or default_manifest_path())
        except ManifestError as exc:
            raise CommandError(str(exc)) from None
        # The runner's log lines are detail under the progress lines: shown from -v 2.
        configure_logging(max(verbosity - 1, 0), self.stderr._out)
        progress = Console.for_command(self, "stderr", verbosity, **options)
        progress.line("[0/2] migrating the database and registering this machine")
        call_command("migrate", interactive=False, verbosity=0)
        result = quickstart(loaded, workers=workers, console=progress, show_progress=not no_progress)
        if json:
            for record in summary_records(result):
                self.stdout.write(_dumps(record))
        else:
            print_summary(Console.for_command(self, "stdout", verbosity, **options), result)
        if result.exit_code:
            raise CommandError(f"the runner exited with {result.exit_code}", returncode=result.exit_code)


def _dumps(record: dict) -> str:
    return json.dumps(record, default=str)
