"""Parse the JSONL records a hook prints on stdout. No Django.

A hook prints one JSON object per line (``{"type": "Binary", ...}``); anything else on stdout
(progress chatter, a truncated last line, binary garbage) is ignored rather than fatal, because a
hook's output is untrusted text.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Iterator
from typing import NamedTuple

__all__ = [
    "MAX_LINE_CHARS",
    "MAX_REQUEST_RECORDS",
    "RequestRecords",
    "iter_records",
    "parse_jsonl",
    "records_for_request",
    "records_with_type",
]

#: Lines longer than this are skipped unparsed: no record we dispatch is anywhere near this size,
#: and refusing early bounds the memory and time one runaway line can cost.
MAX_LINE_CHARS = 8 * 1024 * 1024
#: Records of one BinaryRequest hook run that are looked at; the rest are dropped unread. A provider
#: hook answers with one `Binary` record (and perhaps its `*_BINARY` config): this is plenty.
MAX_REQUEST_RECORDS = 100


def _iter_jsonl(text: str | bytes | None, max_line_chars: int) -> Iterator[dict]:
    if not text:
        return
    if isinstance(text, bytes | bytearray):
        text = bytes(text).decode("utf-8", errors="replace")
    # Split on "\n" only: str.splitlines() would also split on U+2028 & co., which a hook may
    # legitimately print unescaped inside a JSON string (json.dumps(..., ensure_ascii=False)).
    start = 0
    while start <= len(text):
        end = text.find("\n", start)
        end = len(text) if end < 0 else end
        line = text[start:end].strip()
        start = end + 1
        if not line.startswith("{") or len(line) > max_line_chars:
            continue
        try:
            value = json.loads(line)
        except (ValueError, RecursionError):  # bad JSON, or absurdly deep nesting
            continue
        if isinstance(value, dict):
            yield value


def parse_jsonl(text: str | bytes | None, *, max_line_chars: int = MAX_LINE_CHARS) -> list[dict]:
    """The JSON objects in ``text``, one per line; blank, non-JSON and non-object lines are skipped."""
    return list(_iter_jsonl(text, max_line_chars))


def iter_records(text: str | bytes | None, *, max_line_chars: int = MAX_LINE_CHARS) -> Iterator[dict]:
    """records_with_type(), lazily: a caller that stops early parses no further line."""
    for record in _iter_jsonl(text, max_line_chars):
        if isinstance(record.get("type"), str) and record["type"].strip():
            yield record


def records_with_type(text: str | bytes | None, *, max_line_chars: int = MAX_LINE_CHARS) -> list[dict]:
    """Only the records that carry a non-empty string ``type`` (the ones that can be dispatched)."""
    return list(iter_records(text, max_line_chars=max_line_chars))


class RequestRecords(NamedTuple):
    """What a BinaryRequest hook may report, and how much of its output was refused."""

    kept: list[dict]  #: at most one `Binary` record and one `Machine` record, both about the request
    dropped: int  #: records looked at and refused (other types, other names, other config keys)
    cut_short: bool  #: True when the count limit or the deadline stopped the reading


def binary_config_key(binary_name: str) -> str:
    """The Machine config key that names this binary's path: `yt-dlp` -> `YT_DLP_BINARY`."""
    return f"{str(binary_name).strip().upper().replace('-', '_').replace('.', '_')}_BINARY"


def records_for_request(
    records: Iterable[dict],
    binary_name: str,
    limit: int = MAX_REQUEST_RECORDS,
    deadline: float | None = None,
    *,
    clock: Callable[[], float] = time.monotonic,
) -> RequestRecords:
    """The records a BinaryRequest hook for `binary_name` is trusted with; everything else dropped.

    Kept: the first `Binary` record about that binary (its `name`, or no name) that has an abspath
    (else the first one about it), and the first `Machine` record that sets the binary's own
    `<NAME>_BINARY` config key, reduced to that key. Dropped (counted): every other record:
    `Binary` records of other names, `BinaryRequest`, `Process`, other `Machine` keys, unknown
    types, repeats. At most `limit` records are looked at, and none once `deadline` (a `clock()`
    value) has passed: a hook that prints 100k records costs no more than one that prints 100.
    """
    own_key = binary_config_key(binary_name)
    binary: dict | None = None
    machine: dict | None = None
    seen = dropped = 0
    cut_short = False
    for record in records:
        if seen >= limit or (deadline is not None and clock() >= deadline):
            cut_short = True
            break
        seen += 1
        kind = record.get("type") if isinstance(record, dict) else None
        if kind == "Binary" and str(record.get("name") or binary_name) == binary_name:
            if binary is None or (not binary.get("abspath") and record.get("abspath")):
                dropped += binary is not None
                binary = record
                continue
        elif kind == "Machine" and machine is None:
            config = record.get("config")
            if isinstance(config, dict) and own_key in config:
                machine = {"type": "Machine", "config": {own_key: config[own_key]}}
                dropped += len(config) > 1  # the other keys it tried to set
                continue
        dropped += 1
    kept = [record for record in (binary, machine) if record is not None]
    return RequestRecords(kept, dropped, cut_short)
