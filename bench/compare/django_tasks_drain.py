"""Drain N no-op django-tasks jobs (database backend, django-tasks-db) with 4 `db_worker --batch`
processes; prints JSON. Run with a Python that has django-tasks-db[compat] installed (a scratch venv
outside this repository):
    python bench/compare/django_tasks_drain.py sqlite
    python bench/compare/django_tasks_drain.py postgres://postgres@127.0.0.1:5432/postgres
It creates and drops its own scratch database. The rate is over the span from the first task's start
to the last task's end (their started_at / finished_at), as bench_ticks.py measures ours.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from importlib.metadata import version

WORKERS = 4
COUNT = int(os.environ.get("BENCH_COMPARE_COUNT", "2000"))


def configure(database: dict) -> None:
    import django
    from django.conf import settings

    settings.configure(
        INSTALLED_APPS=["django_tasks", "django_tasks_db"],
        DATABASES={"default": database},
        TASKS={"default": {"BACKEND": "django_tasks_db.DatabaseBackend"}},
        USE_TZ=True,
        DEFAULT_AUTO_FIELD="django.db.models.BigAutoField",
    )
    django.setup()


def database_from(target: str, tmp: str) -> dict:
    if target == "sqlite":
        return {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": os.path.join(tmp, "tasks.sqlite3"),
            "OPTIONS": {"transaction_mode": "IMMEDIATE", "timeout": 30,
                        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;"},
        }  # fmt: skip
    import dj_database_url

    return dj_database_url.parse(target)


def main() -> None:
    if sys.argv[1] == "--worker":
        configure(json.loads(os.environ["BENCH_DATABASE"]))
        from django.core.management import call_command

        call_command("db_worker", batch=True, startup_delay=False, verbosity=0)
        return
    target = sys.argv[1]
    tmp = tempfile.mkdtemp(prefix="bench-django-tasks-")
    database = database_from(target, tmp)
    scratch = None
    if target != "sqlite":
        import psycopg

        scratch = f"bench_django_tasks_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(target, autocommit=True) as admin:
            admin.execute(f"CREATE DATABASE {scratch}")
        database["NAME"] = scratch
    try:
        configure(database)
        from django.core.management import call_command
        from django.db.models import Max, Min
        from django_tasks_db.models import DBTaskResult

        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        from noop_tasks import noop

        call_command("migrate", verbosity=0)
        for _ in range(COUNT):
            noop.enqueue()
        env = {
            **os.environ,
            "BENCH_DATABASE": json.dumps(database, default=str),
            "PYTHONPATH": os.path.dirname(os.path.abspath(__file__)),
        }
        began = time.perf_counter()
        procs = [subprocess.Popen([sys.executable, __file__, "--worker"], env=env) for _ in range(WORKERS)]
        for proc in procs:
            proc.wait(600)
        wall = time.perf_counter() - began
        done = DBTaskResult.objects.filter(status="SUCCESSFUL").count()
        span = DBTaskResult.objects.aggregate(first=Min("started_at"), last=Max("finished_at"))
        seconds = (span["last"] - span["first"]).total_seconds()
        print(json.dumps({
            "benchmark": "django_tasks_db_drain_noop_tasks", "django_tasks_db": version("django-tasks-db"),
            "database": "sqlite" if target == "sqlite" else "postgresql", "tasks": COUNT,
            "worker_processes": WORKERS, "succeeded": done, "first_start_to_last_end_seconds": round(seconds, 3),
            "tasks_per_second": round(done / seconds, 1), "tasks_per_second_including_startup": round(done / wall, 1),
            "cpus": os.cpu_count(), "load_average_1m": round(os.getloadavg()[0], 2),
        }, indent=2))  # fmt: skip
    finally:
        if scratch:
            from django.db import connections

            connections.close_all()
            import psycopg

            with psycopg.connect(target, autocommit=True) as admin:
                admin.execute(f"DROP DATABASE IF EXISTS {scratch} WITH (FORCE)")


if __name__ == "__main__":
    main()
