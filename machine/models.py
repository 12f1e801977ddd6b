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
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psutil  # (part of the contract: tests patch machine.models.psutil)
from django.db import models, transaction
from django.utils import timezone

from base_models.models import ModelWithHealthStats, ModelWithUUIDv7
from machine import process_utils
from machine.binaries import BinaryManagerMixin, BinaryMixin
from machine.choices import BinaryStatus, ProcessStatus, ProcessType
from machine.conf import machine_settings
from machine.detect import get_host_guid, get_host_network, get_host_stats, get_os_info, get_vm_info
from machine.processes import ProcessMixin, ProcessQuerySet, RedactedEnvField
from machine.redaction import redact_cmd
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

#: Non-`*_BINARY` keys a machine's config may keep: caches derived from installs, not user input.
MACHINE_CONFIG_ALLOWED_KEYS = frozenset({"ABX_INSTALL_CACHE", "LIB_DIR", "LIB_BIN_DIR"})
JSON_SCHEMA_VERSION = "0.9.0"


def _is_fresh(row: models.Model | None, interval_seconds: float) -> bool:
    """True when `row` is a saved row whose modified_at is younger than the interval."""
    if row is None or row.pk is None or row.modified_at is None:
        return False
    return timezone.now() - row.modified_at < timedelta(seconds=interval_seconds)


def _looks_like_path(value: str) -> bool:
    return value.startswith(("/", "~", "./", "../")) or os.sep in value


def _sanitize_machine_config(config: dict[str, Any] | None) -> dict[str, Any]:
    """Keep only `*_BINARY` and allow-listed keys, without blank values or paths missing on disk."""
    if not isinstance(config, dict):
        return {}
    clean: dict[str, Any] = {}
    for key, value in config.items():
        if not isinstance(key, str):
            continue
        if not (key.endswith("_BINARY") or key in MACHINE_CONFIG_ALLOWED_KEYS):
            continue
        if value is None or (isinstance(value, str) and not value.strip()):
            continue
        if isinstance(value, (dict, list)) and not value:
            continue
        if isinstance(value, str):
            value = value.strip()
            if _looks_like_path(value) and not Path(value).expanduser().exists():
                continue
        clean[key] = value
    return clean


def _plugin_declared_binary_keys(hook_path: str) -> list[str]:
    """`*_BINARY` keys declared in the plugin's config.json (beside the hook), in file order."""
    if not hook_path:
        return []
    config_file = Path(hook_path).parent / "config.json"
    try:
        data = json.loads(config_file.read_text())
    except (OSError, ValueError):
        return []
    properties = data.get("properties", data) if isinstance(data, dict) else {}
    return [key for key in properties if isinstance(key, str) and key.endswith("_BINARY")]


