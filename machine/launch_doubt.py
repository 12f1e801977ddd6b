"""Launches in doubt: a queued row whose launcher may have died between the spawn and recording it.

`Process.launch()` spawns the child and only then saves pid, start time and status. A launcher
killed in between (a SIGKILLed worker, an OOM kill) used to leave the row queued, and the next tick
ran the command a second time. So the launch marker goes on the row *before* the spawn
(`mark_launching`: one guarded UPDATE while the row stays queued), and a queued row that carries a
marker but no pid means "a launch may have happened" (`in_doubt`). Whoever looks at such a row next
(a worker's tick through `launch()`, or the orchestrator for the worker that died, through
`Process.runner_recover`) settles it instead of launching again (`settle`):

* a live process of this machine carries the marker as its own (`process_utils.find_launch`): the
  row is adopted as running with that pid and start time, so it is watched and closed as any launch;
* none does: the launch may have run and ended, so the row is closed as exited with the unknown-exit
  rule (137 and a note) and never run again: at most once.

Rows of another machine are not judged here: its processes are not visible from this one.
"""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from django.db import transaction
from django.utils import timezone

from machine import process_utils, sealing
from machine.choices import ProcessStatus
from workers import fencing

logger = logging.getLogger(__name__)

#: Appended to stderr when a launch in doubt is closed: its process may have run, and is not run again.
INTERRUPTED_NOTE = (
    "launch interrupted: the launcher died between the spawn and recording it, and no process of "
    "this launch runs any more; the command may have run, so it is not run again"
)


#: A launch in doubt marked less than this ago may still be in its launcher's hands (the spawn, then
#: a save that can wait for the database's lock): a tick leaves it for later. The orchestrator, which
#: knows that its worker died, settles it at once.
SETTLE_AFTER = timedelta(seconds=30)
#: An adopted launch is first due for a poll after this (as after a launch: LAUNCH_POLL_DELAY).
ADOPTED_POLL_DELAY = timedelta(seconds=1)


class LaunchInDoubtError(RuntimeError):
    """The row cannot be launched (or settled) here: another launcher got to it, or it is another host's."""


def in_doubt(process) -> bool:
    """True for a saved queued row with a launch marker and no pid: a launch of it may have happened."""
    return (
        process.status == ProcessStatus.QUEUED
        and bool(process.launch_marker)
        and process.pid is None
        and not process._state.adding
    )


def under_way(process) -> bool:
    """True for a launch in doubt marked less than SETTLE_AFTER ago: its launcher may still be at it."""
    marked = process.started_at  # (the mark's time, until a save records the spawn's)
    return in_doubt(process) and marked is not None and marked > timezone.now() - SETTLE_AFTER


def _update(process, guard: dict[str, Any], **values) -> bool:
    """One UPDATE of process's row where `guard` holds (and, inside its tick, while the claim holds)."""
    rows = type(process)._default_manager.filter(pk=process.pk, **guard)
    claim = fencing.claim_for(process)
    if claim is None:
        return rows.update(**values) == 1
    with claim.mutex:  # (the heartbeat renews the token under it)
        return not claim.lost and rows.filter(**claim.guard()).update(**values) == 1


def mark_launching(process) -> str:
    """A fresh launch marker for the spawn, written first on a saved queued row (one guarded UPDATE).

    The row stays queued; once the UPDATE is in, a launcher dying at any later point leaves the row
    in doubt, never plainly queued. Raises LaunchInDoubtError (nothing spawned) when the row is no
    longer a plain queued one, or the tick's claim on it was lost. Inside a transaction the marker
    is only durable at the commit: a launch that must not run twice is made outside one.
    """
    marker = uuid.uuid4().hex
    if process._state.adding or process.pk is None or process.status != ProcessStatus.QUEUED:
        return marker  # no row to leave behind queued (an unsaved one, or a re-launch of a closed one)
    now = timezone.now()  # started_at: when the launch began, for under_way() (the save sets the spawn's)
    if fencing.claim_for(process) is not None:
        # In a runner's tick the claim read the row (queued, no marker) and holds it: the write is
        # guarded by its token (ClaimLost, nothing spawned, if it was taken over meanwhile).
        fencing.fenced_update(process, launch_marker=marker, started_at=now)
        return marker
    guard = {"status": ProcessStatus.QUEUED, "launch_marker": ""}
    if not _update(process, guard, launch_marker=marker, started_at=now):
        raise LaunchInDoubtError(
            f"{process} is being launched elsewhere (or its claim was lost): not launched"
        )
    process.launch_marker, process.started_at = marker, now
    return marker


