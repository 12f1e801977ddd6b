"""Find hook scripts and turn a call into an argv list. No side effects, no Django.

A hook is a file named ``on_<Event>__<NN>_<name>[.finite.bg|.daemon.bg].<py|js|sh>``:

- ``<Event>``: letters and digits, e.g. ``BinaryRequest``, ``Snapshot``;
- ``<NN>``: exactly two digits, so that sorting by file name is sorting by order;
- ``<name>``: letters, digits, ``_`` and ``-`` (no dots, so the suffix is unambiguous);
- ``.finite.bg`` runs in the background until it finishes by itself, ``.daemon.bg`` runs in the
  background until it is stopped; no suffix means a foreground hook awaited by the caller.

Hooks live in plugin folders (``<dir>/<plugin>/on_...``); a hook placed directly in a searched
folder is accepted too, and its plugin is that folder.
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "HOOK_FILENAME_RE",
    "HookName",
    "parse_hook_name",
    "is_background_hook",
    "builtin_plugin_dir",
    "discover_hooks",
    "plugin_name_for",
    "interpreter_for",
    "build_hook_argv",
]

HOOK_FILENAME_RE = re.compile(
    r"""
    \A on_(?P<event>[A-Za-z][A-Za-z0-9]*)
    __(?P<order>[0-9]{2})
    _(?P<name>[A-Za-z0-9][A-Za-z0-9_-]*)
    (?P<suffix>\.finite\.bg|\.daemon\.bg)?
    \.(?P<ext>py|js|sh) \Z
    """,
    re.VERBOSE,
)

#: How each script type is started; the script path is appended after these.
INTERPRETERS: dict[str, tuple[str, ...]] = {
    "py": (),  # filled in by interpreter_for(): the running interpreter
    "js": ("node",),
    "sh": ("sh",),
}

_ARG_KEY_RE = re.compile(r"\A[A-Za-z_][A-Za-z0-9_]*\Z")


@dataclass(frozen=True)
class HookName:
    """The parts of a hook file name."""

    event: str  #: e.g. ``BinaryRequest``
    order: int  #: the two-digit ``NN``, as an int
    name: str  #: e.g. ``pip`` in ``on_BinaryRequest__30_pip.py``
    background: bool  #: ``.finite.bg`` or ``.daemon.bg``
    daemon: bool  #: ``.daemon.bg`` only
    ext: str  #: ``py``, ``js`` or ``sh``


def parse_hook_name(filename: str | Path) -> HookName | None:
    """Parse a hook file name (a bare name or a path); None if it is not a hook name."""
    match = HOOK_FILENAME_RE.match(Path(filename).name)
    if match is None:
        return None
    suffix = match["suffix"] or ""
    return HookName(
        event=match["event"],
        order=int(match["order"]),
        name=match["name"],
        background=bool(suffix),
        daemon=suffix == ".daemon.bg",
        ext=match["ext"],
    )


#: The background marker of older hook names (``on_Snapshot__21_consolelog__background.js``).
LEGACY_BACKGROUND_STEM = "__background"


def is_background_hook(name: str | Path) -> bool:
    """True for ``.finite.bg`` / ``.daemon.bg`` hooks, and for the legacy ``__background`` stem.

    Only the file name counts (a ``.bg.`` in a folder name does not make a hook background).
    """
    filename = Path(name).name
    if LEGACY_BACKGROUND_STEM in filename:
        return True
    parsed = parse_hook_name(filename)
    if parsed is not None:
        return parsed.background
    # Not a well-formed hook name: fall back to the marker itself, as the original does.
    return ".bg." in filename


def builtin_plugin_dir() -> Path:
    """The folder of plugins shipped inside this package (``hooks/builtin``)."""
    return Path(__file__).resolve().parent / "builtin"


def _candidate_files(folder: Path) -> list[Path]:
    """Entries directly in ``folder`` and one level down (``<folder>/<plugin>/*``)."""
    try:
        entries = list(folder.iterdir())
    except (FileNotFoundError, NotADirectoryError, PermissionError):
        return []
    found: list[Path] = []
    for entry in entries:
        if entry.is_dir():
            try:
                found.extend(entry.iterdir())
            except (FileNotFoundError, NotADirectoryError, PermissionError):
                continue
        else:
            found.append(entry)
    return found


def discover_hooks(event_name: str, dirs: list[Path] | None = None) -> list[Path]:
    """All hooks for ``event_name`` in the built-in plugins and in ``dirs``, sorted by file name."""
    folders = [builtin_plugin_dir(), *(Path(d) for d in (dirs or []))]
    seen: set[Path] = set()
    hooks: list[Path] = []
    for folder in folders:
        for path in _candidate_files(folder):
            parsed = parse_hook_name(path.name)
            if parsed is None or parsed.event != event_name or not path.is_file():
                continue
            key = path.resolve()
            if key in seen:  # the same folder listed twice, or a symlinked plugin
                continue
            seen.add(key)
            hooks.append(path)
    # File name first (that is the documented order); the full path breaks ties deterministically.
    return sorted(hooks, key=lambda p: (p.name, str(p)))


def plugin_name_for(hook_path: str | Path) -> str:
    """The plugin a hook belongs to: the name of the folder holding it."""
    return Path(hook_path).parent.name


def interpreter_for(hook_path: str | Path) -> list[str]:
    """The argv prefix that runs this script (``.py`` runs under the current interpreter)."""
    ext = Path(hook_path).suffix.lstrip(".")
    if ext == "py":
        return [sys.executable]
    if ext in INTERPRETERS:
        return list(INTERPRETERS[ext])
    raise ValueError(f"no interpreter known for hook {hook_path!s} (expected .py, .js or .sh)")


def _format_arg(key: str, value: object) -> str | None:
    """One ``--key=value`` element, or None when the value means "leave it out"."""
    if not _ARG_KEY_RE.match(key):
        raise ValueError(f"invalid hook argument name: {key!r}")
    flag = "--" + key.replace("_", "-")
    if value is None or value is False:
        return None
    if value is True:
        return flag
    if isinstance(value, dict | list | tuple):
        return f"{flag}={json.dumps(value, separators=(',', ':'), default=str)}"
    return f"{flag}={value}"


def build_hook_argv(hook_path: str | Path, **kwargs: object) -> list[str]:
    """Interpreter + absolute script path + ``--key=value`` arguments, as a list (never a shell string).

    ``snake_case`` keys become ``--kebab-case``; dicts and lists are JSON-encoded; None and False are
    left out; True becomes a bare ``--flag``. The script path is made absolute because hooks run
    with their output directory as the working directory.
    """
    script = Path(hook_path).absolute()
    argv = [*interpreter_for(script), str(script)]
    for key, value in kwargs.items():
        arg = _format_arg(key, value)
        if arg is not None:
            argv.append(arg)
    return argv
