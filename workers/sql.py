"""Every statement of the runner that Django's ORM cannot write portably, one function each per vendor.

The rest of `workers` goes through the ORM. What is here, and why it is not ORM:
- the database's clock (`DbNow`): claims and their expiry are computed by the database, never by a
  worker's clock, so a paused worker or a host whose clock is off cannot extend or shorten a claim;
- the claim: one `UPDATE ... WHERE pk IN (SELECT ... [FOR UPDATE SKIP LOCKED]) RETURNING ...`
  (Django has no UPDATE ... RETURNING, and compiles select_for_update() only inside atomic());
- moving claims (renew, hand back): an UPDATE guarded by the claim token, returning the new token;
- the fence lock taken at the start of a fenced transaction;
- NOTIFY / LISTEN and the session settings of the runner's connections (PostgreSQL only).

tests/runner/test_sql.py pins the text of each statement per backend.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from datetime import UTC, datetime

from django.conf import settings
from django.db import connections, models
from django.utils import timezone
from django.utils.dateparse import parse_datetime

#: The NOTIFY channel rows that became due are announced on (payload: "<app_label.model>|<scope>").
CHANNEL = "workers_due"
#: SQLite's strftime format of its clock, to which three digits are appended: Django's own text form
#: of a datetime ("YYYY-MM-DD HH:MM:SS.ffffff"), so stored values compare and match as Django's do.
SQLITE_CLOCK_FORMAT = "%Y-%m-%d %H:%M:%f"


def _sqlite_clock(seconds: float | None, digits: str) -> tuple[str, list]:
    modifiers = ["%s"] if seconds is not None else []
    params: list = [SQLITE_CLOCK_FORMAT]
    if seconds is not None:
        params.append(f"{seconds:+.3f} seconds")
    if not settings.USE_TZ:
        modifiers.append("'localtime'")
    sql = "(strftime(%s, 'now'" + "".join(f", {m}" for m in modifiers) + ") || %s)"
    return sql, [*params, digits]


def clock_sql(
    vendor: str, seconds: float | None = None, nonce: bool = False, floor: bool = False
) -> tuple[str, list]:
    """SQL of the database's time now (plus `seconds`), as a datetime column stores it.

    PostgreSQL: STATEMENT_TIMESTAMP() (one value per statement, microseconds). SQLite: strftime() of
    'now' (milliseconds) with three more digits: "999" for now itself (the end of this millisecond,
    so a row written by Python in it is due), "000" past now or with `floor` (a value to store: not
    later than Python's clock), or with `nonce` a random 001-999, so that two claims made in the
    same millisecond still get different tokens.
    """
    if vendor == "postgresql":
        if seconds is None:
            return "STATEMENT_TIMESTAMP()", []
        return "(STATEMENT_TIMESTAMP() + %s * INTERVAL '1 second')", [seconds]
    if vendor == "sqlite":
        digits = (
            f"{random.randint(1, 999):03d}" if nonce else ("999" if seconds is None and not floor else "000")
        )
        return _sqlite_clock(seconds, digits)
    raise NotImplementedError(f"the runner supports PostgreSQL and SQLite, not {vendor}")


class DbNow(models.Func):
    """The database's clock (plus `seconds`) as an ORM expression, e.g. `filter(retry_at__lte=DbNow())`."""

    output_field = models.DateTimeField()

    def __init__(self, seconds: float | None = None):
        super().__init__()
        self.seconds = seconds

    def as_sql(self, compiler, connection, **extra):
        return clock_sql(connection.vendor, self.seconds)


def _quote(model: type[models.Model], *fields: str) -> list[str]:
    qn = connections[model._default_manager.db].ops.quote_name
    meta = model._meta
    return [qn(meta.db_table), *(qn(meta.get_field(name).column) for name in fields)]


def claim_statement(
    model: type[models.Model],
    candidates: models.QuerySet,
    *,
    retry_field: str,
    lease: float,
    returning: Sequence[str],
) -> tuple[str, list]:
    """UPDATE the candidate rows' retry_at to the database's now + lease; RETURNING `returning` columns.

    `candidates` selects the pks to claim, ordered and limited (retry_at <= DbNow() among its filters).
    On PostgreSQL the subquery locks them FOR UPDATE SKIP LOCKED: concurrent claimers skip each
    other's rows instead of queueing behind them. retry_at <= now is checked again by the UPDATE: a row
    locked by a concurrent claimer is re-read once that one commits (PostgreSQL), and on SQLite the
    subquery and the update run under one write lock.
    """
    alias = model._default_manager.db
    connection = connections[alias]
    table, pk, retry = _quote(model, model._meta.pk.name, retry_field)
    inner_sql, inner_params = candidates.values("pk").query.get_compiler(using=alias).as_sql()
    if connection.vendor == "postgresql":
        inner_sql += " FOR UPDATE SKIP LOCKED"
    lease_sql, lease_params = clock_sql(connection.vendor, lease, nonce=True)
    now_sql, now_params = clock_sql(connection.vendor)
    cols = ", ".join(connection.ops.quote_name(column) for column in returning)
    sql = (
        f"UPDATE {table} SET {retry} = {lease_sql} "
        f"WHERE {pk} IN ({inner_sql}) AND {retry} <= {now_sql} RETURNING {cols}"
    )
    return sql, [*lease_params, *inner_params, *now_params]


def move_statement(
    model: type[models.Model], pks: Sequence, *, retry_field: str, token: datetime, lease: float | None,
    due_unless: tuple[str, Sequence[str]] | None = None,
) -> tuple[str, list]:  # fmt: skip
    """Move the claim `token` on `pks` to now + lease (renew), or to now (hand back: lease None).

    With `due_unless=(state_field, final_states)` only rows due now and not final move: a claim of
    one row whose retry_at the caller read (the original's claim_for_worker).
    """
    alias = model._default_manager.db
    connection = connections[alias]
    table, pk, retry = _quote(model, model._meta.pk.name, retry_field)
    due_sql, due_params = "", []
    if due_unless is not None:
        state_field, finals = due_unless
        now_sql, due_params = clock_sql(connection.vendor)
        due_sql = f" AND {retry} <= {now_sql}"
        if finals:
            state = _quote(model, state_field)[1]
            due_sql += f" AND {state} NOT IN ({', '.join(['%s'] * len(finals))})"
            due_params = [*due_params, *finals]
    to_sql, to_params = (
        clock_sql(connection.vendor, lease, nonce=True) if lease else clock_sql(connection.vendor, floor=True)
    )
    field = model._meta.get_field(retry_field)
    pk_field = model._meta.pk
    placeholders = ", ".join(["%s"] * len(pks))
    sql = (
        f"UPDATE {table} SET {retry} = {to_sql} "
        f"WHERE {retry} = %s AND {pk} IN ({placeholders}){due_sql} RETURNING {pk}, {retry}"
    )
    params = [
        *to_params,
        field.get_db_prep_value(token, connection),
        *(pk_field.get_db_prep_value(value, connection) for value in pks),
        *due_params,
    ]
    return sql, params


def fence_statement(
    model: type[models.Model], pk, *, retry_field: str, token: datetime | None
) -> tuple[str, list]:
    """Lock the claimed row for the rest of the transaction, if its claim is still `token`.

    PostgreSQL: SELECT ... FOR NO KEY UPDATE (blocks renewals, claims and other fenced writes of this
    row until commit, not the inserts of rows that reference it). SQLite: a no-op UPDATE, which takes
    the database's write lock. Either way no other writer can move the claim before the commit.
    """
    alias = model._default_manager.db
    connection = connections[alias]
    table, pk_col, retry = _quote(model, model._meta.pk.name, retry_field)
    field = model._meta.get_field(retry_field)
    guard = f"{retry} IS NULL" if token is None else f"{retry} = %s"
    params = [model._meta.pk.get_db_prep_value(pk, connection)]
    if token is not None:
        params.append(field.get_db_prep_value(token, connection))
    if connection.vendor == "postgresql":
        return f"SELECT 1 FROM {table} WHERE {pk_col} = %s AND {guard} FOR NO KEY UPDATE", params
    return f"UPDATE {table} SET {retry} = {retry} WHERE {pk_col} = %s AND {guard}", params


def next_due_statement(
    alias: str, candidates: Sequence[models.QuerySet], retry_field_names: Sequence[str]
) -> tuple[str, list]:
    """One row: the earliest retry_at of each candidate queryset, then the database's now."""
    connection = connections[alias]
    parts, params = [], []
    for queryset, retry_field in zip(candidates, retry_field_names, strict=True):
        sub = queryset.order_by(retry_field).values_list(retry_field)[:1]
        sql, sub_params = sub.query.get_compiler(using=alias).as_sql()
        parts.append(f"({sql})")
        params.extend(sub_params)
    now_sql, now_params = clock_sql(connection.vendor)
    return f"SELECT {', '.join([*parts, now_sql])}", [*params, *now_params]


def to_datetime(value, connection) -> datetime | None:
    """A datetime read by a raw cursor (SQLite gives text) as Django would return it."""
    if value is None or isinstance(value, datetime):
        if isinstance(value, datetime) and settings.USE_TZ and timezone.is_naive(value):
            return timezone.make_aware(value, UTC)
        return value
    parsed = parse_datetime(str(value))
    if parsed is not None and settings.USE_TZ and timezone.is_naive(parsed):
        parsed = timezone.make_aware(parsed, UTC)
    return parsed


def notify_statement(vendor: str, payload: str) -> tuple[str, list] | None:
    """NOTIFY the channel (PostgreSQL; delivered when the transaction commits); None elsewhere."""
    if vendor != "postgresql":
        return None
    return "SELECT pg_notify(%s, %s)", [CHANNEL, payload]


def listen_statement() -> str:
    """LISTEN on the channel (PostgreSQL, run on a listener connection of its own)."""
    return f"LISTEN {CHANNEL}"


def session_statement(
    *, statement_timeout: float | None, idle_in_transaction_timeout: float | None,
    lock_timeout: float | None, synchronous_commit: bool, application_name: str = "",
) -> tuple[str, list]:  # fmt: skip
    """One PostgreSQL statement setting the runner's session parameters (set_config, not SET: one trip)."""
    values = {
        "statement_timeout": statement_timeout,
        "idle_in_transaction_session_timeout": idle_in_transaction_timeout,
        "lock_timeout": lock_timeout,
    }
    names, params = [], []
    for name, seconds in values.items():
        if seconds is not None:
            names.append(name)
            params.append(f"{int(seconds * 1000)}ms")
    if not synchronous_commit:
        names.append("synchronous_commit")
        params.append("off")
    if application_name:
        names.append("application_name")
        params.append(application_name[:63])
    calls = ", ".join(f"set_config('{name}', %s, false)" for name in names)
    return f"SELECT {calls}", params


def db_time(alias: str, seconds: float | None = None) -> datetime:
    """The database's clock now (plus `seconds`), read with one SELECT."""
    connection = connections[alias]
    clock, params = clock_sql(connection.vendor, seconds)
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT {clock}", params)
        return to_datetime(cursor.fetchone()[0], connection)


_update_cache: dict[tuple, str] = {}


def fenced_update_statement(
    model: type[models.Model], pk, values: dict, *, retry_field: str, token: datetime | None
) -> tuple[str, list]:
    """UPDATE `values` (plain values, no expressions) on one row while its retry_at is `token`.

    Portable SQL, written here rather than by QuerySet.update() because it runs once per tick and
    compiling the same UPDATE every time would cost more than executing it; the text is cached per
    model and field set.
    """
    alias = model._default_manager.db
    connection = connections[alias]
    fields = [model._meta.get_field(name) for name in values]
    key = (model, alias, tuple(f.column for f in fields), token is None)
    statement = _update_cache.get(key)
    if statement is None:
        qn = connection.ops.quote_name
        table, pk_col, retry = _quote(model, model._meta.pk.name, retry_field)
        sets = ", ".join(f"{qn(f.column)} = %s" for f in fields)
        guard = f"{retry} IS NULL" if token is None else f"{retry} = %s"
        statement = _update_cache[key] = f"UPDATE {table} SET {sets} WHERE {pk_col} = %s AND {guard}"
    params = []
    for field, value in zip(fields, values.values(), strict=True):
        if hasattr(value, "prepare_database_save"):  # a model instance for a foreign key: its pk
            value = value.prepare_database_save(field)
        params.append(field.get_db_prep_save(value, connection))
    params.append(model._meta.pk.get_db_prep_value(pk, connection))
    if token is not None:
        params.append(model._meta.get_field(retry_field).get_db_prep_value(token, connection))
    return statement, params
