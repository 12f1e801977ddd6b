"""Run one hook script as a tracked `Process` row of type `hook`.

`run_hook()` never raises because of what the hook does: a crash, garbage on stdout or a hang past
its timeout all give a Process row with a non-zero exit code and the hook's stderr kept. Argument
errors made by the caller (an invalid `--key`) are the caller's bug and do raise ValueError.

Models are looked up through the app registry (`apps.get_model`), not imported: `machine.models`
itself uses this module (Binary.run), and the model modules must be importable first.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from django.apps import apps

from hooks.discovery import build_hook_argv, is_background_hook

logger = logging.getLogger(__name__)

__all__ = ["run_hook", "hook_env"]

#: Exit code recorded when the hook could not be run or awaited at all (like a shell's "cannot run").
EXIT_NOT_RUN = 126
#: Exit code recorded for a hook killed at its timeout (128 + SIGKILL).
EXIT_TIMED_OUT = 137


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
    process_model = apps.get_model("machine", "Process")
    machine_model = apps.get_model("machine", "Machine")
    if timeout is None:
        timeout = process_model._meta.get_field("timeout").default
    background = is_background_hook(script.name)
    process = process_model._default_manager.create(
        machine=machine_model.current(),
        process_type="hook",
        pwd=str(output_dir),
        cmd=argv,
        env=hook_env(config),
        timeout=int(timeout),
        parent=parent,
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
