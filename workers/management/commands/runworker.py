"""`manage.py runworker`: run the orchestrator (default) or, with --worker, one worker process."""

from __future__ import annotations

import argparse
import faulthandler
import signal

from django.core.management.base import BaseCommand, CommandError

from workers.argtypes import from_check
from workers.console import Console, configure_logging
from workers.progress import queue_progress
from workers.runner import OPTION_LIMITS, Orchestrator, RunnerOptions, Worker, driven_models


def limited(name: str):
    """The argparse type of a numeric option: the check of OPTION_LIMITS[name], with its message."""
    return from_check(OPTION_LIMITS[name].check, name)


def model_labels(value: str) -> list[str]:
    labels = [label.strip() for label in value.split(",") if label.strip()]
    if not labels:
        raise argparse.ArgumentTypeError("give at least one model label, e.g. machine.Binary")
    return labels


class Command(BaseCommand):
    help = (
        "Drive every ModelWithStateMachine queue (Binary, Process, downstream models): claim due rows, "
        "tick them, repeat. Starts an orchestrator that supervises --workers worker processes."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--workers",
            type=limited("workers"),
            default=2,
            help="Worker processes to run, at most WORKERS_MAX_WORKERS (default: %(default)r)",
        )
        parser.add_argument(
            "--until-idle",
            action="store_true",
            help="Exit once no row is due now or claimed by a worker, listing the rows that wait for a "
            "retry (default: run until signalled)",
        )
        parser.add_argument(
            "--models",
            type=model_labels,
            default=[],
            help="Comma list of models to drive, e.g. machine.Binary,machine.Process (default: all)",
        )
        parser.add_argument(
            "--poll",
            type=limited("poll"),
            default=0.5,
            help="Seconds between empty polls (default: %(default)r)",
        )
        parser.add_argument(
            "--lock-seconds",
            type=limited("lock_seconds"),
            default=60.0,
            help="Length of a claim; renewed while the work goes on (default: %(default)r)",
        )
        parser.add_argument(
            "--batch",
            type=limited("batch"),
            default=10,
            help=f"Rows claimed per statement, at most {OPTION_LIMITS['batch'].most} (default: %(default)r)",
        )
        parser.add_argument(
            "--grace",
            type=limited("grace"),
            default=10.0,
            help="Seconds in-flight work may finish after SIGTERM/SIGINT (default: %(default)r)",
        )
        parser.add_argument(
            "--heartbeat",
            type=limited("heartbeat"),
            default=5.0,
            help="Seconds between heartbeats of the runner's Process rows (default: %(default)r)",
        )
        parser.add_argument(
            "--progress",
            action="store_true",
            help="Show live queue counts on stderr (orchestrator only; not with -v 0)",
        )
        parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
        parser.add_argument("--parent-id", default=None, help=argparse.SUPPRESS)
        parser.add_argument("--orchestrator-pid", type=int, default=None, help=argparse.SUPPRESS)
        parser.add_argument("--state-file", default=None, help=argparse.SUPPRESS)

    def handle(self, *, verbosity, workers, until_idle, models, poll, lock_seconds, batch, grace, heartbeat,
               progress, worker, parent_id, orchestrator_pid, state_file, **options):  # fmt: skip
        # The project's LOGGING wins: only loggers it left alone get a handler on stderr at -v's level.
        configure_logging(verbosity, self.stderr._out)
        faulthandler.register(signal.SIGUSR1, all_threads=True)  # `kill -USR1 <pid>`: where is it stuck?
        try:
            # call_command(workers=...) skips the argparse types: RunnerOptions checks the same limits.
            runner_options = RunnerOptions(
                workers=workers,
                until_idle=until_idle,
                models=tuple(models),
                poll=poll,
                lock_seconds=lock_seconds,
                batch=batch,
                grace=grace,
                heartbeat=heartbeat,
                verbosity=verbosity,
            )
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        try:
            chosen = driven_models(runner_options.models)
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        if worker:
            code = Worker(
                runner_options, parent_id=parent_id or None, orchestrator_pid=orchestrator_pid,
                state_path=state_file,
            ).run()  # fmt: skip
        else:
            console = Console.for_command(self, "stderr", verbosity, **options)
            printer = queue_progress(console, chosen) if progress and verbosity > 0 else None
            code = Orchestrator(runner_options, progress=printer).run()
        if code:
            raise CommandError(f"runworker exited with {code}", returncode=code)
