"""Plain-text tables of Binary rows for the management commands."""

from __future__ import annotations

from collections.abc import Iterable

COLUMNS = ("name", "version", "binprovider", "status", "abspath")
HEADERS = ("NAME", "VERSION", "PROVIDER", "STATUS", "ABSPATH")


def binaries_table(binaries: Iterable) -> str:
    """A left-aligned table: name, version, provider, status, abspath."""
    rows = [HEADERS] + [tuple(str(getattr(b, col) or "-") for col in COLUMNS) for b in binaries]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows
    )
