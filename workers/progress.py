"""A live view of the queues: row counts per model and status (this machine's rows)."""

from __future__ import annotations

from django.db.models import Count

from workers.console import Console, LiveLine


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


def queue_progress(console: Console, models, interval: float = 0.5) -> LiveLine:
    """The orchestrator's progress callback: one line of queue counts, redrawn as they change."""
    return console.live(lambda: format_counts(queue_counts(models)), interval=interval)
