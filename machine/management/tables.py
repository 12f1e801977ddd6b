"""The columns the commands show for Binary and Process rows (rendered by workers.console)."""

from __future__ import annotations

import shlex
from collections.abc import Iterable

from machine.redaction import redact_cmd


def binary_rows(binaries: Iterable, verbosity: int = 1) -> tuple[tuple[str, ...], list[tuple]]:
    """Headers and rows: name, version, provider, status, abspath (+ health, sha256, id with -v 2)."""
    headers = ("NAME", "VERSION", "PROVIDER", "STATUS", "ABSPATH")
    detail = verbosity >= 2
    if detail:
        headers += ("HEALTH", "SHA256", "ID")
    rows = []
    for b in binaries:
        row = (b.name, b.version, b.binprovider, b.status, b.abspath)
        if detail:
            row += (f"{b.health}%", b.sha256, str(b.id))
        rows.append(row)
    return headers, rows


def process_rows(processes: Iterable, verbosity: int = 1) -> tuple[tuple[str, ...], list[tuple]]:
    """Headers and rows: id, pid, type, status, started, command (secrets redacted; whole with -v 2)."""
    headers = ("ID", "PID", "TYPE", "STATUS", "STARTED", "CMD")
    rows = []
    for p in processes:
        started = p.started_at.strftime("%Y-%m-%d %H:%M:%S") if p.started_at else None
        cmd = shlex.join(redact_cmd(p.cmd or []))
        rows.append(
            (str(p.id), p.pid, p.process_type, p.status, started, cmd if verbosity >= 2 else cmd[:80])
        )
    return headers, rows
