"""MACHINE_* settings with their defaults, read lazily from django.conf.settings."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from django.conf import settings as django_settings
from django.core.exceptions import ImproperlyConfigured
from django.core.signals import setting_changed

from machine.detect import DEFAULT_PUBLIC_LOOKUPS, DEFAULT_TIMEOUT


def _env_bool(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None or value.strip() == "":
        return default
    return value.strip().lower() not in {"0", "false", "no", "off"}


def is_supervisord_argv(argv: list[str]) -> bool:
    """The program is `supervisord`, or it was given `--configuration=...` (supervisord's long option)."""
    program = Path(argv[0]).name.lower() if argv else ""
    return program == "supervisord" or any(str(arg).startswith("--configuration=") for arg in argv[1:])


def is_background_add_argv(argv: list[str]) -> bool:
    """`archivebox add ... --bg`: the command only queues the URLs, so it is a plain CLI run."""
    return "archivebox add" in " ".join(str(arg) for arg in argv).lower() and "--bg" in argv


class MachineSettings:
    """Each attribute is a default; `MACHINE_<NAME>` in Django settings overrides it."""

    #: Root of everything the app writes (process logs, hook output, lib dir). Default:
    #: settings.DATA_DIR, else settings.BASE_DIR / "data" (never the current directory).
    DATA_DIR: Path | None = None
    #: Where provider hooks install binaries (pip venv, npm prefix) and where lib/bin symlinks live.
    LIB_DIR: Path | None = None
    #: Ask web services for the public IP / ISP / geo (bounded by DETECT_TIMEOUT; off for air-gapped hosts).
    PUBLIC_IP_LOOKUP: bool = DEFAULT_PUBLIC_LOOKUPS
    #: Upper bound, in seconds, on all outside calls made while detecting the network.
    DETECT_TIMEOUT: float = DEFAULT_TIMEOUT
    #: Override the detected host identity (simulate another host, or pin one behind NAT/containers).
    GUID: str | None = None
    #: Extra folders searched for hook plugins, after the built-in ones.
    HOOK_DIRS: tuple[str, ...] = ()
    #: How Process.current() classifies sys.argv: (pattern, type) pairs, first match wins, else
    #: "binary". A str pattern is a substring of the joined, lower-cased argv; a callable pattern
    #: gets the argv list. The defaults are the original archiver's rules, then this app's commands.
    PROCESS_TYPE_PATTERNS: tuple[tuple[str | Callable[[list[str]], bool], str], ...] = (
        (is_supervisord_argv, "supervisord"),
        ("runner_watch", "worker"),
        ("runworker --worker", "worker"),
        ("archivebox server", "server"),
        ("archivebox update", "update"),
        (is_background_add_argv, "cli"),
        ("archivebox add", "add"),
        ("archivebox search", "search"),
        ("archivebox list", "search"),
        ("archivebox run", "orchestrator"),
        ("runworker", "orchestrator"),
        ("archivebox", "cli"),
        ("manage.py", "cli"),
        ("django-admin", "cli"),
    )
    #: Seconds a provider hook may run before it is killed (with its whole process tree).
    INSTALL_TIMEOUT: int = 300
    #: The package index pip installs from (PIP_INDEX_URL for the pip hook); None: the worker's own
    #: pip configuration. The only way to change it: install requests cannot (hooks.overrides).
    PIP_INDEX_URL: str | None = None
    #: The registry npm installs from (npm_config_registry for the npm hook); None: npm's own config.
    NPM_REGISTRY: str | None = None
    #: Tune every SQLite connection for several writer processes (WAL, busy timeout, IMMEDIATE
    #: transactions; see machine/sqlite.py). Off for a database on a filesystem without WAL support.
    SQLITE_TUNING: bool = True
    #: `manage.py prune` deletes exited Process rows (and their log directories) older than this.
    PRUNE_DAYS: int = 30
    #: Size cap of each log file (stdout.log, stderr.log) of a Process, in bytes: past it the log
    #: keeps its first and last half and one line saying how much was cut (checked while the process
    #: is watched, and when its row is closed). 0: no cap.
    LOG_MAX_BYTES: int = 16 * 1024 * 1024
    #: How much of the end of each log a closed row stores in its stdout/stderr columns, in bytes
    #: (the whole log stays in the file, within LOG_MAX_BYTES).
    OUTPUT_TAIL_BYTES: int = 1024 * 1024

    def __getattribute__(self, name: str):
        default = super().__getattribute__(name)
        if not name.isupper():
            return default
        return getattr(django_settings, f"MACHINE_{name}", default)

    @property
    def data_dir(self) -> Path:
        """MACHINE_DATA_DIR, else DATA_DIR, else BASE_DIR / "data"; ImproperlyConfigured without any."""
        value = self.DATA_DIR or getattr(django_settings, "DATA_DIR", None)
        base_dir = None if value else getattr(django_settings, "BASE_DIR", None)
        # Resolved once per setting value (a realpath walk per log file path added up in drains);
        # keyed by the raw values, so a changed setting is seen at once.
        key = (value, base_dir)
        cached = self.__dict__.get("_data_dir")
        if cached is not None and cached[0] == key:
            return cached[1]
        if value:
            resolved = Path(value).expanduser().resolve()
        elif base_dir:
            resolved = (Path(base_dir) / "data").resolve()
        else:
            resolved = None
        if resolved is not None:
            self.__dict__["_data_dir"] = (key, resolved)
            return resolved
        raise ImproperlyConfigured(
            "django-machine needs a directory for its files: set MACHINE_DATA_DIR (or DATA_DIR, or "
            'BASE_DIR, whose "data" folder is then used) in your settings.'
        )

    @property
    def processes_dir(self) -> Path:
        """Where each launched Process keeps its own logs, pid file and cmd.sh (one folder per row)."""
        return self.data_dir / "processes"

    @property
    def lib_dir(self) -> Path:
        value = self.LIB_DIR or os.environ.get("LIB_DIR")
        return Path(value).resolve() if value else self.data_dir / "lib"

    @property
    def public_ip_lookup(self) -> bool:
        return _env_bool("MACHINE_PUBLIC_IP_LOOKUP", bool(self.PUBLIC_IP_LOOKUP))

    @property
    def guid_override(self) -> str:
        """MACHINE_GUID from the environment, else from the settings ('' for none).

        Read on every Machine.current() call, so it is worked out once: the environment variable
        is read when first needed (a process's identity does not change while it runs), and the
        setting again after Django reports that it changed (override_settings, test fixtures).
        """
        cached = self.__dict__.get("_guid_override")
        if cached is None:
            cached = (os.environ.get("MACHINE_GUID") or self.GUID or "").strip()
            self.__dict__["_guid_override"] = cached
        return cached


machine_settings = MachineSettings()


def _forget_derived_values(*, setting: str, **kwargs) -> None:
    if setting == "MACHINE_GUID":
        machine_settings.__dict__.pop("_guid_override", None)


setting_changed.connect(_forget_derived_values)
