#!/usr/bin/env python
"""Supervision under real workloads (issue 10), printed as JSON.

    python bench/bench_supervision.py                                # a throwaway SQLite database
    DATABASE_URL=postgres://... python bench/bench_supervision.py    # a throwaway database there

- yes: `Process(cmd=["yes"], timeout=2).run_attached()` (what `manage.py run --timeout 2 -- yes`
  does): wall time, the parent's peak RSS above its RSS before, the log file's size, the stored tail;
- gigabyte: a foreground launch of `head -c 1G /dev/zero`: the same figures;
- changelist: the Process changelist (admin, test client) with one row holding 200 MB of stdout
  written straight into the column (as rows stored before the cap may hold), and the row's page.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from pathlib import Path

import psutil
from common import setup_django

VENDOR = setup_django()

from django.contrib.auth.models import User  # noqa: E402
from django.test import Client  # noqa: E402
from django.test.utils import setup_test_environment  # noqa: E402

from machine.models import Machine, Process  # noqa: E402

MB = 1024 * 1024


class PeakRss:
    """Samples this process's RSS every 10 ms while active; `.added_mb` is the peak above the start."""

    def __init__(self):
        self.me = psutil.Process()
        self.start = self.peak = self.me.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self):
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, self.me.memory_info().rss)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    @property
    def added_mb(self) -> float:
        return round((self.peak - self.start) / MB, 1)


def _outcome(process: Process, seconds: float, rss: PeakRss) -> dict:
    process.refresh_from_db()
    return {
        "seconds": round(seconds, 2),
        "exit_code": process.exit_code,
        "status": process.status,
        "parent_rss_added_mb": rss.added_mb,
        "log_file_mb": round(process.stdout_file.stat().st_size / MB, 1),
        "stored_stdout_kb": round(len(process.stdout.encode()) / 1024, 1),
    }


def bench_yes(machine) -> dict:
    process = Process(machine=machine, cmd=["yes"], timeout=2, pwd="/tmp")
    with open(os.devnull, "w") as sink, PeakRss() as rss:
        started = time.perf_counter()
        try:
            process.run_attached(sink, sink)
        finally:
            process.kill_tree(graceful_timeout=0)
        took = time.perf_counter() - started
    result = _outcome(process, took, rss)
    result["timeout"] = 2
    result["seconds_past_timeout"] = round(took - 2, 2)
    return result


def bench_gigabyte(machine) -> dict:
    process = Process(machine=machine, cmd=["head", "-c", str(1024 * MB), "/dev/zero"], pwd="/tmp")
    with PeakRss() as rss:
        started = time.perf_counter()
        process.launch()
        took = time.perf_counter() - started
    raw_started = time.perf_counter()
    subprocess.run(["head", "-c", str(1024 * MB), "/dev/zero"], stdout=subprocess.DEVNULL, check=True)
    result = _outcome(process, took, rss)
    result["raw_head_to_devnull_seconds"] = round(time.perf_counter() - raw_started, 2)
    return result


def bench_changelist(machine) -> dict:
    setup_test_environment()
    row = Process.objects.create(machine=machine, cmd=["big"], pwd="/", status="exited", exit_code=0)
    Process.objects.filter(pk=row.pk).update(stdout="x" * (200 * MB))
    client = Client()
    client.force_login(User.objects.create_superuser("bench", "bench@example.com", "bench"))
    client.get("/admin/machine/process/")  # warm-up
    timings = []
    with PeakRss() as rss:
        for _ in range(5):
            started = time.perf_counter()
            response = client.get("/admin/machine/process/")
            timings.append(time.perf_counter() - started)
            assert response.status_code == 200, response.status_code
        started = time.perf_counter()
        page = client.get(f"/admin/machine/process/{row.pk}/change/")
        page_seconds = time.perf_counter() - started
    return {
        "stdout_mb_in_the_row": 200,
        "changelist_seconds_median": round(sorted(timings)[len(timings) // 2], 3),
        "row_page_seconds": round(page_seconds, 3),
        "row_page_kb": round(len(page.content) / 1024, 1),
        "parent_rss_added_mb": rss.added_mb,
    }


def main() -> None:
    machine = Machine.current()
    Process.current()
    results = {
        "benchmark": "supervision",
        "database": VENDOR,
        "cpus": os.cpu_count(),
        "load_average_1m": round(os.getloadavg()[0], 2),
        "yes_timeout_2s": bench_yes(machine),
        "gigabyte_foreground": bench_gigabyte(machine),
        "changelist_200mb_row": bench_changelist(machine),
    }
    print(json.dumps(results, indent=2))
    out = os.environ.get("BENCH_OUT")
    if out:
        Path(out).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
