"""Machine, NetworkInterface, Binary and Process: the rows that describe this host and its work.

The module-level `_CURRENT_*` slots are process-local caches that tests reset by assignment; they
are read and written only by the small `_cache_*` helpers and the `current()` classmethods below.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psutil  # (part of the contract: tests patch machine.models.psutil)
from django.core.exceptions import ValidationError
from django.db import models, transaction
from django.utils import timezone

from base_models.models import ModelWithHealthStats, ModelWithUUIDv7, normalize_config_json_values
from machine import launch_doubt, process_utils
from machine.binaries import BinaryManagerMixin, BinaryMixin, canonical_binary_name
from machine.choices import BinaryStatus, ProcessStatus, ProcessType
from machine.conf import machine_settings
from machine.detect import (
    FALLBACK_DNS_SERVER,
    FALLBACK_IP_LOCAL,
    NULL_MAC,
    get_host_guid,
    get_host_network,
    get_host_stats,
    get_os_info,
    get_vm_info,
)
from machine.fields import MaskedCmdField, MaskedEnvField, MaskedJSONField, SealedField
from machine.process_files import readable_argv
from machine.process_utils import ProcessIdentity
from machine.processes import ProcessMixin, ProcessQuerySet
from machine.redaction import mask_cmd, mask_nested, secret_values
from workers.models import ModelWithStateMachine

_CURRENT_MACHINE: Machine | None = None
_CURRENT_INTERFACE: NetworkInterface | None = None
_CURRENT_BINARIES: dict[str, Binary] = {}
_CURRENT_PROCESS: Process | None = None

MACHINE_RECHECK_INTERVAL = 7 * 24 * 60 * 60
NETWORK_INTERFACE_RECHECK_INTERVAL = 1 * 60 * 60
BINARY_RECHECK_INTERVAL = 30 * 60
PROCESS_RECHECK_INTERVAL = 60
PID_REUSE_WINDOW = timedelta(hours=24)
PROCESS_TIMEOUT_GRACE = timedelta(seconds=30)
START_TIME_TOLERANCE = 5.0

JSON_SCHEMA_VERSION = "0.9.0"

#: Path-like `*_BINARY` reference -> its file name (`/x/venv/bin/trafilatura` -> `trafilatura`).
_canonical_binary_name = canonical_binary_name


def _is_fresh(row: models.Model | None, interval_seconds: float) -> bool:
    """True when `row` is a saved row whose modified_at is younger than the interval."""
    if row is None or row.pk is None or row.modified_at is None:
        return False
    return timezone.now() - row.modified_at < timedelta(seconds=interval_seconds)


def _sanitize_machine_config(
    config: dict[str, Any] | None, *, lib_dir: str | Path | None = None
) -> dict[str, Any]:
    """A copy of `config` without the `*_BINARY` values that cannot name a usable binary.

    Only `*_BINARY` keys with a str value are examined: a blank one is dropped; a path-like one
    (containing `/` or starting with `~`) is dropped when it does not exist, or when `lib_dir` is
    given and the path is not inside it; a bare command name (`wget`) is kept. Every other key and
    value passes through untouched; kept values keep their text. Anything but a dict gives `{}`.
    """
    return _sanitized_config(config, lambda: lib_dir)


def _sanitized_config(config: Any, get_lib_dir: Callable[[], str | Path | None]) -> dict[str, Any]:
    # `get_lib_dir` is only called once a path-like value needs it, so a config without one costs
    # no path resolution (Machine.current() runs this on every call).
    if not isinstance(config, dict):
        return {}
    clean = dict(config)
    lib_root: list[Path | None] = []
    for key, value in config.items():
        if not str(key).endswith("_BINARY") or not isinstance(value, str):
            continue
        text = value.strip()
        if not text:
            del clean[key]
            continue
        if "/" not in text and not text.startswith("~"):
            continue  # a command name, looked up on PATH when used
        try:
            path = Path(text).expanduser()
            if not path.exists():
                del clean[key]
                continue
            if not lib_root:
                lib_dir = get_lib_dir()
                lib_root.append(Path(lib_dir).expanduser().absolute() if lib_dir else None)
            # absolute(), not resolve(): a link placed in the lib dir counts as inside it.
            if lib_root[0] is not None and not path.absolute().is_relative_to(lib_root[0]):
                del clean[key]
        except (OSError, RuntimeError, ValueError):  # unreadable, no home dir, NUL in the path
            del clean[key]
    return clean


def _plugin_declared_binary_keys(hook_path: str) -> list[str]:
    """`*_BINARY` keys declared in the plugin's config.json (beside the hook)."""
    if not hook_path:
        return []
    config_file = Path(hook_path).parent / "config.json"
    try:
        data = json.loads(config_file.read_text())
    except (OSError, ValueError):
        return []
    properties = data.get("properties", data) if isinstance(data, dict) else {}
    if not isinstance(properties, dict):
        return []
    return [key for key in properties if isinstance(key, str) and key.endswith("_BINARY")]


