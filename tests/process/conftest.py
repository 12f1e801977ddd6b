"""Fixtures for the Process tests: a work dir, a row factory, forced PID reuse, leftover clean-up."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parents[2]
NS_LAST_PID = Path("/proc/sys/kernel/ns_last_pid")
LOCK_FILE = Path("/tmp/machine-tests-ns_last_pid.lock")

needs_pid_control = pytest.mark.skipif(
    sys.platform != "linux" or os.geteuid() != 0 or not os.access(NS_LAST_PID, os.W_OK),
    reason="forcing PID reuse needs root on Linux (writable /proc/sys/kernel/ns_last_pid)",
)


def run_manage(*args: str, env: dict, timeout: float = 60, text: bool = True) -> subprocess.CompletedProcess:
    """`python manage.py <args>` as a child process against the test database (`env`: subprocess_env)."""
    return subprocess.run(
        [sys.executable, str(ROOT / "manage.py"), *args],
        env=env,
        capture_output=True,
        text=text,
        timeout=timeout,
    )


@pytest.fixture
def workdir(tmp_path) -> Path:
    path = tmp_path / "work"
    path.mkdir()
    return path


@pytest.fixture
def make_process(db, workdir):
    """Build (unsaved) Process rows on this machine; every one still alive at teardown is killed."""
    from machine.models import Machine, Process

    made: list[Process] = []

    def make(cmd, **fields) -> Process:
        fields.setdefault("pwd", str(workdir))
        fields.setdefault("machine", Machine.current())
        process = Process(cmd=cmd, **fields)
        made.append(process)
        return process

    yield make
    for process in made:
        if process.pid and process.os_start_time:
            process.kill_tree(graceful_timeout=0)


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
def spawn_with_pid(popen):
    """Start `cmd` as a new process that gets exactly `pid` (a freed pid), or None if another
    process on the host took that pid first (callers then retry the whole scenario)."""

    def spawn(pid: int, cmd, **kwargs) -> subprocess.Popen | None:
        with open(LOCK_FILE, "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            for _ in range(20):
                NS_LAST_PID.write_text(str(pid - 1))
                proc = popen(cmd, **kwargs)
                if proc.pid == pid:
                    return proc
                proc.kill()
                proc.wait()
        return None

    return spawn


def wait_gone(pid: int, timeout: float = 5.0) -> None:
    """Wait until pid no longer names a live process (reaped or zombie)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return
        except psutil.NoSuchProcess:
            return
        time.sleep(0.01)
    raise AssertionError(f"pid {pid} still alive after {timeout}s")
