"""Fenced writes: a tick's result commits only while the tick still holds its row's claim.

A claim is the row's retry_at moved to the database's now + lease; the value written is the claim's
token. A later claim's token is always greater: a claim is taken only when retry_at <= now and writes
now + lease > now (both by the database's clock), so no later claim of a row can ever reuse an
earlier claim's token. (A renewal replaces the holder's own token and need not be greater.)
A write that must not happen once the claim is lost is guarded by the token:

- `fenced_update(row, **values)`: one UPDATE ... WHERE pk = %s AND retry_at = <token>;
- `fenced(row)`: a short transaction that first locks the row if retry_at is still the token (so
  nothing can move the claim until the commit), for writes to several rows at once;
- `ModelWithStateMachine.update_and_requeue()` does the former when called on the row being ticked.

Either raises `ClaimLost` (and writes nothing) when another worker took the row meanwhile: after the
claim expired while this worker was paused, frozen, partitioned or simply too slow. Outside a tick
(no claim on the row in this thread) they are ordinary writes.

Inside a tick a new retry_at is not written at once: the row stays claimed until its tick returns,
and the runner then writes the schedule the tick asked for (or keeps the row, if it is due again
soon; see runner.Worker). So a row is never ticked by two workers at the same time, however its tick
schedules itself, and a tick that fails after scheduling itself is still backed off.
"""

from __future__ import annotations

import logging
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.db import connections, models, transaction

from workers import sql

logger = logging.getLogger(__name__)

#: `retry_at` of a claim whose schedule the tick has not set (it is written when the tick returns).
UNSET = object()


class ClaimLost(BaseException):
    """The tick's claim on its row was taken over: its result is not written.

    A BaseException, like asyncio.CancelledError: the tick must stop, and an `except Exception`
    in a tick must not swallow the news and go on writing.
    """


@dataclass
class Claim:
    """This worker's claim on one row: its token (the retry_at the claim wrote) and what the tick asked."""

    model: type[models.Model]
    pk: Any
    token: datetime | None
    lease: float
    #: The schedule the tick asked for (written when it returns), or UNSET.
    retry_at: Any = UNSET
    #: True once a fenced write found the row taken by someone else.
    lost: bool = False
    #: time.monotonic() when the token was issued (the lease runs from about then).
    issued_at: float = field(default_factory=time.monotonic)
    #: Serialises token changes: the heartbeat's renewal and the tick's fenced writes.
    mutex: threading.RLock = field(default_factory=threading.RLock)

    @property
    def label(self) -> str:
        return self.model._meta.label

    def matches(self, obj: models.Model) -> bool:
        return isinstance(obj, self.model) and obj.pk == self.pk

    def guard(self) -> dict[str, Any]:
        retry_field = self.model.retry_at_field_name
        if self.token is None:
            return {f"{retry_field}__isnull": True}
        return {retry_field: self.token}


_local = threading.local()


def current_claim() -> Claim | None:
    """The claim of the tick running in this thread, if any."""
    return getattr(_local, "claim", None)


def claim_for(obj: models.Model) -> Claim | None:
    """The current claim if it is on `obj`'s row."""
    claim = current_claim()
    return claim if claim is not None and claim.matches(obj) else None


@contextmanager
def ticking(claim: Claim):
    """Make `claim` the current claim of this thread for the duration of a tick."""
    previous = current_claim()
    _local.claim = claim
    try:
        yield claim
    finally:
        _local.claim = previous


def _lost(claim: Claim, what: str) -> ClaimLost:
    claim.lost = True
    logger.warning("%s %s: claim taken over by another worker; %s refused", claim.label, claim.pk, what)
    return ClaimLost(f"{claim.label} {claim.pk}: claim lost")


def fenced_update(obj: models.Model, **values) -> bool:
    """UPDATE `values` on obj's row; inside obj's tick only while the claim holds (else ClaimLost).

    Inside the tick a retry_at in `values` is kept for the runner to write when the tick returns;
    retry_at=None (the row needs no more ticks) is written at once. Returns True when the row was
    written (outside a tick: when it still exists). The instance gets the values either way.
    """
    model = type(obj)
    manager = model._default_manager
    claim = claim_for(obj)
    retry_field = getattr(model, "retry_at_field_name", "retry_at")
    if claim is None:
        updated = manager.filter(pk=obj.pk).update(**values)
        _apply(obj, values)
        return updated == 1
    values = dict(values)
    deferred = values.pop(retry_field, UNSET)
    if deferred is None:
        values[retry_field] = None
    with claim.mutex:
        if claim.lost:
            raise _lost(claim, "write")
        if values and not _update_row(model, claim, values):
            raise _lost(claim, "write")
        if deferred is None:
            claim.token, claim.retry_at = None, None
        elif deferred is not UNSET:
            claim.retry_at = deferred
    _apply(obj, values)
    if deferred is not UNSET:
        setattr(obj, retry_field, deferred)
    return True


def _update_row(model, claim: Claim, values: dict) -> bool:
    """The guarded UPDATE itself: our own cached statement for plain values, the ORM for expressions."""
    if any(hasattr(value, "resolve_expression") for value in values.values()):
        return model._default_manager.filter(pk=claim.pk, **claim.guard()).update(**values) == 1
    statement, params = sql.fenced_update_statement(
        model, claim.pk, values, retry_field=model.retry_at_field_name, token=claim.token
    )
    with connections[model._default_manager.db].cursor() as cursor:
        cursor.execute(statement, params)
        return cursor.rowcount == 1


def _apply(obj: models.Model, values: dict) -> None:
    for name, value in values.items():
        if not hasattr(value, "resolve_expression"):
            setattr(obj, name, value)


@contextmanager
def fenced(obj: models.Model | None = None, using: str | None = None):
    """A transaction that commits only while the tick's claim on obj's row (default: the row being
    ticked) holds: the row is locked first, guarded by the token; ClaimLost if it is not ours.

    Keep it short: it holds the row lock (on SQLite, the database's write lock) until it ends.
    Outside a tick it is `transaction.atomic()`. Write the row's own retry_at through
    `fenced_update()` inside it, so the runner keeps track of the schedule.
    """
    claim = current_claim() if obj is None else claim_for(obj)
    if claim is None:
        with transaction.atomic(using=using):
            yield None
        return
    with fenced_claim(claim, using=using):
        yield claim


@contextmanager
def fenced_claim(claim: Claim, using: str | None = None):
    """`fenced()` for an explicit claim (the runner's own writes: failures, hand-backs)."""
    alias = using or claim.model._default_manager.db
    with claim.mutex, transaction.atomic(using=alias):
        if claim.lost:
            raise _lost(claim, "transaction")
        statement, params = sql.fence_statement(
            claim.model, claim.pk, retry_field=claim.model.retry_at_field_name, token=claim.token
        )
        with connections[alias].cursor() as cursor:
            cursor.execute(statement, params)
            held = cursor.rowcount == 1 if connections[alias].vendor != "postgresql" else cursor.fetchone()
        if not held:
            raise _lost(claim, "transaction")
        yield claim