def _env_key_part(name: str) -> str:
    return name.strip().upper().replace("-", "_")


def _get_process_binary_env_keys(plugin_name: str, hook_path: str, env: dict[str, Any] | None) -> list[str]:
    """Env keys that name the binary a hook uses, in the order they are tried; only those set in `env`.

    `<PLUGIN>_BINARY`; then the plugin's declared `*_BINARY` keys (its own first, then the others
    alphabetically); then, for a `search_backend_<engine>` plugin that is the configured
    SEARCH_BACKEND_ENGINE, `<ENGINE>_BINARY`; then NODE_BINARY for a `.js` hook. A key counts only
    when its value in `env` is truthy.
    """
    env = env or {}
    plugin_name, hook_path = str(plugin_name or "").strip(), str(hook_path or "").strip()
    plugin_key = _env_key_part(plugin_name)
    own = f"{plugin_key}_BINARY" if plugin_key else ""
    candidates = [own] if own else []
    declared = _plugin_declared_binary_keys(hook_path)
    candidates += sorted(declared, key=lambda key: (key != own, key))
    if plugin_name.startswith("search_backend_"):
        backend = _env_key_part(plugin_name[len("search_backend_") :])
        if backend and backend == _env_key_part(str(env.get("SEARCH_BACKEND_ENGINE") or "")):
            candidates.append(f"{backend}_BINARY")
    if Path(hook_path).suffix.lower() == ".js":
        candidates.append("NODE_BINARY")
    keys: list[str] = []
    for key in candidates:
        if key and key not in keys and env.get(key):
            keys.append(key)
    return keys


def _find_existing_binary_for_reference(machine: Machine, reference: str) -> Binary | None:
    """Newest Binary of `machine` whose abspath is `reference`, else whose name is its basename or itself."""
    reference = (reference or "").strip()
    if not reference:
        return None
    rows = Binary.objects.filter(machine=machine).order_by("-modified_at", "-created_at")
    basename = os.path.basename(reference.rstrip("/"))
    for lookup in ({"abspath": reference}, {"name": basename}, {"name": reference}):
        if lookup.get("name") == "":
            continue
        found = rows.filter(**lookup).first()
        if found is not None:
            return found
    return None


def rows_of_this_machine() -> models.Q:
    """The rows a runner on this host may claim: those of Machine.current() (the claim_filter() of Binary/Process)."""
    return models.Q(machine=Machine.current())


#: A RUNNING Process row nobody polled for this long is anyone's (its launcher is gone).
LAUNCHER_ABANDONED_AFTER = timedelta(seconds=60)


def launcher_affinity() -> models.Q:
    """A RUNNING Process is polled by the worker that launched it (its child): only the parent can
    reap a child and learn its true exit code. So a worker takes a RUNNING row only if the pid is its
    own child, or if nobody polled the row for a while (its launcher is gone). Queued rows are anyone's.
    """
    # (This process's launch registry, not a /proc walk per claim: only children spawned through
    # process_utils.spawn() ever get a RUNNING row here.)
    own_children = sorted(process_utils.launched_pids())
    abandoned_before = timezone.now() - LAUNCHER_ABANDONED_AFTER
    return (
        ~models.Q(status=ProcessStatus.RUNNING)
        | models.Q(pid__in=own_children)
        | models.Q(retry_at__lt=abandoned_before)
    )


class MachineManager(models.Manager):
    def current(self) -> Machine:
        return Machine.current()


