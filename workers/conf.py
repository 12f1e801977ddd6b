"""WORKERS_* settings with their defaults, read lazily (never at import time).

`workers_settings.MAX_ATTEMPTS` returns `settings.WORKERS_MAX_ATTEMPTS` when the project sets it, else
the class attribute below (procrastinate's `contrib/django/settings.py` pattern).
"""

from __future__ import annotations

from django.conf import settings as django_settings


class _Settings:
    #: Failed ticks of one row before it is parked (not due until re-queued by an operator).
    MAX_ATTEMPTS = 10
    #: Seconds before the first retry of a failed tick; doubled per further failure, jittered.
    RETRY_BASE = 10.0
    #: The longest wait between two attempts, in seconds.
    RETRY_CAP = 3600.0
    #: PostgreSQL LISTEN/NOTIFY wake-ups: "auto" (LISTEN and check that a NOTIFY comes back), or False
    #: (poll only: set this behind a transaction-pooling PgBouncer, which cannot carry LISTEN).
    LISTEN = "auto"
    #: Longest idle wait between two looks at the queues, in seconds, when NOTIFY wakes the workers.
    IDLE_MAX_WAIT_LISTENING = 30.0
    #: Longest idle wait when polling (SQLite, or LISTEN off): what new work may wait to be seen.
    IDLE_MAX_WAIT_POLLING = 4.0
    #: Session settings of the runner's PostgreSQL connections; None leaves the server's value.
    STATEMENT_TIMEOUT = 300.0
    IDLE_IN_TRANSACTION_TIMEOUT = 60.0
    LOCK_TIMEOUT = 30.0
    #: Client-side connection options the runner applies unless the project set them in OPTIONS.
    CONNECT_TIMEOUT = 10
    TCP_KEEPALIVES_IDLE = 15
    TCP_KEEPALIVES_INTERVAL = 5
    TCP_KEEPALIVES_COUNT = 3
    TCP_USER_TIMEOUT_MS = 30000
    #: Runner connections commit asynchronously (see docs/runner.md, "Durability"); True waits for
    #: the WAL flush on every commit, as the server default does.
    SYNCHRONOUS_COMMIT = False
    #: A transaction-pooling connection pooler (PgBouncer) sits in front of the database: no session
    #: SETs, no LISTEN. The runner cannot detect it; set this to True there.
    POOLED = False
    #: The most worker processes `runworker --workers` may start on one host (each is a Python process
    #: with its own database connections); a larger number is refused before anything starts.
    MAX_WORKERS = 64
    #: Worker restarts allowed per window (a crash loop is slowed down, never given up on).
    RESTART_BUDGET = 10
    RESTART_WINDOW = 60.0

    def __getattribute__(self, name: str):
        default = super().__getattribute__(name)
        if name.startswith("_"):
            return default
        return getattr(django_settings, f"WORKERS_{name}", default)


workers_settings = _Settings()
