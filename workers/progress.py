"""A live, one-line view of the queues: row counts per model and status (this machine's rows)."""

from __future__ import annotations

import time
from typing import TextIO

from django.db.models import Count


def queue_counts(models) -> dict[str, dict[str, int]]:
    """{model name: {status: rows}} for the runner's models, scoped to this machine where they are."""
    counts: dict[str, dict[str, int]] = {}
    for model in models:
        queryset = model._default_manager.all()
        filters = model.claim_filter()
        if filters is not None:
            queryset = queryset.filter(filters)
        status = model.state_field_name
        rows = queryset.values(status).annotate(n=Count("pk")).order_by(status)
        counts[model.__name__] = {row[status]: row["n"] for row in rows}
    return counts


def format_counts(counts: dict[str, dict[str, int]]) -> str:
    parts = []
    for name, by_status in counts.items():
        if by_status:
            parts.append(f"{name}: " + " ".join(f"{n} {status}" for status, n in by_status.items()))
    return " | ".join(parts) or "no rows"


class ProgressPrinter:
    """Called by the orchestrator each round: rewrites one line on a terminal, else prints changes."""

    def __init__(self, models, stream: TextIO, interval: float = 0.5):
        self.models = models
        self.stream = stream
        self.interval = interval
        self._last_text = ""
        self._last_time = 0.0
        self._tty = hasattr(stream, "isatty") and stream.isatty()

    def __call__(self, final: bool = False) -> None:
        now = time.monotonic()
        if not final and now - self._last_time < self.interval:
            return
        self._last_time = now
        text = format_counts(queue_counts(self.models))
        if text != self._last_text:
            self._last_text = text
            self.stream.write("\r\033[K" + text[:200] if self._tty else text + "\n")
        if final and self._tty:
            self.stream.write("\n")
        self.stream.flush()