class Machine(ModelWithUUIDv7, ModelWithHealthStats):
    """One host running this app: its identity, hardware/OS facts, health stats and config."""

    # The host facts are required, as in the original: detection always supplies a value ('' for
    # a fact it cannot read), so a row is never saved half-described.
    guid = models.CharField(max_length=64, default=None, null=False, unique=True, editable=False)
    hostname = models.CharField(max_length=63, default=None, null=False)
    hw_in_docker = models.BooleanField(default=False, null=False)
    hw_in_vm = models.BooleanField(default=False, null=False)
    hw_manufacturer = models.CharField(max_length=63, default=None, null=False)
    hw_product = models.CharField(max_length=63, default=None, null=False)
    hw_uuid = models.CharField(max_length=255, default=None, null=False)
    os_arch = models.CharField(max_length=15, default=None, null=False)
    os_family = models.CharField(max_length=15, default=None, null=False)
    os_platform = models.CharField(max_length=63, default=None, null=False)
    os_release = models.CharField(max_length=63, default=None, null=False)
    os_kernel = models.CharField(max_length=255, default=None, null=False)
    stats = models.JSONField(default=dict, null=True, blank=True)
    config = models.JSONField(
        default=dict, null=True, blank=True, help_text="Machine-specific config overrides."
    )

    objects = MachineManager()

    class Meta:
        verbose_name = "Machine"
        verbose_name_plural = "Machines"

    def __str__(self) -> str:
        return f"{self.hostname or 'machine'} ({(self.guid or '')[:8]})"

    @staticmethod
    def _detected_fields() -> dict[str, Any]:
        """The detected host facts, each fitted to its column ('' for a fact detection left out)."""
        facts = {**get_os_info(), **get_vm_info()}
        detected: dict[str, Any] = {}
        for field in Machine._meta.concrete_fields:
            if field.name not in facts:
                continue
            value = facts[field.name]
            if isinstance(field, models.CharField):
                value = "" if value is None else str(value)[: field.max_length]
            elif isinstance(field, models.BooleanField):
                value = bool(value)
            detected[field.name] = value
        for field in Machine._meta.concrete_fields:
            if isinstance(field, models.CharField) and field.default is None and field.name != "guid":
                detected.setdefault(field.name, "")
        detected["stats"] = get_host_stats()
        return detected

    @classmethod
    def current(cls, refresh: bool = False) -> Machine:
        """This host's row: cached while younger than MACHINE_RECHECK_INTERVAL, else re-detected.

        A warm call makes no query: it only re-checks the config's `*_BINARY` paths on disk (stat
        calls), and writes the config back (one UPDATE) only if one was dropped. `refresh=True`
        drops the cached row and reads it again.
        """
        global _CURRENT_MACHINE
        cached = None if refresh else _CURRENT_MACHINE
        override = machine_settings.guid_override
        if _is_fresh(cached, MACHINE_RECHECK_INTERVAL) and (not override or cached.guid == override):
            return cls._sanitize_config(cached) if cached.config else cached
        guid = override or get_host_guid()
        machine = cls.objects.filter(guid=guid).first()
        if machine is None:
            machine, _created = cls.objects.get_or_create(guid=guid, defaults=cls._detected_fields())
        elif not _is_fresh(machine, MACHINE_RECHECK_INTERVAL):
            detected = cls._detected_fields()
            for name, value in detected.items():
                setattr(machine, name, value)
            machine.save(update_fields=[*detected, "modified_at"])
        _CURRENT_MACHINE = cls._sanitize_config(machine)
        return _CURRENT_MACHINE

    @classmethod
    def current_readonly(cls) -> Machine | None:
        """This host's row without creating, refreshing or writing anything: the cache, else a lookup."""
        cached = _CURRENT_MACHINE
        override = machine_settings.guid_override
        if cached is not None and cached.pk is not None and (not override or cached.guid == override):
            return cached
        return cls.objects.filter(guid=override or get_host_guid()).first()

    def save(self, *args, **kwargs) -> None:
        """Save with JSON-quoted config strings unquoted; the process's cached row follows the save."""
        normalized = normalize_config_json_values(self.config)
        if normalized != self.config:
            self.config = normalized
            update_fields = kwargs.get("update_fields")
            if update_fields is not None and "config" not in update_fields:
                kwargs["update_fields"] = [*update_fields, "config"]
        super().save(*args, **kwargs)
        cached = _CURRENT_MACHINE
        if cached is not None and cached is not self and cached.pk == self.pk:
            names = kwargs.get("update_fields")
            fields = (
                [self._meta.get_field(name) for name in names]
                if names is not None
                else self._meta.concrete_fields
            )
            for field in fields:
                setattr(cached, field.attname, getattr(self, field.attname))

    def lock_row(self) -> None:
        """Inside a transaction: serialise writers of rows that belong to this machine.

        FOR NO KEY UPDATE, not FOR UPDATE: inserting a row that references this machine takes a
        FOR KEY SHARE lock on it, and two processes that each inserted one (a Process row, say) and
        then asked FOR UPDATE would deadlock. SQLite already serialises writers; nothing to do there.
        """
        list(
            type(self).objects.select_for_update(no_key=True).filter(pk=self.pk).values_list("pk", flat=True)
        )

    @classmethod
    def _sanitize_config(cls, machine: Machine) -> Machine:
        """Drop the config's unusable `*_BINARY` values (see _sanitize_machine_config, with this app's
        lib dir) and persist the result with one UPDATE when that changed it. Returns `machine`."""
        config = machine.config
        if not config:
            return machine  # {} or None: nothing to check (None stays None, as in the original)
        clean = _sanitized_config(config, lambda: machine_settings.lib_dir)
        if clean != config:
            now = timezone.now()
            cls.objects.filter(pk=machine.pk).update(config=clean, modified_at=now)
            machine.config, machine.modified_at = clean, now
        return machine

    def to_json(self) -> dict[str, Any]:
        """The row as a `Machine` record; secret-looking config values are redacted."""
        config, _found = mask_nested(self.config or {})
        return {
            "type": "Machine",
            "schema_version": JSON_SCHEMA_VERSION,
            "id": str(self.id),
            "guid": self.guid,
            "hostname": self.hostname,
            "hw_in_docker": self.hw_in_docker,
            "hw_in_vm": self.hw_in_vm,
            "hw_manufacturer": self.hw_manufacturer,
            "hw_product": self.hw_product,
            "hw_uuid": self.hw_uuid,
            "os_arch": self.os_arch,
            "os_family": self.os_family,
            "os_platform": self.os_platform,
            "os_kernel": self.os_kernel,
            "os_release": self.os_release,
            "stats": self.stats,
            "config": config,
            "num_uses_succeeded": self.num_uses_succeeded,
            "num_uses_failed": self.num_uses_failed,
            "created_at": self.created_at.isoformat() if self.created_at else None,
            "modified_at": self.modified_at.isoformat() if self.modified_at else None,
        }

    @staticmethod
    def from_json(record: dict[str, Any], overrides: dict[str, Any] | None = None) -> Machine | None:
        """Merge the usable part of `record["config"]` into this host's config; None when nothing is usable.

        The record's config is sanitized as Machine.current() would (lib dir included), so a record
        cannot store a value that the next current() drops. `overrides` is accepted and unused.
        """
        if not isinstance(record, dict):
            return None
        patch = _sanitized_config(record.get("config"), lambda: machine_settings.lib_dir)
        if not patch:
            return None
        machine = Machine.current()
        with transaction.atomic():
            machine.lock_row()
            stored = Machine.objects.filter(pk=machine.pk).values_list("config", flat=True).first()
            merged = {**_sanitized_config(stored, lambda: machine_settings.lib_dir), **patch}
            merged = normalize_config_json_values(merged)
            now = timezone.now()
            Machine.objects.filter(pk=machine.pk).update(config=merged, modified_at=now)
        machine.config, machine.modified_at = merged, now
        return machine


