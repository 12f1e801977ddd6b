"""Fenced writes: a tick's result commits only while its claim holds; claims use the database's clock."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
from django.db import transaction
from django.utils import timezone

from tests.exampleapp.models import Effect, Noop, Task
from tests.machine_factories import make_machine
from tests.runner.factories import make_tasks
from workers import fencing, sql
from workers.fencing import UNSET, Claim, ClaimLost, fenced, fenced_update, ticking

pytestmark = pytest.mark.django_db(transaction=True)


def claim_one(model, lease: float):
    (row,) = model.claim_batch(limit=1, lock_seconds=lease)
    return row, Claim(model, row.pk, row.retry_at, lease)


def expire(row) -> None:
    """Let the claim run out (by the database's clock) without waiting for it."""
    type(row).objects.filter(pk=row.pk).update(retry_at=sql.db_time("default", -1))


def test_a_later_claim_of_a_row_always_has_a_greater_token():
    Noop.objects.create()
    tokens = []
    for _ in range(5):
        row, claim = claim_one(Noop, lease=0.05)
        tokens.append(claim.token)
        time.sleep(0.06)  # expired by the database's clock
    assert tokens == sorted(tokens) and len(set(tokens)) == 5


def test_fenced_update_writes_while_held_and_refuses_once_another_worker_took_the_row():
    Noop.objects.create()
    row, claim = claim_one(Noop, lease=60)
    with ticking(claim):
        assert fenced_update(row, status="queued") is True
    expire(row)
    rival_row, rival = claim_one(Noop, lease=60)
    assert rival.token > claim.token
    with ticking(claim), pytest.raises(ClaimLost):
        fenced_update(row, status="done")
    assert claim.lost
    assert Noop.objects.get().status == "queued"  # the stale tick wrote nothing
    with ticking(rival):
        fenced_update(rival_row, status="done", retry_at=None)
    assert (Noop.objects.get().status, Noop.objects.get().retry_at) == ("done", None)


def test_fenced_transaction_commits_all_or_nothing_by_the_claim():
    (task,) = make_tasks(1)
    row, claim = claim_one(Task, lease=60)
    expire(row)
    rival_row, rival = claim_one(Task, lease=60)
    with ticking(claim), pytest.raises(ClaimLost):
        with fenced(row):
            Effect.objects.create(task=task, pid=1)  # never committed
    assert not Effect.objects.exists()
    with ticking(rival), fenced(rival_row):
        Effect.objects.create(task=task, pid=2)
        fenced_update(rival_row, status="done", retry_at=None)
    assert list(Effect.objects.values_list("pid", flat=True)) == [2]
    assert rival.token is None  # the row needs no more ticks: nothing left to fence on


def test_inside_a_tick_a_new_retry_at_waits_for_the_tick_to_return():
    Noop.objects.create()
    row, claim = claim_one(Noop, lease=60)
    later = timezone.now() + timedelta(seconds=5)
    with ticking(claim):
        assert row.update_and_requeue(retry_at=later, status="queued") is True
    stored = Noop.objects.get()
    assert stored.retry_at == claim.token  # still claimed: nobody else may tick it meanwhile
    assert claim.retry_at == later and row.retry_at == later  # what the runner writes afterwards


def test_outside_a_tick_fenced_writes_are_plain_writes():
    Noop.objects.create()
    row = Noop.objects.get()
    assert fencing.current_claim() is None
    assert fenced_update(row, status="done", retry_at=None) is True
    with fenced(row):
        Noop.objects.filter(pk=row.pk).update(status="queued")
    assert Noop.objects.get().status == "queued"
    with pytest.raises(RuntimeError), fenced(row):  # still a transaction: rolled back on error
        Noop.objects.filter(pk=row.pk).update(status="done")
        raise RuntimeError
    assert Noop.objects.get().status == "queued"
    assert Claim(Noop, row.pk, None, 1.0).retry_at is UNSET


def test_a_worker_whose_clock_runs_ahead_claims_nothing_early_and_cannot_shorten_a_claim(monkeypatch):
    soon = timezone.now() + timedelta(seconds=20)
    Noop.objects.create(retry_at=soon)
    ahead = timezone.now() + timedelta(seconds=30)
    monkeypatch.setattr(timezone, "now", lambda: ahead)  # this "host" is 30 s ahead
    assert Noop.claim_batch(limit=10, lock_seconds=60) == []  # not due by the database's clock
    monkeypatch.undo()
    Noop.objects.update(retry_at=timezone.now() - timedelta(seconds=1))
    (row,) = Noop.claim_batch(limit=10, lock_seconds=60)
    monkeypatch.setattr(timezone, "now", lambda: timezone.datetime.now(timezone.UTC) + timedelta(seconds=90))
    assert Noop.claim_batch(limit=10, lock_seconds=60) == []  # the claim holds by the database's clock
    assert 55 < (row.retry_at - sql.db_time("default")).total_seconds() <= 60


def test_fenced_transaction_holds_the_row_against_a_renewal_until_it_commits():
    Noop.objects.create()
    row, claim = claim_one(Noop, lease=60)
    with ticking(claim), fenced(row):
        fenced_update(row, status="queued")
        assert transaction.get_connection().in_atomic_block
    time.sleep(0.002)  # (a renewal in the same millisecond on SQLite may draw smaller microseconds)
    renewed, token = Noop.renew_claim([row.pk], claim.token, 60)
    assert renewed == [row.pk] and token > claim.token


def test_a_fenced_write_takes_model_instances_for_foreign_keys():

    (task,) = make_tasks(1)
    other = make_machine(guid="fk-target")
    row, claim = claim_one(Task, lease=60)
    with ticking(claim):
        row.update_and_requeue(machine=other, status="queued", refresh=False)
    assert Task.objects.get(pk=task.pk).machine_id == other.pk and row.machine == other
