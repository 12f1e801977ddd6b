"""The claim: move due rows' retry_at to the database's now + lease, so exactly one worker owns them.

Every claim is one statement (workers.sql has its text per vendor), so two workers can never both
win a row: PostgreSQL locks the candidate rows with FOR UPDATE SKIP LOCKED (concurrent claimers
skip each other's rows instead of waiting), SQLite serialises writers on the database lock and
re-checks the WHERE clause under it. The retry_at a claim writes is its token (workers.fencing).
"""

from __future__ import annotations

import fcntl
import os
import threading
from collections.abc import Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

from django.db import connections, models

from workers import sql

_claim_lock_files: dict[str, int] = {}
_claim_lock_guard = threading.Lock()


@contextmanager
def sqlite_claim_lock(connection):
    """Serialise claimers of one SQLite file through an flock next to it.

    SQLite lets one writer in at a time; the others wait in its busy handler, which sleeps 1, 2, 5,
    10... ms between attempts, so claimers that keep colliding get slower as workers are added. A
    blocking flock wakes the next claimer as soon as the previous one commits. (In-memory databases
    have a single process and need nothing.)
    """
    name = str(connection.settings_dict.get("NAME") or "")
    if connection.vendor != "sqlite" or not name or name == ":memory:" or name.startswith("file:"):
        yield
        return
    path = str(Path(name).resolve()) + "-claims.lock"
    with _claim_lock_guard:
        fd = _claim_lock_files.get(path)
        if fd is None:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
            _claim_lock_files[path] = fd
    with _claim_lock_guard:  # threads of one process share the fd (and so the flock): take turns
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)


def due_rows(model, extra_where: models.Q | None = None) -> models.QuerySet:
    """Rows of `model` due now by the database's clock and not in a final state."""
    queryset = model._default_manager.filter(**{f"{model.retry_at_field_name}__lte": sql.DbNow()}).exclude(
        **{f"{model.state_field_name}__in": model.FINAL_STATES}
    )
    return queryset if extra_where is None else queryset.filter(extra_where)


def pending_rows(model, extra_where: models.Q | None = None) -> models.QuerySet:
    """Rows of `model` with a schedule (retry_at set) and not in a final state: due now or later."""
    queryset = model._default_manager.filter(**{f"{model.retry_at_field_name}__isnull": False}).exclude(
        **{f"{model.state_field_name}__in": model.FINAL_STATES}
    )
    return queryset if extra_where is None else queryset.filter(extra_where)


def claim_due_instances(model, *, lease: float, limit: int, extra_where: models.Q | None = None) -> list:
    """Claim up to `limit` due rows (oldest retry_at first) for `lease` seconds; return them whole.

    One statement claims the rows and returns every column (as model instances, in pk order); each
    row's retry_at is the claim's token.
    """
    if limit <= 0:
        return []
    alias = model._default_manager.db
    connection = connections[alias]
    fields = model._meta.concrete_fields
    candidates = due_rows(model, extra_where).order_by(model.retry_at_field_name)[:limit]
    statement, params = sql.claim_statement(
        model,
        candidates,
        retry_field=model.retry_at_field_name,
        lease=lease,
        returning=[f.column for f in fields],
    )
    with sqlite_claim_lock(connection):
        with connection.cursor() as cursor:
            cursor.execute(statement, params)
            raw_rows = cursor.fetchall()
    return sorted(_instances(model, alias, connection, fields, raw_rows), key=lambda row: row.pk)


def _instances(model, alias, connection, fields, raw_rows) -> list:
    """Model instances from raw column values, converted as a SELECT would (dates, JSON, UUIDs)."""
    table = model._meta.db_table
    converters = []
    for field in fields:
        column = field.get_col(table)
        converters.append(
            (column, connection.ops.get_db_converters(column) + column.get_db_converters(connection))
        )
    names = [f.attname for f in fields]
    instances = []
    for raw in raw_rows:
        values = []
        for value, (column, funcs) in zip(raw, converters, strict=True):
            for func in funcs:
                value = func(value, column, connection)
            values.append(value)
        instances.append(model.from_db(alias, names, values))
    return instances


def claim_one(model, pk, *, expected_retry_at: datetime, lease: float) -> datetime | None:
    """Claim one row if its retry_at is still what the caller saw and it is due; return the token."""
    moved, token = _move(model, [pk], token=expected_retry_at, lease=lease, due_only=True)
    return token if moved else None


def move_claims(
    model, pks: Sequence, *, token: datetime, lease: float | None
) -> tuple[list, datetime | None]:
    """Move the claim `token` on `pks` to the database's now + lease (now: hand back); (pks moved, new token).

    Guarded by the token, so only a claim still held is moved: never one that expired and was taken
    by another worker, nor a row a tick rescheduled. A hand-back announces the rows (NOTIFY).
    """
    moved, new_token = _move(model, pks, token=token, lease=lease)
    if moved and lease is None:
        notify_due(model)
    return moved, new_token


def _move(model, pks, *, token, lease, due_only: bool = False) -> tuple[list, datetime | None]:
    if not pks or token is None:
        return [], None
    alias = model._default_manager.db
    connection = connections[alias]
    due_unless = (model.state_field_name, list(model.FINAL_STATES)) if due_only else None
    statement, params = sql.move_statement(
        model,
        list(pks),
        retry_field=model.retry_at_field_name,
        token=token,
        lease=lease,
        due_unless=due_unless,
    )
    with sqlite_claim_lock(connection), connection.cursor() as cursor:
        cursor.execute(statement, params)
        rows = cursor.fetchall()
    pk_field = model._meta.pk
    moved = [pk_field.to_python(row[0]) for row in rows]
    return moved, (sql.to_datetime(rows[0][1], connection) if rows else None)


def notify_due(model, scope: str = "") -> None:
    """Announce that rows of `model` became due (PostgreSQL NOTIFY, at commit); nothing elsewhere."""
    connection = connections[model._default_manager.db]
    statement = sql.notify_statement(connection.vendor, f"{model._meta.label_lower}|{scope}")
    if statement is None:
        return
    with connection.cursor() as cursor:
        cursor.execute(*statement)