class NetworkInterfaceManager(models.Manager):
    def current(self, refresh: bool = False) -> NetworkInterface:
        return NetworkInterface.current(refresh=refresh)


class NetworkInterface(ModelWithUUIDv7, ModelWithHealthStats):
    """One network identity of a machine: addresses, DNS server and (when looked up) ISP and place."""

    machine = models.ForeignKey(Machine, on_delete=models.CASCADE, default=None, null=False, editable=False)
    mac_address = models.CharField(max_length=17, default=None, null=False, editable=False)
    #: NULL while the public address is unknown (offline, or lookups turned off), never a made-up one.
    ip_public = models.GenericIPAddressField(default=None, null=True, blank=True, editable=False)
    ip_local = models.GenericIPAddressField(default=None, null=False, editable=False)
    dns_server = models.GenericIPAddressField(default=None, null=False, editable=False)
    hostname = models.CharField(max_length=63, default="", null=False)
    iface = models.CharField(max_length=15, default="", null=False)
    isp = models.CharField(max_length=63, default="", null=False, blank=True)
    city = models.CharField(max_length=63, default="", null=False, blank=True)
    region = models.CharField(max_length=63, default="", null=False, blank=True)
    country = models.CharField(max_length=63, default="", null=False, blank=True)

    objects = NetworkInterfaceManager()

    class Meta:
        verbose_name = "Network interface"
        verbose_name_plural = "Network interfaces"
        unique_together = (("machine", "ip_public", "ip_local", "mac_address", "dns_server"),)

    def __str__(self) -> str:
        return f"{self.iface or 'iface'} {self.ip_local} ({self.mac_address})"

    @classmethod
    def current(cls, refresh: bool = False) -> NetworkInterface:
        """This host's interface row: cached per machine for the recheck interval, else re-detected."""
        global _CURRENT_INTERFACE
        machine = Machine.current()
        cached = _CURRENT_INTERFACE
        if (
            not refresh
            and cached is not None
            and cached.machine_id == machine.pk
            and _is_fresh(cached, NETWORK_INTERFACE_RECHECK_INTERVAL)
        ):
            return cached
        net = get_host_network()  # the lookup switch and timeout are read from the settings inside
        fingerprint = {
            "machine": machine,
            "ip_public": net.get("ip_public") or None,
            "ip_local": net.get("ip_local") or FALLBACK_IP_LOCAL,
            "mac_address": (net.get("mac_address") or NULL_MAC)[:17],
            "dns_server": net.get("dns_server") or FALLBACK_DNS_SERVER,
        }
        details = {
            name: str(net.get(name) or "")[: cls._meta.get_field(name).max_length]
            for name in ("hostname", "iface", "isp", "city", "region", "country")
        }
        with transaction.atomic():
            # Lock the machine row so two processes starting together cannot both insert the same
            # fingerprint (ip_public may be NULL, and NULLs never collide in a unique constraint).
            machine.lock_row()
            interface, _created = cls.objects.update_or_create(**fingerprint, defaults=details)
        _CURRENT_INTERFACE = interface
        return interface

    def to_json(self) -> dict[str, Any]:
        return {
            "type": "NetworkInterface",
            "schema_version": JSON_SCHEMA_VERSION,
            "id": str(self.id),
            "machine_id": str(self.machine_id),
            "mac_address": self.mac_address,
            "ip_public": self.ip_public,
            "ip_local": self.ip_local,
            "dns_server": self.dns_server,
            "hostname": self.hostname,
            "iface": self.iface,
            "isp": self.isp,
            "city": self.city,
            "region": self.region,
            "country": self.country,
            "num_uses_succeeded": self.num_uses_succeeded,
            "num_uses_failed": self.num_uses_failed,
            "created_at": self.created_at.isoformat() if self.created_at else None,
            "modified_at": self.modified_at.isoformat() if self.modified_at else None,
        }