def _get_process_binary_env_keys(plugin_name: str, hook_path: str, env: dict[str, Any] | None) -> list[str]:
    """Env keys that name the binary a hook uses, most specific first, only those set in `env`."""
    env = env or {}
    candidates: list[str] = []
    if plugin_name:
        candidates.append(f"{plugin_name.upper().replace('-', '_')}_BINARY")
    candidates.extend(_plugin_declared_binary_keys(hook_path))
    if str(hook_path).endswith(".js"):
        candidates.append("NODE_BINARY")
    keys: list[str] = []
    for key in candidates:
        value = env.get(key)
        if key not in keys and value not in (None, "") and str(value).strip():
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
    own_children = [child.pid for child in psutil.Process().children()]
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

    guid = models.CharField(max_length=64, unique=True, editable=False)
    hostname = models.CharField(max_length=63, default="")
    hw_in_docker = models.BooleanField(default=False)
    hw_in_vm = models.BooleanField(default=False)
    hw_manufacturer = models.CharField(max_length=63, default="", blank=True)
    hw_product = models.CharField(max_length=63, default="", blank=True)
    hw_uuid = models.CharField(max_length=255, default="", blank=True)
    os_arch = models.CharField(max_length=15, default="")
    os_family = models.CharField(max_length=15, default="")
    os_platform = models.CharField(max_length=63, default="")
    os_release = models.CharField(max_length=63, default="")
    os_kernel = models.CharField(max_length=255, default="")
    stats = models.JSONField(default=dict, blank=True)
    config = models.JSONField(default=dict, blank=True, help_text="Per-machine overrides, e.g. WGET_BINARY.")

    objects = MachineManager()

    class Meta:
        verbose_name = "Machine"
        verbose_name_plural = "Machines"

    def __str__(self) -> str:
        return f"{self.hostname or 'machine'} ({self.guid[:8]})"

    @staticmethod
    def _detected_fields() -> dict[str, Any]:
        facts = {**get_os_info(), **get_vm_info()}
        fields = {f.name: f for f in Machine._meta.concrete_fields}
        detected: dict[str, Any] = {}
        for name, value in facts.items():
            field = fields.get(name)
            if field is None:
                continue
            if isinstance(field, models.CharField) and value is not None:
                value = str(value)[: field.max_length]
            detected[name] = value
        detected["stats"] = get_host_stats()
        return detected

    @classmethod
    def current(cls) -> Machine:
        """This host's row: cached while younger than MACHINE_RECHECK_INTERVAL, else re-detected."""
        global _CURRENT_MACHINE
        cached = _CURRENT_MACHINE
        override = machine_settings.guid_override
        if _is_fresh(cached, MACHINE_RECHECK_INTERVAL) and (not override or cached.guid == override):
            return cached
        guid = override or get_host_guid()
        machine = cls.objects.filter(guid=guid).first()
        if machine is None:
            machine, _created = cls.objects.get_or_create(guid=guid, defaults=cls._detected_fields())
        elif not _is_fresh(machine, MACHINE_RECHECK_INTERVAL):
            for name, value in cls._detected_fields().items():
                setattr(machine, name, value)
            machine.save()
        _CURRENT_MACHINE = cls._sanitize_config(machine)
        return _CURRENT_MACHINE

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
        """Persist the sanitized config when sanitizing changed it."""
        clean = _sanitize_machine_config(machine.config)
        if clean != machine.config:
            machine.config = clean
            cls.objects.filter(pk=machine.pk).update(config=clean)
        return machine

    def to_json(self) -> dict[str, Any]:
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
            "os_release": self.os_release,
            "os_kernel": self.os_kernel,
            "stats": self.stats,
            "config": self.config,
            "num_uses_succeeded": self.num_uses_succeeded,
            "num_uses_failed": self.num_uses_failed,
            "created_at": self.created_at.isoformat() if self.created_at else None,
            "modified_at": self.modified_at.isoformat() if self.modified_at else None,
        }

    @staticmethod
    def from_json(record: dict[str, Any], overrides: dict[str, Any] | None = None) -> Machine | None:
        """Merge `record["config"]` (sanitized) into this host's config; None when there is none."""
        if not isinstance(record, dict):
            return None
        config = record.get("config")
        if not isinstance(config, dict):
            return None
        machine = Machine.current()
        with transaction.atomic():
            machine.lock_row()
            current_config = Machine.objects.filter(pk=machine.pk).values_list("config", flat=True).first()
            merged = _sanitize_machine_config({**(current_config or {}), **config})
            Machine.objects.filter(pk=machine.pk).update(config=merged, modified_at=timezone.now())
        machine.config = merged
        return machine


class NetworkInterfaceManager(models.Manager):
    def current(self, refresh: bool = False) -> NetworkInterface:
        return NetworkInterface.current(refresh=refresh)


