"""Rows written before the one masking rule are masked by migration 0007 (the search oracle's data).

"Why": the Process changelist search ran over the raw `cmd` column: a view-only staff user
recovered a redacted `--password=` value in 305 search requests. New rows are stored masked; rows
already in the database are masked (and, while queued, sealed) when the app is migrated.
"""

from __future__ import annotations

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

from machine import sealing
from machine.redaction import MASK
from tests.machine_factories import HOST_FACTS

pytestmark = pytest.mark.django_db(transaction=True)

BEFORE = [("machine", "0005_blank_urls_to_null")]
AFTER = [("machine", "0007_mask_stored_secrets")]


def migrate(targets):
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(targets)
    return executor.loader.project_state(targets).apps


@pytest.fixture(autouse=True)
def _back_to_the_latest_schema():
    """Whatever the test did, the database ends at the latest migrations for the tests after it."""
    yield
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(executor.loader.graph.leaf_nodes())


def test_the_migration_masks_old_rows_and_seals_the_queued_ones():
    old_apps = migrate(BEFORE)
    try:
        Machine = old_apps.get_model("machine", "Machine")
        Process = old_apps.get_model("machine", "Process")
        facts = dict.fromkeys(HOST_FACTS, "")
        machine = Machine.objects.create(guid="migration-host", **{**facts, "hostname": "migration-host"})
        argv = ["curl", "--password=hunter2-old-row", "-u", "me:old-user-pw1", "https://x"]
        queued = Process.objects.create(machine=machine, cmd=argv, env={"API_TOKEN": MASK}, status="queued")
        done = Process.objects.create(
            machine=machine,
            cmd=["sh", "-c", "curl --token old-tok-value1 x"],
            env={"PLAIN": "x"},
            status="exited",
        )
        untouched = Process.objects.create(machine=machine, cmd=["true"], env={}, status="exited")
    finally:
        new_apps = migrate(AFTER)
    Process = new_apps.get_model("machine", "Process")
    queued_row = Process.objects.get(pk=queued.pk)
    assert queued_row.cmd == ["curl", f"--password={MASK}", "-u", f"me:{MASK}", "https://x"]
    payload = sealing.unseal(queued_row.sealed)
    assert payload["argv"] == argv  # the queued row still launches with its real command
    done_row = Process.objects.get(pk=done.pk)
    assert done_row.cmd == ["sh", "-c", f"curl --token {MASK} x"] and done_row.sealed is None
    assert Process.objects.get(pk=untouched.pk).cmd == ["true"]