def settle(
    process, *, background: bool = True, guard: dict[str, Any] | None = None, launcher_gone: bool = False
) -> bool:
    """Settle a launch in doubt instead of launching again: adopt its live process or close the row.

    `guard`: extra filters the row must still match (the orchestrator passes the dead worker's
    claim). Unless `launcher_gone`, a launch marked less than SETTLE_AFTER ago raises
    LaunchInDoubtError: its launcher may be alive and about to record it. Returns False when the
    row was no longer in doubt as read (someone else settled it).
    A foreground caller (`background=False`) waits for an adopted process, as launch() would.
    """
    if not process._is_local():
        raise LaunchInDoubtError(
            f"the launch of {process} is in doubt on another machine: only that machine can settle it"
        )
    if not launcher_gone and under_way(process):
        raise LaunchInDoubtError(f"{process}: a launch of it began moments ago and may still be under way")
    doubt = {"status": ProcessStatus.QUEUED, "launch_marker": process.launch_marker, "pid__isnull": True}
    doubt.update(guard or {})
    found = process_utils.find_launch(process.launch_marker)
    if found is not None:
        if not _adopt(process, *found, guard=doubt):
            process.refresh_from_db()  # settled meanwhile: show what it became
            return False
        if not background:
            from machine import supervisor  # (it imports this module)

            supervisor.close(process, supervisor.wait_foreground(process))
        return True
    # Its main process is gone: what is left of it (a background job it started) ends with it,
    # before the row says so (and outside the transaction below, which holds the row's lock).
    leftovers = process_utils.ProcessIdentity.of(None, None, None, process.launch_marker)
    process_utils.kill_tree(leftovers, graceful_timeout=process_utils.LEFTOVER_GRACE)
    with transaction.atomic():
        # Taking the row first (it locks it on either database) makes the close happen once.
        if not _update(process, doubt, modified_at=timezone.now()):
            closed = False
        else:
            logger.warning("%s: launch interrupted and none of it runs; closed, not run again", process.pk)
            from machine import supervisor

            supervisor.close(process, None, note=INTERRUPTED_NOTE)
            closed = True
    if not closed:
        process.refresh_from_db()
    return closed


def _adopt(process, pid: int, start_time: float, *, guard: dict[str, Any]) -> bool:
    """Record the found process as this row's launch (RUNNING): watched and closed like any other."""
    sealing.wipe_sealed(process, save=False)  # a running row keeps only the values to mask
    now = timezone.now()
    values = {
        "status": ProcessStatus.RUNNING,
        "pid": pid,
        "os_start_time": start_time,
        # (from the OS start time: the wall clock at the spawn was not recorded)
        "started_at": datetime.fromtimestamp(start_time, tz=UTC),
        "exit_code": None,
        "ended_at": None,
        "sealed": process.sealed,
        "modified_at": now,
    }
    claimed = fencing.claim_for(process) is not None
    if not claimed:
        values["retry_at"] = now + ADOPTED_POLL_DELAY
    if not _update(process, guard, **values):
        return False
    for name, value in values.items():
        setattr(process, name, value)
    if claimed:  # in a runner's tick: the poll is asked of the runner, which keeps its claim and follows it
        fencing.fenced_update(process, retry_at=now + ADOPTED_POLL_DELAY)
    logger.warning("%s: launch interrupted after its spawn; adopted its running process %d", process.pk, pid)
    return True


def unmark(process, marker: str) -> None:
    """Take back mark_launching()'s mark after a spawn that failed before any child existed."""
    if process.launch_marker != marker or process.pid is not None:
        return
    guard = {"status": ProcessStatus.QUEUED, "launch_marker": marker, "pid__isnull": True}
    if _update(process, guard, launch_marker="", started_at=None):
        process.launch_marker, process.started_at = "", None


def recover(model, pk, guard: dict[str, Any]) -> bool:
    """For the orchestrator: settle the launch in doubt its dead worker left on row `pk`, if any.

    `guard` is the dead worker's claim (the row is still held by it). True when a launch in doubt
    was settled (adopted or closed); False when there was none on this machine's row.
    """
    machine = model._machine_model().current()
    row = model._default_manager.filter(pk=pk, machine=machine, **guard).first()
    if row is None or not in_doubt(row):
        return False
    return settle(row, guard=guard, launcher_gone=True)
