"""Hand the JSONL records a hook printed to the models' `from_json`, by record `type`.

Unknown types are skipped (a newer hook may speak more than this app understands); a record a
model rejects is logged and skipped, so one bad record never hides the others.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from django.apps import apps
from django.db import transaction

logger = logging.getLogger(__name__)

__all__ = ["RECORD_MODELS", "dispatch_record", "dispatch_records"]

#: Record `type` -> (app label, model name) whose `from_json(record)` handles it.
RECORD_MODELS: dict[str, tuple[str, str]] = {
    "Binary": ("machine", "Binary"),
    "BinaryRequest": ("machine", "Binary"),
    "Process": ("machine", "Process"),
    "Machine": ("machine", "Machine"),
}


def dispatch_record(record: dict[str, Any], overrides: dict[str, Any] | None = None):
    """The object `from_json` returned for this record, or None (unknown type, rejected record)."""
    if not isinstance(record, dict):
        return None
    target = RECORD_MODELS.get(str(record.get("type") or ""))
    if target is None:
        return None
    from_json = getattr(apps.get_model(*target), "from_json", None)
    if from_json is None:
        return None
    try:
        with transaction.atomic():  # a rejected record rolls back alone (PostgreSQL aborts otherwise)
            return from_json(record, overrides=overrides)
    except Exception:
        logger.exception("record of type %s rejected by %s.from_json", record.get("type"), target[1])
        return None


def dispatch_records(records: Iterable[dict[str, Any]], overrides: dict[str, Any] | None = None) -> list:
    """Dispatch each record in order; the non-None results."""
    results = []
    for record in records:
        result = dispatch_record(record, overrides=overrides)
        if result is not None:
            results.append(result)
    return results
