"""The runner's own Process rows: register its processes, beat their hearts, close them, close stale ones.

The runner (workers.runner) knows nothing of machine: these receivers of its lifecycle signals
(workers.signals, connected in MachineConfig.ready()) show the orchestrator (type orchestrator) and
each worker (type worker, parent = the orchestrator's row) as RUNNING Process rows, so `ps`-like
views and the admin list them. Their retry_at is NULL: they describe processes, they are not work.

Liveness is judged only for rows launched in this boot and this PID namespace (each row records
both): a pid means nothing in another namespace, so a clone of this host (same host id) running in
another container never closes a live runner's rows there.

The orchestrator is a child subreaper: what a tree detaches (a double fork, `setsid`, `env -i`)
re-parents to it, and each heartbeat ends the adopted orphans whose tree is over and reaps them.

A row registered by `Process.current()` is closed at interpreter exit with the exit code the process
ends with (close_current_at_exit), unless its launcher closes it: a launched row is the launcher's.
"""

from __future__ import annotations

import atexit
import functools
import logging
import os
import signal
import sys
import threading
from datetime import UTC, datetime

import psutil
from django.db import DatabaseError, transaction
from django.db.models import Q
from django.utils import timezone

from machine import detect, process_utils, supervisor
from machine.models import Machine, NetworkInterface, Process
from machine.process_files import readable_argv
from workers import signals
from workers.failures import one_line

logger = logging.getLogger(__name__)

#: A runner row lives as long as the runner: its timeout is not a deadline (one year, in seconds).
RUNNER_ROW_TIMEOUT = 365 * 24 * 60 * 60
#: Start times of our own rows come from the OS, so they match to the clock tick.
START_TIME_MATCH = 0.05
#: The per-launch marker machine.process_utils gives the processes it spawns.
MARKER_ENV = "MACHINE_PROCESS_MARKER"
RUNNER_TYPES = (Process.TypeChoices.ORCHESTRATOR, Process.TypeChoices.WORKER)


def register_self(process_type: str, parent_id=None, worker_type: str = "") -> Process:
    """Create the RUNNING Process row of this OS process (type orchestrator or worker) and return it."""
    me = psutil.Process(os.getpid())
    start_time = me.create_time()
    machine = Machine.current()
    # A worker shares its orchestrator's host and interface: reading it from the parent row spares
    # N workers starting at once from all detecting the network and locking the machine row together.
    parent = Process.objects.filter(pk=parent_id, machine=machine).first() if parent_id else None
    iface = parent.iface if parent is not None and parent.iface_id else NetworkInterface.current()
    return Process.objects.create(
        machine=machine,
        parent=parent,
        process_type=process_type,
        worker_type=worker_type,
        pwd=os.getcwd(),
        cmd=readable_argv(me.cmdline()),
        env={},  # never stored: the runner's environment may hold secrets and is not needed
        timeout=RUNNER_ROW_TIMEOUT,
        pid=me.pid,
        started_at=datetime.fromtimestamp(start_time, tz=UTC),
        os_start_time=start_time,
        launch_marker=os.environ.get(MARKER_ENV, "")[:64],
        boot_id=detect.get_boot_id() or None,
        pid_namespace=detect.get_pid_namespace() or None,
        iface=iface,
        status=Process.StatusChoices.RUNNING,
        retry_at=None,
    )


def heartbeat(pks) -> int:
    """Bump modified_at of these still-RUNNING rows (one UPDATE); return how many."""
    return Process.objects.filter(pk__in=list(pks), status=Process.StatusChoices.RUNNING).update(
        modified_at=timezone.now()
    )


def close_row(row_or_pk, exit_code: int) -> bool:
    """Mark a RUNNING runner row EXITED with `exit_code` (idempotent); True if this call closed it."""
    pk = getattr(row_or_pk, "pk", row_or_pk)
    return supervisor.close_batch(Process, [pk], exit_code=exit_code) == 1


