"""Limits on runworker's own input (refused before anything starts) and SIGTERM while workers start."""

from __future__ import annotations

import signal
import threading
import time

import psutil
import pytest
from django.core.management import call_command, load_command_class
from django.core.management.base import CommandError

from machine.models import Process
from tests.runner.conftest import wait_for
from workers.conf import workers_settings
from workers.runner import RunnerOptions

RUNNER_TYPES = ["orchestrator", "worker"]
#: Had a limit been missed, an unknown model stops the command at its model check instead of starting
#: a runner with, say, 100000 workers: a missing limit fails the test, it does not swamp the host.
NO_RUNNER = "--models=nosuch.Model"


def parse(command: str, app: str, *args: str):
    """The command's options as its own parser reads this command line (no handle(), nothing started)."""
    return load_command_class(app, command).create_parser("manage.py", command).parse_args(list(args))


def alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def workers_of(orchestrator_pid: int) -> list[psutil.Process]:
    """Live worker processes started by this orchestrator, found by their command line."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        if f"--orchestrator-pid={orchestrator_pid}" in (proc.info["cmdline"] or []) and alive(proc):
            found.append(proc)
    return found


class ChildWatch:
    """The children a process has had while watched, and which were workers (a thread looks every 10 ms)."""

    def __init__(self, pid: int):
        self.pid = pid
        self.seen: dict[int, psutil.Process] = {}
        self.workers: dict[int, psutil.Process] = {}
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def now(self) -> int:
        """Look once; return how many workers were seen so far (a child caught between fork and exec
        still has its parent's command line: it counts once it runs `runworker --worker`)."""
        try:
            children = psutil.Process(self.pid).children()
        except psutil.Error:
            children = []
        for child in children:
            self.seen.setdefault(child.pid, child)
            try:
                if child.pid not in self.workers and "--worker" in child.cmdline():
                    self.workers[child.pid] = child
            except psutil.Error:
                pass
        return len(self.workers)

    def _poll(self) -> None:
        while not self._done.wait(0.01):
            self.now()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._done.set()
        self._thread.join()


# -- refused before anything starts ------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("count", ["0", "100000", "abc"])
def test_the_command_line_refuses_a_worker_count_out_of_range_with_a_usage_error(start_runner, count):
    runner = start_runner(f"--workers={count}", NO_RUNNER)

    assert runner.wait(60) == 2, runner.output()  # argparse's usage error
    output = runner.output()
    assert "usage: manage.py runworker" in output
    assert (
        "argument --workers: must be a whole number from 1 to 64 "
        f"(the most is the WORKERS_MAX_WORKERS setting), not '{count}'"
    ) in output
    assert not Process.objects.exists()  # no runner row, no Process row of any kind


@pytest.mark.parametrize(
    ("arg", "accepted"),
    [
        ("--batch=0", "a whole number from 1 to 1000"),
        ("--batch=1001", "a whole number from 1 to 1000"),
        ("--batch=2.5", "a whole number from 1 to 1000"),
        ("--poll=inf", "a number of seconds above 0.005 and at most 3600"),
        ("--poll=nan", "a number of seconds above 0.005 and at most 3600"),
        ("--poll=-1", "a number of seconds above 0.005 and at most 3600"),
        ("--poll=1e12", "a number of seconds above 0.005 and at most 3600"),
        ("--poll=1e-9", "a number of seconds above 0.005 and at most 3600"),
        ("--lock-seconds=inf", "a number of seconds above 0 and at most 86400"),
        ("--lock-seconds=86401", "a number of seconds above 0 and at most 86400"),
        ("--grace=nan", "a number of seconds above 0 and at most 86400"),
        ("--grace=-1", "a number of seconds above 0 and at most 86400"),
        ("--grace=1e12", "a number of seconds above 0 and at most 86400"),
        ("--heartbeat=inf", "a number of seconds above 0.005 and at most 3600"),
        ("--heartbeat=0", "a number of seconds above 0.005 and at most 3600"),
    ],
)
def test_the_command_line_refuses_batches_and_durations_out_of_range(arg, accepted):
    option, value = arg.split("=")
    with pytest.raises(CommandError) as refused:
        parse("runworker", "workers", arg)
    assert str(refused.value) == f"Error: argument {option}: must be {accepted}, not '{value}'"


def test_the_command_line_accepts_the_limits_themselves():
    options = parse(
        "runworker", "workers",
        "--workers=64", "--batch=1000", "--poll=3600", "--lock-seconds=86400", "--grace=86400", "--heartbeat=0.01",
    )  # fmt: skip
    assert (options.workers, options.batch, options.poll) == (64, 1000, 3600.0)
    assert (options.lock_seconds, options.grace, options.heartbeat) == (86400.0, 86400.0, 0.01)


def test_the_workers_max_workers_setting_moves_the_limit(settings):
    settings.WORKERS_MAX_WORKERS = 4
    with pytest.raises(
        CommandError, match=r"from 1 to 4 \(the most is the WORKERS_MAX_WORKERS setting\), not '5'"
    ):
        parse("runworker", "workers", "--workers=5")
    assert parse("runworker", "workers", "--workers=4").workers == 4

    settings.WORKERS_MAX_WORKERS = 100
    assert parse("runworker", "workers", "--workers=100").workers == 100


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("given", "message"),
    [
        ({"workers": 10**6}, "workers must be a whole number from 1 to 64 (the most is the "
         "WORKERS_MAX_WORKERS setting), not 1000000"),
        ({"workers": "abc"}, "workers must be a whole number from 1 to 64 (the most is the "
         "WORKERS_MAX_WORKERS setting), not 'abc'"),
        ({"workers": 2.5}, "workers must be a whole number"),
        ({"batch": 5000}, "batch must be a whole number from 1 to 1000, not 5000"),
        ({"poll": float("inf")}, "poll must be a number of seconds above 0.005 and at most 3600, not inf"),
        ({"poll": float("nan")}, "poll must be a number of seconds above 0.005 and at most 3600, not nan"),
        ({"lock_seconds": 1e12}, "lock_seconds must be a number of seconds above 0 and at most 86400"),
        ({"grace": -1.0}, "grace must be a number of seconds above 0 and at most 86400, not -1.0"),
        ({"heartbeat": None}, "heartbeat must be a number of seconds above 0.005 and at most 3600, not None"),
    ],
)  # fmt: skip
def test_call_command_and_runner_options_refuse_the_same_values_with_a_clear_error(given, message):
    # call_command() hands keyword options to handle() without the argparse types.
    with pytest.raises(CommandError) as refused:
        call_command("runworker", models=["nosuch.Model"], **given)
    assert str(refused.value).startswith(message)
    assert not Process.objects.exists()

    with pytest.raises(ValueError) as refused:
        RunnerOptions(**given)
    assert str(refused.value).startswith(message)


