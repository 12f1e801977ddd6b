"""Test settings: the demo project plus the example downstream app."""

import os

from demo.settings import *  # noqa: F403
from demo.settings import INSTALLED_APPS

INSTALLED_APPS = [*INSTALLED_APPS, "tests.exampleapp", "tests.archiver"]
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
# Offline machines: tests that want the public-IP lookup turn it on explicitly.
MACHINE_PUBLIC_IP_LOOKUP = False

# Runner subprocesses started by the tests take their retry schedule from the environment.
WORKERS_RESTART_BUDGET = int(os.environ.get("WORKERS_RESTART_BUDGET", "10"))
WORKERS_RESTART_WINDOW = float(os.environ.get("WORKERS_RESTART_WINDOW", "60"))
WORKERS_RETRY_BASE = float(os.environ.get("WORKERS_RETRY_BASE", "10"))
WORKERS_MAX_ATTEMPTS = int(os.environ.get("WORKERS_MAX_ATTEMPTS", "10"))
WORKERS_LISTEN = os.environ.get("WORKERS_LISTEN", "auto") != "off" and "auto"
WORKERS_POOLED = os.environ.get("WORKERS_POOLED", "") == "1"
WORKERS_SYNCHRONOUS_COMMIT = os.environ.get("WORKERS_SYNCHRONOUS_COMMIT", "") == "1"

# Fault-injection tests: a short SQLite busy timeout turns a held write lock into errors (what a
# database outage is to PostgreSQL), and a clock offset simulates a host whose clock is off.
if os.environ.get("TEST_SQLITE_TIMEOUT") and DATABASES["default"]["ENGINE"].endswith("sqlite3"):  # noqa: F405
    _timeout = float(os.environ["TEST_SQLITE_TIMEOUT"])
    _options = DATABASES["default"].setdefault("OPTIONS", {})  # noqa: F405
    _options["timeout"] = _timeout
    _options["init_command"] = (
        f"PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA busy_timeout={int(_timeout * 1000)};"
    )
if os.environ.get("TEST_CLOCK_OFFSET"):
    import datetime as _datetime

    from django.utils import timezone as _timezone

    _offset = _datetime.timedelta(seconds=float(os.environ["TEST_CLOCK_OFFSET"]))
    _now = _timezone.now
    _timezone.now = lambda: _now() + _offset
