"""MACHINE_* settings with their defaults, read lazily from django.conf.settings."""

from __future__ import annotations

import os
from pathlib import Path

from django.conf import settings as django_settings


def _env_bool(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None or value.strip() == "":
        return default
    return value.strip().lower() not in {"0", "false", "no", "off"}


class MachineSettings:
    """Each attribute is a default; `MACHINE_<NAME>` in Django settings overrides it."""

    #: Root of everything the app writes (logs, lib dir). Falls back to settings.DATA_DIR, then ./data.
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

    def __getattribute__(self, name: str):
        default = super().__getattribute__(name)
        if not name.isupper():
            return default
        return getattr(django_settings, f"MACHINE_{name}", default)

    @property
    def data_dir(self) -> Path:
        value = self.DATA_DIR or getattr(django_settings, "DATA_DIR", None) or os.environ.get("DATA_DIR")
        return Path(value or "data").resolve()

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
