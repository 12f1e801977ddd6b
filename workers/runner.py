"""The runner: an orchestrator process supervising worker processes that claim and tick due rows.

Claims. A worker claims a batch of due rows of one model in one statement (workers.claims); a claim
is the row's retry_at moved to the database's now + lease, and that value is the claim's token. A
tick runs with its claim as the thread's current claim, so its writes to the row are fenced
(workers.fencing): once another worker has taken the row over, they are refused. A claim is never
allowed to run out while its owner works on it:
  * between ticks, the worker renews the rest of its batch once half the lease is used up;
  * during a tick, the heartbeat thread renews the row being ticked once a third is used up (and,
    if the tick runs long, hands the rest of the batch back for other workers).
The heartbeat thread survives database errors (jittered backoff) and needs no connection while its
worker is idle.

Failures. A tick that raises is recorded on its row (workers.failures: attempts, error, traceback),
backed off exponentially and, after too many attempts, parked until an operator re-queues it. A
tick that failed because the database could not be reached is no failure: its row is handed back
as soon as the database answers. A tick that kills its worker counts as a failure of its row: the
orchestrator reads what each worker was ticking from the worker's state file.

Idle. With nothing due a worker asks the database once when the next row is due (one statement for
all its models) and waits until then, or until woken: by a PostgreSQL NOTIFY (workers.notify), by a
stop signal, or after an idle wait that backs off up to WORKERS_IDLE_MAX_WAIT_*.

Shutdown. The first SIGTERM/SIGINT stops claiming and hands the rest of the batch back at once; the
tick in flight may finish within `grace` seconds, after which it is interrupted and its row handed
back too. Then the processes the ticks launched get the rest of the grace period, are ended
(workers.signals.worker_stopping) and everything still held is handed back. A second signal exits at
once. A worker learns of its orchestrator's death at once (PR_SET_PDEATHSIG: it gets a SIGTERM) and
stops the same way.
"""

from __future__ import annotations

import collections
import ctypes
import json
import logging
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from importlib import import_module
from pathlib import Path

import psutil
from django.apps import apps
from django.conf import settings
from django.db import DatabaseError, connections, models
from django.utils import timezone

from workers import claims, dbsession, failures, fencing, signals, sql
from workers.conf import workers_settings
from workers.fencing import UNSET, Claim
from workers.loop import EventLoop
from workers.models import RETRY_AT_MAX, ModelWithStateMachine, TickFailure
from workers.notify import Listener

logger = logging.getLogger(__name__)

#: A worker stops claiming new rows while it follows this many batches' worth of rows.
FOLLOW_UP_BATCHES = 4
#: How long cleanup may wait for the database before leaving claims to expire.
CLEANUP_DB_SECONDS = 5.0
PR_SET_PDEATHSIG = 1


class GraceExpired(BaseException):
    """The grace period after a stop signal ran out while a tick was still working."""


class ExitNow(BaseException):
    """A second stop signal: leave at once."""


@dataclass(frozen=True)
class Limit:
    """The values one numeric runner option accepts, from `least` up to `most` (or a setting's value)."""

    kind: type  # int: a whole number from `least`; float: seconds, finite and above `least`
    least: float
    most: float = math.inf
    setting: str = ""  # a workers.conf name whose value, read when checking, replaces `most`

    def check(self, value: object) -> int | float:
        """`value` (a number, or its text from the command line) as `kind`; a ValueError says what fits."""
        most = getattr(workers_settings, self.setting) if self.setting else self.most
        number = self._number(value)
        low_ok = number is not None and (number >= self.least if self.kind is int else number > self.least)
        if not low_ok or number > most:
            raise ValueError(f"must be {self._accepted(most)}, not {value!r}")
        return number

    def _number(self, value: object) -> int | float | None:
        """`value` as a finite `kind`, else None (True, 2.5 workers, "abc", inf and nan are no numbers here)."""
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            return None
        try:
            number = self.kind(value)
        except (ValueError, OverflowError):
            return None
        if not math.isfinite(number) or (isinstance(value, float) and number != value):
            return None
        return number

    def _accepted(self, most: float) -> str:
        if self.kind is int:
            text = f"a whole number from {self.least} to {most}"
        else:
            text = f"a number of seconds above {self.least:g} and at most {most:g}"
        return f"{text} (the most is the WORKERS_{self.setting} setting)" if self.setting else text


#: The limits of runworker's numeric options, in one place: the command's argparse types and
#: RunnerOptions both check them, so neither a command line nor a call from Python can start a runner
#: with, say, 100000 workers, a poll of 1e12 s (an overflow deep in the event loop) or a NaN grace.
OPTION_LIMITS: dict[str, Limit] = {
    "workers": Limit(int, 1, setting="MAX_WORKERS"),
    "batch": Limit(int, 1, 1000),
    # (A floor for the loop's own intervals: 1e-9 s would make a worker spin on the database.)
    "poll": Limit(float, 0.005, 3600),
    "lock_seconds": Limit(float, 0, 86400),
    "grace": Limit(float, 0, 86400),
    "heartbeat": Limit(float, 0.005, 3600),
}


@dataclass
class RunnerOptions:
    """What `runworker` was asked to do; a value out of OPTION_LIMITS is a ValueError naming it."""

    workers: int = 2
    until_idle: bool = False
    models: tuple[str, ...] = ()
    poll: float = 0.5
    lock_seconds: float = 60.0
    batch: int = 10
    grace: float = 10.0
    heartbeat: float = 5.0
    #: The command's -v, handed on to the worker processes.
    verbosity: int = 1
    #: --until-idle also waits for rows due within this many seconds, unless they back off after a failure.
    idle_horizon: float = 5.0

    def __post_init__(self) -> None:
        for name, limit in OPTION_LIMITS.items():
            try:
                setattr(self, name, limit.check(getattr(self, name)))
            except ValueError as exc:
                raise ValueError(f"{name} {exc}") from None

    def as_worker_args(self) -> list[str]:
        args = [
            f"--poll={self.poll}",
            f"--lock-seconds={self.lock_seconds}",
            f"--batch={self.batch}",
            f"--grace={self.grace}",
            f"--heartbeat={self.heartbeat}",
            f"--verbosity={self.verbosity}",
        ]
        if self.models:
            args.append(f"--models={','.join(self.models)}")
        return args


