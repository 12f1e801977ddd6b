"""Tick drain: N queued no-op rows (`tests.exampleapp.Noop`) ticked by `runworker --workers 4`; prints JSON.

What the runner itself costs per tick: a Noop tick writes one row (its final state) and nothing else,
so ticks per second measure claiming, fencing and bookkeeping. The rate is taken over the span from
the first to the last tick (each row's `modified_at`), and separately over the whole command
(Python start-up included). On PostgreSQL the committed transactions of the scratch database are
counted too (pg_stat_database), so the figure "transactions per tick" is measured, not assumed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COUNT = int(os.environ.get("BENCH_TICKS_COUNT", "6000"))
WORKERS = int(os.environ.get("BENCH_TICKS_WORKERS", "4"))
BATCH = int(os.environ.get("BENCH_TICKS_BATCH", "50"))
#: noop: the one-write tick; task: tests.exampleapp.Task with no work (a counter update, then its
#: state and an Effect row in one transaction: the "trivial tick" of issue 12, host-bound).
MODEL = os.environ.get("BENCH_TICKS_MODEL", "noop")


def xact_commit(connection) -> int | None:
    """Committed transactions of the current database so far (PostgreSQL; None elsewhere)."""
    if connection.vendor != "postgresql":
        return None
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_stat_clear_snapshot()")
        cursor.execute("SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()")
        return int(cursor.fetchone()[0])


def main() -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    os.environ["DJANGO_SETTINGS_MODULE"] = "tests.settings"
    from common import setup_django

    vendor = setup_django()
    from django.db import connection
    from django.db.models import Max, Min

    from machine.models import Machine
    from tests.exampleapp.models import Noop, Task

    if MODEL == "task":
        machine = Machine.current()
        model = Task
        Task.objects.bulk_create([Task(machine=machine, name=f"t{i}") for i in range(COUNT)], batch_size=2000)
    else:
        model = Noop
        Noop.objects.bulk_create([Noop() for _ in range(COUNT)], batch_size=2000)
    env = {**os.environ, "DATABASE_NAME": str(connection.settings_dict["NAME"]), "PYTHONPATH": str(ROOT)}
    cmd = [
        sys.executable, str(ROOT / "manage.py"), "runworker", f"--workers={WORKERS}", "--until-idle",
        f"--models={model._meta.label}", "--poll=0.05", f"--batch={BATCH}", "-v0",
    ]  # fmt: skip
    before = xact_commit(connection)
    connection.close()
    started = time.perf_counter()
    completed = subprocess.run(cmd, env=env, cwd=ROOT, timeout=900)
    runner_s = time.perf_counter() - started
    if completed.returncode != 0:
        raise SystemExit(f"runworker failed with exit code {completed.returncode}")
    after = xact_commit(connection)
    done = model.objects.filter(status="done").count()
    if model is Task:
        from tests.exampleapp.models import Effect

        span = Effect.objects.aggregate(first=Min("created_at"), last=Max("created_at"))
    else:
        span = model.objects.aggregate(first=Min("modified_at"), last=Max("modified_at"))
    span_s = (span["last"] - span["first"]).total_seconds()
    report = {
        "benchmark": "drain_noop_ticks",
        "database": vendor,
        "model": model._meta.label,
        "rows": COUNT,
        "workers": WORKERS,
        "batch_size": BATCH,
        "cpus": os.cpu_count(),
        "load_average_1m": round(os.getloadavg()[0], 2),
        "ticked_done": done,
        "first_to_last_tick_seconds": round(span_s, 3),
        "ticks_per_second": round(done / span_s, 1) if span_s else None,
        "runner_seconds_including_startup": round(runner_s, 3),
        "ticks_per_second_including_startup": round(done / runner_s, 1),
    }
    if before is not None:
        report["transactions"] = after - before
        report["transactions_per_tick"] = round((after - before) / max(done, 1), 3)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