def _row_is_alive(row) -> bool:
    """True only if the OS process with the row's pid started when the row says it did."""
    if not row.pid or row.os_start_time is None:
        return False
    try:
        proc = psutil.Process(row.pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        return abs(proc.create_time() - row.os_start_time) <= START_TIME_MATCH
    except psutil.Error:
        return False


def close_stale_runner_rows(machine) -> int:
    """Close this machine's RUNNING orchestrator/worker rows whose OS process is gone; return how many.

    A runner that was SIGKILLed cannot close its own rows; the next runner on the same machine (and
    boot and PID namespace) does. The exit code is unknown, so it is recorded as a kill (137). Rows
    of another boot or PID namespace are left alone: a live runner there may own them.
    """
    rows = Process.objects.filter(
        machine=machine, status=Process.StatusChoices.RUNNING, process_type__in=RUNNER_TYPES
    )
    here = rows.judgeable_here()
    elsewhere = rows.count() - here.count()
    if elsewhere:
        logger.info(
            "leaving %d runner row(s) of another boot or PID namespace alone (their pids mean nothing here)",
            elsewhere,
        )
    closed = 0
    with transaction.atomic():
        for row in here.only("pk", "pid", "os_start_time"):
            if not _row_is_alive(row) and close_row(row, exit_code=137):
                closed += 1
    if closed:
        logger.info("closed %d stale runner row(s)", closed)
    return closed


# -- receivers of workers.signals -------------------------------------------------------------

_rows: dict[str, Process] = {}


def on_orchestrator_started(sender, orchestrator, **kwargs) -> None:
    """Register the orchestrator (a child subreaper); close what a killed runner of this machine left RUNNING."""
    if _adopting["since"] is None:
        was = process_utils.is_subreaper()
        if process_utils.become_subreaper():
            _adopting.update(since=process_utils.get_start_time(os.getpid()), was=was)
    row = register_self(Process.TypeChoices.ORCHESTRATOR, worker_type="runworker")
    _rows["self"] = row
    orchestrator.presence_id = str(row.pk)
    machine = Machine.current()
    close_stale_runner_rows(machine)
    # Rows a killed runner launched and nobody will poll any more (before our workers start: a live
    # worker's exited-but-unreaped child would look gone too).
    Process.cleanup_stale_running(machine=machine)


def on_worker_started(sender, worker, loop, **kwargs) -> None:
    """Register the worker, parented to its orchestrator's row."""
    _rows["self"] = register_self(
        Process.TypeChoices.WORKER, parent_id=worker.parent_id, worker_type="runworker"
    )


def on_runner_heartbeat(sender, orchestrator, worker_pids, **kwargs) -> None:
    """One UPDATE for the orchestrator's row and its workers' rows."""
    me = _rows.get("self")
    if me is None:
        return
    Process.objects.filter(
        Q(pk=me.pk) | Q(parent=me, pid__in=list(worker_pids)), status=Process.StatusChoices.RUNNING
    ).update(modified_at=timezone.now())


def on_worker_exited(sender, orchestrator, pid, exit_code, **kwargs) -> None:
    """Close the row of a worker that ended (if it could not close it itself)."""
    me = _rows.get("self")
    if me is None:
        return
    for pk in Process.objects.filter(parent=me, pid=pid, status=Process.StatusChoices.RUNNING).values_list(
        "pk", flat=True
    ):
        close_row(pk, exit_code)


def on_stopped(sender, exit_code, **kwargs) -> None:
    """The orchestrator or a worker closes its own row."""
    row = _rows.pop("self", None)
    if row is not None:
        close_row(row, exit_code)


def on_worker_stopping(sender, worker, immediate, **kwargs) -> None:
    """End the process trees this worker's ticks launched (the worker waited for them until its grace ran out)."""
    for child in psutil.Process().children():
        try:
            if child.status() == psutil.STATUS_ZOMBIE:
                continue
        except psutil.Error:
            continue
        identity = process_utils.ProcessIdentity.of(
            child.pid, process_utils.get_start_time(child.pid), tolerance=process_utils.EXACT_START_TOLERANCE
        )
        process_utils.kill_tree(identity, graceful_timeout=0 if immediate else 2.0)


# -- rows of Process.current(): closed at interpreter exit ---------------------------------------

#: For this process: the pid that registered the exit handler, and the status given to sys.exit().
_at_exit: dict[str, object] = {"pid": None, "status": None}


def close_current_at_exit() -> None:
    """Have this process's Process.current() row closed at interpreter exit (registered once per process)."""
    if _at_exit["pid"] == os.getpid():
        return
    _at_exit["pid"], _at_exit["status"] = os.getpid(), None
    atexit.register(_close_current_row)
    _record_sys_exit()


def _record_sys_exit() -> None:
    # Python keeps no record of the status a SystemExit carried once atexit handlers run; sys.exit()
    # is how programs (and Django's run_from_argv) pass theirs, so note it on the way out.
    original = sys.exit
    if getattr(original, "_records_exit_status", False):
        return

    @functools.wraps(original)
    def exit(status=None, /):
        if threading.current_thread() is threading.main_thread():  # (elsewhere it ends a thread only)
            _at_exit["status"] = (status,)
        original(status)

    exit._records_exit_status = True
    sys.exit = exit


def exit_code_at_exit() -> int:
    """The code this process exits with, as far as an atexit handler can tell."""
    # An unhandled exception leaves sys.last_value (outside an interactive session): 1, or for a
    # KeyboardInterrupt 130, as Python then ends by SIGINT. Else the status given to sys.exit() as
    # the OS reports it (None 0, an int modulo 256, anything else 1); else a normal end, 0.
    unhandled = getattr(sys, "last_value", None)
    if unhandled is not None and not hasattr(sys, "ps1"):
        return 128 + signal.SIGINT if isinstance(unhandled, KeyboardInterrupt) else 1
    recorded = _at_exit["status"]
    if recorded is None:
        return 0
    status = recorded[0]
    if status is None:
        return 0
    return int(status) & 0xFF if isinstance(status, int) else 1


def _close_current_row() -> None:
    row = Process.current_readonly()
    if row is None or row.launch_marker or row.process_type == Process.TypeChoices.HOOK:
        return  # not ours to close: the launcher records how its child ended
    code = exit_code_at_exit()
    try:
        # Closed already (by the runner's own logic, say): leave it as it is.
        fresh = Process.objects.filter(pk=row.pk, pid=os.getpid(), status=Process.StatusChoices.RUNNING)
        for process in fresh:
            process.mark_exited(exit_code=code)
    except Exception as exc:  # the database may be gone by now; exiting must not fail over it
        logger.warning("could not close Process %s at exit (exit code %d): %s", row.pk, code, one_line(exc))


# -- the orchestrator's adopted orphans --------------------------------------------------------

#: Set while the orchestrator is a subreaper: the start time before which nothing is adopted, and
#: whether this process was a subreaper before (a runner started in passing leaves it as it was).
_adopting: dict[str, object] = {"since": None, "was": False}


def _own_markers() -> set[str]:
    # The launches this process runs under (when something launched the runner itself): every
    # orphan carries them, and they say nothing about the tree it came from.
    own = {os.environ.get(process_utils.MARKER_ENV, "")}
    own.update(os.environ.get(process_utils.LINEAGE_ENV, "").split(","))
    return own - {""}


def _tree_over_rule():
    """should_end for end_orphans: an orphan whose launch tree no RUNNING row of this host may still own."""
    running: list[tuple[str, float | None]] | None = None
    own = _own_markers()

    def launches() -> list[tuple[str, float | None]]:
        nonlocal running
        if running is None:  # one query per sweep, and only once there is an orphan to judge
            # Running launches, and launches in doubt (machine.launch_doubt): their tree is settled
            # by the recovery, not ended here first.
            in_doubt = Q(status=Process.StatusChoices.QUEUED, pid__isnull=True) & ~Q(launch_marker="")
            rows = (
                Process.objects.filter(Q(status=Process.StatusChoices.RUNNING) | in_doubt)
                .on_machine(Machine.current())
                .launched()
                .judgeable_here()
            )
            running = [
                (marker, start if start is not None else (started.timestamp() if started else None))
                for marker, start, started in rows.values_list("launch_marker", "os_start_time", "started_at")
                if marker not in own  # (the runner's own rows, when something launched it)
            ]
        return running

    def tree_over(proc: psutil.Process) -> bool:
        try:
            launches()
        except DatabaseError:  # unknown: keep it this time (the zombies are reaped all the same)
            return False
        markers = process_utils.process_markers(proc.pid)
        carried = ({markers[0], *markers[1]} - {None, ""} - own) if markers else set()
        if carried:  # its launch and those above it: over once none of their rows is RUNNING
            return not any(marker in carried for marker, _ in launches())
        # Without a marker (`env -i`) it may be part of any launch that was running when it started.
        born = proc.create_time()
        return not any(start is None or start <= born + START_TIME_MATCH for _, start in launches())

    return tree_over


def record_adopted_exits(keep) -> int:
    """Close the RUNNING rows whose process exited as our adopted child, with its true exit code.

    A worker that is SIGKILLed leaves its launches to the orchestrator (a subreaper): their exit
    status comes here, not to a worker, so it is read here (pid and exact start time prove the
    row) before the zombies are reaped. Returns how many rows were closed.
    """
    zombies = process_utils.adopted_zombies(keep)
    if not zombies:
        return 0
    closed = 0
    rows = Process.objects.running().on_machine(Machine.current()).filter(pid__in=list(zombies))
    for row in rows:
        start = zombies[row.pid]
        if row.os_start_time is None or abs(row.os_start_time - start) > process_utils.EXACT_START_TOLERANCE:
            continue
        if row.poll() is not None:  # (reaps the proven zombie: its code, not an unknown 137)
            closed += 1
    return closed


def on_runner_sweep(sender, orchestrator, worker_pids, **kwargs) -> None:
    """Reap the orchestrator's adopted orphans that have exited and end those whose tree is over."""
    since = _adopting["since"]
    if since is None:
        return
    workers = {*worker_pids, *(child.pid for child in getattr(orchestrator, "children", []))}
    try:
        record_adopted_exits(workers)
    except Exception:  # (e.g. the database is busy or gone) keep the zombies: the next sweep tries again
        logger.warning("could not record the exits of adopted launches yet", exc_info=True)
        return
    # SIGKILL at once: this runs in the orchestrator's loop, which must not wait on a daemon's grace.
    process_utils.end_orphans(since, keep=workers, should_end=_tree_over_rule())


def on_orchestrator_stopped(sender, orchestrator, **kwargs) -> None:
    """The workers are gone, and the trees they launched with them: end every orphan left."""
    since = _adopting["since"]
    if since is None:
        return
    workers = {child.pid for child in getattr(orchestrator, "children", [])}
    try:
        record_adopted_exits(workers)
    except DatabaseError:
        logger.warning("could not record the exits of adopted launches", exc_info=True)
    process_utils.end_orphans(since, keep=workers, grace=process_utils.LEFTOVER_GRACE)
    if not _adopting["was"]:
        process_utils.become_subreaper(False)
    _adopting["since"] = None


def connect() -> None:
    """Connect the receivers (MachineConfig.ready())."""
    signals.orchestrator_started.connect(on_orchestrator_started, dispatch_uid="machine.presence.orch")
    signals.worker_started.connect(on_worker_started, dispatch_uid="machine.presence.worker")
    signals.runner_heartbeat.connect(on_runner_heartbeat, dispatch_uid="machine.presence.beat")
    signals.worker_exited.connect(on_worker_exited, dispatch_uid="machine.presence.exited")
    signals.orchestrator_stopped.connect(on_stopped, dispatch_uid="machine.presence.orch_stopped")
    signals.runner_heartbeat.connect(on_runner_sweep, dispatch_uid="machine.presence.sweep")
    signals.orchestrator_stopped.connect(on_orchestrator_stopped, dispatch_uid="machine.presence.orphans")
    signals.worker_stopped.connect(on_stopped, dispatch_uid="machine.presence.worker_stopped")
    signals.worker_stopping.connect(on_worker_stopping, dispatch_uid="machine.presence.stopping")
