"""Poison rows: a failed tick is recorded, backed off, parked after too many attempts, and re-queued."""

from __future__ import annotations

import io

import pytest
from django.core.management import call_command
from django.urls import reverse

from tests.exampleapp.models import Noop
from workers import failures, sql
from workers.fencing import Claim
from workers.models import RETRY_AT_MAX, TickFailure

pytestmark = pytest.mark.django_db


def claimed(model=Noop, lease: float = 60):
    row = model.objects.create()
    (row,) = model.claim_batch(limit=1, lock_seconds=lease, filters=None)
    return row, Claim(model, row.pk, row.retry_at, lease)


@pytest.mark.parametrize("attempts", [1, 2, 5, 30])
def test_backoff_doubles_is_jittered_and_capped(attempts):
    delay = min(3600.0, 10.0 * 2 ** (attempts - 1))
    for _ in range(50):
        assert delay / 2 <= failures.backoff_seconds(attempts, base=10.0, cap=3600.0) <= delay


def test_a_failure_is_recorded_and_the_row_backed_off_by_the_database_clock(settings):
    settings.WORKERS_RETRY_BASE = 100.0
    row, claim = claimed()
    outcome = failures.record_failure(claim, "ValueError: boom", "Traceback (most recent call last): ...")
    assert (outcome.attempts, outcome.parked, outcome.written) == (1, False, True)
    assert 50 <= outcome.retry_in <= 100
    record = TickFailure.objects.get()
    stored = Noop.objects.get()
    assert record.retry_at == stored.retry_at  # the same value: requeue() can tell it from a new claim
    assert 45 < (stored.retry_at - sql.db_time("default")).total_seconds() <= 100
    assert (record.model, record.object_id, record.error) == (
        "exampleapp.Noop",
        str(row.pk),
        "ValueError: boom",
    )
    assert record.traceback.startswith("Traceback")


def test_the_row_is_parked_after_max_attempts_and_requeued_by_the_command(settings):
    settings.WORKERS_MAX_ATTEMPTS = 3
    row, claim = claimed()
    for attempt in (1, 2, 3):
        Noop.objects.filter(pk=row.pk).update(retry_at=sql.db_time("default", -1))  # due again
        (row,) = Noop.claim_batch(limit=1, lock_seconds=60)
        outcome = failures.record_failure(Claim(Noop, row.pk, row.retry_at, 60), f"ValueError: {attempt}")
        assert outcome.attempts == attempt
    assert outcome.parked and Noop.objects.get().retry_at == RETRY_AT_MAX
    record = TickFailure.objects.get()
    assert record.is_parked and record.retry_at is None and record.error == "ValueError: 3"
    out = io.StringIO()
    call_command("requeue", "--dry-run", stdout=out)
    assert out.getvalue().strip() == "Would re-queue 1 row(s)"
    call_command("requeue", stdout=out)
    assert "Re-queued 1 row(s)" in out.getvalue()
    assert not TickFailure.objects.exists()
    assert Noop.get_queue().filter(pk=row.pk).exists()  # due now


def test_a_lost_claim_records_nothing():
    row, claim = claimed()
    Noop.objects.filter(pk=row.pk).update(retry_at=sql.db_time("default", -1))
    Noop.claim_batch(limit=1, lock_seconds=60)  # someone else's claim now
    outcome = failures.record_failure(claim, "ValueError: late")
    assert not outcome.written and not TickFailure.objects.exists()


def test_requeue_leaves_a_row_a_worker_holds_now(settings):
    settings.WORKERS_RETRY_BASE = 0.001
    row, claim = claimed()
    failures.record_failure(claim, "ValueError: x")
    Noop.objects.filter(pk=row.pk).update(retry_at=sql.db_time("default", -1))
    (held,) = Noop.claim_batch(limit=1, lock_seconds=60)  # a worker retries it right now
    assert failures.requeue(TickFailure.objects.all()) == 0
    assert Noop.objects.get().retry_at == held.retry_at


def test_the_admin_lists_failures_and_requeues_them(admin_client, settings):
    settings.WORKERS_MAX_ATTEMPTS = 1
    row, claim = claimed()
    failures.record_failure(claim, "ValueError: shown", "Traceback: here")
    url = reverse("admin:workers_tickfailure_changelist")
    page = admin_client.get(url)
    assert page.status_code == 200 and b"ValueError: shown" in page.content and b"parked" in page.content
    detail = admin_client.get(
        reverse("admin:workers_tickfailure_change", args=[TickFailure.objects.get().pk])
    )
    assert detail.status_code == 200 and b"Traceback: here" in detail.content
    response = admin_client.post(
        url, {"action": "requeue_rows", "_selected_action": [TickFailure.objects.get().pk]}, follow=True
    )
    assert b"Re-queued 1 row(s)" in response.content
    assert not TickFailure.objects.exists() and Noop.get_queue().filter(pk=row.pk).exists()
