"""The runner's vendor SQL, pinned per backend: a change to any statement shows up here."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from django.db import connection

from tests.exampleapp.models import Noop, Task
from workers import claims, sql

TOKEN = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)


def test_the_database_clock_per_vendor(monkeypatch):
    assert sql.clock_sql("postgresql") == ("STATEMENT_TIMESTAMP()", [])
    assert sql.clock_sql("postgresql", 30.0) == ("(STATEMENT_TIMESTAMP() + %s * INTERVAL '1 second')", [30.0])
    assert sql.clock_sql("sqlite") == ("(strftime(%s, 'now') || %s)", ["%Y-%m-%d %H:%M:%f", "999"])
    assert sql.clock_sql("sqlite", floor=True) == (
        "(strftime(%s, 'now') || %s)",
        ["%Y-%m-%d %H:%M:%f", "000"],
    )
    assert sql.clock_sql("sqlite", 2.5) == (
        "(strftime(%s, 'now', %s) || %s)", ["%Y-%m-%d %H:%M:%f", "+2.500 seconds", "000"]
    )  # fmt: skip
    statement, params = sql.clock_sql("sqlite", 60, nonce=True)
    assert statement == "(strftime(%s, 'now', %s) || %s)" and 1 <= int(params[2]) <= 999
    with pytest.raises(NotImplementedError):
        sql.clock_sql("mysql")


def test_notify_listen_and_session_statements():
    assert sql.notify_statement("postgresql", "exampleapp.noop|") == (
        "SELECT pg_notify(%s, %s)", ["workers_due", "exampleapp.noop|"]
    )  # fmt: skip
    assert sql.notify_statement("sqlite", "x") is None
    assert sql.listen_statement() == "LISTEN workers_due"
    statement, params = sql.session_statement(
        statement_timeout=300, idle_in_transaction_timeout=60, lock_timeout=None, synchronous_commit=False
    )
    assert statement == (
        "SELECT set_config('statement_timeout', %s, false), "
        "set_config('idle_in_transaction_session_timeout', %s, false), set_config('synchronous_commit', %s, false)"
    )
    assert params == ["300000ms", "60000ms", "off"]


@pytest.mark.django_db
def test_claim_statement_text():
    candidates = claims.due_rows(Noop).order_by("retry_at")[:10]
    statement, params = sql.claim_statement(
        Noop, candidates, retry_field="retry_at", lease=60.0, returning=["id", "retry_at"]
    )
    if connection.vendor == "postgresql":
        assert statement == (
            'UPDATE "exampleapp_noop" SET "retry_at" = (STATEMENT_TIMESTAMP() + %s * INTERVAL \'1 second\') '
            'WHERE "id" IN (SELECT "exampleapp_noop"."id" AS "pk" FROM "exampleapp_noop" WHERE '
            '("exampleapp_noop"."retry_at" <= (STATEMENT_TIMESTAMP()) AND NOT ("exampleapp_noop"."status" IN (%s))) '
            'ORDER BY "exampleapp_noop"."retry_at" ASC LIMIT 10 FOR UPDATE SKIP LOCKED) '
            'AND "retry_at" <= STATEMENT_TIMESTAMP() RETURNING "id", "retry_at"'
        )
        assert params == [60.0, "done"]
    else:
        assert statement == (
            'UPDATE "exampleapp_noop" SET "retry_at" = (strftime(%s, \'now\', %s) || %s) '
            'WHERE "id" IN (SELECT "exampleapp_noop"."id" AS "pk" FROM "exampleapp_noop" WHERE '
            '("exampleapp_noop"."retry_at" <= (strftime(%s, \'now\') || %s) AND NOT ("exampleapp_noop"."status" IN (%s))) '
            'ORDER BY "exampleapp_noop"."retry_at" ASC LIMIT 10) '
            'AND "retry_at" <= (strftime(%s, \'now\') || %s) RETURNING "id", "retry_at"'
        )
        assert params[:2] == ["%Y-%m-%d %H:%M:%f", "+60.000 seconds"] and params[3:] == [
            "%Y-%m-%d %H:%M:%f", "999", "done", "%Y-%m-%d %H:%M:%f", "999"
        ]  # fmt: skip


@pytest.mark.django_db
def test_move_fence_and_update_statement_text():
    move, move_params = sql.move_statement(Noop, [1, 2], retry_field="retry_at", token=TOKEN, lease=None)
    fence, _ = sql.fence_statement(Noop, 1, retry_field="retry_at", token=TOKEN)
    fence_null, _ = sql.fence_statement(Noop, 1, retry_field="retry_at", token=None)
    update, update_params = sql.fenced_update_statement(
        Task, 7, {"status": "done", "attempts": 2}, retry_field="retry_at", token=TOKEN
    )
    assert (
        update
        == 'UPDATE "exampleapp_task" SET "status" = %s, "attempts" = %s WHERE "id" = %s AND "retry_at" = %s'
    )
    assert update_params[:3] == ["done", 2, 7]
    if connection.vendor == "postgresql":
        assert move == (
            'UPDATE "exampleapp_noop" SET "retry_at" = STATEMENT_TIMESTAMP() '
            'WHERE "retry_at" = %s AND "id" IN (%s, %s) RETURNING "id", "retry_at"'
        )
        assert move_params == [TOKEN, 1, 2]
        assert (
            fence == 'SELECT 1 FROM "exampleapp_noop" WHERE "id" = %s AND "retry_at" = %s FOR NO KEY UPDATE'
        )
        assert (
            fence_null
            == 'SELECT 1 FROM "exampleapp_noop" WHERE "id" = %s AND "retry_at" IS NULL FOR NO KEY UPDATE'
        )
    else:
        assert move == (
            'UPDATE "exampleapp_noop" SET "retry_at" = (strftime(%s, \'now\') || %s) '
            'WHERE "retry_at" = %s AND "id" IN (%s, %s) RETURNING "id", "retry_at"'
        )
        assert move_params == ["%Y-%m-%d %H:%M:%f", "000", "2026-01-02 03:04:05.678901", 1, 2]
        assert (
            fence
            == 'UPDATE "exampleapp_noop" SET "retry_at" = "retry_at" WHERE "id" = %s AND "retry_at" = %s'
        )
        assert fence_null == (
            'UPDATE "exampleapp_noop" SET "retry_at" = "retry_at" WHERE "id" = %s AND "retry_at" IS NULL'
        )


@pytest.mark.django_db
def test_the_database_clock_agrees_with_django_within_a_second():
    now = sql.db_time("default")
    later = sql.db_time("default", 60)
    assert abs((now - datetime.now(UTC)).total_seconds()) < 1
    assert 59 < (later - now).total_seconds() < 61
