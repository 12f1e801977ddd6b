"""The plugin mechanism: find hook scripts, name them, read the JSONL records they print.

Running a hook and applying its records live in ``machine.hook_runs``; ``run_hook`` is re-exported
here for compatibility. Importing this package (or ``hooks.provider_hook``, which every built-in
provider hook script does in its own subprocess) must not import Django, so ``run_hook`` is
resolved lazily, on first attribute access.
"""

from .discovery import build_hook_argv, discover_hooks, is_background_hook, parse_hook_name
from .records import parse_jsonl, records_with_type

__all__ = [
    "build_hook_argv",
    "discover_hooks",
    "is_background_hook",
    "parse_hook_name",
    "parse_jsonl",
    "records_with_type",
    "run_hook",
]


def __getattr__(name: str):
    # PEP 562: keeps `import hooks` Django-free for the hook subprocesses (see module docstring).
    if name == "run_hook":
        from machine.hook_runs import run_hook

        return run_hook
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
