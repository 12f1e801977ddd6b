"""The runner's database connections: bounded (timeouts, keepalives), and recovered after faults.

`configure()` runs once in each runner process before it connects. It never changes what the project
set: on PostgreSQL it adds connect_timeout, TCP keepalives and tcp_user_timeout to the connection
OPTIONS where they are missing (so a partition cannot hang a connect or a read for ever), and sets
statement, lock and idle-in-transaction timeouts on each new runner session (one statement; skipped
behind a transaction pooler, where session settings would leak to other clients: set them on the
role there, ALTER ROLE ... SET statement_timeout = ...).
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time

from django.db import DatabaseError, InterfaceError, OperationalError, connections
from django.db.backends.signals import connection_created

from workers import sql
from workers.conf import workers_settings

logger = logging.getLogger(__name__)


#: SQLSTATEs of a server that is shutting down or starting: the statement was fine, try again later.
CONNECTION_SQLSTATES = frozenset({"57P01", "57P02", "57P03"})


def configure(alias: str = "default") -> None:
    """Bound this process's connections to `alias` (see the module docstring)."""
    connection = connections[alias]
    if connection.vendor != "postgresql":
        return
    options = connection.settings_dict.setdefault("OPTIONS", {})
    defaults = {
        "connect_timeout": workers_settings.CONNECT_TIMEOUT,
        "keepalives": 1,
        "keepalives_idle": workers_settings.TCP_KEEPALIVES_IDLE,
        "keepalives_interval": workers_settings.TCP_KEEPALIVES_INTERVAL,
        "keepalives_count": workers_settings.TCP_KEEPALIVES_COUNT,
        "tcp_user_timeout": workers_settings.TCP_USER_TIMEOUT_MS,
    }
    for name, value in defaults.items():
        if value is not None:
            options.setdefault(name, value)
    connection_created.connect(_set_session, dispatch_uid="workers.dbsession")


def _set_session(sender, connection, **kwargs) -> None:
    if connection.vendor != "postgresql" or workers_settings.POOLED:
        return
    statement, params = sql.session_statement(
        statement_timeout=workers_settings.STATEMENT_TIMEOUT,
        idle_in_transaction_timeout=workers_settings.IDLE_IN_TRANSACTION_TIMEOUT,
        lock_timeout=workers_settings.LOCK_TIMEOUT,
        synchronous_commit=bool(workers_settings.SYNCHRONOUS_COMMIT),
        # pg_stat_activity shows which runner process and thread a session belongs to.
        application_name=f"runworker {os.getpid()} {threading.current_thread().name}",
    )
    with connection.cursor() as cursor:
        cursor.execute(statement, params)


def is_connection_error(exc: BaseException, alias: str = "default") -> bool:
    """True when `exc` means the database could not be reached or used for now (not that a statement
    was wrong): a lost PostgreSQL connection, or SQLite's write lock held past the busy timeout."""
    if isinstance(exc, InterfaceError):
        return True
    if not isinstance(exc, OperationalError):
        return False
    connection = connections[alias]
    if connection.vendor == "sqlite":
        message = str(exc).lower()
        return "database is locked" in message or "database is busy" in message
    # PostgreSQL: the server's own word (SQLSTATE) when there is one. Class 08 is a connection
    # exception, 57P01-57P03 a server shutting down or starting up; an OperationalError without a
    # SQLSTATE comes from the client side (connection refused, lost, timed out).
    sqlstate = getattr(exc.__cause__, "sqlstate", None) or ""
    return not sqlstate or sqlstate.startswith("08") or sqlstate in CONNECTION_SQLSTATES


def drop_broken(alias: str = "default") -> None:
    """Close a connection that had an error and no longer works (the next query reconnects)."""
    connection = connections[alias]
    if connection.connection is None:
        return
    if connection.errors_occurred and not connection.is_usable():
        try:
            connection.close()
        except DatabaseError:
            connection.connection = None


def reset(alias: str = "default") -> None:
    """Throw the connection away (after a connection error), whatever its state."""
    connection = connections[alias]
    try:
        connection.close()
    except Exception:
        connection.connection = None
    connection.in_atomic_block = False
    connection.needs_rollback = False


class Backoff:
    """Bounded, jittered exponential delays: 0.1 s doubling to `cap`, each drawn from [d/2, d]."""

    def __init__(self, first: float = 0.1, cap: float = 5.0):
        self.first, self.cap = first, cap
        self.failures = 0

    def next(self) -> float:
        self.failures += 1
        delay = min(self.cap, self.first * 2 ** (self.failures - 1))
        return delay / 2 + random.uniform(0, delay / 2)

    def reset(self) -> None:
        self.failures = 0


def ping(alias: str = "default") -> bool:
    """One `SELECT 1`; False (and the connection dropped) if the database does not answer."""
    try:
        with connections[alias].cursor() as cursor:
            cursor.execute("SELECT 1")
        return True
    except DatabaseError:
        reset(alias)
        return False


def wait_for_database(should_stop, sleep, alias: str = "default", what: str = "database") -> bool:
    """Retry `SELECT 1` with jittered backoff until it answers (True) or should_stop() (False)."""
    backoff = Backoff()
    started = time.monotonic()
    while not should_stop():
        if ping(alias):
            if backoff.failures:
                logger.warning("%s answers again after %.1fs", what, time.monotonic() - started)
            return True
        if backoff.failures == 0:
            logger.warning("%s does not answer; retrying with backoff", what)
        sleep(backoff.next())
    return False
