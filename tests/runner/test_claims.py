"""claim_batch returns whole rows; renew_claim / release_claim only move a claim we still hold."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from django.db import connection, connections
from django.db.models import Q
from django.utils import timezone

from machine.models import Machine, Process
from tests.exampleapp.models import Task
from tests.runner.factories import make_tasks


@pytest.mark.django_db
def test_claim_batch_returns_the_claimed_rows_as_they_are_stored(tmp_path):
    machine = Machine.current()
    queued = Process.objects.create(
        machine=machine, cmd=["echo", "hi"], env={"LANG": "C"}, pwd=str(tmp_path), timeout=7
    )
    Process.objects.create(machine=machine, cmd=["later"], retry_at=timezone.now() + timedelta(hours=1))

    (claimed,) = Process.claim_batch(limit=5, lock_seconds=30, filters=Q(machine=machine))

    stored = Process.objects.get(pk=queued.pk)
    assert claimed.pk == queued.pk
    for field in Process._meta.concrete_fields:
        assert getattr(claimed, field.attname) == getattr(stored, field.attname), field.name
    assert claimed.cmd == ["echo", "hi"] and claimed.machine_id == machine.pk
    # The lease is stamped on the database's clock, which may read a few
    # milliseconds ahead of this process's clock; allow for that drift.
    assert timedelta(seconds=29) < claimed.retry_at - timezone.now() <= timedelta(seconds=30.5)
    assert Process.claim_batch(limit=5, lock_seconds=30) == []  # claimed rows are not due


@pytest.mark.django_db
def test_renew_and_release_move_only_a_claim_still_held():
    first, second = make_tasks(2)
    rows = Task.claim_batch(limit=2, lock_seconds=5)
    until = rows[0].retry_at
    # Someone else (a tick, or a worker after expiry) moved the second row meanwhile.
    Task.objects.filter(pk=second.pk).update(retry_at=until + timedelta(seconds=1))

    renewed, new_until = Task.renew_claim([first.pk, second.pk], until, lock_seconds=60)

    assert renewed == [first.pk]
    assert Task.objects.get(pk=first.pk).retry_at == new_until
    assert Task.objects.get(pk=second.pk).retry_at == until + timedelta(seconds=1)
    assert Task.release_claim([first.pk], until) == []  # the old claim is gone
    assert Task.release_claim([first.pk], new_until) == [first.pk]
    assert Task.objects.get(pk=first.pk).retry_at <= timezone.now()


@pytest.mark.django_db(transaction=True)
def test_postgresql_claim_skips_rows_locked_by_another_transaction():
    if connection.vendor != "postgresql":
        pytest.skip("FOR UPDATE SKIP LOCKED is PostgreSQL's; SQLite locks the whole database")
    locked, free = make_tasks(2)
    holding = threading.Event()
    release = threading.Event()

    def hold_row_lock():
        other = connections.create_connection("default")
        try:
            with other.cursor() as cursor:
                cursor.execute("BEGIN")
                cursor.execute(f"SELECT id FROM {Task._meta.db_table} WHERE id = %s FOR UPDATE", [locked.pk])
                holding.set()
                release.wait(10)
                cursor.execute("ROLLBACK")
        finally:
            other.close()

    thread = threading.Thread(target=hold_row_lock)
    thread.start()
    try:
        assert holding.wait(10)
        claimed = Task.claim_batch(limit=10, lock_seconds=30)
    finally:
        release.set()
        thread.join()
    assert [row.pk for row in claimed] == [free.pk]  # did not wait for, nor take, the locked row
    assert Task.claim_batch(limit=10, lock_seconds=30)[0].pk == locked.pk
