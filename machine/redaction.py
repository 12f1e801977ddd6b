"""One rule for secrets: which names look secret, and how env dicts and argv are redacted for storage and display."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

REDACTED = "********"
SECRET_KEY_PARTS = ("KEY", "TOKEN", "SECRET", "PASSWORD", "COOKIE")

_ASSIGNMENT_ARG_RE = re.compile(r"^(?P<name>-{0,2}[A-Za-z_][A-Za-z0-9_.-]*)=(?P<value>.*)$", re.DOTALL)


def is_secret_key(name: object) -> bool:
    """True when a variable or option name looks like it holds a secret."""
    upper = str(name).upper().replace("-", "_")
    return any(part in upper for part in SECRET_KEY_PARTS)


def redact_env(env: Mapping[str, object]) -> dict[str, object]:
    """A copy of env whose secret-looking keys have their (non-empty) values replaced by REDACTED."""
    return {
        key: REDACTED if value not in (None, "") and is_secret_key(key) else value
        for key, value in env.items()
    }


def redact_cmd(cmd: object) -> list[str]:
    """The argv with secret-looking option values redacted (`--token=x`, `--password x`, `API_KEY=x`)."""
    if not isinstance(cmd, Sequence) or isinstance(cmd, (str, bytes)):
        return [str(cmd)] if cmd not in (None, "", b"") else []
    shown: list[str] = []
    hide_next = False
    for arg in (str(arg) for arg in cmd):
        if hide_next:
            shown.append(REDACTED)
            hide_next = False
            continue
        match = _ASSIGNMENT_ARG_RE.match(arg)
        if match and is_secret_key(match["name"]):
            shown.append(f"{match['name']}={REDACTED}")
        elif arg.startswith("-") and "=" not in arg and is_secret_key(arg.lstrip("-")):
            shown.append(arg)
            hide_next = True  # `--password hunter2`: the next argument is the value
        else:
            shown.append(arg)
    return shown


def redact_nested(value: Any) -> tuple[Any, bool]:
    """`value` with the values of secret-looking keys redacted at any depth, and whether any was."""
    if isinstance(value, Mapping):
        found = False
        clean = {}
        for key, item in value.items():
            if is_secret_key(key) and item not in (None, ""):
                clean[key], found = REDACTED, True
            else:
                clean[key], inner = redact_nested(item)
                found = found or inner
        return clean, found
    if isinstance(value, list):
        items = [redact_nested(item) for item in value]
        return [item for item, _ in items], any(found for _, found in items)
    return value, False
