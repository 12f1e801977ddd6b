"""Fixtures that start real `manage.py runworker` processes and clean up after them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parents[2]


class RunnerProcess:
    """A `manage.py runworker` child with its log file; `stop_all` kills whatever is left of its tree."""

    def __init__(self, popen: subprocess.Popen, log: Path):
        self.popen = popen
        self.log = log

    @property
    def pid(self) -> int:
        return self.popen.pid

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def wait(self, timeout: float) -> int:
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            tree = [psutil.Process(self.pid), *_descendants(self.pid)]
            listing = "\n".join(_describe(proc) for proc in tree)
            for proc in tree:
                try:
                    proc.send_signal(signal.SIGUSR1)  # runworker dumps its threads' stacks
                except psutil.Error:
                    pass
            time.sleep(1)
            raise AssertionError(
                f"runworker still running after {timeout}s; tree:\n{listing}\n{self.output()[-12000:]}"
            ) from None

    def signal(self, sig: int) -> None:
        self.popen.send_signal(sig)


def wait_for(predicate: Callable[[], object], timeout: float, what: str, interval: float = 0.05):
    """Poll `predicate` until it returns something truthy; fail with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def _describe(proc: psutil.Process) -> str:
    try:
        return f"{proc.pid} ppid={proc.ppid()} {proc.status()} {' '.join(proc.cmdline())[:150]}"
    except psutil.Error as exc:
        return f"{proc.pid} {exc!r}"


def _descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []


@pytest.fixture
def start_runner(subprocess_env, tmp_path) -> Callable[..., RunnerProcess]:
    """Start `manage.py runworker <args>` against the test database; every tree is killed at teardown."""
    started: list[tuple[RunnerProcess, list[psutil.Process]]] = []

    def start(*args: str, env: dict[str, str] | None = None) -> RunnerProcess:
        log = tmp_path / f"runworker-{len(started)}.log"
        child_env = {**subprocess_env, **(env or {})}
        with open(log, "wb") as out:
            popen = subprocess.Popen(
                [sys.executable, str(ROOT / "manage.py"), "runworker", *args],
                cwd=ROOT,
                env=child_env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        runner = RunnerProcess(popen, log)
        started.append((runner, []))
        return runner

    yield start

    for runner, _ in started:
        # Workers live in their own sessions: collect the tree before the orchestrator goes.
        tree = [*_descendants(runner.pid)]
        if runner.popen.poll() is None:
            runner.popen.send_signal(signal.SIGKILL)
            runner.popen.wait(10)
        for proc in tree:
            try:
                proc.kill()
            except psutil.Error:
                pass
    # Workers whose orchestrator was killed by the test are found by their command line.
    for proc in psutil.process_iter(["pid", "cmdline", "environ"]):
        try:
            cmdline = " ".join(proc.info["cmdline"] or [])
            env = proc.info["environ"] or {}
        except psutil.Error:
            continue
        if "runworker" in cmdline and env.get("DATABASE_NAME") == subprocess_env["DATABASE_NAME"]:
            if proc.pid != os.getpid():
                try:
                    proc.kill()
                except psutil.Error:
                    pass