def _cached_binary(name: str, machine: Machine) -> Binary | None:
    """The `_CURRENT_BINARIES` entry for `name` while fresh, if it is this machine's and still exists.

    As in the original, a fresh entry is served whatever the other arguments of the call. The
    existence check is one primary-key lookup: a row deleted meanwhile is never handed out.
    """
    cached = _CURRENT_BINARIES.get(name)
    if cached is None or cached.machine_id != machine.pk or not _is_fresh(cached, BINARY_RECHECK_INTERVAL):
        return None
    if not Binary.objects.filter(pk=cached.pk).exists():
        _CURRENT_BINARIES.pop(name, None)
        return None
    return cached


class BinaryManager(BinaryManagerMixin, models.Manager):
    def get_from_db_or_cache(
        self, name: str, abspath: str = "", version: str = "", sha256: str = "", binprovider: str = "env"
    ) -> Binary:
        """The row for this binary on this machine: the fresh cached row of that name, else get-or-create."""
        machine = Machine.current()
        cached = _cached_binary(name, machine)
        if cached is not None:
            return cached
        binary = self.record_binary(
            machine, name, abspath=abspath, version=version, sha256=sha256, binprovider=binprovider
        )
        _CURRENT_BINARIES[name] = binary
        return binary

    def get_valid_binary(self, name: str, machine: Machine | None = None) -> Binary | None:
        """Newest row named `name` (case-insensitive) on the machine with an abspath, or None."""
        machine = machine or Machine.current()
        return (
            self.filter(machine=machine, name__iexact=name)
            .exclude(abspath="")
            .order_by("-modified_at", "-created_at")
            .first()
        )


class Binary(BinaryMixin, ModelWithUUIDv7, ModelWithHealthStats, ModelWithStateMachine):
    """A binary on one machine: queued until a provider hook finds or installs it."""

    StatusChoices = BinaryStatus

    machine = models.ForeignKey(Machine, on_delete=models.CASCADE, editable=False)
    name = models.CharField(max_length=63, db_index=True, blank=True, default="")
    binproviders = models.CharField(
        max_length=127,
        default="env",
        blank=True,
        help_text="Comma-separated list of allowed providers: apt,brew,pip,npm,env",
    )
    overrides = MaskedJSONField(
        default=dict,
        blank=True,
        help_text="Provider-specific overrides: {'apt': {'install_args': ['pkg']}, ...}",
    )
    binprovider = models.CharField(
        max_length=31, default="", blank=True, help_text="Provider that successfully installed this binary"
    )
    abspath = models.CharField(max_length=255, default="", blank=True)
    version = models.CharField(max_length=32, default="", blank=True)
    sha256 = models.CharField(max_length=64, default="", blank=True)

    status = ModelWithStateMachine.StatusField(
        choices=BinaryStatus.choices, default=BinaryStatus.QUEUED, max_length=16
    )
    retry_at = ModelWithStateMachine.RetryAtField(
        default=timezone.now, help_text="When to retry this binary installation"
    )

    state_machine_name = "machine.statemachines.BinaryMachine"
    #: A worker installs a binary while it is queued: there is no separate "installing" state.
    active_state = BinaryStatus.QUEUED
    warn_on_save_outside_runner = False

    objects = BinaryManager()

    class Meta:
        verbose_name = "Binary"
        verbose_name_plural = "Binaries"
        unique_together = (("machine", "name", "abspath", "version", "sha256"),)

    def __str__(self) -> str:
        return f"{self.name}@{self.binprovider}+{self.abspath}@{self.version}"

    @classmethod
    def claim_filter(cls) -> models.Q:
        """A runner installs the binaries of its own machine only."""
        return rows_of_this_machine()

    @property
    def is_valid(self) -> bool:
        """A resolved path and the installed status."""
        return bool(self.abspath) and self.status == BinaryStatus.INSTALLED

    @property
    def output_dir(self) -> Path:
        """Where this binary's hook runs keep their logs."""
        return (
            machine_settings.data_dir
            / "machines"
            / str(self.machine_id)
            / "binaries"
            / self.name
            / str(self.id)
        )

    @staticmethod
    def from_json(record: dict[str, Any], overrides: dict[str, Any] | None = None) -> Binary | None:
        """Create or update this machine's one row of `record["name"]`; None when the record is unusable.

        - abspath, version and binproviders: the row becomes installed with those facts;
        - binproviders given (any value), or overrides without an abspath: a request, the row is
          queued (an installed row is queued again; a row a worker holds keeps its claim);
        - abspath and version: the row becomes installed (binproviders untouched);
        - anything else: None. An installed row is linked into `<lib_dir>/bin` after commit.

        The name is canonicalised (a path gives its file name); the newest row of that name is
        updated in place. `overrides` (the argument) is accepted and unused.
        """
        return Binary.apply_record(record)


