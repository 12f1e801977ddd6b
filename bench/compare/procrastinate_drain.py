"""Drain N no-op procrastinate jobs with 4 worker processes (each `run_worker(wait=False)`); prints JSON.

Run with a Python that has procrastinate installed (a scratch venv outside this repository):
    python bench/compare/procrastinate_drain.py postgres://postgres@127.0.0.1:5432/postgres
It creates and drops its own scratch database. The rate is over the span from the first job's start
to the last job's end (procrastinate_events), as bench_ticks.py measures ours.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import sys
import time
import uuid
from importlib.metadata import version

import psycopg

COUNT = int(os.environ.get("BENCH_COMPARE_COUNT", "2000"))
WORKERS = 4


def make_app(conninfo: str):
    import procrastinate

    app = procrastinate.App(connector=procrastinate.SyncPsycopgConnector(conninfo=conninfo))

    @app.task(name="noop")
    def noop() -> None:
        return None

    return app, noop


def worker(conninfo: str) -> None:
    import procrastinate

    app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=conninfo))

    @app.task(name="noop")
    def noop() -> None:
        return None

    app.run_worker(wait=False, concurrency=1, install_signal_handlers=False, listen_notify=False)


def main() -> None:
    server = sys.argv[1]
    name = f"bench_procrastinate_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(server, autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")
    conninfo = server.rsplit("/", 1)[0] + "/" + name
    try:
        app, noop = make_app(conninfo)
        with app.open():
            app.schema_manager.apply_schema()
            for start in range(0, COUNT, 500):
                noop.batch_defer(*({} for _ in range(min(500, COUNT - start))))
        began = time.perf_counter()
        procs = [multiprocessing.Process(target=worker, args=(conninfo,)) for _ in range(WORKERS)]
        for proc in procs:
            proc.start()
        for proc in procs:
            proc.join(600)
        wall = time.perf_counter() - began
        with psycopg.connect(conninfo) as conn:
            done = conn.execute(
                "SELECT count(*) FROM procrastinate_jobs WHERE status = 'succeeded'"
            ).fetchone()[0]
            first, last = conn.execute(
                "SELECT min(at) FILTER (WHERE type = 'started'), max(at) FILTER (WHERE type = 'succeeded') "
                "FROM procrastinate_events"
            ).fetchone()
        span = (last - first).total_seconds()
        print(json.dumps({
            "benchmark": "procrastinate_drain_noop_jobs", "procrastinate": version("procrastinate"),
            "jobs": COUNT, "worker_processes": WORKERS, "succeeded": done,
            "first_start_to_last_end_seconds": round(span, 3), "jobs_per_second": round(done / span, 1),
            "jobs_per_second_including_startup": round(done / wall, 1), "cpus": os.cpu_count(),
            "load_average_1m": round(os.getloadavg()[0], 2),
        }, indent=2))  # fmt: skip
    finally:
        with psycopg.connect(server, autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


if __name__ == "__main__":
    main()
