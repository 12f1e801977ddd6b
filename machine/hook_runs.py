"""Run one hook script as a tracked `Process` row of type `hook`, and apply the records it printed.

`run_hook()` never raises because of what the hook does: a crash, garbage on stdout or a hang past
its timeout all give a Process row with a non-zero exit code and the hook's stderr kept. Argument
errors made by the caller (an invalid `--key`) are the caller's bug and do raise ValueError.

`dispatch_record()` hands one JSONL record to the `from_json` of the model named by its `type`.
Unknown types are skipped (a newer hook may speak more than this app understands); a record a model
rejects is logged and skipped, so one bad record never hides the others.

`hooks` keeps discovery, names and record parsing, and re-exports these names (`hooks.execution`,
`hooks.dispatch`, `hooks.run_hook`) for compatibility.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from django.db import transaction

from hooks.discovery import build_hook_argv, is_background_hook

# machine.models imports this module (Binary.run, through machine.binaries), so the models are
# read from the module object when a hook runs, not bound by name while the models are defined.
from machine import models as machine_models

logger = logging.getLogger(__name__)

__all__ = [
    "EXIT_NOT_RUN",
    "EXIT_TIMED_OUT",
    "RECORD_MODELS",
    "dispatch_record",
    "dispatch_records",
    "hook_env",
    "run_hook",
]

#: Exit code recorded when the hook could not be run or awaited at all (like a shell's "cannot run").
EXIT_NOT_RUN = 126
#: Exit code recorded for a hook killed at its timeout (128 + SIGKILL).
EXIT_TIMED_OUT = 137

#: Record `type` -> name of the `machine.models` class whose `from_json(record)` handles it.
RECORD_MODELS: dict[str, str] = {
    "Binary": "Binary",
    "BinaryRequest": "Binary",
    "Process": "Process",
    "Machine": "Machine",
}


def hook_env(config: dict[str, Any] | None) -> dict[str, str]:
    """Config values as environment strings: None dropped, bools as True/False, dicts/lists as JSON."""
    env: dict[str, str] = {}
    for key, value in (config or {}).items():
        if value is None:
            continue
        if isinstance(value, (dict, list, tuple)):
            env[str(key)] = json.dumps(value, separators=(",", ":"), default=str)
        else:
            env[str(key)] = str(value)
    return env


def _record_not_run(process, reason: str, exit_code: int = EXIT_NOT_RUN) -> None:
    """Close a hook row that failed outside the hook itself, with the reason added to its stderr.

    Through the model's one close path (`_finish`): a code the row already has is kept, except that
    a timeout is always recorded as EXIT_TIMED_OUT.
    """
    keep = process.exit_code is not None and exit_code != EXIT_TIMED_OUT
    process._finish(process.exit_code if keep else exit_code, note=reason, all_fields=True)


def run_hook(
    script: str | Path,
    output_dir: str | Path,
    config: dict[str, Any] | None = None,
    timeout: int | None = None,
    parent=None,
    **kwargs: Any,
):
    """Run `script` with `--key=value` arguments in `output_dir`; the Process row (type hook).

    Foreground hooks are awaited (killed with their whole tree past `timeout` seconds);
    `.bg.` hooks are launched and returned running. `config` becomes environment variables.
    """
    script = Path(script).absolute()
    argv = build_hook_argv(script, **kwargs)  # ValueError for a bad argument name: caller's bug
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    Process = machine_models.Process
    if timeout is None:
        timeout = Process._meta.get_field("timeout").default
    background = is_background_hook(script.name)
    process = Process.objects.create(
        machine=machine_models.Machine.current(),
        process_type="hook",
        pwd=str(output_dir),
        cmd=argv,
        env=hook_env(config),
        timeout=int(timeout),
        parent=parent,
        retry_at=None,  # run_hook launches it itself: not due for a runner (which would race it)
    )
    started = time.monotonic()
    try:
        process.launch(background=background)
        if not background and process.exit_code is None:
            process.wait(timeout=timeout)
        if not background and process.exit_code == EXIT_TIMED_OUT and time.monotonic() - started >= timeout:
            _record_not_run(process, f"hook timed out after {timeout}s and was killed", EXIT_TIMED_OUT)
    except TimeoutError:
        process.kill_tree()
        _record_not_run(process, f"hook timed out after {timeout}s and was killed", EXIT_TIMED_OUT)
    except Exception as err:  # the hook must never take its caller down
        logger.exception("hook %s could not be run", script)
        _record_not_run(process, f"hook could not be run: {type(err).__name__}: {err}")
    return process


def dispatch_record(record: dict[str, Any], overrides: dict[str, Any] | None = None):
    """The object `from_json` returned for this record, or None (unknown type, rejected record)."""
    if not isinstance(record, dict):
        return None
    model_name = RECORD_MODELS.get(str(record.get("type") or ""))
    if model_name is None:
        return None
    from_json = getattr(getattr(machine_models, model_name), "from_json", None)
    if from_json is None:
        return None
    try:
        with transaction.atomic():  # a rejected record rolls back alone (PostgreSQL aborts otherwise)
            return from_json(record, overrides=overrides)
    except Exception:
        logger.exception("record of type %s rejected by %s.from_json", record.get("type"), model_name)
        return None


def dispatch_records(records: Iterable[dict[str, Any]], overrides: dict[str, Any] | None = None) -> list:
    """Dispatch each record in order; the non-None results."""
    results = []
    for record in records:
        result = dispatch_record(record, overrides=overrides)
        if result is not None:
            results.append(result)
    return results
