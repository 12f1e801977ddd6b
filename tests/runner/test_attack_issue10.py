"""Adversarial tests for issue 10's runner side (wake-up descriptors, option limits)."""

from __future__ import annotations

import os
import signal
import time

import psutil
import pytest

from machine.models import Machine, Process

pytestmark = pytest.mark.django_db(transaction=True)


def _queue(tmp_path, count: int, script: str, start: int = 0) -> list[Process]:
    machine = Machine.current()
    rows = []
    for i in range(start, start + count):
        pwd = tmp_path / f"p{i}"
        pwd.mkdir()
        rows.append(
            Process.objects.create(machine=machine, cmd=["sh", "-c", script], pwd=str(pwd), timeout=60)
        )
    return rows


def _wait_all_exited(rows, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    pks = [row.pk for row in rows]
    while time.monotonic() < deadline:
        if not Process.objects.filter(pk__in=pks).exclude(status="exited").exists():
            return
        time.sleep(0.2)
    left = Process.objects.filter(pk__in=pks).exclude(status="exited").count()
    raise AssertionError(f"{left} rows not exited after {timeout}s")


def _worker(runner) -> psutil.Process:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for proc in psutil.Process(runner.pid).children():
            try:
                if "runworker" in " ".join(proc.cmdline()):
                    return proc
            except psutil.Error:
                continue
        time.sleep(0.1)
    raise AssertionError("no worker")


def test_wake_fds_do_not_leak_and_the_idle_worker_does_not_spin(start_runner, tmp_path):
    """A worker drains 200 rows whose children it follows by pidfd: it ends with as many open
    descriptors as after the first 10, and idles without burning CPU."""
    runner = start_runner("--workers=1", "--models=machine.Process")
    first = _queue(tmp_path, 10, "sleep 0.05")
    _wait_all_exited(first, 60)
    worker = _worker(runner)
    time.sleep(1)
    before = worker.num_fds()
    rows = _queue(tmp_path, 200, "sleep 0.0$(( $$ % 10 ))", start=10)
    _wait_all_exited(rows, 240)
    time.sleep(1)
    after = worker.num_fds()
    assert after <= before + 2, f"worker fds {before} -> {after} across 200 rows"
    cpu = worker.cpu_times()
    time.sleep(3)
    spent = sum(worker.cpu_times()[:2]) - sum(cpu[:2])
    assert spent < 0.5, f"idle worker used {spent:.2f}s of CPU in 3 s"
    runner.signal(signal.SIGTERM)
    assert runner.wait(30) in (0, 128 + signal.SIGTERM, -signal.SIGTERM), runner.output()[-3000:]
    assert os.path.exists(tmp_path)