class ProcessManager(models.Manager.from_queryset(ProcessQuerySet)):
    def current(self) -> Process:
        return Process.current()

    def get_by_pid(self, pid: int, machine: Machine | None = None) -> Process | None:
        """The RUNNING row of this pid on the machine whose start time matches the OS process's; else None.

        One indexed query (machine, pid, status). Rows with the exact OS start time must match it to
        the clock tick; older rows (no os_start_time) must be inside PID_REUSE_WINDOW and match
        `started_at` within START_TIME_TOLERANCE. A zombie or a recycled pid matches nothing.
        """
        if isinstance(pid, bool) or not isinstance(pid, int) or pid <= 0:
            return None
        machine = machine or Machine.current()
        os_start = process_utils.get_start_time(pid)
        if os_start is None:
            return None
        window_start = timezone.now() - PID_REUSE_WINDOW
        # Deliberately the simplest filter on the (machine, pid, status) index: building the SQL is
        # most of the cost of this lookup, and a pid has at most a handful of RUNNING rows.
        candidates = list(self.filter(machine_id=machine.pk, pid=pid, status=ProcessStatus.RUNNING))
        candidates.sort(key=lambda row: row.started_at or window_start, reverse=True)
        for row in candidates:
            if row.os_start_time is not None:
                expected, tolerance = row.os_start_time, process_utils.EXACT_START_TOLERANCE
            elif row.started_at is not None and row.started_at >= window_start:
                expected, tolerance = row.started_at.timestamp(), START_TIME_TOLERANCE
            else:
                continue  # no exact start time and older than the reuse window: unprovable
            if abs(expected - os_start) > tolerance:
                continue
            if process_utils.is_alive(ProcessIdentity.of(pid, expected, None, row.launch_marker, tolerance)):
                return row
        return None

    def create_for_archiveresult(self, archiveresult, **kwargs) -> Process:
        """A queued row for a downstream ArchiveResult's hook run; every keyword argument wins.

        Defaults: the interface (`iface` or this host's), its machine, pwd
        `<snapshot.output_dir>/<plugin>`, no cmd, timeout 120, empty env.
        """
        iface = kwargs.get("iface") or NetworkInterface.current()
        pwd = kwargs.get("pwd") or str(Path(archiveresult.snapshot.output_dir) / archiveresult.plugin)
        fields = {
            "machine": iface.machine,
            "pwd": pwd,
            "cmd": kwargs.get("cmd") or [],
            "status": ProcessStatus.QUEUED,
            "timeout": kwargs.get("timeout", 120),
            "env": kwargs.get("env", {}),
            "iface": iface,
        }
        fields.update(kwargs)
        return self.create(**fields)