# -- what the runner drives ------------------------------------------------------------------


def driven_models(labels: tuple[str, ...] | list[str] = ()) -> list[type[ModelWithStateMachine]]:
    """Every concrete ModelWithStateMachine of the installed apps, or those named by `labels`.

    A label is `app_label.ModelName` or just `ModelName` (case-insensitive); an unknown one is a
    ValueError that lists the known ones.
    """
    found = [
        model
        for model in apps.get_models()
        if issubclass(model, ModelWithStateMachine) and not model._meta.proxy
    ]
    if not labels:
        return found
    by_name: dict[str, type[ModelWithStateMachine]] = {}
    for model in found:
        by_name[model._meta.label_lower] = model
        by_name.setdefault(model._meta.model_name, model)
    chosen: list[type[ModelWithStateMachine]] = []
    for label in labels:
        model = by_name.get(label.strip().lower())
        if model is None:
            known = ", ".join(sorted(m._meta.label for m in found))
            raise ValueError(f"unknown state-machine model {label!r} (known: {known})")
        if model not in chosen:
            chosen.append(model)
    return chosen


def lock_seconds_for(model: type[ModelWithStateMachine], default: float) -> float:
    """A model may size its claim to its work with a `claim_seconds` class attribute."""
    return float(getattr(model, "claim_seconds", None) or default)


def next_due(models_: list[type[ModelWithStateMachine]], alias: str = "default") -> dict[type, float | None]:
    """Seconds until the next row of each model is due by the database's clock (<= 0: due now; None:
    none scheduled), in one statement; only rows this runner may claim (claim_filter()) count."""
    querysets = [claims.pending_rows(model, model.claim_filter()) for model in models_]
    statement, params = sql.next_due_statement(alias, querysets, [m.retry_at_field_name for m in models_])
    connection = connections[alias]
    with connection.cursor() as cursor:
        cursor.execute(statement, params)
        row = cursor.fetchone()
    now = sql.to_datetime(row[-1], connection)
    result = {}
    for model, value in zip(models_, row[:-1], strict=True):
        when = sql.to_datetime(value, connection)
        result[model] = None if when is None else (when - now).total_seconds()
    return result


# -- the worker's state file -------------------------------------------------------------------


class StateFile:
    """What a worker holds, for its orchestrator: a small JSON document rewritten in place.

    One pwrite() per change: a process killed by a signal never leaves half of one (the kernel
    finishes the copy before the signal takes effect), and JSON ignores the padding after it.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = str(path)
        self._fd: int | None = None
        self._size = 0
        self._lock = threading.Lock()

    def write(self, state: dict) -> None:
        data = json.dumps(state, separators=(",", ":")).encode()
        with self._lock:
            if self._fd is None:
                self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            padded = data + b" " * max(0, self._size - len(data))
            os.pwrite(self._fd, padded, 0)
            self._size = max(self._size, len(data))

    def read(self) -> dict | None:
        try:
            with open(self.path, "rb") as fh:
                return json.loads(fh.read() or b"null")
        except (OSError, ValueError):
            return None

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None


def _claim_from_state(entry: list) -> tuple[type[models.Model], list, datetime | None] | None:
    """(model, pks, token) from a state file entry [label, token, [pks...]]; None if unknown."""
    label, token, pks = entry
    try:
        model = apps.get_model(label)
    except (LookupError, ValueError):
        return None
    pk_field = model._meta.pk
    return model, [pk_field.to_python(pk) for pk in pks], datetime.fromisoformat(token) if token else None


# -- the worker ------------------------------------------------------------------------------


@dataclass
class _Batch:
    """Rows of one model this worker claimed in one statement and has not ticked yet."""

    model: type[ModelWithStateMachine]
    rows: list
    token: object
    lease: float
    renewed_at: float = field(default_factory=time.monotonic)


@dataclass
class _FollowUp:
    """A row this worker ticked that is due again soon: it keeps the claim and ticks it itself.

    A Process launched in the background is the launching worker's child: only that worker can reap
    it and learn its true exit code, so the same worker polls it.
    """

    claim: Claim
    row: object
    due: datetime
    #: A descriptor that becomes readable when the row should be ticked at once (e.g. its child's
    #: pidfd: readable at the child's exit), from the row's `runner_wake_fd()`; closed when ticked.
    fd: int | None = None
    _entry: tuple = (None, None)

    def entry(self) -> list:
        """This claim's state file entry (rebuilt only when its token changes: the file is written
        at every tick, with every followed row)."""
        token, entry = self._entry
        if entry is None or token != self.claim.token:
            entry = _entry(self.claim.model, self.claim.token, [self.claim.pk])
            self._entry = (self.claim.token, entry)
        return entry


@dataclass
class _Current:
    claim: Claim
    started_at: float = field(default_factory=time.monotonic)


def set_parent_death_signal(sig: int) -> bool:
    """Ask the kernel to send `sig` to this process when its parent dies (Linux prctl)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


