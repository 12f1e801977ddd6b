"""Pure display helpers for the admin: redaction, shell quoting, durations, config explanations.

No ORM and no OS calls here, so every page renders through the same small, testable functions.
Redaction happens again at display time even though rows are stored redacted (defence in depth:
a row written by older code, or by hand, must still never show a secret on a page).
"""

from __future__ import annotations

import shlex
from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta
from typing import Any

from django.utils.text import Truncator

from machine.conf import machine_settings
from machine.models import _sanitize_machine_config
from machine.redaction import REDACTED, is_secret_key, redact_cmd, redact_env, redact_nested  # noqa: F401

#: Lines of stdout/stderr shown on a process's detail page.
TAIL_LINES = 50


# `--api-key=value`, `-password=value` and `NAME_TOKEN=value` style arguments.
def redact_env_for_display(env: object) -> list[tuple[str, str]]:
    """Sorted (key, value) pairs of an env dict, secret-looking values replaced; [] for a non-dict."""
    if not isinstance(env, Mapping):
        return []
    return sorted((str(key), "" if value is None else str(value)) for key, value in redact_env(env).items())


def shell_command(cmd: object) -> str:
    """The command as one copy-pasteable, shell-quoted line (secrets redacted)."""
    return shlex.join(redact_cmd(cmd))


def format_duration(started_at: datetime | None, ended_at: datetime | None, now: datetime) -> str:
    """`1h 02m 03s` style run time; still counting for a process without ended_at; '' if never started."""
    if started_at is None:
        return ""
    elapsed = (ended_at or now) - started_at
    if elapsed < timedelta(0):
        return ""
    total = int(elapsed.total_seconds())
    hours, rest = divmod(total, 3600)
    minutes, seconds = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes:02d}m {seconds:02d}s"
    if minutes:
        return f"{minutes}m {seconds:02d}s"
    if total == 0 and elapsed.total_seconds() > 0:
        return f"{elapsed.total_seconds():.2f}s"
    return f"{seconds}s"


def join_tail(lines: str | Iterable[str] | None) -> str:
    """A tail result (text, or an iterable of lines without newlines) as one text block."""
    if lines is None:
        return ""
    if isinstance(lines, str):
        return lines
    return "\n".join(lines)


def config_problems(config: Any) -> list[str]:
    """Why the contract's sanitiser would change `config`: one message per dropped key ([] if none)."""
    if not isinstance(config, dict):
        return ['The config must be a JSON object, e.g. {"WGET_BINARY": "wget"}.']
    lib_dir = machine_settings.lib_dir
    clean = _sanitize_machine_config(config, lib_dir=lib_dir)
    return [
        f"{key}: the value is blank, or a path that does not exist on this host or lies outside "
        f"the lib dir ({lib_dir}); give a command name (e.g. wget) or a path inside the lib dir."
        for key in config
        if key not in clean
    ]


def process_label(pk: object, cmd: object, status: str) -> str:
    """A row's name for titles and links, used instead of str(process), whose argv is not redacted."""
    return f"Process {str(pk)[-12:]}: {Truncator(shell_command(cmd)).chars(80)} ({status})"
