#!/usr/bin/env python
"""Process benchmarks, printed as JSON. Ratios are measured against a baseline in the same run.

    python bench/bench_process.py                                # a throwaway SQLite database
    DATABASE_URL=postgres://... python bench/bench_process.py    # a throwaway database on that server

- launch: tracked foreground Process.launch() of `true` vs raw subprocess.run(["true"]);
- cleanup: cleanup_stale_running() over 1,000 and 10,000 stale RUNNING rows plus one live row;
- get_by_pid(os.getpid()) with 10,000 other RUNNING rows;
- Process.current() once warm (queries and time).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import time
from pathlib import Path

from common import setup_django

VENDOR = setup_django()  # a throwaway migrated database (never the one DATABASE_URL names)
TMP = os.environ["DATA_DIR"]

from django.db import connection  # noqa: E402
from django.test.utils import CaptureQueriesContext  # noqa: E402
from django.utils import timezone  # noqa: E402

from machine.choices import ProcessStatus  # noqa: E402
from machine.models import Machine, Process  # noqa: E402


def per_op(fn, repeat: int) -> float:
    """Median seconds per call over `repeat` calls (after one warm-up call)."""
    fn()
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


def bench_launch(rounds: int = 15, repeat: int = 40) -> dict:
    workdir = Path(TMP) / "launch"
    workdir.mkdir(exist_ok=True)
    machine = Machine.current()

    def raw():
        subprocess.run(["true"], check=True)

    def tracked():
        process = Process(machine=machine, cmd=["true"], pwd=str(workdir))
        process.launch()
        assert process.exit_code == 0

    # Interleave short rounds of each so load from other processes on the host hits both alike;
    # the ratio compares the best round of each (the least disturbed), and the medians are shown too.
    raw_s, tracked_s = [], []
    for _ in range(rounds):
        raw_s.append(per_op(raw, repeat))
        tracked_s.append(per_op(tracked, repeat))
    with CaptureQueriesContext(connection) as queries:
        tracked()
    raw_best, tracked_best = min(raw_s) * 1e3, min(tracked_s) * 1e3
    raw_med, tracked_med = statistics.median(raw_s) * 1e3, statistics.median(tracked_s) * 1e3
    return {
        "raw_subprocess_run_ms": round(raw_best, 3),
        "tracked_launch_ms": round(tracked_best, 3),
        "ratio": round(tracked_best / raw_best, 2),
        "median_of_rounds": {
            "raw_ms": round(raw_med, 3),
            "tracked_ms": round(tracked_med, 3),
            "ratio": round(tracked_med / raw_med, 2),
        },
        "rounds": rounds,
        "calls_per_round": repeat,
        "queries_per_launch": len(queries.captured_queries),
    }


def make_stale(count: int) -> None:
    machine = Machine.current()
    now = timezone.now()
    batch = [
        Process(
            machine=machine,
            cmd=["sleep", "1"],
            pid=4_000_000 + i,  # above any pid_max default: never alive
            started_at=now,
            os_start_time=now.timestamp(),
            status=ProcessStatus.RUNNING,
            stdout="x" * 200,
            stderr="y" * 200,
        )
        for i in range(count)
    ]
    Process.objects.bulk_create(batch, batch_size=1000)


def bench_cleanup() -> dict:
    live = Process.current()
    result = {}
    for count in (1_000, 10_000):
        timings = []
        for _ in range(3):  # best of three: other load on the host only ever adds time
            Process.objects.exclude(pk=live.pk).delete()
            make_stale(count)
            with CaptureQueriesContext(connection) as queries:
                started = time.perf_counter()
                closed = Process.cleanup_stale_running()
                timings.append(time.perf_counter() - started)
            assert closed == count, (closed, count)
            assert Process.objects.get(pk=live.pk).status == ProcessStatus.RUNNING, "the live row was closed"
        result[f"rows_{count}"] = {
            "seconds": round(min(timings), 4),
            "queries": len(queries.captured_queries),
        }
    result["growth_10k_over_1k"] = round(result["rows_10000"]["seconds"] / result["rows_1000"]["seconds"], 2)
    return result


def bench_get_by_pid(repeat: int = 2000) -> dict:
    Process.objects.exclude(pid=os.getpid()).delete()
    me = Process.current()
    make_stale(10_000)
    machine = Machine.current()
    assert Process.objects.get_by_pid(os.getpid(), machine) == me
    with CaptureQueriesContext(connection) as queries:
        Process.objects.get_by_pid(os.getpid(), machine)
    seconds = per_op(lambda: Process.objects.get_by_pid(os.getpid(), machine), repeat)
    return {
        "ms": round(seconds * 1e3, 4),
        "queries": len(queries.captured_queries),
        "other_running_rows": 10_000,
    }


def bench_current_warm(repeat: int = 10_000) -> dict:
    Process.current()
    with CaptureQueriesContext(connection) as queries:
        for _ in range(100):
            Process.current()
    seconds = per_op(Process.current, repeat)
    return {"us": round(seconds * 1e6, 3), "queries_per_100_calls": len(queries.captured_queries)}


def main() -> None:
    report = {
        "database": VENDOR,
        "launch_true": bench_launch(),
        "cleanup_stale_running": bench_cleanup(),
        "get_by_pid_with_10k_rows": bench_get_by_pid(),
        "current_warm": bench_current_warm(),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
