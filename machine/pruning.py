"""Delete old exited Process rows of this machine and the log folders the app wrote for them.

Only what the app owns goes: the rows and their `<MACHINE_DATA_DIR>/processes/<id>/` folders (logs,
cmd.sh), plus folders there whose row is already gone. A process's working directory (`pwd`) is the
user's and is never touched. Rows another model still points to (a downstream app's OneToOne, say)
are kept, with their logs.
"""

from __future__ import annotations

import logging
import os
import shutil
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from machine.conf import machine_settings
from machine.models import Machine, Process

logger = logging.getLogger(__name__)

#: Rows deleted per statement (well under SQLite's variable limit).
BATCH_SIZE = 500
#: A folder without a row may belong to a launch in progress (the row is saved after the spawn):
#: it is an orphan only once it is at least this old, whatever --days says.
ORPHAN_MIN_AGE = timedelta(hours=1)


@dataclass
class PruneResult:
    rows: int = 0  #: Process rows deleted (or that would be)
    folders: int = 0  #: log folders removed (or that would be)
    bytes: int = 0  #: their size on disk
    kept: int = 0  #: old exited rows kept because another model refers to them


def _size(path: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return total


def _remove_folder(path: Path, dry_run: bool) -> int:
    """Remove one of our log folders (never following a symlink out of it); its size, 0 if absent."""
    if path.is_symlink():
        size = 0
        if not dry_run:
            path.unlink(missing_ok=True)
        return size
    if not path.is_dir():
        return 0
    size = _size(path)
    if not dry_run:
        shutil.rmtree(path, ignore_errors=True)
    return size


def _old_exited(cutoff: datetime, machine: Machine):
    return (
        Process.objects.exited()
        .on_machine(machine)
        .filter(Q(ended_at__lt=cutoff) | Q(ended_at__isnull=True, created_at__lt=cutoff))
    )


def prunable(cutoff: datetime, machine: Machine):
    """This machine's exited rows that ended before `cutoff` and that no other model refers to."""
    rows = _old_exited(cutoff, machine)
    for relation in Process._meta.related_objects:
        if relation.related_model is Process:
            continue  # a child keeps its own row; its parent link becomes NULL
        rows = rows.exclude(**{f"{relation.name}__isnull": False})
    return rows


def prune(days: int, *, dry_run: bool = False, machine: Machine | None = None) -> PruneResult:
    """Delete (or with dry_run, count) what is older than `days` days; see the module docstring."""
    machine = machine or Machine.current()
    cutoff = timezone.now() - timedelta(days=days)
    result = PruneResult()
    ids = list(prunable(cutoff, machine).values_list("pk", flat=True))
    result.kept = _old_exited(cutoff, machine).count() - len(ids)
    folders = machine_settings.processes_dir
    for start in range(0, len(ids), BATCH_SIZE):
        batch = ids[start : start + BATCH_SIZE]
        if dry_run:
            deleted = batch
        else:
            with transaction.atomic():
                deleted = list(prunable(cutoff, machine).filter(pk__in=batch).values_list("pk", flat=True))
                Process.objects.filter(pk__in=deleted).delete()
        result.rows += len(deleted)
        for pk in deleted:
            path = folders / str(pk)
            if path.exists() or path.is_symlink():
                result.bytes += _remove_folder(path, dry_run)
                result.folders += 1
    orphan_cutoff = min(cutoff, timezone.now() - ORPHAN_MIN_AGE)
    orphans = _orphan_folders(folders, orphan_cutoff, skip={str(pk) for pk in ids})
    for path in orphans:
        result.bytes += _remove_folder(path, dry_run)
        result.folders += 1
    if not dry_run and result.rows + result.folders:
        logger.info("pruned %d process row(s) and %d log folder(s)", result.rows, result.folders)
    return result


def _orphan_folders(folders: Path, cutoff: datetime, skip: set[str]) -> list[Path]:
    """Folders named by a row id whose row no longer exists, untouched since before `cutoff`."""
    if not folders.is_dir():
        return []
    candidates: dict[str, Path] = {}
    for entry in os.scandir(folders):
        try:
            name = str(uuid.UUID(entry.name))
        except ValueError:
            continue  # not one of ours
        if name in skip or name != entry.name:
            continue
        try:
            mtime = entry.stat(follow_symlinks=False).st_mtime
        except OSError:
            continue
        if mtime < cutoff.timestamp():
            candidates[name] = Path(entry.path)
    names = list(candidates)
    existing: set[str] = set()
    for start in range(0, len(names), BATCH_SIZE):
        chunk = names[start : start + BATCH_SIZE]
        existing |= {str(pk) for pk in Process.objects.filter(pk__in=chunk).values_list("pk", flat=True)}
    return [path for name, path in candidates.items() if name not in existing]
