"""Pure display helpers for the admin: redaction, shell quoting, durations, config explanations.

No ORM and no OS calls here, so every page renders through the same small, testable functions.
Redaction happens again at display time even though rows are stored redacted (defence in depth:
a row written by older code, or by hand, must still never show a secret on a page).
"""

from __future__ import annotations

import os
import shlex
import signal
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from django.utils.text import Truncator

from machine.conf import machine_settings
from machine.models import _sanitize_machine_config
from machine.redaction import (  # noqa: F401  (re-exported for the admin and its tests)
    REDACTED,
    is_secret_key,
    mask_cmd,
    mask_env,
    redact_cmd,
    redact_env,
    redact_nested,
)

#: Lines of stdout/stderr shown on a process's detail page.
TAIL_LINES = 50
#: At most this many characters of a log tail on a page (its end).
TAIL_MAX_CHARS = 64 * 1024


# `--api-key=value`, `-password=value` and `NAME_TOKEN=value` style arguments.
def redact_env_for_display(env: object, secrets: Sequence[str] = ()) -> list[tuple[str, str]]:
    """Sorted (key, value) pairs of an env dict, secrets masked (also the known `secrets` by value);
    [] for a non-dict."""
    if not isinstance(env, Mapping):
        return []
    shown = mask_env(env, secrets)
    return sorted((str(key), "" if value is None else str(value)) for key, value in shown.items())


def shell_command(cmd: object, secrets: Sequence[str] = ()) -> str:
    """The command as one copy-pasteable, shell-quoted line (secrets masked)."""
    return shlex.join(str(arg) for arg in mask_cmd(cmd, secrets))


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


# -- exit codes, health, stats, logs ---------------------------------------------------------------

#: What a shell means by these exit codes.
EXIT_CODE_MEANINGS = {126: "cannot execute", 127: "command not found"}


def exit_code_meaning(exit_code: int | None) -> str:
    """A short reading of an exit code: "success", "killed by SIGTERM", "command not found", ..."""
    if exit_code is None:
        return "unknown"
    if exit_code == 0:
        return "success"
    if exit_code in EXIT_CODE_MEANINGS:
        return EXIT_CODE_MEANINGS[exit_code]
    if 128 < exit_code < 128 + 65:
        try:
            return f"killed by {signal.Signals(exit_code - 128).name}"
        except ValueError:
            return f"killed by signal {exit_code - 128}"
    return "failed"


def exit_code_kind(exit_code: int | None, status: str) -> str:
    """Badge kind: ok for 0, failed for any other code, unknown for an exited row without one."""
    if exit_code is None:
        return "unknown" if status == "exited" else "neutral"
    return "ok" if exit_code == 0 else "failed"


def health_summary(succeeded: int, failed: int) -> str:
    """`75% (3 ok / 1 failed)`, or `no uses yet` when nothing was counted (not a misleading 0%)."""
    total = succeeded + failed
    if total == 0:
        return "no uses yet"
    return f"{round(succeeded / total * 100)}% ({succeeded} ok / {failed} failed)"


def health_kind(succeeded: int, failed: int) -> str:
    total = succeeded + failed
    if total == 0:
        return "neutral"
    return "ok" if failed == 0 else ("failed" if succeeded == 0 else "unknown")


def human_bytes(value: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return str(value)


def stat_value(key: str, value: Any) -> str:
    """One host stat for people: bytes in KiB..TiB, percentages with %, lists comma-separated."""
    if isinstance(value, bool) or value is None:
        return "-" if value is None else ("yes" if value else "no")
    if isinstance(value, (int, float)):
        if key.endswith(("_total", "_free", "_used", "_available", "_bytes")) or key in ("mem", "disk"):
            return human_bytes(float(value))
        if key.endswith(("_percent", "_pct")):
            return f"{value:g} %"
        if key.endswith("_time") and value > 0:  # a Unix timestamp, e.g. boot_time
            return datetime.fromtimestamp(value, tz=UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        if key.endswith("_seconds") and value >= 0:
            return format_duration(
                datetime.fromtimestamp(0, tz=UTC), datetime.fromtimestamp(value, tz=UTC), datetime.now(tz=UTC)
            )
        return f"{value:g}" if isinstance(value, float) else str(value)
    if isinstance(value, (list, tuple)):
        return ", ".join(stat_value(key, item) for item in value)
    if isinstance(value, Mapping):
        return ", ".join(f"{k}: {stat_value(str(k), v)}" for k, v in value.items())
    return str(value)


def stats_pairs(stats: Any) -> list[tuple[str, str]]:
    """Machine.stats as sorted (label, value) pairs; [] for anything but a dict."""
    if not isinstance(stats, Mapping):
        return []
    return [(str(key).replace("_", " "), stat_value(str(key), stats[key])) for key in sorted(stats, key=str)]


@dataclass(frozen=True)
class LogWindow:
    """A bounded slice of a log: bytes [start, end) of a file of `size` bytes, decoded."""

    text: str
    start: int
    end: int
    size: int

    @property
    def has_earlier(self) -> bool:
        return self.start > 0

    @property
    def has_later(self) -> bool:
        return self.end < self.size


def read_log_window(path: str | os.PathLike, start: int | None, window: int) -> LogWindow:
    """Read at most `window` bytes from `start` (default: the last window), cut to whole lines.

    Never reads more than `window` bytes, however large the file: a 200 MB log costs the page
    what one window costs.
    """
    with open(path, "rb") as f:
        size = f.seek(0, os.SEEK_END)
        begin = max(0, size - window) if start is None else min(max(0, start), size)
        f.seek(begin)
        data = f.read(window)
    end = begin + len(data)
    if begin > 0 and b"\n" in data:  # the first line was cut at the window's edge
        cut = data.index(b"\n") + 1
        data, begin = data[cut:], begin + cut
    if end < size and b"\n" in data:  # and so was the last one
        keep = data.rindex(b"\n") + 1
        data, end = data[:keep], begin + keep
    return LogWindow(data.decode(errors="replace"), begin, end, size)
