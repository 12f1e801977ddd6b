"""Parse the JSONL records a hook prints on stdout. No Django.

A hook prints one JSON object per line (``{"type": "Binary", ...}``); anything else on stdout
(progress chatter, a truncated last line, binary garbage) is ignored rather than fatal, because a
hook's output is untrusted text.
"""

from __future__ import annotations

import json

__all__ = ["MAX_LINE_CHARS", "parse_jsonl", "records_with_type"]

#: Lines longer than this are skipped unparsed: no record we dispatch is anywhere near this size,
#: and refusing early bounds the memory and time one runaway line can cost.
MAX_LINE_CHARS = 8 * 1024 * 1024


def parse_jsonl(text: str | bytes | None, *, max_line_chars: int = MAX_LINE_CHARS) -> list[dict]:
    """The JSON objects in ``text``, one per line; blank, non-JSON and non-object lines are skipped."""
    if not text:
        return []
    if isinstance(text, bytes | bytearray):
        text = bytes(text).decode("utf-8", errors="replace")
    records: list[dict] = []
    # Split on "\n" only: str.splitlines() would also split on U+2028 & co., which a hook may
    # legitimately print unescaped inside a JSON string (json.dumps(..., ensure_ascii=False)).
    for raw_line in text.split("\n"):
        line = raw_line.strip()
        if not line.startswith("{") or len(line) > max_line_chars:
            continue
        try:
            value = json.loads(line)
        except (ValueError, RecursionError):  # bad JSON, or absurdly deep nesting
            continue
        if isinstance(value, dict):
            records.append(value)
    return records


def records_with_type(text: str | bytes | None, *, max_line_chars: int = MAX_LINE_CHARS) -> list[dict]:
    """Only the records that carry a non-empty string ``type`` (the ones that can be dispatched)."""
    return [
        record
        for record in parse_jsonl(text, max_line_chars=max_line_chars)
        if isinstance(record.get("type"), str) and record["type"].strip()
    ]
