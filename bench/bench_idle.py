"""Idle cost and wake-up latency of `runworker --workers 4`; prints JSON.

1. Idle: the runner waits on an empty queue for IDLE_SECONDS after start-up; every database
   transaction of the orchestrator and its workers is counted (PostgreSQL: pg_stat_database
   xact_commit + xact_rollback of the scratch database; SQLite: each process counts its own through
   tests/counting_settings.py; the counts are taken over the same window on PostgreSQL too, so the
   two can be compared).
2. Wake-up: rows are created one at a time, a random 0.2-1 s apart, while the runner idles; the
   latency is from the creating commit to the start of the row's tick (its modified_at, both by the
   host's clock). PostgreSQL: LISTEN/NOTIFY, then again with LISTEN off (polling, as behind PgBouncer).
"""

from __future__ import annotations

import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
IDLE_SECONDS = float(os.environ.get("BENCH_IDLE_SECONDS", "30"))
WAKES = int(os.environ.get("BENCH_IDLE_WAKES", "20"))


def pg_xacts(connection) -> int | None:
    if connection.vendor != "postgresql":
        return None
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_stat_clear_snapshot()")
        cursor.execute(
            "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = current_database()"
        )
        return int(cursor.fetchone()[0])


def counted(directory: Path) -> int:
    return sum(int(p.read_text() or 0) for p in directory.iterdir())


def start_runner(env: dict, log) -> subprocess.Popen:
    cmd = [
        sys.executable,
        str(ROOT / "manage.py"),
        "runworker",
        "--workers=4",
        "--models=exampleapp.Noop",
        "-v1",
    ]
    return subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)


def wake_latencies(env: dict, connection) -> dict:
    from django.db.models import Max

    from tests.exampleapp.models import Noop

    with tempfile.TemporaryFile() as log:
        runner = start_runner(env, log)
        try:
            time.sleep(6)  # start-up, and idle long enough for the idle wait to back off fully
            latencies = []
            for _ in range(WAKES):
                time.sleep(random.uniform(0.2, 1.0))
                created = Noop.objects.create()
                began = time.time()
                deadline = began + 15
                while time.time() < deadline:
                    done = Noop.objects.filter(pk=created.pk, status="done").aggregate(t=Max("modified_at"))[
                        "t"
                    ]
                    if done:
                        latencies.append(done.timestamp() - began)
                        break
                    time.sleep(0.005)
                else:
                    latencies.append(float("inf"))
        finally:
            runner.send_signal(signal.SIGTERM)
            runner.wait(60)
    latencies.sort()
    return {
        "rows": len(latencies),
        "median_ms": round(statistics.median(latencies) * 1000, 1),
        "p95_ms": round(latencies[int(len(latencies) * 0.95) - 1] * 1000, 1),
        "max_ms": round(max(latencies) * 1000, 1),
    }


def main() -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    os.environ["DJANGO_SETTINGS_MODULE"] = "tests.settings"
    from common import setup_django

    vendor = setup_django()
    from django.db import connection

    count_dir = Path(tempfile.mkdtemp(prefix="bench-idle-counts-"))
    env = {
        **os.environ,
        "DATABASE_NAME": str(connection.settings_dict["NAME"]),
        "PYTHONPATH": str(ROOT),
        "DJANGO_SETTINGS_MODULE": "tests.counting_settings",
        "BENCH_COUNT_DIR": str(count_dir),
    }
    report: dict = {"benchmark": "idle_runner", "database": vendor, "workers": 4, "cpus": os.cpu_count()}
    with tempfile.TemporaryFile() as log:
        runner = start_runner(env, log)
        time.sleep(8)  # start-up (registration, stale-row cleanup, LISTEN) is not idle time
        before_pg, before = pg_xacts(connection), counted(count_dir)
        connection.close()
        time.sleep(IDLE_SECONDS)
        after_pg, after = pg_xacts(connection), counted(count_dir)
        runner.send_signal(signal.SIGTERM)
        runner.wait(60)
    report["idle_seconds"] = IDLE_SECONDS
    report["idle_transactions_per_second_counted_by_the_processes"] = round(
        (after - before) / IDLE_SECONDS, 3
    )
    if before_pg is not None:
        # (pg_stat_database counts this benchmark's own two reads as well.)
        report["idle_transactions_per_second_pg_stat_database"] = round(
            (after_pg - before_pg) / IDLE_SECONDS, 3
        )
    env.pop("BENCH_COUNT_DIR")
    env["DJANGO_SETTINGS_MODULE"] = "tests.settings"
    report["wake_up_latency"] = wake_latencies(env, connection)
    if vendor == "postgresql":
        report["wake_up_latency_polling_listen_off"] = wake_latencies(
            {**env, "WORKERS_LISTEN": "off"}, connection
        )
    report["load_average_1m"] = round(os.getloadavg()[0], 2)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