class Process(ProcessMixin, ModelWithUUIDv7, ModelWithStateMachine):
    """One OS process: launched by us (queued -> running -> exited) or registered by itself."""

    StatusChoices = ProcessStatus
    TypeChoices = ProcessType

    machine = models.ForeignKey(
        Machine,
        on_delete=models.CASCADE,
        null=False,
        related_name="process_set",
        help_text="Machine where this process executed",
    )
    parent = models.ForeignKey(
        "self",
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="children",
        help_text="Parent process that spawned this process",
    )
    process_type = models.CharField(
        max_length=16,
        choices=ProcessType.choices,
        default=ProcessType.CLI,
        db_index=True,
        help_text="Type of process (cli, worker, orchestrator, binary, supervisord)",
    )
    worker_type = models.CharField(
        max_length=32,
        default="",
        null=False,
        blank=True,
        db_index=True,
        help_text="Worker role name for worker/orchestrator subprocesses",
    )

    pwd = models.CharField(
        max_length=512,
        default="",
        null=False,
        blank=True,
        help_text="Working directory for process execution",
    )
    cmd = MaskedCmdField(
        default=list,
        null=False,
        blank=True,
        help_text="Command as array of arguments (secrets are stored masked)",
    )
    env = MaskedEnvField(
        default=dict,
        null=False,
        blank=True,
        help_text="Environment variables for process (secrets are stored masked)",
    )
    #: A queued row's real argv/env (while they hold secrets), then a running row's values to mask,
    #: encrypted (machine.sealing); NULL once the row has exited. Never shown, searched or exported.
    sealed = SealedField(default=None, null=True, blank=True, editable=False)
    timeout = models.IntegerField(default=120, null=False, help_text="Timeout in seconds")

    pid = models.IntegerField(default=None, null=True, blank=True, db_index=True, help_text="OS process ID")
    exit_code = models.IntegerField(
        default=None, null=True, blank=True, help_text="Process exit code (0 = success)"
    )
    stdout = models.TextField(default="", null=False, blank=True, help_text="Standard output from process")
    stderr = models.TextField(default="", null=False, blank=True, help_text="Standard error from process")
    started_at = models.DateTimeField(
        default=None, null=True, blank=True, help_text="When process was launched"
    )
    ended_at = models.DateTimeField(
        default=None, null=True, blank=True, help_text="When process completed/terminated"
    )
    #: The OS's own start time of the process (psutil create_time), exact to the clock tick.
    os_start_time = models.FloatField(null=True, blank=True)
    #: Per-launch marker put in the child's environment, to find descendants that escaped the tree.
    launch_marker = models.CharField(max_length=64, default="", blank=True)
    #: The boot (/proc/sys/kernel/random/boot_id) and PID namespace the process was launched in: its
    #: pid is only judged (alive, gone, reused) by a process of the same boot and namespace.
    boot_id = models.CharField(max_length=36, null=True, blank=True)
    pid_namespace = models.CharField(max_length=64, null=True, blank=True)

    binary = models.ForeignKey(
        Binary,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="process_set",
        help_text="Binary used by this process",
    )
    iface = models.ForeignKey(
        NetworkInterface,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="process_set",
        help_text="Network interface used by this process",
    )
    url = models.URLField(
        max_length=2048,
        default=None,
        null=True,
        blank=True,
        help_text="Connection URL (CDP endpoint, sonic server, etc.)",
    )

    status = ModelWithStateMachine.StatusField(
        choices=ProcessStatus.choices, default=ProcessStatus.QUEUED, max_length=16
    )
    retry_at = ModelWithStateMachine.RetryAtField(
        default=timezone.now, help_text="When to retry this process"
    )

    state_machine_name = "machine.statemachines.ProcessMachine"
    active_state = ProcessStatus.RUNNING

    objects = ProcessManager()

    class Meta:
        verbose_name = "Process"
        verbose_name_plural = "Processes"
        indexes = [
            models.Index(fields=["machine", "status", "retry_at"]),
            models.Index(fields=["binary", "exit_code"]),
            models.Index(fields=["machine", "pid", "status"]),
        ]

    start_time_tolerance = START_TIME_TOLERANCE
    pid_reuse_window = PID_REUSE_WINDOW
    timeout_grace = PROCESS_TIMEOUT_GRACE

    def __str__(self) -> str:
        # The argv may carry `--token=...`: show it masked (the admin, logs and history use str()).
        secrets = self.__dict__.get("_launch_mask_values") or secret_values(self.cmd or [], self.env or {})
        return f"Process[{self.id}] {shlex.join(mask_cmd(self.cmd or [], secrets))[:60]} ({self.status})"

    @classmethod
    def claim_filter(cls) -> models.Q:
        """A runner launches its own machine's processes, and polls those it launched (launcher_affinity)."""
        return rows_of_this_machine() & launcher_affinity()

    @classmethod
    def runner_recover(cls, pk, guard: dict) -> bool:
        """A worker died while ticking this row: settle a launch it left in doubt (machine.launch_doubt)."""
        return launch_doubt.recover(cls, pk, guard)

    @classmethod
    def current(cls) -> Process:
        """The RUNNING row of this OS process: created once, then served from `_CURRENT_PROCESS`.

        Warm calls make no query. Every PROCESS_RECHECK_INTERVAL the row is confirmed with one
        UPDATE (which also re-opens it if something closed it while we are alive); only a deleted
        row, a fork (new pid) or another machine identity make a new lookup. No files are written.
        """
        global _CURRENT_PROCESS
        pid = os.getpid()
        machine = Machine.current()
        cached = _CURRENT_PROCESS
        if cached is not None and cached.pid == pid and cached.machine_id == machine.pk:
            if time.monotonic() - cached.__dict__.get("_checked_at", 0.0) < PROCESS_RECHECK_INTERVAL:
                return cached
            if cls._touch_current(cached):
                return cached
        with transaction.atomic():
            process = cls.objects.get_by_pid(pid, machine) or cls._register_current(pid, machine)
        if process.os_start_time is None:
            process.os_start_time = process_utils.get_start_time(pid)
            cls.objects.filter(pk=process.pk).update(os_start_time=process.os_start_time)
        process.__dict__["_checked_at"] = time.monotonic()
        _CURRENT_PROCESS = process
        from machine import presence  # (it imports this module)

        presence.close_current_at_exit()
        return process

    @classmethod
    def _touch_current(cls, cached: Process) -> bool:
        now = timezone.now()
        updated = cls.objects.filter(pk=cached.pk).update(
            status=ProcessStatus.RUNNING, exit_code=None, ended_at=None, modified_at=now
        )
        if updated:
            cached.status, cached.exit_code = ProcessStatus.RUNNING, None
            cached.ended_at, cached.modified_at = None, now
            cached.__dict__["_checked_at"] = time.monotonic()
        return bool(updated)

    @classmethod
    def _register_current(cls, pid: int, machine: Machine) -> Process:
        start = process_utils.get_start_time(pid)
        try:
            proc = psutil.Process(pid)
            cmd, pwd = proc.cmdline(), proc.cwd()
        except psutil.Error:
            cmd, pwd = list(sys.argv), ""
        cmd, pwd = readable_argv(cmd), readable_argv([pwd])[0]  # (e.g. a non-UTF-8 file name)
        return cls.objects.create(
            machine=machine,
            parent=cls._find_parent_process(machine),
            process_type=cls._detect_process_type(),
            cmd=cmd,
            pwd=pwd,
            pid=pid,
            os_start_time=start,
            started_at=datetime.fromtimestamp(start, tz=UTC) if start else timezone.now(),
            status=ProcessStatus.RUNNING,
            retry_at=None,  # registered, not queued: no worker should tick it
            iface=NetworkInterface.current(),
        )

    @classmethod
    def _find_parent_process(cls, machine: Machine | None = None) -> Process | None:
        """Our parent's RUNNING row, validated like get_by_pid (None when the parent is not tracked)."""
        ppid = os.getppid()
        if ppid <= 1:
            return None
        return cls.objects.get_by_pid(ppid, machine or Machine.current())

    @classmethod
    def current_readonly(cls) -> Process | None:
        """This OS process's cached row, or None; never queries, creates or writes."""
        cached = _CURRENT_PROCESS
        return cached if cached is not None and cached.pid == os.getpid() else None

    @classmethod
    def _detect_process_type(cls) -> str:
        """Classify sys.argv by MACHINE_PROCESS_TYPE_PATTERNS (first match wins); default binary."""
        argv = [str(arg) for arg in sys.argv]
        joined = " ".join(argv).lower()
        for pattern, process_type in machine_settings.PROCESS_TYPE_PATTERNS:
            if pattern(argv) if callable(pattern) else str(pattern).lower() in joined:
                return process_type
        return ProcessType.BINARY

    def hydrate_binary_from_context(self, *, plugin_name: str = "", hook_path: str = "") -> Binary | None:
        """Set `self.binary` (in memory only) to the known Binary this process runs; None if unknown.

        References are tried in order: the values of the hook's `*_BINARY` env keys (see
        _get_process_binary_env_keys), then `cmd[0]`; each is matched by abspath, then by name.
        Nothing is written: the caller saves the row.
        """
        machine = self.machine if self.machine_id else Machine.current()
        env = self.env or {}
        references: list[str] = []
        for key in _get_process_binary_env_keys(plugin_name, hook_path, env):
            references.append(str(env.get(key) or "").strip())
        if self.cmd:
            references.append(str(self.cmd[0]).strip())
        for reference in dict.fromkeys(ref for ref in references if ref):
            binary = _find_existing_binary_for_reference(machine, reference)
            if binary is not None:
                self.binary = binary
                return binary
        return None

    @staticmethod
    def from_json(record: dict[str, Any], overrides: dict[str, Any] | None = None) -> Process | None:
        """The existing row named by `record["id"]`, else None; never creates or changes a row.

        (A record that should become a queued row goes to `Process.queue_from_json()`.)
        """
        if not isinstance(record, dict) or not record.get("id"):
            return None
        try:
            return Process.objects.filter(pk=record["id"]).first()
        except (ValueError, TypeError, ValidationError):
            return None  # not a valid id

    def safe_update(
        self,
        update_fields: dict[str, Any],
        *,
        refresh: bool = True,
        extra_filter: dict[str, Any] | None = None,
    ) -> bool:
        """One UPDATE of this row, only if nobody wrote it since this instance read it (modified_at
        unchanged) and `extra_filter` still matches; True if written. See ModelWithStateMachine."""
        guard = {"modified_at": self.modified_at, **(extra_filter or {})}
        return super().safe_update(update_fields, refresh=refresh, extra_filter=guard)


# The contract imports the state machines from machine.models.
from machine.statemachines import BinaryMachine, ProcessMachine  # noqa: E402

__all__ = [
    "Machine",
    "NetworkInterface",
    "Binary",
    "BinaryManager",
    "Process",
    "ProcessManager",
    "BinaryMachine",
    "ProcessMachine",
]
