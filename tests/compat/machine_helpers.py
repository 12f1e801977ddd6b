"""Helpers shared by the machine compat tests: processes in known states, and rows for them."""

from __future__ import annotations

import os
import subprocess
from datetime import UTC, datetime

import psutil
import pytest


def own_start() -> datetime:
    """This test process's OS start time, as the original's tests record it in `started_at`."""
    return datetime.fromtimestamp(psutil.Process(os.getpid()).create_time(), tz=UTC)


def reaped_identity() -> tuple[int, datetime]:
    """(pid, started_at) of a process that has exited and been reaped: nobody can know its exit code."""
    proc = subprocess.Popen(["sleep", "30"])
    started = datetime.fromtimestamp(psutil.Process(proc.pid).create_time(), tz=UTC)
    proc.kill()
    proc.wait()
    return proc.pid, started


def foreign_sleeper(popen) -> tuple[subprocess.Popen, float]:
    """A live `sleep` this test started itself (so Process rows about it are not launches of ours)."""
    proc = popen(["sleep", "30"])
    return proc, psutil.Process(proc.pid).create_time()


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


# -- fixtures (imported by the test modules that use them) ------------------------------------------


@pytest.fixture
def popen():
    """subprocess.Popen that kills what it started at teardown."""
    started: list[subprocess.Popen] = []

    def start(cmd, **kwargs) -> subprocess.Popen:
        proc = subprocess.Popen(cmd, **kwargs)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.fixture
def launched(db, tmp_path):
    """Build Process rows that launch in a private work dir; whatever still runs at teardown is killed."""
    from machine.models import Machine, Process

    made = []

    def make(cmd, **fields):
        fields.setdefault("pwd", str(tmp_path))
        fields.setdefault("machine", Machine.current())
        process = Process(cmd=cmd, **fields)
        made.append(process)
        return process

    yield make
    for process in made:
        if process.pid and process.os_start_time:
            process.kill_tree(graceful_timeout=0)


@pytest.fixture
def lib_dir(data_dir, settings):
    """A private lib dir (`<data_dir>/lib`): lib/bin links land there, never in the real DATA_DIR."""
    path = data_dir / "lib"
    settings.MACHINE_LIB_DIR = path
    return path
