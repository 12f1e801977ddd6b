"""Shared set-up for the benchmark scripts: a throwaway DATA_DIR and a migrated database."""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def setup_django() -> str:
    """Configure Django on a throwaway, migrated database (SQLite, or PostgreSQL when DATABASE_URL is set).

    The database is created the way the test runner creates one, and dropped at exit, so a benchmark
    never touches the data of the database DATABASE_URL names.
    """
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("DATA_DIR", tempfile.mkdtemp(prefix="machine-bench-"))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "demo.settings")
    os.environ.setdefault("MACHINE_PUBLIC_IP_LOOKUP", "0")
    os.environ.setdefault("TEST_DATABASE_NAME", f"machine_bench_{os.getpid()}")
    import atexit

    import django
    from django.db import connection

    django.setup()
    if connection.vendor == "sqlite":
        os.environ["TEST_DATABASE_NAME"] = str(Path(os.environ["DATA_DIR"]) / "bench.sqlite3")
        connection.settings_dict["TEST"]["NAME"] = os.environ["TEST_DATABASE_NAME"]
    old_name = connection.settings_dict["NAME"]
    connection.creation.create_test_db(verbosity=0, autoclobber=True, serialize=False)
    atexit.register(connection.creation.destroy_test_db, old_name, verbosity=0)
    return connection.vendor


def per_call(fn, repeat: int) -> float:
    """Mean seconds per call of fn over `repeat` calls (after one warm-up call)."""
    fn()
    started = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - started) / repeat
