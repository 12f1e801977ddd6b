"""Validate an install request, queue the Binary rows, install them now, report progress.

Used by the `install` management command; kept out of the command so it stays a thin parser.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

from django.db import transaction

from hooks.discovery import discover_hooks, plugin_name_for
from hooks.overrides import override_problems
from machine.binaries import (
    BINARY_REQUEST_EVENT,
    claim_lease_seconds,
    format_binproviders,
    is_safe_binary_name,
    parse_binproviders,
)
from machine.choices import BinaryStatus
from machine.conf import machine_settings
from machine.models import Binary

#: Seconds between looks at a row another worker is installing.
POLL_INTERVAL = 0.5


class InstallRequestError(ValueError):
    """A request that is rejected before anything is queued."""


@dataclass
class InstallRequest:
    names: list[str]
    binproviders: str
    overrides: dict[str, Any] = field(default_factory=dict)


def known_providers() -> list[str]:
    """Provider names that have an on_BinaryRequest hook (built-in or in MACHINE_HOOK_DIRS)."""
    hooks = discover_hooks(BINARY_REQUEST_EVENT, list(machine_settings.HOOK_DIRS))
    return sorted({plugin_name_for(hook) for hook in hooks})


def parse_overrides_json(text: str | None) -> dict[str, Any]:
    """The `--overrides` JSON object, or InstallRequestError with the reason."""
    if text is None or not text.strip():
        return {}
    try:
        value = json.loads(text)
    except ValueError as err:
        raise InstallRequestError(f"--overrides is not valid JSON: {err}") from None
    if not isinstance(value, dict):
        raise InstallRequestError(
            f"--overrides must be a JSON object keyed by provider name, got {type(value).__name__}"
        )
    return value


def build_request(names: list[str], binproviders: str, overrides_json: str | None) -> InstallRequest:
    """Check every part of the request; InstallRequestError before anything is written."""
    max_len = Binary._meta.get_field("name").max_length
    clean_names = list(dict.fromkeys(name.strip() for name in names if name and name.strip()))
    if not clean_names:
        raise InstallRequestError("give at least one binary name")
    for name in clean_names:
        if not is_safe_binary_name(name) or len(name) > max_len:
            raise InstallRequestError(f"invalid binary name: {name!r}")
    providers = known_providers()
    allowed = parse_binproviders(binproviders)
    unknown = sorted(allowed - set(providers)) if allowed is not None else []
    if unknown:
        raise InstallRequestError(
            f"unknown provider(s): {', '.join(unknown)} (known: {', '.join(providers) or 'none'})"
        )
    overrides = parse_overrides_json(overrides_json)
    stray = sorted(k for k in overrides if k != "min_version" and k not in providers)
    if stray:
        raise InstallRequestError(
            f"--overrides keys must be provider names or min_version; unknown: {', '.join(stray)}"
        )
    for key, section in overrides.items():
        if key != "min_version" and not isinstance(section, dict):
            raise InstallRequestError(f"--overrides[{key!r}] must be a JSON object")
    problems = override_problems(overrides)
    if problems:  # refused before anything is queued or run (hooks.overrides: the allow-list)
        raise InstallRequestError("; ".join(problems))
    return InstallRequest(clean_names, format_binproviders(binproviders) or "*", overrides)


def queue(request: InstallRequest) -> list[Binary]:
    """The queued (or already installed) rows for the request, all written or none."""
    with transaction.atomic():
        return [
            Binary.from_json(
                {"name": name, "binproviders": request.binproviders, "overrides": request.overrides}
            )
            for name in request.names
        ]


def install_one(binary: Binary) -> Binary:
    """Install now (or wait for the worker that holds the row); the row as it ends up."""
    if binary.status == BinaryStatus.INSTALLED:
        return binary
    if binary.retry_now() and binary.tick_claimed():
        binary.refresh_from_db()
        return binary
    # Another worker holds it: wait (bounded by its lease) until it writes an outcome.
    seen = binary.modified_at
    deadline = time.monotonic() + claim_lease_seconds()
    while time.monotonic() < deadline:
        binary.refresh_from_db()
        if binary.status == BinaryStatus.INSTALLED or binary.modified_at != seen:
            break
        time.sleep(POLL_INTERVAL)
    return binary


def failure_reason(binary: Binary) -> str:
    """The last stderr line of the latest hook run for this binary (a hook's one-line reason), or ''."""
    last = binary.hook_processes().exclude(stderr="").last()
    lines = (last.stderr if last is not None else "").strip().splitlines()
    return lines[-1].strip() if lines else ""
