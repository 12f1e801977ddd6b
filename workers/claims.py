"""The claim: move due rows' retry_at into the future so exactly one worker owns them.

One small function per database vendor. Both are a single statement, so two workers can never
both win a row: PostgreSQL locks the candidate rows with FOR UPDATE SKIP LOCKED (concurrent
claimers skip each other's rows instead of waiting), SQLite serialises writers on the database
lock and re-checks the WHERE clause under it.
"""

from __future__ import annotations

import fcntl
import os
import threading
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

from django.db import connections, models, transaction


def _sql_names(model: type[models.Model], state_field: str, retry_field: str) -> tuple[str, str, str, str]:
    meta = model._meta
    qn = connections[model.objects.db].ops.quote_name
    return (
        qn(meta.db_table),
        qn(meta.pk.column),
        qn(meta.get_field(state_field).column),
        qn(meta.get_field(retry_field).column),
    )


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


def _claim_sql(model, *, state_field, retry_field, final_states, now, until, limit, extra_where, returning):
    """One UPDATE that claims up to `limit` due rows and returns `returning` of each."""
    candidates = model._default_manager.filter(**{f"{retry_field}__lte": now}).exclude(
        **{f"{state_field}__in": final_states}
    )
    if extra_where is not None:
        candidates = candidates.filter(extra_where)
    candidates = candidates.order_by(retry_field).values("pk")[:limit]
    alias = model._default_manager.db
    connection = connections[alias]
    table, pk, _state, retry = _sql_names(model, state_field, retry_field)
    field = model._meta.get_field(retry_field)
    inner_sql, inner_params = candidates.query.get_compiler(using=alias).as_sql()
    if connection.vendor == "postgresql":
        # Concurrent claimers skip each other's candidate rows instead of queueing behind them.
        # (Appended by hand: Django only compiles select_for_update() inside atomic(), and one
        # statement in autocommit needs no BEGIN/COMMIT round trips.)
        inner_sql += " FOR UPDATE SKIP LOCKED"
    # retry_at <= now is re-checked in the outer statement: on SQLite the subquery and the update
    # run under one write lock, on PostgreSQL the locked rows are re-read after the lock is taken.
    sql = (
        f"UPDATE {table} SET {retry} = %s WHERE {pk} IN ({inner_sql}) AND {retry} <= %s RETURNING {returning}"
    )
    params = [
        field.get_db_prep_value(until, connection),
        *inner_params,
        field.get_db_prep_value(now, connection),
    ]
    return sql, params


def claim_due_instances(
    model: type[models.Model],
    *,
    state_field: str,
    retry_field: str,
    final_states: list[str],
    now: datetime,
    until: datetime,
    limit: int,
    extra_where: models.Q | None = None,
) -> list:
    """Claim up to `limit` due rows (retry_at <= now, not final) by setting retry_at = until.

    The one statement returns the claimed rows whole (as model instances, in pk order): no second query.
    """
    if limit <= 0:
        return []
    alias = model._default_manager.db
    connection = connections[alias]
    fields = model._meta.concrete_fields
    returning = ", ".join(connection.ops.quote_name(f.column) for f in fields)
    options = dict(
        state_field=state_field, retry_field=retry_field, final_states=final_states, now=now,
        until=until, limit=limit, extra_where=extra_where, returning=returning,
    )  # fmt: skip
    sql, params = _claim_sql(model, **options)
    # One statement: atomic on its own (autocommit), or part of the caller's transaction.
    with sqlite_claim_lock(connection):
        with connection.cursor() as cursor:
            cursor.execute(sql, params)
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


def claim_one(
    model: type[models.Model],
    pk,
    *,
    state_field: str,
    retry_field: str,
    final_states: list[str],
    expected_retry_at: datetime | None,
    now: datetime,
    until: datetime,
    extra: dict | None = None,
) -> bool:
    """Conditional update of one row: wins only if its retry_at is still what the caller saw and due.

    `extra` are more columns the same statement writes (e.g. modified_at).
    """
    if expected_retry_at is None or expected_retry_at > now:
        return False
    updated = (
        model._default_manager.filter(pk=pk, **{retry_field: expected_retry_at, f"{retry_field}__lte": now})
        .exclude(**{f"{state_field}__in": final_states})
        .update(**{retry_field: until, **(extra or {})})
    )
    return updated == 1


def move_claims(
    model: type[models.Model],
    pks: list,
    *,
    retry_field: str,
    expected: datetime,
    until: datetime,
) -> list:
    """Set retry_at = until on the rows of `pks` whose retry_at is still `expected`; return those pks.

    The guard makes this safe against a claim that already expired and was taken by another worker
    (its retry_at changed) and against a tick that rescheduled its own row (ditto): only a claim we
    still hold is moved. Used to renew a claim (until in the future) and to hand it back (until = now).
    """
    if not pks:
        return []
    alias = model._default_manager.db
    connection = connections[alias]
    table, pk, _state, retry = _sql_names(model, retry_field, retry_field)
    field = model._meta.get_field(retry_field)
    pk_field = model._meta.pk
    placeholders = ", ".join(["%s"] * len(pks))
    sql = f"UPDATE {table} SET {retry} = %s WHERE {retry} = %s AND {pk} IN ({placeholders}) RETURNING {pk}"
    params = [
        field.get_db_prep_value(until, connection),
        field.get_db_prep_value(expected, connection),
        *(pk_field.get_db_prep_value(value, connection) for value in pks),
    ]
    with transaction.atomic(using=alias), connection.cursor() as cursor:
        cursor.execute(sql, params)
        rows = cursor.fetchall()
    return [pk_field.to_python(row[0]) for row in rows]
