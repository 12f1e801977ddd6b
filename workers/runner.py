"""The runner: an orchestrator process supervising worker processes that claim and tick due rows.

Claims. A worker claims a batch of due rows of one model in one statement (`claim_batch`: on
PostgreSQL `FOR UPDATE SKIP LOCKED`, on SQLite a conditional update under the write lock), then ticks
them one by one. A claim is retry_at moved `lock_seconds` ahead; it is never allowed to run out
while its owner works on it:
  * between ticks, the worker itself renews the rest of its batch once half the claim is used up;
  * during a tick, the heartbeat thread renews the row being ticked once two thirds are used up.
Every renewal is guarded by the retry_at we set (`renew_claim`), so a claim that did expire and was
taken by someone else is dropped, never ticked twice.

Shutdown. The first SIGTERM/SIGINT stops claiming; the tick in flight may finish within `grace`
seconds, after which it is interrupted and its row is handed back to the queue (retry_at = now), as
are the claimed rows not ticked yet; child process trees are terminated and the runner's own Process
rows are closed. A second signal exits at once (children killed, claims left to expire).

Crashes. A SIGKILLed worker cannot clean up: the orchestrator (or the next runner) closes its stale
Process row, and its claimed rows become due again when their claim expires. Ticks that commit their
side effect together with their state change (see tests/exampleapp) are then neither lost nor run twice.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from importlib import import_module
from pathlib import Path

import psutil
from django.apps import apps
from django.conf import settings
from django.core.exceptions import FieldDoesNotExist
from django.db import connections, models
from django.utils import timezone

from machine import process_utils
from workers import presence
from workers.claims import move_claims
from workers.models import ModelWithStateMachine

logger = logging.getLogger(__name__)

#: A tick that raised is retried this much later (longer than the idle horizon, so --until-idle ends).
ERROR_RETRY_SECONDS = 300


class GraceExpired(BaseException):
    """The grace period after a stop signal ran out while a tick was still working."""


class ExitNow(BaseException):
    """A second stop signal: leave at once."""


@dataclass
class RunnerOptions:
    """What `runworker` was asked to do."""

    workers: int = 2
    until_idle: bool = False
    models: tuple[str, ...] = ()
    poll: float = 0.5
    lock_seconds: float = 60.0
    batch: int = 10
    grace: float = 10.0
    max_restarts: int = 10
    heartbeat: float = 5.0
    #: The command's -v, handed on to the worker processes.
    verbosity: int = 1

    def as_worker_args(self) -> list[str]:
        args = [
            f"--poll={self.poll}",
            f"--lock-seconds={self.lock_seconds}",
            f"--batch={self.batch}",
            f"--grace={self.grace}",
            f"--heartbeat={self.heartbeat}",
            f"--verbosity={self.verbosity}",
        ]
        if self.until_idle:
            args.append("--until-idle")
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


def claim_filter(model: type[models.Model]) -> models.Q | None:
    """Rows with a `machine` FK belong to one host: a runner only claims those of Machine.current()."""
    from machine.models import Machine

    try:
        field_ = model._meta.get_field("machine")
    except FieldDoesNotExist:
        return None
    if getattr(field_, "related_model", None) is not Machine:
        return None
    return models.Q(machine=Machine.current())


def launcher_affinity(model: type[models.Model], lock: float) -> models.Q | None:
    """For Process rows: a RUNNING row is polled by the worker that launched it (its child).

    Only the parent can reap a child and learn its true exit code, so a worker takes a RUNNING
    Process only if the pid is its own child, or if nobody polled the row for a whole claim (its
    launcher is gone). Queued rows are anyone's.
    """
    from machine.models import Process

    if not issubclass(model, Process):
        return None
    own_children = [child.pid for child in psutil.Process().children()]
    abandoned_before = timezone.now() - timedelta(seconds=lock)
    return (
        ~models.Q(status=Process.StatusChoices.RUNNING)
        | models.Q(pid__in=own_children)
        | models.Q(retry_at__lt=abandoned_before)
    )


def lock_seconds_for(model: type[ModelWithStateMachine], default: float) -> float:
    """A model may size its claim to its work with a `claim_seconds` class attribute."""
    return float(getattr(model, "claim_seconds", None) or default)


def pending_soon(model: type[ModelWithStateMachine], horizon: float) -> bool:
    """True if a non-final row of ours is due within `horizon` seconds (claimed rows included)."""
    queryset = model._default_manager.filter(
        **{f"{model.retry_at_field_name}__lte": timezone.now() + timedelta(seconds=horizon)}
    ).exclude(**{f"{model.state_field_name}__in": model.FINAL_STATES})
    filters = claim_filter(model)
    if filters is not None:
        queryset = queryset.filter(filters)
    return queryset.exists()


# -- the worker ------------------------------------------------------------------------------


@dataclass
class _Held:
    """Rows of one model this worker holds a claim on, all claimed until `until`."""

    model: type[ModelWithStateMachine]
    rows: list
    until: object
    lock: float


@dataclass
class _FollowUp:
    """A row this worker ticked that is due again soon: it keeps the claim and ticks it itself.

    A Process launched in the background is the launching worker's child: only that worker can reap
    it and learn its true exit code, so the same worker polls it.
    """

    model: type[ModelWithStateMachine]
    row: object
    due: object
    until: object
    lock: float


#: A worker stops claiming new rows while it follows this many batches' worth of rows.
FOLLOW_UP_BATCHES = 4


@dataclass
class Worker:
    """One worker process: claim a batch, tick each row, renew, repeat; stop cleanly on a signal."""

    options: RunnerOptions
    parent_id: object = None
    ticks: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    #: The heartbeat thread runs until the worker has cleaned up (it renews claims during the grace).
    _beat_stop: threading.Event = field(default_factory=threading.Event)
    _mutex: threading.Lock = field(default_factory=threading.Lock)
    _batch: _Held | None = None
    _current: _Held | None = None
    _follow: list[_FollowUp] = field(default_factory=list)
    _signals: int = 0
    _stop_deadline: float | None = None
    _cleaning: bool = False

    def run(self) -> int:
        """Work until stopped (or idle with until_idle); return the process exit code."""
        self.models = driven_models(self.options.models)
        self._ppid = os.getppid()
        previous = {sig: signal.signal(sig, self._on_stop_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        previous[signal.SIGALRM] = signal.signal(signal.SIGALRM, self._on_grace_expired)
        self.row = presence.register_self("worker", parent_id=self.parent_id, worker_type="runworker")
        beat = threading.Thread(target=self._heartbeat_loop, name="worker-heartbeat", daemon=True)
        beat.start()
        exit_code = 0
        try:
            self._loop()
        except GraceExpired:
            logger.warning("grace period over: interrupting the tick in flight and handing its row back")
            connections["default"].close()  # the interrupted statement may have left it unusable
        except ExitNow:
            exit_code = 128 + signal.SIGTERM
        finally:
            self._cleaning = True
            signal.setitimer(signal.ITIMER_REAL, 0)
            self._stop_children(immediate=exit_code != 0)
            self._hand_back()
            self._beat_stop.set()
            beat.join(timeout=5)
            presence.close_row(self.row, exit_code)
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return exit_code

    # signals

    def _on_stop_signal(self, signum, frame) -> None:
        self._signals += 1
        if self._signals == 1:
            logger.info("worker %d: signal %d, finishing the tick in flight", os.getpid(), signum)
            self._stop_deadline = time.monotonic() + self.options.grace
            self._stop.set()
            if self._current is not None and not self._cleaning:
                signal.setitimer(signal.ITIMER_REAL, max(self.options.grace, 0.001))
            return
        if self._cleaning:
            os._exit(128 + signum)
        raise ExitNow

    def _on_grace_expired(self, signum, frame) -> None:
        if self._current is not None and not self._cleaning:
            raise GraceExpired

    # the loop

    def _loop(self) -> None:
        horizon = max(lock_seconds_for(m, self.options.lock_seconds) for m in self.models) + self.options.poll
        max_follow = FOLLOW_UP_BATCHES * self.options.batch
        while not self._stop.is_set():
            if os.getppid() != self._ppid:
                logger.warning("worker %d: orchestrator is gone, stopping", os.getpid())
                self._stop_deadline = time.monotonic() + self.options.grace
                return
            _drop_broken_connection()
            worked = self._tick_follow_ups()
            for model in self.models:
                if self._stop.is_set():
                    return
                if len(self._follow) < max_follow:
                    worked += self._work_one_batch(model)
            if worked:
                continue
            if self._follow:
                next_due = min(f.due for f in self._follow)
                wait = (next_due - timezone.now()).total_seconds()
                self._stop.wait(min(max(wait, 0.0), self.options.poll))
                continue
            if self.options.until_idle and not any(pending_soon(m, horizon) for m in self.models):
                return
            self._stop.wait(self.options.poll)

    def _tick_follow_ups(self, everything: bool = False) -> int:
        """Tick the followed rows that are due (all of them with `everything`); renew the others."""
        now = timezone.now()
        due = [f for f in self._follow if everything or f.due <= now]
        for follow in self._follow:
            if follow not in due and (follow.until - now).total_seconds() < follow.lock / 2:
                renewed, until = follow.model.renew_claim([follow.row.pk], follow.until, follow.lock)
                if renewed:
                    follow.until = until
                    setattr(follow.row, follow.model.retry_at_field_name, until)
                else:
                    due.append(follow)  # lost: dropped below without a tick
                    follow.lock = -1.0
        ticked = 0
        for follow in due:
            self._follow.remove(follow)
            if follow.lock < 0 or (self._stop.is_set() and not self._cleaning):
                if follow.lock >= 0:
                    self._follow.append(follow)  # stopping: handed back or finished by the cleanup
                continue
            current = _Held(follow.model, [follow.row], follow.until, follow.lock)
            with self._mutex:
                self._current = current
            self._tick(current)
            with self._mutex:
                self._current = None
            ticked += 1
        return ticked

    def _work_one_batch(self, model: type[ModelWithStateMachine]) -> int:
        lock = lock_seconds_for(model, self.options.lock_seconds)
        filters = claim_filter(model)
        affinity = launcher_affinity(model, lock)
        if affinity is not None:
            filters = affinity if filters is None else filters & affinity
        rows = model.claim_batch(limit=self.options.batch, lock_seconds=lock, filters=filters)
        if not rows:
            return 0
        retry_attr = model.retry_at_field_name
        held = _Held(model, rows, getattr(rows[0], retry_attr), lock)
        with self._mutex:
            self._batch = held
        ticked = 0
        while held.rows and not self._stop.is_set():
            if (held.until - timezone.now()).total_seconds() < lock / 2:
                self._renew(held)
                if not held.rows:
                    break
            row = held.rows.pop(0)
            current = _Held(model, [row], held.until, lock)
            with self._mutex:
                self._current = current
            if self._stop.is_set() and self._stop_deadline is not None:
                break  # the signal came between pop and here: the finally hands `current` back
            self._tick(current)
            with self._mutex:
                self._current = None
            ticked += 1
        return ticked

    def _renew(self, held: _Held) -> None:
        """Push the claim of the held rows ahead; drop the ones that are no longer ours."""
        renewed, until = held.model.renew_claim([r.pk for r in held.rows], held.until, held.lock)
        keep = set(renewed)
        lost = [r for r in held.rows if r.pk not in keep]
        if lost:
            logger.warning("claim on %d %s row(s) lost before their tick", len(lost), held.model.__name__)
        with self._mutex:
            held.rows = [r for r in held.rows if r.pk in keep]
            held.until = until
            for row in held.rows:
                setattr(row, held.model.retry_at_field_name, until)

    def _tick(self, current: _Held) -> None:
        row = current.rows[0]
        try:
            getattr(row, row.state_machine_attr).tick()
            self.ticks += 1
            self._keep_if_due_soon(current)
        except Exception:
            logger.exception("tick of %s failed; retrying in %ds", row, ERROR_RETRY_SECONDS)
            # Guarded by our claim: a tick that rescheduled its row before failing keeps its schedule.
            with self._mutex:
                until = current.until
            current.model.renew_claim([row.pk], until, ERROR_RETRY_SECONDS)

    def _keep_if_due_soon(self, current: _Held) -> None:
        """After a tick: a row due again within half a claim stays ours (see _FollowUp)."""
        model, row = current.model, current.rows[0]
        if getattr(row, model.state_field_name) in model.FINAL_STATES:
            return
        due = getattr(row, model.retry_at_field_name)
        now = timezone.now()
        if due is None or (due - now).total_seconds() > current.lock / 2:
            return
        until = now + timedelta(seconds=current.lock)
        # Guarded by the schedule the tick wrote: if the row changed meanwhile, the queue has it.
        if move_claims(model, [row.pk], retry_field=model.retry_at_field_name, expected=due, until=until):
            setattr(row, model.retry_at_field_name, until)
            self._follow.append(_FollowUp(model, row, due, until, current.lock))

    # the heartbeat thread

    def _heartbeat_loop(self) -> None:
        try:
            while not self._beat_stop.wait(min(self.options.heartbeat, self.options.lock_seconds / 6)):
                presence.heartbeat(self.row)
                self._renew_current_if_overtime()
        except Exception:
            logger.exception("heartbeat thread failed")
        finally:
            connections.close_all()

    def _renew_current_if_overtime(self) -> None:
        with self._mutex:
            current = self._current
            if current is None:
                return
            left = (current.until - timezone.now()).total_seconds()
            if left >= current.lock / 3:
                return
            row = current.rows[0]
            attr = current.model.retry_at_field_name
            renewed, until = current.model.renew_claim([row.pk], current.until, current.lock)
            if renewed:
                # Keep the in-memory row in step, unless the tick already moved retry_at itself.
                if getattr(row, attr) == current.until:
                    setattr(row, attr, until)
                current.until = until

    # cleanup

    def _hand_back(self) -> None:
        """Return the rows we claimed and did not finish to the queue (due now)."""
        with self._mutex:
            held = [h for h in (self._current, self._batch) if h is not None and h.rows]
            held += [_Held(f.model, [f.row], f.until, f.lock) for f in self._follow]
            self._current = self._batch = None
            self._follow = []
        for item in held:
            try:
                released = item.model.release_claim([r.pk for r in item.rows], item.until)
            except Exception:
                logger.exception("could not hand %s rows back; their claim will expire", item.model.__name__)
                continue
            if released:
                logger.info("handed %d %s row(s) back to the queue", len(released), item.model.__name__)

    def _stop_children(self, immediate: bool) -> None:
        """Let our children (processes the ticks launched) end within the grace period, kill the rest.

        Followed rows are ticked meanwhile, so the exit codes are recorded by the one process that can
        reap those children; after the kill they are ticked once more to record how they ended.
        """
        deadline = time.monotonic() if immediate or self._stop_deadline is None else self._stop_deadline
        while _live_children() and time.monotonic() < deadline:
            self._tick_follow_ups()
            time.sleep(0.05)
        for child in _live_children():
            process_utils.kill_tree(
                child.pid,
                process_utils.get_start_time(child.pid),
                graceful_timeout=0 if immediate else 2.0,
                tolerance=process_utils.EXACT_START_TOLERANCE,
            )
        if self._follow and not immediate:
            self._tick_follow_ups(everything=True)


def _drop_broken_connection() -> None:
    """Reconnect after a database error; unlike close_old_connections() keep a healthy connection
    (with CONN_MAX_AGE = 0 that would reconnect on every round of the loop)."""
    connection = connections["default"]
    if connection.connection is not None and connection.errors_occurred and not connection.is_usable():
        connection.close()


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
    """A worker process we spawned, with what proves its identity before we signal it."""

    spawned: process_utils.Spawned
    cmd: list[str]

    @property
    def pid(self) -> int:
        return self.spawned.pid

    def poll(self) -> int | None:
        return self.spawned.popen.poll()

    def signal(self, sig: int) -> bool:
        return process_utils.send_signal(
            self.pid, self.spawned.start_time, self.cmd, sig,
            process_utils.EXACT_START_TOLERANCE, marker=self.spawned.marker,
        )  # fmt: skip

    def kill_tree(self) -> None:
        process_utils.kill_tree(
            self.pid, self.spawned.start_time, self.cmd, self.spawned.marker,
            graceful_timeout=0, tolerance=process_utils.EXACT_START_TOLERANCE,
        )  # fmt: skip


@dataclass
class Orchestrator:
    """The runner process: registers itself, starts N workers, restarts crashed ones, stops them all."""

    options: RunnerOptions
    progress: Callable[..., None] | None = None
    children: list[_Child] = field(default_factory=list)
    restarts: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _signals: int = 0
    _last_signal: int = 0

    def run(self) -> int:
        """Run until stopped (or until the workers found the queues empty); return the exit code."""
        from machine.models import Machine, Process

        models = driven_models(self.options.models)  # fail early on unknown labels
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        self.row = presence.register_self("orchestrator", worker_type="runworker")
        logger.info(
            "runner %d started: %d worker(s) for %s",
            os.getpid(),
            self.options.workers,
            ", ".join(m._meta.label for m in models),
        )
        exit_code = 0
        try:
            machine = Machine.current()
            presence.close_stale_runner_rows(machine)
            # Rows a killed runner launched and nobody will poll any more (before our workers start:
            # a live worker's exited-but-unreaped child would look gone too).
            Process.cleanup_stale_running(machine=machine)
            for _ in range(self.options.workers):
                self._spawn()
            exit_code = self._supervise()
        finally:
            self._stop_children(immediate=self._signals > 1)
            if self._signals > 1:  # counted again: a second signal may arrive while stopping
                exit_code = 128 + self._last_signal
            presence.close_row(self.row, exit_code)
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            if self.progress:
                self.progress(final=True)
            logger.info("runner %d stopped with exit code %d", os.getpid(), exit_code)
        return exit_code

    def _on_signal(self, signum, frame) -> None:
        self._signals += 1
        self._last_signal = signum
        self._stop.set()

    def _supervise(self) -> int:
        last_beat = 0.0
        while not self._stop.is_set():
            for child in list(self.children):
                code = child.poll()
                if code is None:
                    continue
                self.children.remove(child)
                exit_code = _exit_code(code)
                self._close_worker_row(child, exit_code)
                if self._stop.is_set() or (self.options.until_idle and exit_code == 0):
                    continue
                logger.warning("worker %d exited with %d; starting another", child.pid, exit_code)
                if self.restarts >= self.options.max_restarts:
                    logger.error("workers keep failing (%d restarts); giving up", self.restarts)
                    return 1
                self.restarts += 1
                self._spawn()
            if self.options.until_idle and not self.children:
                return 0
            now = time.monotonic()
            if now - last_beat >= self.options.heartbeat:
                presence.heartbeat(self.row)
                last_beat = now
            if self.progress:
                self.progress()
            self._stop.wait(min(self.options.poll, 0.5))
        return 0

    def _worker_argv(self) -> list[str]:
        argv0 = sys.argv[0] if sys.argv else ""
        if os.path.basename(argv0) == "manage.py" and os.path.isfile(argv0):
            entry = [sys.executable, os.path.abspath(argv0)]
        else:
            entry = [sys.executable, "-m", "django"]
        return [*entry, "runworker", "--worker", f"--parent-id={self.row.pk}", *self.options.as_worker_args()]

    def _worker_env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["DJANGO_SETTINGS_MODULE"] = settings.SETTINGS_MODULE
        root = Path(import_module(settings.SETTINGS_MODULE.split(".")[0]).__file__).resolve().parent.parent
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), env.get("PYTHONPATH", "")]))
        return env

    def _spawn(self) -> None:
        # process_utils starts it in its own session: a terminal's Ctrl-C reaches the orchestrator
        # only, which then stops the workers once (a second signal would make them exit at once).
        # Their logs go to our stderr.
        cmd = self._worker_argv()
        spawned = process_utils.spawn(cmd, os.getcwd(), self._worker_env(), "/dev/stdout", "/dev/stderr")
        if spawned.pid is None:
            raise RuntimeError(f"cannot start a worker: {spawned.error}")
        self.children.append(_Child(spawned, cmd))

    def _close_worker_row(self, child: _Child, exit_code: int) -> None:
        from machine.models import Process

        rows = Process.objects.filter(
            parent=self.row, pid=child.pid, status=Process.StatusChoices.RUNNING
        ).values_list("pk", flat=True)
        for pk in rows:
            presence.close_row(pk, exit_code)

    def _stop_children(self, immediate: bool) -> None:
        """SIGTERM the workers (once), wait for them within the grace period, then kill their trees."""
        alive = [c for c in self.children if c.poll() is None]
        if not immediate:
            for child in alive:
                child.signal(signal.SIGTERM)
            deadline = time.monotonic() + self.options.grace + 5.0
            while alive and time.monotonic() < deadline and self._signals <= 1:
                time.sleep(0.05)
                alive = [c for c in alive if c.poll() is None]
        for child in alive:
            child.kill_tree()
        for child in self.children:
            code = child.spawned.popen.wait()
            self._close_worker_row(child, _exit_code(code))
        self.children = []


def _exit_code(returncode: int) -> int:
    """subprocess gives -N for a signalled child: report 128 + N as a shell would."""
    return 128 - returncode if returncode < 0 else returncode
