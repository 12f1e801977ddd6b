"""Poison rows: record a failed tick, back the row off, park it after too many attempts, re-queue it.

A failure is written in one fenced transaction (workers.fencing): the failure record and the row's
new retry_at commit together, and only while the failing tick's claim still holds, so a tick that
lost its claim never backs off a row another worker is working on.
"""

from __future__ import annotations

import logging
import os
import random
import socket
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db import models, transaction
from django.utils import timezone

from workers import claims, fencing, sql
from workers.conf import workers_settings
from workers.models import RETRY_AT_MAX, TickFailure

logger = logging.getLogger(__name__)


@dataclass
class Outcome:
    """What became of a failed row."""

    attempts: int
    parked: bool
    retry_in: float | None  #: seconds until the next attempt (None: parked or not written)
    written: bool  #: False when the claim was no longer held: nothing was written


def worker_label() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def backoff_seconds(attempts: int, *, base: float | None = None, cap: float | None = None) -> float:
    """Seconds before attempt `attempts + 1`: base * 2^(attempts-1), capped, with "equal jitter"
    (half fixed, half random) so rows that failed together do not come back together."""
    base = workers_settings.RETRY_BASE if base is None else base
    cap = workers_settings.RETRY_CAP if cap is None else cap
    delay = min(cap, base * 2 ** max(0, attempts - 1))
    return delay / 2 + random.uniform(0, delay / 2)


def max_attempts_for(model) -> int:
    """A model may set `max_attempts`; else WORKERS_MAX_ATTEMPTS."""
    return int(getattr(model, "max_attempts", None) or workers_settings.MAX_ATTEMPTS)


def one_line(exc: BaseException | str) -> str:
    """`ValueError: bad input` on one line, at most 500 characters."""
    text = exc if isinstance(exc, str) else f"{type(exc).__name__}: {exc}"
    return " ".join(str(text).split())[:500]


def record_failure(claim: fencing.Claim, error: str, tb: str = "", worker: str = "") -> Outcome:
    """Count a failed tick of the claimed row and back it off (or park it), if the claim still holds."""
    model, retry_field = claim.model, claim.model.retry_at_field_name
    now = timezone.now()
    try:
        with fencing.fenced_claim(claim):
            record, _created = TickFailure.objects.select_for_update().get_or_create(
                model=claim.label,
                object_id=str(claim.pk),
                defaults={"first_failed_at": now, "last_failed_at": now},
            )
            attempts = record.attempts + 1
            parked = attempts >= max_attempts_for(model)
            if parked:
                retry_in, retry_value = None, RETRY_AT_MAX
            else:
                retry_in = backoff_seconds(attempts)
                # By the database's clock, and the same value in both rows, so requeue() can tell a
                # row that is backing off from one a worker has claimed since.
                db_now = sql.db_time(model._default_manager.db)
                retry_value = db_now + timedelta(seconds=retry_in)
                asked = claim.retry_at
                if isinstance(asked, datetime) and asked > retry_value:
                    retry_in, retry_value = (asked - db_now).total_seconds(), asked
            model._default_manager.filter(pk=claim.pk).update(**{retry_field: retry_value})
            TickFailure.objects.filter(pk=record.pk).update(
                attempts=attempts,
                error=one_line(error),
                traceback=tb[-20000:],
                last_failed_at=now,
                retry_at=None if parked else retry_value,
                parked_at=now if parked else None,
                worker=(worker or worker_label())[:128],
            )
            claim.token, claim.retry_at = retry_value, retry_value
    except fencing.ClaimLost:
        return Outcome(0, False, None, written=False)
    return Outcome(attempts, parked, retry_in, written=True)


def clear_failures(model, pks) -> int:
    """Forget the failures of rows that just ticked cleanly; return how many records went."""
    if not pks:
        return 0
    deleted, _ = TickFailure.objects.filter(
        model=model._meta.label, object_id__in=[str(pk) for pk in pks]
    ).delete()
    return deleted


def failing_pks(model, pks) -> set[str]:
    """The pks (as text) among `pks` that have a failure record."""
    if not pks:
        return set()
    return set(
        TickFailure.objects.filter(
            model=model._meta.label, object_id__in=[str(pk) for pk in pks]
        ).values_list("object_id", flat=True)
    )


def requeue(records: models.QuerySet) -> int:
    """Make the rows of these failure records due now (those parked or backing off) and forget the
    failures; return how many rows were re-queued. Rows a worker holds right now are left to it."""
    requeued = 0
    for record in list(records):
        model = record.queue_model()
        if model is None:
            record.delete()
            continue
        retry_field = model.retry_at_field_name
        with transaction.atomic(using=model._default_manager.db):
            row = model._default_manager.filter(pk=model._meta.pk.to_python(record.object_id))
            expected = record.retry_at if record.retry_at is not None else RETRY_AT_MAX
            moved = row.filter(**{retry_field: expected}).update(**{retry_field: timezone.now()})
            record.delete()
        if moved:
            requeued += 1
            claims.notify_due(model)
    return requeued