@dataclass
class Worker:
    """One worker process: claim a batch, tick each row, renew, repeat; stop cleanly on a signal."""

    options: RunnerOptions
    parent_id: object = None
    orchestrator_pid: int | None = None
    state_path: str | None = None
    ticks: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _beat_stop: threading.Event = field(default_factory=threading.Event)
    _beat_wake: threading.Event = field(default_factory=threading.Event)
    _mutex: threading.RLock = field(default_factory=threading.RLock)
    _batch: _Batch | None = None
    _current: _Current | None = None
    _follow: list[_FollowUp] = field(default_factory=list)
    _signals: int = 0
    _stop_deadline: float | None = None
    _cleaning: bool = False
    _idle: bool = False
    _gen: int = 0
    _notified: set = field(default_factory=set)

    def run(self) -> int:
        """Work until stopped; return the process exit code."""
        self.models = driven_models(self.options.models)
        self.labels = {model._meta.label_lower: model for model in self.models}
        self.loop = EventLoop()
        self.state = StateFile(self.state_path) if self.state_path else None
        dbsession.configure()
        previous = {sig: signal.signal(sig, self._on_stop_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        previous[signal.SIGALRM] = signal.signal(signal.SIGALRM, self._on_grace_expired)
        set_parent_death_signal(signal.SIGTERM)
        if self.orchestrator_pid and os.getppid() != self.orchestrator_pid:
            logger.warning("worker %d: orchestrator %d is already gone", os.getpid(), self.orchestrator_pid)
            self._request_stop()
        self._write_state()
        self.listener: Listener | None = None
        exit_code = 0
        beat = threading.Thread(target=self._heartbeat_loop, name="worker-heartbeat", daemon=True)
        try:
            if not dbsession.wait_for_database(self._stop.is_set, self._sleep):
                return 0
            _send(signals.worker_started, sender=Worker, worker=self, loop=self.loop)
            for model in self.models:
                model.runner_attach(self.loop)
            self._open_listener()
            beat.start()
            self._loop()
        except GraceExpired:
            logger.warning("grace period over: interrupting the tick in flight and handing its row back")
            dbsession.reset()  # the interrupted statement may have left it unusable
        except ExitNow:
            exit_code = 128 + signal.SIGTERM
        finally:
            self._cleaning = True
            signal.setitimer(signal.ITIMER_REAL, 0)
            self._cleanup(immediate=exit_code != 0)
            self._beat_stop.set()
            self._beat_wake.set()
            if beat.is_alive():
                beat.join(timeout=2)
            _bounded(lambda: _send(signals.worker_stopped, sender=Worker, worker=self, exit_code=exit_code))
            if self.listener is not None:
                self.listener.close()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return exit_code

    def _sleep(self, seconds: float) -> None:
        self.loop.run_once(seconds)

    # signals

    def _request_stop(self) -> None:
        self._stop_deadline = time.monotonic() + self.options.grace
        self._stop.set()
        self._beat_wake.set()
        self.loop.wake()

    def _on_stop_signal(self, signum, frame) -> None:
        self._signals += 1
        if self._signals == 1:
            logger.info("worker %d: signal %d, finishing the tick in flight", os.getpid(), signum)
            self._request_stop()
            if self._current is not None and not self._cleaning:
                signal.setitimer(signal.ITIMER_REAL, max(self.options.grace, 0.001))
            return
        if self._cleaning:
            os._exit(128 + signum)
        raise ExitNow

    def _on_grace_expired(self, signum, frame) -> None:
        if self._current is not None and not self._cleaning:
            raise GraceExpired

    # the state the orchestrator reads

    def _write_state(self) -> None:
        if self.state is None:
            return
        with self._mutex:
            held = []
            if self._batch is not None and self._batch.rows:
                held.append(_entry(self._batch.model, self._batch.token, [r.pk for r in self._batch.rows]))
            for follow in self._follow:
                held.append(follow.entry())
            current = None
            if self._current is not None:
                claim = self._current.claim
                current = _entry(claim.model, claim.token, [claim.pk])
            state = {
                "pid": os.getpid(),
                "idle": self._idle,
                "gen": self._gen,
                "current": current,
                "held": held,
            }
        self.state.write(state)

    def _set_idle(self, idle: bool) -> None:
        if idle != self._idle:
            self._idle = idle
            self._write_state()

    # the loop

    def _loop(self) -> None:
        poll = self.options.poll
        polling_max = workers_settings.IDLE_MAX_WAIT_POLLING
        idle_wait = poll
        due_models = list(self.models)
        look_first = False  # after a quiet idle wait: one next-due query instead of a claim per model
        backoff = dbsession.Backoff()
        while not self._stop.is_set():
            try:
                due = None
                if look_first:
                    due = next_due(self.models)
                    due_models = [m for m, seconds in due.items() if seconds is not None and seconds <= 0]
                    look_first = False
                worked = self._round(due_models)
                if worked:
                    backoff.reset()
                    idle_wait, due_models = poll, list(self.models)
                    continue
                self._set_idle(True)
                if due is None or due_models:
                    due = next_due(self.models)
                backoff.reset()
            except DatabaseError as exc:
                self._on_loop_error(exc, backoff)
                continue
            now_due = [model for model, seconds in due.items() if seconds is not None and seconds <= 0]
            if now_due:
                # Due, but the claim found none of them: claimed or locked by others meanwhile.
                wait, due_models = poll, now_due
            else:
                listening = self.listener is not None
                max_wait = workers_settings.IDLE_MAX_WAIT_LISTENING if listening else polling_max
                wait = min(idle_wait, max_wait)
                soonest = [s for s in due.values() if s is not None]
                if soonest:
                    wait = min(wait, max(min(soonest), 0.0) + 0.001)
                due_models = list(self.models)
                idle_wait = min(max(idle_wait * 2, poll), max_wait)
            if self._follow:
                next_follow = min(f.due for f in self._follow)
                wait = min(wait, max((next_follow - timezone.now()).total_seconds(), 0.0))
            self._notified.clear()
            self.loop.run_once(wait)
            if self._notified:
                due_models = [m for m in self.models if m._meta.label_lower in self._notified] or due_models
                idle_wait = poll
            elif not now_due:
                look_first = True

    def _on_loop_error(self, exc: DatabaseError, backoff: dbsession.Backoff) -> None:
        if dbsession.is_connection_error(exc):
            logger.warning("worker %d: database unreachable (%s)", os.getpid(), failures.one_line(exc))
            dbsession.reset()
            dbsession.wait_for_database(self._stop.is_set, self._sleep)
            return
        logger.exception("worker %d: database error in the loop", os.getpid())
        dbsession.drop_broken()
        self._sleep(backoff.next())

    def _round(self, due_models) -> int:
        worked = self._tick_follow_ups()
        max_follow = FOLLOW_UP_BATCHES * self.options.batch
        for model in due_models:
            if self._stop.is_set() or len(self._follow) >= max_follow:
                break
            worked += self._work_one_batch(model)
        return worked

    def _work_one_batch(self, model: type[ModelWithStateMachine]) -> int:
        lease = lock_seconds_for(model, self.options.lock_seconds)
        self._set_idle(True)  # (before the claim: see Orchestrator._is_idle)
        rows = model.claim_batch(limit=self.options.batch, lock_seconds=lease, filters=model.claim_filter())
        if not rows:
            return 0
        retry_attr = model.retry_at_field_name
        batch = _Batch(model, rows, getattr(rows[0], retry_attr), lease)
        with self._mutex:
            self._batch = batch
            self._idle = False
            self._gen += 1
        self._write_state()
        failing = failures.failing_pks(model, [row.pk for row in rows])
        ticked = 0
        while not self._stop.is_set():
            with self._mutex:
                if not batch.rows:
                    break
                if time.monotonic() - batch.renewed_at > lease / 2:
                    self._renew_batch(batch)
                    if not batch.rows:
                        break
                row = batch.rows.pop(0)
                claim = Claim(model, row.pk, batch.token, lease, issued_at=batch.renewed_at)
                self._current = _Current(claim)
            self._tick(claim, row, had_failures=str(row.pk) in failing)
            ticked += 1
        with self._mutex:
            if self._batch is batch and not batch.rows:
                self._batch = None
        self._write_state()
        return ticked

    def _renew_batch(self, batch: _Batch) -> None:
        """Push the claim of the batch ahead; drop the rows that are no longer ours."""
        renewed, token = batch.model.renew_claim([r.pk for r in batch.rows], batch.token, batch.lease)
        keep = set(renewed)
        lost = [r for r in batch.rows if r.pk not in keep]
        if lost:
            logger.warning("claim on %d %s row(s) lost before their tick", len(lost), batch.model.__name__)
        batch.rows = [r for r in batch.rows if r.pk in keep]
        batch.token, batch.renewed_at = token, time.monotonic()
        for row in batch.rows:
            setattr(row, batch.model.retry_at_field_name, token)

    def _tick(self, claim: Claim, row, had_failures: bool = False) -> None:
        """Run one tick of `row` under `claim`; record how it ended."""
        self._write_state()
        try:
            with fencing.ticking(claim):
                getattr(row, row.state_machine_attr).tick()
        except fencing.ClaimLost:
            pass  # logged by fencing: nothing of the tick's result was written after the loss
        except Exception as exc:
            if dbsession.is_connection_error(exc):
                self._after_connection_error(claim, exc)
            else:
                self._failed(claim, row, exc)
        else:
            self.ticks += 1
            self._finish(claim, row, had_failures)
        with self._mutex:
            self._current = None
        self._write_state()

    def _finish(self, claim: Claim, row, had_failures: bool) -> None:
        """After a clean tick: forget old failures; write the schedule it asked for, or keep the row."""
        if had_failures:
            failures.clear_failures(claim.model, [claim.pk])
        if claim.lost or claim.token is None:
            return  # final, or lost
        if claim.retry_at is UNSET:
            self._keep_if_rescheduled_soon(claim, row)
            return
        asked = claim.retry_at
        model = claim.model
        due_in = (asked - timezone.now()).total_seconds()
        final = getattr(row, model.state_field_name) in model.FINAL_STATES
        # (No cap here: _round stops claiming while FOLLOW_UP_BATCHES batches are followed, so the
        # list grows by at most one batch past it; a row let go here could be ticked by a worker
        # that cannot reap its child.)
        if not final and due_in <= claim.lease / 2:
            claim.retry_at = UNSET
            self._add_follow(_FollowUp(claim, row, asked))
            return
        with claim.mutex:
            written = model._default_manager.filter(pk=claim.pk, **claim.guard()).update(
                **{model.retry_at_field_name: asked}
            )
        if not written:
            logger.warning(
                "%s %s: claim taken over; the schedule its tick asked for was not written",
                claim.label,
                claim.pk,
            )

    def _keep_if_rescheduled_soon(self, claim: Claim, row) -> None:
        """A tick that wrote its own schedule straight to the row (not through workers.fencing; a
        downstream model may): if it is due again within half a claim, claim it back (guarded by
        that schedule) and tick it here, as the worker that launched a Process must poll it.
        A tick that asked nothing leaves its claim to run out (a retry after the lease)."""
        model = claim.model
        due = getattr(row, model.retry_at_field_name)
        if due is None or due == claim.token or getattr(row, model.state_field_name) in model.FINAL_STATES:
            return
        if (due - timezone.now()).total_seconds() > claim.lease / 2:
            return
        moved, token = claims.move_claims(model, [claim.pk], token=due, lease=claim.lease)
        if moved:
            claim.token, claim.issued_at = token, time.monotonic()
            setattr(row, model.retry_at_field_name, token)
            self._add_follow(_FollowUp(claim, row, due))

    def _failed(self, claim: Claim, row, exc: Exception) -> None:
        """Record the failure (one log line; the traceback goes to the record) and back the row off."""
        tb = traceback.format_exc()
        try:
            outcome = failures.record_failure(claim, failures.one_line(exc), tb)
        except DatabaseError as db_exc:
            if dbsession.is_connection_error(db_exc):
                self._after_connection_error(claim, db_exc)
                return
            logger.exception("could not record the failure of %s %s", claim.label, claim.pk)
            return
        what = f"tick of {claim.label} {claim.pk} failed"
        if not outcome.written:
            logger.warning("%s after its claim was taken over: %s", what, failures.one_line(exc))
        elif outcome.parked:
            logger.error(
                "%s (attempt %d): %s; parked until re-queued", what, outcome.attempts, failures.one_line(exc)
            )
        else:
            logger.warning(
                "%s (attempt %d, retry in %.0fs): %s",
                what,
                outcome.attempts,
                outcome.retry_in,
                failures.one_line(exc),
            )

    def _after_connection_error(self, claim: Claim, exc: BaseException) -> None:
        """The database went away during the tick: no failure; hand the row back once it answers
        (retried with backoff while the claim can still be ours, and through the grace period)."""
        logger.warning(
            "tick of %s %s hit an unavailable database (%s); handing it back once it answers",
            claim.label, claim.pk, failures.one_line(exc),
        )  # fmt: skip
        dbsession.reset()
        backoff = dbsession.Backoff()
        expires = claim.issued_at + claim.lease
        while True:
            try:
                self._release([claim], quiet=True)
                return
            except DatabaseError:
                dbsession.reset()
            stopping_past_grace = self._stop.is_set() and time.monotonic() > (self._stop_deadline or 0)
            if stopping_past_grace or time.monotonic() > expires:
                logger.warning("%s %s: not handed back; its claim expires by itself", claim.label, claim.pk)
                return
            self._sleep(backoff.next())

    # follow-ups

    def _add_follow(self, follow: _FollowUp) -> None:
        """Keep `follow`; if its row offers a wake-up descriptor, its readiness makes it due at once."""
        wake_fd = getattr(follow.row, "runner_wake_fd", None)
        fd = wake_fd() if callable(wake_fd) else None
        with self._mutex:
            self._follow.append(follow)
            if fd is not None:
                follow.fd = fd
                self.loop.add_reader(fd, lambda: self._on_follow_ready(follow))

    def _on_follow_ready(self, follow: _FollowUp) -> None:
        # (A pidfd stays readable once its process has exited: stop watching it before ticking.)
        self.loop.remove_reader(follow.fd)
        follow.due = min(follow.due, timezone.now())

    def _forget_follow_fd(self, follow: _FollowUp) -> None:
        if follow.fd is not None:
            self.loop.remove_reader(follow.fd)
            os.close(follow.fd)
            follow.fd = None

    def _tick_follow_ups(self, everything: bool = False) -> int:
        """Tick the followed rows that are due (all of them with `everything`); renew the others."""
        now = timezone.now()
        with self._mutex:
            follows = list(self._follow)
        due = []
        for follow in follows:
            if everything or follow.due <= now:
                due.append(follow)
            elif time.monotonic() - follow.claim.issued_at > follow.claim.lease / 2:
                self._renew_follow(follow)
        ticked = 0
        for follow in due:
            with self._mutex:
                if follow not in self._follow:
                    continue
                self._follow.remove(follow)
                if self._stop.is_set() and not self._cleaning:
                    self._follow.append(follow)  # stopping: handed back or finished by the cleanup
                    continue
                self._forget_follow_fd(follow)
                claim = follow.claim
                claim.retry_at, claim.lost = UNSET, False
                self._current = _Current(claim)
            self._tick(claim, follow.row)
            ticked += 1
        return ticked

    def _renew_follow(self, follow: _FollowUp) -> None:
        claim = follow.claim
        with claim.mutex:
            renewed, token = claim.model.renew_claim([claim.pk], claim.token, claim.lease)
            if renewed:
                claim.token, claim.issued_at = token, time.monotonic()
                setattr(follow.row, claim.model.retry_at_field_name, token)
                self._write_state()
                return
        logger.warning("%s %s: claim lost while waiting for its next tick", claim.label, claim.pk)
        with self._mutex:
            if follow in self._follow:
                self._follow.remove(follow)
                self._forget_follow_fd(follow)
        self._write_state()

    # wake-ups

    def _open_listener(self) -> None:
        if not Listener.wanted():
            return
        listener = Listener()
        try:
            fd = listener.open()
            if workers_settings.LISTEN == "auto" and not listener.probe():
                logger.warning("LISTEN/NOTIFY does not reach this worker (a pooler?): polling instead")
                listener.close()
                return
        except Exception as exc:
            logger.warning("cannot LISTEN (%s): polling instead", failures.one_line(exc))
            listener.close()
            return
        self.listener = listener
        self.loop.add_reader(fd, self._on_notify)

    def _on_notify(self) -> None:
        listener = self.listener
        if listener is None:
            return
        try:
            payloads = listener.drain()
        except Exception as exc:  # the server went away: poll until it is back, then listen again
            logger.warning("listener connection lost (%s): polling until it is back", failures.one_line(exc))
            self.loop.remove_reader(listener.fd)
            listener.close()
            self.listener = None
            self.loop.call_later(dbsession.Backoff(first=1.0).next(), self._reopen_listener)
            return
        for payload in payloads:
            self._notified.add(payload.split("|", 1)[0])

    def _reopen_listener(self) -> None:
        if self._stop.is_set() or self.listener is not None:
            return
        self._open_listener()
        if self.listener is None and Listener.wanted() and workers_settings.LISTEN is not False:
            self.loop.call_later(5.0, self._reopen_listener)

    # the heartbeat thread

    def _heartbeat_loop(self) -> None:
        interval = min(
            self.options.heartbeat,
            min(lock_seconds_for(m, self.options.lock_seconds) for m in self.models) / 6,
        )
        backoff = dbsession.Backoff()
        failing_since = None
        try:
            while not self._beat_stop.is_set():
                self._beat_wake.wait(interval)
                self._beat_wake.clear()
                if self._beat_stop.is_set():
                    break
                try:
                    self._renew_current_if_overtime()
                    self._release_batch_if_waiting()
                    if self._current is None:
                        connections.close_all()  # (this thread's own: held only while a tick runs long)
                    if failing_since is not None:
                        logger.warning(
                            "heartbeat: the database answers again after %.1fs",
                            time.monotonic() - failing_since,
                        )
                        failing_since = None
                        backoff.reset()
                except Exception as exc:
                    if failing_since is None:
                        failing_since = time.monotonic()
                        logger.warning("heartbeat: %s; retrying with backoff", failures.one_line(exc))
                    dbsession.reset()
                    self._beat_stop.wait(backoff.next())
        finally:
            connections.close_all()

    def _renew_current_if_overtime(self) -> None:
        with self._mutex:
            current = self._current
        if current is None:
            return
        claim = current.claim
        if claim.token is None or claim.lost or time.monotonic() - claim.issued_at < claim.lease / 3:
            return
        with claim.mutex:
            renewed, token = claim.model.renew_claim([claim.pk], claim.token, claim.lease)
            if renewed:
                claim.token, claim.issued_at = token, time.monotonic()
            else:
                claim.lost = True
        if renewed:
            self._write_state()
        else:
            logger.warning(
                "%s %s: claim lost while its tick runs; its result will be refused", claim.label, claim.pk
            )

    def _release_batch_if_waiting(self) -> None:
        """Stopping, or a tick running long: hand the unstarted rows of the batch to other workers."""
        with self._mutex:
            batch, current = self._batch, self._current
            if batch is None or not batch.rows:
                return
            running_long = current is not None and time.monotonic() - current.started_at > batch.lease / 3
            if not (self._stop.is_set() or running_long):
                return
            rows, batch.rows = batch.rows, []
        released = batch.model.release_claim([r.pk for r in rows], batch.token)
        if released:
            logger.info("handed %d %s row(s) back to the queue", len(released), batch.model.__name__)
        self._write_state()

    # cleanup

    def _cleanup(self, immediate: bool) -> None:
        """Hand back what was not started, let children end, then hand back the rest."""
        with self._mutex:
            current = self._current
            self._current = None
            batch, self._batch = self._batch, None
        held = [current.claim] if current is not None and current.claim.token is not None else []
        if batch is not None:
            held += [Claim(batch.model, r.pk, batch.token, batch.lease) for r in batch.rows]
        _bounded(lambda: self._release(held))
        self._write_state()
        deadline = time.monotonic() if immediate or self._stop_deadline is None else self._stop_deadline
        while _live_children() and time.monotonic() < deadline:
            self._tick_follow_ups()
            time.sleep(0.05)
        _bounded(lambda: _send(signals.worker_stopping, sender=Worker, worker=self, immediate=immediate))
        if self._follow and not immediate:
            _bounded(lambda: self._tick_follow_ups(everything=True))
        with self._mutex:
            rest = [follow.claim for follow in self._follow]
            for follow in self._follow:
                self._forget_follow_fd(follow)
            self._follow = []
        _bounded(lambda: self._release(rest))
        self._idle = True
        self._write_state()

    def _release(self, held: list[Claim], quiet: bool = False) -> None:
        """Hand these claims back to the queue (due now), where they are still ours (`quiet`: raise
        a database error instead of logging it)."""
        groups: dict[tuple, list] = collections.defaultdict(list)
        for claim in held:
            if claim.token is not None and not claim.lost:
                groups[(claim.model, claim.token)].append(claim.pk)
        for (model, token), pks in groups.items():
            try:
                released = model.release_claim(pks, token)
            except DatabaseError:
                if quiet:
                    raise
                logger.warning("could not hand %s rows back; their claim will expire", model.__name__)
                dbsession.reset()
                continue
            if released:
                logger.info("handed %d %s row(s) back to the queue", len(released), model.__name__)


def _entry(model, token, pks) -> list:
    return [
        model._meta.label,
        token.isoformat() if isinstance(token, datetime) else None,
        [str(pk) for pk in pks],
    ]


def _send(sig, **kwargs) -> None:
    """Send a lifecycle signal; log (do not raise) what a receiver raised."""
    for receiver, response in sig.send_robust(**kwargs):
        if isinstance(response, Exception):
            logger.warning(
                "%s receiver %s failed: %s",
                sig,
                getattr(receiver, "__qualname__", receiver),
                failures.one_line(response),
            )
            if isinstance(response, DatabaseError):
                dbsession.reset()


_cleanup_gave_up = threading.Event()


def _bounded(fn: Callable[[], object], seconds: float = CLEANUP_DB_SECONDS) -> None:
    """Run `fn` (database work at shutdown) but give up on it after `seconds`: a frozen database
    must not hang a stopping process. The thread is a daemon and dies with the process. Once one
    step gave up, the later ones are skipped: the database is not answering."""
    if _cleanup_gave_up.is_set():
        return
    done = threading.Event()
    errors: list[BaseException] = []

    def target() -> None:
        try:
            fn()
        except BaseException as exc:  # reported below
            errors.append(exc)
        finally:
            connections.close_all()
            done.set()

    thread = threading.Thread(target=target, name="bounded-cleanup", daemon=True)
    thread.start()
    if not done.wait(seconds):
        _cleanup_gave_up.set()
        logger.warning("the database did not answer within %.0fs; leaving the rest to expire", seconds)
    elif errors:
        logger.warning("cleanup step failed: %s", failures.one_line(errors[0]))


def _live_children() -> list[psutil.Process]:
    """Our direct children that have not exited (an exited one waits as a zombie to be reaped)."""
    alive = []
    for child in psutil.Process().children():
        try:
            if child.status() != psutil.STATUS_ZOMBIE:
                alive.append(child)
        except psutil.Error:
            pass
    return alive


# -- the orchestrator ------------------------------------------------------------------------


@dataclass
class _Child:
    """A worker process we spawned: its Popen, pidfd and state file."""

    popen: subprocess.Popen
    pidfd: int
    state: StateFile

    @property
    def pid(self) -> int:
        return self.popen.pid

    def signal(self, sig: int) -> None:
        try:
            signal.pidfd_send_signal(self.pidfd, sig)
        except ProcessLookupError:
            pass

    def kill_tree(self) -> None:
        """SIGKILL the worker and what it started (psutil checks each one's identity first)."""
        try:
            tree = psutil.Process(self.pid).children(recursive=True)
        except psutil.Error:
            tree = []
        self.signal(signal.SIGKILL)
        for proc in tree:
            try:
                proc.kill()
            except psutil.Error:
                pass


@dataclass
class Orchestrator:
    """The runner process: starts N workers, restarts crashed ones under a rate budget, stops them all."""

    options: RunnerOptions
    progress: Callable[..., None] | None = None
    children: list[_Child] = field(default_factory=list)
    restarts: int = 0
    presence_id: str | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _signals: int = 0
    _last_signal: int = 0
    _exit_code: int | None = None
    _seq: int = 0

    def run(self) -> int:
        """Run until stopped (or, with until_idle, until nothing is due); return the exit code."""
        self.models = driven_models(self.options.models)
        self.loop = EventLoop()
        self.state_dir = tempfile.mkdtemp(prefix="runworker-")
        self._restart_times: collections.deque[float] = collections.deque()
        self._pending: list[tuple] = []
        self._db_backoff = dbsession.Backoff(first=0.5, cap=10.0)
        dbsession.configure()
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        logger.info(
            "runner %d started: %d worker(s) for %s",
            os.getpid(),
            self.options.workers,
            ", ".join(m._meta.label for m in self.models),
        )
        exit_code = 0
        try:
            if not self._start():
                return 128 + self._last_signal if self._signals else 0
            for _ in range(self.options.workers):
                if self._stop.is_set():
                    break  # signalled while starting: start no more (those started are stopped below)
                self._spawn()
            exit_code = self._supervise()
        finally:
            self._stop.set()  # (from here on an ended worker is not replaced)
            self._stop_children(immediate=self._signals > 1)
            if self._signals > 1:
                exit_code = 128 + self._last_signal
            _bounded(
                lambda: _send(
                    signals.orchestrator_stopped, sender=Orchestrator, orchestrator=self, exit_code=exit_code
                )
            )
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            if self.progress:
                _bounded(lambda: self.progress(final=True))
            shutil.rmtree(self.state_dir, ignore_errors=True)
            self.loop.close()
            logger.info("runner %d stopped with exit code %d", os.getpid(), exit_code)
        return exit_code

    def _start(self) -> bool:
        """Register (through the orchestrator_started receivers), waiting for the database if need be."""
        while not self._stop.is_set():
            if not dbsession.wait_for_database(self._stop.is_set, self.loop.run_once):
                return False
            failed = [
                r
                for _, r in signals.orchestrator_started.send_robust(sender=Orchestrator, orchestrator=self)
                if isinstance(r, Exception)
            ]
            if not failed:
                return True
            logger.warning("start-up failed (%s); retrying", failures.one_line(failed[0]))
            dbsession.reset()
            self.loop.run_once(self._db_backoff.next())
        return False

    def _on_signal(self, signum, frame) -> None:
        self._signals += 1
        self._last_signal = signum
        self._stop.set()
        self.loop.wake()

    def _supervise(self) -> int:
        next_beat = time.monotonic() + self.options.heartbeat
        next_idle_check = time.monotonic() + self.options.poll
        beat_failing = False
        while not self._stop.is_set() and self._exit_code is None:
            now = time.monotonic()
            if now >= next_beat:
                next_beat = now + self.options.heartbeat
                responses = signals.runner_heartbeat.send_robust(
                    sender=Orchestrator, orchestrator=self, worker_pids=[c.pid for c in self.children]
                )
                errors = [r for _, r in responses if isinstance(r, Exception)]
                if errors and not beat_failing:
                    logger.warning("heartbeat failed (%s); retrying", failures.one_line(errors[0]))
                    dbsession.reset()
                elif not errors and beat_failing:
                    logger.warning("heartbeat works again")
                beat_failing = bool(errors)
            if self._pending:
                self._settle_pending()
            if self.options.until_idle and now >= next_idle_check:
                next_idle_check = now + self.options.poll
                if self._is_idle():
                    self._report_waiting()
                    return 0
            if self.progress:
                try:
                    self.progress()
                except DatabaseError:
                    dbsession.reset()
            wake_at = min(next_beat, next_idle_check) if self.options.until_idle else next_beat
            wait = wake_at - time.monotonic()
            if self.progress:
                wait = min(wait, 0.5)
            self.loop.run_once(max(0.0, wait))
        return self._exit_code or 0

    # workers

    def _worker_argv(self, state_path: str) -> list[str]:
        argv0 = sys.argv[0] if sys.argv else ""
        if os.path.basename(argv0) == "manage.py" and os.path.isfile(argv0):
            entry = [sys.executable, os.path.abspath(argv0)]
        else:
            entry = [sys.executable, "-m", "django"]
        return [
            *entry, "runworker", "--worker", f"--parent-id={self.presence_id or ''}",
            f"--orchestrator-pid={os.getpid()}", f"--state-file={state_path}", *self.options.as_worker_args(),
        ]  # fmt: skip

    def _worker_env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["DJANGO_SETTINGS_MODULE"] = settings.SETTINGS_MODULE
        root = Path(import_module(settings.SETTINGS_MODULE.split(".")[0]).__file__).resolve().parent.parent
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), env.get("PYTHONPATH", "")]))
        return env

    def _spawn(self) -> None:
        # Its own session: a terminal's Ctrl-C reaches the orchestrator only, which then stops the
        # workers once (a second signal would make them exit at once). Their logs go to our stderr.
        self._seq += 1
        state_path = os.path.join(self.state_dir, f"worker-{self._seq}.json")
        popen = subprocess.Popen(
            self._worker_argv(state_path), env=self._worker_env(), stdin=subprocess.DEVNULL,
            start_new_session=True, close_fds=True,
        )  # fmt: skip
        pidfd = os.pidfd_open(popen.pid)
        child = _Child(popen, pidfd, StateFile(state_path))
        self.children.append(child)
        self.loop.add_reader(pidfd, lambda: self._on_exit(child))

    def _on_exit(self, child: _Child) -> None:
        code = child.popen.poll()
        if code is None:
            return
        self.loop.remove_reader(child.pidfd)
        os.close(child.pidfd)
        self.children.remove(child)
        exit_code = _exit_code(code)
        state = child.state.read() or {}
        self._pending.append((child.pid, exit_code, state))
        if self._stop.is_set() or self._exit_code is not None:
            return  # settled by _stop_children, bounded in time
        self._settle_pending()
        logger.warning("worker %d exited with %d; starting another", child.pid, exit_code)
        self._respawn()

    def _respawn(self) -> None:
        """Start a replacement, at most RESTART_BUDGET per RESTART_WINDOW seconds (a crash loop is
        slowed down, never given up on: the healthy rows still need workers)."""
        if self._stop.is_set():
            return  # a delayed restart firing while we stop would start a worker nobody signals
        now = time.monotonic()
        window, budget = workers_settings.RESTART_WINDOW, workers_settings.RESTART_BUDGET
        while self._restart_times and now - self._restart_times[0] > window:
            self._restart_times.popleft()
        if len(self._restart_times) >= budget:
            delay = self._restart_times[0] + window - now
            logger.error(
                "workers keep failing (%d restarts in %.0fs); next start in %.1fs", budget, window, delay
            )
            self.loop.call_later(delay, self._respawn)
            return
        self._restart_times.append(now)
        self.restarts += 1
        self._spawn()

    def _settle_pending(self) -> None:
        """For each ended worker: count a failure for the row it was ticking (unless we stopped it)
        and hand back what else it held; retried later while the database does not answer."""
        still = []
        for pid, exit_code, state in self._pending:
            try:
                self._settle(pid, exit_code, state)
                self._db_backoff.reset()
            except DatabaseError as exc:
                logger.warning("cannot settle worker %d yet (%s)", pid, failures.one_line(exc))
                dbsession.reset()
                still.append((pid, exit_code, state))
        self._pending = still
        if still:
            self.loop.call_later(self._db_backoff.next(), lambda: None)

    def _settle(self, pid: int, exit_code: int, state: dict) -> None:
        current = state.get("current")
        if current and (parsed := _claim_from_state(current)) is not None:
            model, (pk,), token = parsed
            claim = Claim(model, pk, token, lock_seconds_for(model, self.options.lock_seconds))
            if self._recover(model, pk, claim):  # e.g. a launch cut off between its spawn and its record
                logger.error("%s %s: worker %d %s while ticking this row; settled", claim.label, pk, pid,
                             _describe_exit(exit_code))  # fmt: skip
            elif self._stop.is_set() and exit_code in (0, 128 + signal.SIGTERM, 128 + signal.SIGKILL):
                failures_outcome = None
                model.release_claim([pk], token)  # we stopped it: an interrupted tick, not a failure
            else:
                error = f"worker {pid} {_describe_exit(exit_code)} while ticking this row"
                failures_outcome = failures.record_failure(
                    claim, error, worker=f"{failures.worker_label().split(':')[0]}:{pid}"
                )
                if failures_outcome.written:
                    logger.error("%s %s: %s (attempt %d%s)", claim.label, pk, error, failures_outcome.attempts,
                                 ", parked" if failures_outcome.parked else "")  # fmt: skip
        for entry in state.get("held") or []:
            parsed = _claim_from_state(entry)
            if parsed is not None and parsed[2] is not None:
                model, pks, token = parsed
                released = model.release_claim(pks, token)
                if released:
                    logger.info("handed %d %s row(s) of worker %d back", len(released), model.__name__, pid)
        _send(signals.worker_exited, sender=Orchestrator, orchestrator=self, pid=pid, exit_code=exit_code)

    def _recover(self, model, pk, claim: Claim) -> bool:
        """model.runner_recover() for the row a dead worker was ticking; a bug in it is logged, not fatal."""
        try:
            return model.runner_recover(pk, claim.guard())
        except DatabaseError:
            raise  # (settled again later)
        except Exception:
            logger.exception("%s %s: recovering the row of a dead worker failed", claim.label, pk)
            return False

    # --until-idle

    def _is_idle(self) -> bool:
        """True when every worker is idle and holds nothing, and no row is due now (by the database's clock)."""
        states = [child.state.read() for child in self.children]
        if len(states) < self.options.workers or self._pending:
            return False
        if not all(s and s.get("idle") and not s.get("current") and not s.get("held") for s in states):
            return False
        try:
            due = next_due(self.models)
        except DatabaseError:
            dbsession.reset()
            return False
        if any(seconds is not None and seconds <= 0 for seconds in due.values()):
            return False
        soon = [
            m for m, seconds in due.items() if seconds is not None and seconds <= self.options.idle_horizon
        ]
        if soon and self._scheduled_soon(soon):
            return False
        again = [child.state.read() for child in self.children]
        # A worker that claimed (or ticked) in between changed its generation or is busy.
        return [s.get("gen") for s in states] == [(s or {}).get("gen") for s in again] and all(
            s and s.get("idle") and not s.get("current") and not s.get("held") for s in again
        )

    def _scheduled_soon(self, models_) -> bool:
        """True if a row due within the idle horizon is not backing off after a failure (it is work
        scheduled by a tick, such as a poll: --until-idle waits for it)."""
        for model in models_:
            retry_field = model.retry_at_field_name
            rows = (
                claims.pending_rows(model, model.claim_filter())
                .filter(**{f"{retry_field}__lte": sql.DbNow(self.options.idle_horizon)})
                .values_list("pk", flat=True)[:200]
            )
            pks = {str(pk) for pk in rows}
            if pks - failures.failing_pks(model, pks):
                return True
        return False

    def _report_waiting(self) -> None:
        """Idle: list the rows that wait for a retry (backing off, parked, scheduled later)."""
        lines = []
        for model in self.models:
            waiting = claims.pending_rows(model, model.claim_filter()).order_by(model.retry_at_field_name)
            total = waiting.count()
            if not total:
                continue
            parked = waiting.filter(**{model.retry_at_field_name: RETRY_AT_MAX}).count()
            lines.append(f"{total} {model._meta.label} row(s) wait for a retry ({parked} parked)")
            for row in waiting[:10]:
                record = TickFailure.objects.filter(model=model._meta.label, object_id=str(row.pk)).first()
                when = getattr(row, model.retry_at_field_name)
                detail = f" after {record.attempts} failed attempt(s): {record.error}" if record else ""
                state = "parked" if when == RETRY_AT_MAX else f"due {when:%Y-%m-%d %H:%M:%S}"
                lines.append(f"  {model._meta.label} {row.pk}: {state}{detail}")
        if lines:
            logger.info("idle; %s", "\n".join(lines))
        else:
            logger.info("idle: no row waits for a retry")

    # stopping

    def _stop_children(self, immediate: bool) -> None:
        """SIGTERM the workers (once), wait for them within the grace period, then kill their trees."""
        alive = [c for c in self.children if c.popen.poll() is None]
        if not immediate:
            for child in alive:
                child.signal(signal.SIGTERM)
            deadline = time.monotonic() + self.options.grace + 5.0
            while self.children and time.monotonic() < deadline and self._signals <= 1:
                self.loop.run_once(0.2)
        for child in list(self.children):
            if child.popen.poll() is None:
                child.kill_tree()
            child.popen.wait()
            self._on_exit(child)
        if self._pending:
            _bounded(self._settle_pending)


def _exit_code(returncode: int) -> int:
    """subprocess gives -N for a signalled child: report 128 + N as a shell would."""
    return 128 - returncode if returncode < 0 else returncode


def _describe_exit(exit_code: int) -> str:
    if exit_code > 128:
        try:
            return f"was killed by {signal.Signals(exit_code - 128).name}"
        except ValueError:
            pass
    return f"exited with {exit_code}"
