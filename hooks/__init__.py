"""The plugin mechanism: find hook scripts, run them, read the JSONL records they print.

Importing this package (or ``hooks.provider_hook``, which every built-in provider hook script does
in its own subprocess) must not import Django: ``run_hook`` creates ``Process`` rows, so it is
resolved lazily, on first attribute access, from ``hooks.execution``.
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
        from .execution import run_hook

        return run_hook
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
