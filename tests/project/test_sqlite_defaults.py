"""With Django's default SQLite settings (no OPTIONS) the app still makes several writers safe."""

from __future__ import annotations

import sqlite3
from types import SimpleNamespace

import pytest
from django.core.checks import run_checks
from django.db.utils import ConnectionHandler

from machine import checks, sqlite

TASKS = 300


def test_four_workers_drain_300_rows_on_default_sqlite_settings(new_project):
    # The generated settings: DATABASES = {"default": {ENGINE sqlite3, NAME BASE_DIR / "db.sqlite3"}}.
    settings_py = (new_project.path / "proj" / "settings.py").read_text()
    databases = settings_py[
        settings_py.index("DATABASES = {") : settings_py.index("AUTH_PASSWORD_VALIDATORS")
    ]
    assert "'NAME': BASE_DIR / 'db.sqlite3'" in databases and "OPTIONS" not in databases
    new_project.shell(
        "from machine.models import Machine; from tests.exampleapp.models import Task; "
        f"Task.objects.bulk_create([Task(machine=Machine.current(), name=f't{{i}}') for i in range({TASKS})])"
    )

    done = new_project.manage(
        "runworker", "--workers=4", "--until-idle", "--models=exampleapp.Task", timeout=240, check=False
    )

    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-5000:]
    assert "database is locked" not in output
    db = sqlite3.connect(new_project.path / "db.sqlite3")
    statuses = dict(db.execute("SELECT status, COUNT(*) FROM exampleapp_task GROUP BY status").fetchall())
    assert statuses == {"done": TASKS}
    effects = db.execute("SELECT COUNT(*), COUNT(DISTINCT task_id) FROM exampleapp_effect").fetchone()
    assert effects == (TASKS, TASKS)  # each task's effect written exactly once
    assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)


def _open(tmp_path, **database):
    """A connection made the way Django makes them (connection_created fires), to a file in tmp_path."""
    handler = ConnectionHandler(
        {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": str(tmp_path / "x.sqlite3"), **database}}
    )
    connection = handler["default"]
    connection.ensure_connection()
    return connection


def _pragmas(connection) -> tuple:
    raw = connection.connection
    return tuple(
        raw.execute(f"PRAGMA {name}").fetchone()[0]
        for name in ("journal_mode", "busy_timeout", "synchronous")
    )


@pytest.mark.django_db
def test_a_default_connection_gets_wal_busy_timeout_and_immediate_transactions(tmp_path):
    connection = _open(tmp_path)
    try:
        assert _pragmas(connection) == ("wal", sqlite.BUSY_TIMEOUT_MS, 1)  # synchronous 1 = NORMAL
        assert connection.transaction_mode == "IMMEDIATE"
        executed: list[str] = []

        def record(execute, sql, params, many, context):
            executed.append(sql)
            return execute(sql, params, many, context)

        with connection.execute_wrapper(record):
            # What transaction.atomic() does on entering (this connection is not in `connections`).
            connection.set_autocommit(False, force_begin_transaction_with_broken_autocommit=True)
            connection.cursor().execute("CREATE TABLE t (x)")
            connection.commit()
        assert executed == ["BEGIN IMMEDIATE", "CREATE TABLE t (x)"]
    finally:
        connection.close()


@pytest.mark.django_db
def test_the_projects_own_choices_are_kept_and_reported(tmp_path, monkeypatch):
    options = {"timeout": 7, "transaction_mode": "DEFERRED", "init_command": "PRAGMA journal_mode=DELETE"}
    connection = _open(tmp_path, OPTIONS=options)
    try:
        assert _pragmas(connection) == ("delete", 7000, 1)
        assert connection.transaction_mode == "DEFERRED"
    finally:
        connection.close()
    databases = {"other": {"ENGINE": "django.db.backends.sqlite3", "OPTIONS": options}}
    monkeypatch.setattr(checks, "settings", SimpleNamespace(DATABASES=databases))
    (warning,) = [m for m in run_checks() if m.id == "machine.W001"]
    assert "'other'" in warning.msg and '"transaction_mode": "IMMEDIATE"' in warning.hint


@pytest.mark.django_db
def test_tuning_can_be_turned_off_and_the_check_says_what_to_add(tmp_path, settings, monkeypatch):
    settings.MACHINE_SQLITE_TUNING = False
    connection = _open(tmp_path)
    try:
        assert _pragmas(connection) == ("delete", 5000, 2)  # sqlite3's own defaults (FULL)
        assert connection.transaction_mode is None
    finally:
        connection.close()
    databases = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": "db.sqlite3"}}
    monkeypatch.setattr(checks, "settings", SimpleNamespace(DATABASES=databases))
    (warning,) = [m for m in run_checks() if m.id == "machine.W001"]
    assert "PRAGMA journal_mode=WAL" in warning.hint and "'default'" in warning.msg
