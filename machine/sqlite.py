"""SQLite connections that several worker processes can share, whatever the project's settings.

Django's default SQLite settings (no OPTIONS) give a rollback journal, a 5 s busy timeout and
deferred transactions. Several `runworker` processes then fail with "database is locked": a
transaction that read before it writes cannot wait for the write lock (SQLite refuses to, as
waiting could deadlock), and readers and writers block each other in the rollback journal.

So on every new SQLite connection (`connection_created`) the app sets, unless the project's own
OPTIONS already choose it:
  * `PRAGMA journal_mode=WAL` for a file database (readers no longer block the writer; persistent);
  * `PRAGMA busy_timeout` (BUSY_TIMEOUT_MS): a writer waits its turn instead of failing;
  * `PRAGMA synchronous=NORMAL` for a file database (safe with WAL, one fsync per checkpoint);
  * IMMEDIATE transactions (Django's `OPTIONS["transaction_mode"]`, read by the connection when it
    opens): a transaction takes the write lock at BEGIN, where waiting is allowed.
`MACHINE_SQLITE_TUNING = False` turns all of it off (e.g. for a database on a network filesystem,
where WAL does not work); the system check `machine.W001` then says what to add to the settings.
"""

from __future__ import annotations

import logging
from typing import Any

from machine.conf import machine_settings

logger = logging.getLogger(__name__)

#: How long a writer waits for the lock before "database is locked" (milliseconds).
BUSY_TIMEOUT_MS = 30_000

#: What to put in settings.DATABASES[alias]["OPTIONS"] by hand when the app does not tune SQLite.
RECOMMENDED_OPTIONS = (
    '{"transaction_mode": "IMMEDIATE", "timeout": 30, '
    '"init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;"}'
)


def _init_command(options: dict[str, Any]) -> str:
    return str(options.get("init_command") or "").lower().replace(" ", "")


def _chooses(options: dict[str, Any], pragma: str) -> bool:
    """True when the project's init_command sets this PRAGMA itself."""
    return f"{pragma}=" in _init_command(options)


def tune_connection(sender=None, connection=None, **kwargs) -> None:
    """`connection_created` receiver: make a new SQLite connection safe for several writer processes."""
    if connection is None or connection.vendor != "sqlite" or not machine_settings.SQLITE_TUNING:
        return
    options = connection.settings_dict.get("OPTIONS") or {}
    raw = connection.connection
    if "timeout" not in options and not _chooses(options, "busy_timeout"):
        raw.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    if not connection.is_in_memory_db():
        if not _chooses(options, "journal_mode"):
            # Persistent in the file: only the first connection switches it (that needs a moment
            # of exclusive access, waited for through the busy timeout set above).
            (mode,) = raw.execute("PRAGMA journal_mode").fetchone()
            if str(mode).lower() != "wal":
                (mode,) = raw.execute("PRAGMA journal_mode = WAL").fetchone()
                if str(mode).lower() != "wal":
                    logger.warning("SQLite %s stays in journal mode %r (WAL refused)", connection.alias, mode)
        if not _chooses(options, "synchronous"):
            raw.execute("PRAGMA synchronous = NORMAL")
    if connection.transaction_mode is None:
        # The wrapper reads OPTIONS["transaction_mode"] into this attribute each time it connects
        # (Django >= 5.1) and uses it at every BEGIN; the project chose nothing (or None, Django's
        # default), so we choose. An explicit "DEFERRED" is respected (and reported by machine.W001).
        connection.transaction_mode = "IMMEDIATE"


def is_weak(settings_dict: dict[str, Any]) -> bool:
    """True for an SQLite database that several workers cannot safely share as configured."""
    if settings_dict.get("ENGINE") != "django.db.backends.sqlite3":
        return False
    options = settings_dict.get("OPTIONS") or {}
    mode = str(options.get("transaction_mode") or "").upper()
    if machine_settings.SQLITE_TUNING:
        # Only an explicit DEFERRED defeats the tuning (journal mode and timeout are set anyway
        # unless chosen, and a chosen value is the project's deliberate call).
        return mode == "DEFERRED"
    return mode not in ("IMMEDIATE", "EXCLUSIVE") or "journal_mode=wal" not in _init_command(options)
