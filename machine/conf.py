"""MACHINE_* settings with their defaults, read lazily from django.conf.settings."""

from __future__ import annotations

import os
from pathlib import Path

from django.conf import settings as django_settings
from django.core.exceptions import ImproperlyConfigured


def _env_bool(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None or value.strip() == "":
        return default
    return value.strip().lower() not in {"0", "false", "no", "off"}


class MachineSettings:
    """Each attribute is a default; `MACHINE_<NAME>` in Django settings overrides it."""

    #: Root of everything the app writes (process logs, hook output, lib dir). Default:
    #: settings.DATA_DIR, else settings.BASE_DIR / "data" (never the current directory).
    DATA_DIR: Path | None = None
    #: Where provider hooks install binaries (pip venv, npm prefix) and where lib/bin symlinks live.
    LIB_DIR: Path | None = None
    #: Ask web services for the public IP / ISP / geo (bounded by DETECT_TIMEOUT; off for air-gapped hosts).
    PUBLIC_IP_LOOKUP: bool = True
    #: Upper bound, in seconds, on all outside calls made while detecting the network.
    DETECT_TIMEOUT: float = 2.0
    #: Override the detected host identity (simulate another host, or pin one behind NAT/containers).
    GUID: str | None = None
    #: Extra folders searched for hook plugins, after the built-in ones.
    HOOK_DIRS: tuple[str, ...] = ()
    #: Substrings of the joined, lower-cased sys.argv that classify Process.current(); first match wins.
    PROCESS_TYPE_PATTERNS: tuple[tuple[str, str], ...] = (
        ("supervisord", "supervisord"),
        ("runner_watch", "worker"),
        ("runworker --worker", "worker"),
        ("archivebox run", "orchestrator"),
        ("runworker", "orchestrator"),
        ("archivebox", "cli"),
        ("manage.py", "cli"),
        ("django-admin", "cli"),
    )
    #: Seconds a provider hook may run before it is killed (with its whole process tree).
    INSTALL_TIMEOUT: int = 300
    #: Tune every SQLite connection for several writer processes (WAL, busy timeout, IMMEDIATE
    #: transactions; see machine/sqlite.py). Off for a database on a filesystem without WAL support.
    SQLITE_TUNING: bool = True
    #: `manage.py prune` deletes exited Process rows (and their log directories) older than this.
    PRUNE_DAYS: int = 30

    def __getattribute__(self, name: str):
        default = super().__getattribute__(name)
        if not name.isupper():
            return default
        return getattr(django_settings, f"MACHINE_{name}", default)

    @property
    def data_dir(self) -> Path:
        """MACHINE_DATA_DIR, else DATA_DIR, else BASE_DIR / "data"; ImproperlyConfigured without any."""
        value = self.DATA_DIR or getattr(django_settings, "DATA_DIR", None)
        if value:
            return Path(value).expanduser().resolve()
        base_dir = getattr(django_settings, "BASE_DIR", None)
        if base_dir:
            return (Path(base_dir) / "data").resolve()
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
        return (os.environ.get("MACHINE_GUID") or self.GUID or "").strip()


machine_settings = MachineSettings()