class NetworkInterface(ModelWithUUIDv7, ModelWithHealthStats):
    """One network identity of a machine: addresses, DNS server and (when looked up) ISP and place."""

    machine = models.ForeignKey(Machine, on_delete=models.CASCADE, editable=False)
    mac_address = models.CharField(max_length=17, editable=False)
    ip_public = models.GenericIPAddressField(editable=False, null=True, blank=True)
    ip_local = models.GenericIPAddressField(editable=False)
    dns_server = models.CharField(max_length=63, default="", blank=True, editable=False)
    hostname = models.CharField(max_length=63, default="")
    iface = models.CharField(max_length=15, default="")
    isp = models.CharField(max_length=63, default="", blank=True)
    city = models.CharField(max_length=63, default="", blank=True)
    region = models.CharField(max_length=63, default="", blank=True)
    country = models.CharField(max_length=63, default="", blank=True)

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
        net = get_host_network(
            public_lookups=machine_settings.public_ip_lookup, timeout=float(machine_settings.DETECT_TIMEOUT)
        )
        fingerprint = {
            "machine": machine,
            "ip_public": net.get("ip_public") or None,
            "ip_local": net.get("ip_local") or "127.0.0.1",
            "mac_address": (net.get("mac_address") or "00:00:00:00:00:00")[:17],
            "dns_server": (net.get("dns_server") or "")[:63],
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


def _cached_binary(name: str, machine: Machine, facts: dict[str, str]) -> Binary | None:
    """The `_CURRENT_BINARIES` entry for `name` if still fresh, of this machine, matching `facts` and not deleted."""
    cached = _CURRENT_BINARIES.get(name)
    if cached is None or cached.machine_id != machine.pk or not _is_fresh(cached, BINARY_RECHECK_INTERVAL):
        return None
    if any(value and getattr(cached, field) != value for field, value in facts.items()):
        return None
    if not Binary.objects.filter(pk=cached.pk).exists():
        _CURRENT_BINARIES.pop(name, None)
        return None
    return cached


class BinaryManager(BinaryManagerMixin, models.Manager):
    def get_from_db_or_cache(
        self, name: str, abspath: str = "", version: str = "", sha256: str = "", binprovider: str = "env"
    ) -> Binary:
        """The row for this binary on this machine: from `_CURRENT_BINARIES` while fresh, else get-or-create."""
        machine = Machine.current()
        facts = {"abspath": abspath, "version": version, "sha256": sha256}
        cached = _cached_binary(name, machine, facts)
        if cached is not None:
            return cached
        binary = self.record_binary(machine, name, binprovider=binprovider, **facts)
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
        help_text="Comma list of allowed providers; empty or * = any.",
    )
    overrides = models.JSONField(
        default=dict, blank=True, help_text="Per-provider overrides, stored unchanged."
    )
    binprovider = models.CharField(
        max_length=31, default="", blank=True, help_text="The provider that succeeded."
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
            if process_utils.is_alive(pid, expected, None, tolerance, marker=row.launch_marker or None):
                return row
        return None


class Process(ProcessMixin, ModelWithUUIDv7, ModelWithStateMachine):
    """One OS process: launched by us (queued -> running -> exited) or registered by itself."""

    StatusChoices = ProcessStatus
    TypeChoices = ProcessType

    machine = models.ForeignKey(Machine, on_delete=models.CASCADE, related_name="process_set")
    parent = models.ForeignKey(
        "self", on_delete=models.SET_NULL, null=True, blank=True, related_name="children"
    )
    process_type = models.CharField(
        max_length=16, choices=ProcessType.choices, default=ProcessType.BINARY, db_index=True
    )
    worker_type = models.CharField(max_length=32, default="", blank=True, db_index=True)

    pwd = models.CharField(max_length=512, default="", blank=True)
    cmd = models.JSONField(default=list, blank=True)
    env = RedactedEnvField(default=dict, blank=True, help_text="Environment, with secret values redacted.")
    timeout = models.IntegerField(default=120, help_text="Seconds.")

    pid = models.IntegerField(null=True, blank=True, db_index=True)
    exit_code = models.IntegerField(null=True, blank=True)
    stdout = models.TextField(default="", blank=True)
    stderr = models.TextField(default="", blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    ended_at = models.DateTimeField(null=True, blank=True)
    #: The OS's own start time of the process (psutil create_time), exact to the clock tick.
    os_start_time = models.FloatField(null=True, blank=True)
    #: Per-launch marker put in the child's environment, to find descendants that escaped the tree.
    launch_marker = models.CharField(max_length=64, default="", blank=True)
    #: The boot (/proc/sys/kernel/random/boot_id) and PID namespace the process was launched in: its
    #: pid is only judged (alive, gone, reused) by a process of the same boot and namespace.
    boot_id = models.CharField(max_length=36, null=True, blank=True)
    pid_namespace = models.CharField(max_length=64, null=True, blank=True)

    binary = models.ForeignKey(
        Binary, on_delete=models.SET_NULL, null=True, blank=True, related_name="process_set"
    )
    iface = models.ForeignKey(NetworkInterface, on_delete=models.SET_NULL, null=True, blank=True)
    url = models.URLField(max_length=2048, default="", blank=True)

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
        # The argv may carry `--token=...`: show it redacted (the admin, logs and history use str()).
        return f"Process[{self.id}] {shlex.join(redact_cmd(self.cmd or []))[:60]} ({self.status})"

    @classmethod
    def claim_filter(cls) -> models.Q:
        """A runner launches its own machine's processes, and polls those it launched (launcher_affinity)."""
        return rows_of_this_machine() & launcher_affinity()

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
        return process

    @classmethod
    def _touch_current(cls, cached: Process) -> bool:
        now = timezone.now()
        updated = cls.objects.filter(pk=cached.pk).update(
            status=ProcessStatus.RUNNING, ended_at=None, modified_at=now
        )
        if updated:
            cached.status, cached.ended_at, cached.modified_at = ProcessStatus.RUNNING, None, now
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
    def _detect_process_type(cls) -> str:
        """Classify sys.argv by MACHINE_PROCESS_TYPE_PATTERNS (first substring match); default binary."""
        argv = " ".join(sys.argv).lower()
        for pattern, process_type in machine_settings.PROCESS_TYPE_PATTERNS:
            if pattern.lower() in argv:
                return process_type
        return ProcessType.BINARY

    def hydrate_binary_from_context(self, *, plugin_name: str = "", hook_path: str = "") -> Binary | None:
        """Link the Binary named by the hook's `*_BINARY` env value (by abspath or name); None if unknown."""
        machine = self.machine if self.machine_id else Machine.current()
        for key in _get_process_binary_env_keys(plugin_name, hook_path, self.env):
            binary = _find_existing_binary_for_reference(machine, str(self.env[key]))
            if binary is not None:
                self.binary = binary
                if self.pk and not self._state.adding:
                    type(self).objects.filter(pk=self.pk).update(binary=binary, modified_at=timezone.now())
                return binary
        return None


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