def test_runner_options_keep_the_numbers_they_were_given_as_text():
    options = RunnerOptions(workers="3", poll="0.25", grace=2)
    assert (options.workers, options.poll, options.grace) == (3, 0.25, 2.0)
    assert type(options.grace) is float


def test_quickstart_applies_the_same_worker_limit():
    with pytest.raises(CommandError, match="WORKERS_MAX_WORKERS"):
        parse("quickstart", "machine.demo", "--workers=100000")


# -- SIGTERM while the workers start -----------------------------------------------------------


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(("workers", "delay"), [(8, 0.0), (8, 0.2), (32, 0.0), (32, 0.2)])
def test_sigterm_while_workers_start_stops_them_all_within_the_grace_period_and_starts_no_more(
    start_runner, workers, delay
):
    if workers > workers_settings.MAX_WORKERS:
        pytest.skip(f"WORKERS_MAX_WORKERS is {workers_settings.MAX_WORKERS}")
    grace = 2.0
    runner = start_runner(f"--workers={workers}", f"--grace={grace}", "--poll=0.1")
    children = ChildWatch(runner.pid)
    wait_for(children.now, 60, "the first worker", interval=0.005)
    time.sleep(delay)  # 0: while they are spawned; 0.2 s: more are running, none ready (Django imports)
    children.start()
    began = time.monotonic()
    runner.signal(signal.SIGTERM)
    # Those running by now were spawned before the orchestrator could act on the signal (a look
    # taken before it would miss the ones spawned while it looks).
    started = children.now()
    code = runner.wait(grace + 2)  # (late: fails with the process tree and its stacks)
    took = time.monotonic() - began
    children.stop()

    assert code == 0, runner.output()
    assert took < grace + 2
    # No worker is started after the signal, but the one being spawned as it came.
    assert len(children.workers) <= started + 1, (started, len(children.workers))
    # None is left behind: neither one we saw nor any other that names this orchestrator.
    assert not [child for child in children.seen.values() if alive(child)]
    assert not workers_of(runner.pid)
    rows = Process.objects.filter(process_type__in=RUNNER_TYPES)
    assert set(rows.values_list("status", flat=True)) == {"exited"}
