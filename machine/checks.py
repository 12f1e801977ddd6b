"""System checks for the project's settings as this app needs them (`manage.py check`)."""

from __future__ import annotations

from django.conf import settings
from django.core import checks as django_checks
from django.core.exceptions import ImproperlyConfigured

from machine import sqlite
from machine.conf import machine_settings


def check_data_dir(app_configs=None, **kwargs) -> list[django_checks.CheckMessage]:
    """MACHINE_DATA_DIR must resolve to a folder tied to the project, never the current directory."""
    try:
        _ = machine_settings.data_dir
    except ImproperlyConfigured as exc:
        return [
            django_checks.Error(
                str(exc),
                hint='Add e.g. MACHINE_DATA_DIR = BASE_DIR / "data" to your settings.',
                id="machine.E001",
            )
        ]
    return []


def check_prune_days(app_configs=None, **kwargs) -> list[django_checks.CheckMessage]:
    """MACHINE_PRUNE_DAYS is a whole number of days, 0 or more."""
    days = machine_settings.PRUNE_DAYS
    if isinstance(days, bool) or not isinstance(days, int) or days < 0:
        return [
            django_checks.Error(
                f"MACHINE_PRUNE_DAYS must be a whole number of days >= 0, got {days!r}.",
                hint="e.g. MACHINE_PRUNE_DAYS = 30 (manage.py prune deletes exited rows older than that)",
                id="machine.E002",
            )
        ]
    return []


def check_sqlite_writers(app_configs=None, **kwargs) -> list[django_checks.CheckMessage]:
    """An SQLite database the app cannot make safe for several worker processes gets a warning."""
    found = []
    for alias, settings_dict in settings.DATABASES.items():
        if sqlite.is_weak(settings_dict):
            found.append(
                django_checks.Warning(
                    f"SQLite database {alias!r} is set up so that several worker processes can fail "
                    'with "database is locked" (deferred transactions, or MACHINE_SQLITE_TUNING = False '
                    "without WAL and IMMEDIATE transactions).",
                    hint=f'Set DATABASES["{alias}"]["OPTIONS"] = {sqlite.RECOMMENDED_OPTIONS}',
                    id="machine.W001",
                )
            )
    return found


def register() -> None:
    """Called from MachineConfig.ready()."""
    django_checks.register(check_data_dir, django_checks.Tags.compatibility)
    django_checks.register(check_prune_days, django_checks.Tags.compatibility)
    django_checks.register(check_sqlite_writers, django_checks.Tags.compatibility)
