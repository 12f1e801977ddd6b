"""The runner's own Process rows: register this OS process, beat its heart, close it, close stale ones.

The runner (type orchestrator) and each of its workers (type worker, parent = the orchestrator's
row) show up as RUNNING Process rows, so `ps`-like views and the admin list them. Their retry_at is
NULL: they describe this process, they are not work for a worker to claim.
"""

from __future__ import annotations

import logging
import os
from datetime import UTC, datetime

import psutil
from django.db import transaction
from django.utils import timezone

logger = logging.getLogger(__name__)

#: A runner row lives as long as the runner: its timeout is not a deadline (one year, in seconds).
RUNNER_ROW_TIMEOUT = 365 * 24 * 60 * 60
#: Start times of our own rows come from the OS, so they match to the clock tick.
START_TIME_MATCH = 0.05
#: The per-launch marker machine.process_utils gives the processes it spawns.
MARKER_ENV = "MACHINE_PROCESS_MARKER"


def register_self(process_type: str, parent_id=None, worker_type: str = ""):
    """Create the RUNNING Process row of this OS process (type orchestrator or worker) and return it."""
    from machine.models import Machine, NetworkInterface, Process

    me = psutil.Process(os.getpid())
    start_time = me.create_time()
    machine = Machine.current()
    # A worker shares its orchestrator's host and interface: reading it from the parent row spares
    # N workers starting at once from all detecting the network and locking the machine row together.
    parent = Process.objects.filter(pk=parent_id, machine=machine).first() if parent_id else None
    iface = parent.iface if parent is not None and parent.iface_id else NetworkInterface.current()
    return Process.objects.create(
        machine=machine,
        parent_id=parent_id,
        process_type=process_type,
        worker_type=worker_type,
        pwd=os.getcwd(),
        cmd=me.cmdline(),
        env={},  # never stored: the runner's environment may hold secrets and is not needed
        timeout=RUNNER_ROW_TIMEOUT,
        pid=me.pid,
        started_at=datetime.fromtimestamp(start_time, tz=UTC),
        os_start_time=start_time,
        launch_marker=os.environ.get(MARKER_ENV, "")[:64],
        iface=iface,
        status=Process.StatusChoices.RUNNING,
        retry_at=None,
    )


def heartbeat(row) -> bool:
    """Bump modified_at of our still-RUNNING row; False if it was closed or deleted meanwhile."""
    from machine.models import Process

    updated = Process.objects.filter(pk=row.pk, status=Process.StatusChoices.RUNNING).update(
        modified_at=timezone.now()
    )
    return updated == 1


def close_row(row_or_pk, exit_code: int) -> bool:
    """Mark a RUNNING runner row EXITED with `exit_code` (idempotent); True if this call closed it."""
    from machine.models import Process

    pk = getattr(row_or_pk, "pk", row_or_pk)
    now = timezone.now()
    updated = Process.objects.filter(pk=pk, status=Process.StatusChoices.RUNNING).update(
        status=Process.StatusChoices.EXITED, exit_code=exit_code, ended_at=now, modified_at=now, retry_at=None
    )
    return updated == 1


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

    A runner that was SIGKILLed cannot close its own rows; the next runner on the same machine does.
    The exit code is unknown, so it is recorded as a kill (137).
    """
    from machine.models import Process

    types = [Process.TypeChoices.ORCHESTRATOR, Process.TypeChoices.WORKER]
    rows = Process.objects.filter(
        machine=machine, status=Process.StatusChoices.RUNNING, process_type__in=types
    )
    closed = 0
    with transaction.atomic():
        for row in rows.only("pk", "pid", "os_start_time"):
            if not _row_is_alive(row) and close_row(row, exit_code=137):
                closed += 1
    if closed:
        logger.info("closed %d stale runner row(s)", closed)
    return closed
