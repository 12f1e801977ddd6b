"""Wake-ups: rows that become due are announced (PostgreSQL NOTIFY) and idle workers LISTEN for them.

Announced by the code paths that make rows due: creating a queued row (a post_save receiver), a
hand-back and a re-queue (workers.claims / workers.failures). A NOTIFY is sent when its transaction
commits, so a woken worker always finds the row. Rows that become due by the passing of time are
not announced: the worker looks again when the earliest scheduled row is due (runner.Worker).

Behind a transaction-pooling PgBouncer LISTEN cannot work (the session that listens is handed to
other clients between transactions): set WORKERS_LISTEN = False there, and the workers poll. With
"auto" (the default) each worker checks at start that a NOTIFY sent through its ordinary connection
reaches its listener within a second, and polls if it does not.
"""

from __future__ import annotations

import logging
import os
import time
import uuid

from django.db import connections, transaction
from django.db.models.signals import post_save

from workers import claims, sql
from workers.conf import workers_settings
from workers.models import BaseModelWithStateMachine

logger = logging.getLogger(__name__)


def on_row_saved(
    sender, instance, created: bool, raw: bool = False, using: str | None = None, **kwargs
) -> None:
    """post_save: a queue row created due now is announced once its transaction commits."""
    if not created or raw or not isinstance(instance, BaseModelWithStateMachine):
        return
    connection = connections[using or sender._default_manager.db]
    if connection.vendor != "postgresql":
        return
    retry_at = getattr(instance, sender.retry_at_field_name, None)
    if retry_at is None or getattr(instance, sender.state_field_name, None) in sender.FINAL_STATES:
        return
    model = sender

    def announce() -> None:
        try:
            claims.notify_due(model)
        except Exception:  # a lost wake-up only costs latency: the workers also poll
            logger.warning("could not announce a new %s row", model._meta.label, exc_info=True)

    transaction.on_commit(announce, using=using)


def connect() -> None:
    post_save.connect(on_row_saved, dispatch_uid="workers.notify.on_row_saved")


class Listener:
    """A connection of its own that LISTENs on the channel; its socket goes into the worker's loop."""

    def __init__(self, alias: str = "default"):
        self.alias = alias
        self.connection = None  # a psycopg.Connection once open
        self.fd = -1

    @staticmethod
    def wanted(alias: str = "default") -> bool:
        return (
            connections[alias].vendor == "postgresql"
            and workers_settings.LISTEN not in (False, None, "off")
            and not workers_settings.POOLED
        )

    def open(self) -> int:
        """Connect and LISTEN; return the socket's fd."""
        import psycopg  # only with PostgreSQL (the `postgres` extra); SQLite installs lack it

        params = connections[self.alias].get_connection_params()
        params.pop("cursor_factory", None)
        params.pop("context", None)
        self.connection = psycopg.connect(**params, autocommit=True)
        self.connection.execute(sql.listen_statement())
        self.fd = self.connection.fileno()
        return self.fd

    def probe(self, timeout: float = 1.0) -> bool:
        """True if a NOTIFY sent through Django's connection reaches this listener in time."""
        token = f"probe|{os.getpid()}|{uuid.uuid4().hex}"
        with connections[self.alias].cursor() as cursor:
            cursor.execute(*sql.notify_statement("postgresql", token))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for notify in self.connection.notifies(timeout=max(0.0, deadline - time.monotonic())):
                if notify.payload == token:
                    return True
        return False

    def drain(self) -> list[str]:
        """The payloads received so far (never blocks)."""
        return [notify.payload for notify in self.connection.notifies(timeout=0)]

    def close(self) -> None:
        if self.connection is not None:
            try:
                self.connection.close()
            except Exception:
                pass
            self.connection = None
