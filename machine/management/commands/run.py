"""`manage.py run -- CMD ARGS...`: launch a tracked process in the foreground and exit with its code."""

from __future__ import annotations

import argparse
import os

from django.core.management.base import BaseCommand, CommandError

from machine import process_utils
from machine.choices import ProcessType
from machine.models import Process
from machine.processes import ProcessInputError
from workers.argtypes import non_negative_int


class Command(BaseCommand):
    help = "Launch CMD as a tracked Process, stream its output and exit with its exit code."

    def add_arguments(self, parser) -> None:
        parser.add_argument(
            "--timeout", type=non_negative_int, default=0,
            help="Seconds before the whole process tree is killed; 0 = no limit (default: %(default)r)",
        )  # fmt: skip
        parser.add_argument("--cwd", default=None, help="Working directory (default: the current one)")
        parser.add_argument("command", nargs=argparse.REMAINDER, help="-- CMD ARGS...")

    def handle(self, *, command: list[str], timeout: int, cwd: str | None, **options) -> None:
        if command and command[0] == "--":
            command = command[1:]
        if not command:
            raise CommandError("nothing to run: use `manage.py run -- CMD ARGS...`")
        workdir = os.path.abspath(cwd or os.getcwd())
        current = Process.current()
        # Logs, pid file and cmd.sh go to the row's own folder under MACHINE_DATA_DIR
        # (Process.runtime_dir), never into the directory the command runs in.
        process = Process(
            machine=current.machine,
            parent=current,
            cmd=command,
            timeout=timeout,
            pwd=workdir,
            process_type=ProcessType.BINARY,
        )
        # As a subreaper we get back what the tree detaches without its marker (`env -i setsid ...`),
        # and end it with the tree instead of leaving it to run on under init.
        try:
            with process_utils.ending_orphans():
                code = process.run_attached(self.stdout, self.stderr)
        except ProcessInputError as exc:
            raise CommandError(str(exc)) from None
        if code:
            raise CommandError(f"{command[0]} exited with code {code}", returncode=code)
