"""Process behaviour: the QuerySet and a plain mixin the Process model inherits.

The model keeps the fields, `current()` and `get_by_pid()`; the lifecycle (launch, poll, wait,
signal, close) is `machine.supervisor`'s, and the methods here delegate to it in one line. The
related Machine model is reached through `self._meta`; nothing here imports `machine.models`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import psutil
from django.core.exceptions import ValidationError
from django.db import models, transaction
from django.db.models import Q
from django.utils import timezone

from machine import process_utils, sealing, supervisor
from machine.choices import ProcessStatus, ProcessType
from machine.conf import machine_settings
from machine.detect import get_boot_id, get_pid_namespace
from machine.process_files import ProcessFilesMixin
from machine.process_utils import ProcessIdentity
from machine.redaction import env_value_text, mask_cmd, mask_env, mask_text

# Names other modules (and downstream code) import from here; they live with the supervisor now.
from machine.supervisor import (  # noqa: F401  (re-exported)
    CLEANUP_BATCH_SIZE,
    FINISH_FIELDS,
    LAUNCH_POLL_DELAY,
    LOG_CAP_INTERVAL,
    MAX_TIMEOUT,
    UNKNOWN_EXIT_CODE,
    UNKNOWN_EXIT_NOTE,
    ProcessInputError,
    append_line,
    exit_code_from_status,
    recorded_exit,
    recorded_exit_sql,
    validate_launch_input,
)

#: Browser pid files older than this are leftovers of a crashed run.
CHROME_PID_FILE_MIN_AGE = 5 * 60

JSON_FIELDS = (
    "process_type",
    "worker_type",
    "pwd",
    "cmd",
    "env",
    "timeout",
    "pid",
    "exit_code",
    "stdout",
    "stderr",
    "url",
    "status",
)


class ForeignMachineError(ValueError):
    """Refused: the row (or machine) is another host's; only that host can judge or signal its processes."""


def refuse_foreign_machine(machine, current, what: str) -> None:
    """ForeignMachineError unless `machine` is `current` (this host's row); `what` names the refused act."""
    if machine is not None and current is not None and machine.pk != current.pk:
        raise ForeignMachineError(
            f"refusing to {what} of machine {machine.hostname or '?'} ({(machine.guid or '')[:8]}): this "
            f"is {current.hostname or '?'} ({(current.guid or '')[:8]}), and a pid means nothing on "
            "another host; do it on that host"
        )


#: Process types whose running root keeps its worker and hook rows open (cleanup_orphaned_workers).
COMMAND_ROOT_TYPES = (
    ProcessType.ORCHESTRATOR,
    ProcessType.SERVER,
    ProcessType.UPDATE,
    ProcessType.ADD,
    ProcessType.SEARCH,
    ProcessType.CLI,
)


class ProcessQuerySet(models.QuerySet):
    """Filters named as adjectives: `Process.objects.running().on_machine(m).of_type("worker")`."""

    def queued(self) -> ProcessQuerySet:
        return self.filter(status=ProcessStatus.QUEUED)

    def running(self) -> ProcessQuerySet:
        return self.filter(status=ProcessStatus.RUNNING)

    def exited(self) -> ProcessQuerySet:
        return self.filter(status=ProcessStatus.EXITED)

    def on_machine(self, machine) -> ProcessQuerySet:
        return self.filter(machine=machine)

    def of_type(self, process_type: str | None) -> ProcessQuerySet:
        return self if not process_type else self.filter(process_type=process_type)

    def judgeable_here(self) -> ProcessQuerySet:
        """Rows whose pid means something to this process: launched in this boot and PID namespace,
        or from before those were recorded (both NULL). A clone of this host (same host id) in
        another container must never judge, and close, the live processes of another namespace."""
        legacy = Q(boot_id__isnull=True, pid_namespace__isnull=True)
        boot_id, namespace = get_boot_id(), get_pid_namespace()
        if not boot_id or not namespace:
            return self.filter(legacy)
        return self.filter(legacy | Q(boot_id=boot_id, pid_namespace=namespace))

    def launched(self) -> ProcessQuerySet:
        """Rows we spawned (they carry a launch marker) and hooks, as opposed to self-registered ones."""
        return self.filter(~Q(launch_marker="") | Q(process_type=ProcessType.HOOK))

    def close(self, *, exit_code: int | None = None) -> int:
        """Mark these RUNNING rows EXITED now in batched UPDATEs (no per-row save, no stdout/stderr loaded)."""
        return self.close_ids(list(self.values_list("pk", flat=True)), exit_code=exit_code)

    def close_ids(self, ids: list, *, exit_code: int | None = None) -> int:
        """Mark the RUNNING rows among `ids` EXITED: the supervisor's batched close (same exit-code rule)."""
        return supervisor.close_batch(self.model, ids, exit_code=exit_code)


class ProcessMixin(ProcessFilesMixin):
    """Behaviour of the Process model (hierarchy, OS view, files, lifecycle, queries, JSON)."""

    #: Set on the model from machine.models' contract constants.
    start_time_tolerance: float = 5.0
    pid_reuse_window: timedelta = timedelta(hours=24)
    timeout_grace: timedelta = timedelta(seconds=30)

    # -- related models, reached without importing machine.models -----------------------------

    @classmethod
    def _machine_model(cls):
        return cls._meta.get_field("machine").related_model

    @classmethod
    def _default_machine(cls, machine=None):
        return machine if machine is not None else cls._machine_model().current()

    # -- hierarchy -------------------------------------------------------------------------------

    @property
    def ancestors(self) -> list:
        """Parent, grandparent, ... up to the root (cycle-safe)."""
        found, seen, node = [], {self.pk}, self.parent
        while node is not None and node.pk not in seen:
            found.append(node)
            seen.add(node.pk)
            node = node.parent
        return found

    @property
    def root(self):
        """The top of this hierarchy (self when there is no parent)."""
        ancestors = self.ancestors
        return ancestors[-1] if ancestors else self

    @property
    def depth(self) -> int:
        return len(self.ancestors)

    def get_descendants(self, include_self: bool = False) -> models.QuerySet:
        """All DB children, grandchildren, ... (breadth first, one query per level), as a QuerySet."""
        found = [self.pk] if include_self else []
        seen, frontier = {self.pk}, [self.pk]
        manager = type(self)._default_manager
        while frontier:
            level = [
                pk
                for pk in manager.filter(parent_id__in=frontier).values_list("pk", flat=True)
                if pk not in seen
            ]
            seen.update(level)
            found.extend(level)
            frontier = level
        return manager.filter(pk__in=found).order_by("created_at", "pk")

    # -- identity and the OS view ----------------------------------------------------------------

    @property
    def identity(self) -> ProcessIdentity:
        """pid, start time, cmd and launch marker as one value (start time exact when read from the OS)."""
        return supervisor.identity(self)

    def _is_local(self) -> bool:
        machine = self._machine_model()
        cached = machine.current()
        return self.machine_id == cached.pk

    def _require_local(self, what: str) -> None:
        """ForeignMachineError when this row is another machine's (see refuse_foreign_machine)."""
        if self.machine_id is not None and not self._is_local():
            refuse_foreign_machine(self.machine, self._machine_model().current(), f"{what} process {self.pk}")

    @property
    def proc(self) -> psutil.Process | None:
        """The live psutil.Process only if pid, start time, command (and launch marker) prove it is ours."""
        identity = self.identity
        if not identity.known or not self._is_local():
            return None
        return process_utils.proven_process(identity)

    @property
    def is_running(self) -> bool:
        """True only while the proven OS process runs (a zombie or a recycled pid is not running)."""
        return self.proc is not None

    def is_alive(self) -> bool:
        return self.is_running

    def get_memory_info(self) -> dict[str, int] | None:
        """`{"rss": ..., "vms": ...}` (bytes) of the proven process, or None."""
        proc = self.proc
        try:
            info = proc.memory_info() if proc else None
        except psutil.Error:
            return None
        return {"rss": info.rss, "vms": info.vms} if info is not None else None

    def get_cpu_percent(self) -> float | None:
        """CPU use of the proven process over 0.1 s (blocks that long), or None."""
        proc = self.proc
        try:
            return proc.cpu_percent(interval=0.1) if proc else None
        except psutil.Error:
            return None

    def get_children_pids(self) -> list[int]:
        """OS pids of the proven process's descendants (including escaped, marker-carrying ones)."""
        if self.proc is None and not self.launch_marker:
            return []
        return [p.pid for p in process_utils.find_descendants(self.identity)]

    @classmethod
    def kill_by_reference(cls, *, row_id=None, pid: int | None = None, graceful_timeout: float = 5.0):
        """Terminate the tree of the row named by id or OS pid; LookupError unless it is provably ours."""
        if row_id is not None:
            try:
                process = cls._default_manager.filter(pk=row_id).first()
            except (ValueError, TypeError, ValidationError):
                process = None
            if process is None:
                raise LookupError(f"no process row with id {row_id!r}")
            process._require_local("kill")
        else:
            process = cls._default_manager.get_by_pid(pid)
            if process is None:
                raise LookupError(
                    f"refusing: pid {pid} is not a running process tracked on this machine "
                    "(unknown, exited, or its pid was reused by another process)"
                )
        if process.status != ProcessStatus.RUNNING or not process.is_running:
            raise LookupError(
                f"refusing: pid {process.pid} of row {process.id} is not provably ours "
                "(the process is gone or its pid now belongs to another process)"
            )
        killed = process.kill_tree(graceful_timeout=graceful_timeout)
        return process, killed

    # -- lifecycle ---------------------------------------------------------------------------------

    def _build_env(self, env_overlay: dict[str, Any] | None = None) -> dict[str, str]:
        """The environment a launch gives the child: this process's environment overlaid with `env`.

        The overlay is the caller's real env (`sealing.unseal_for_launch`: a masked value is
        restored from the seal, or the launch is refused; never the mask, never this process's own
        value in its place). The one rule for its values: None is skipped (the inherited value
        stays: the caller asked for it), str as is, bool as "True"/"False", int/float through
        str(), anything else as JSON.
        """
        if env_overlay is None:
            env_overlay = sealing.unseal_for_launch(self)[1]
        env = dict(os.environ)
        env.update((key, env_value_text(value)) for key, value in env_overlay.items() if value is not None)
        return env

    def mask_values(self) -> list[str]:
        """Every secret value this row's child can see, as far as this process knows them (longest first)."""
        return sealing.mask_values(self)

    def _finish(self, exit_code: int | None, *, note: str = "", all_fields: bool = False) -> None:
        """Close this row through the one close path (supervisor.close)."""
        supervisor.close(self, exit_code, note=note, all_fields=all_fields)

    def launch(self, background: bool = False, cwd: str | None = None):
        """Spawn cmd (own session, output to the log files); foreground waits (see supervisor.launch)."""
        return supervisor.launch(self, background=background, cwd=cwd)

    def run_attached(self, stdout=None, stderr=None, cwd: str | None = None) -> int | None:
        """Launch, stream the output live, enforce `timeout` (whole tree killed: 137); return the exit code."""
        return supervisor.run_attached(self, stdout, stderr, cwd=cwd)

    def record_launch_failure(self, message: str) -> None:
        """Record that this row could not be launched: EXITED, exit code 126, the reason in stderr."""
        supervisor.record_launch_failure(self, message)

    def poll(self) -> int | None:
        """None while the process runs (or has not started); once it has ended, its exit code."""
        return supervisor.poll(self)

    @classmethod
    def runner_attach(cls, loop) -> None:
        """In each worker: keep the logs of the processes it launched within the cap while they run."""
        supervisor.attach(loop)

    def runner_wake_fd(self) -> int | None:
        """Our running child's pidfd (a dup): the worker that launched it ticks it the moment it exits."""
        return supervisor.wake_fd(self)

    def wait(self, timeout: float | None = None) -> int:
        """Block until the process ends and return its exit code; TimeoutError past `timeout`."""
        return supervisor.wait(self, timeout)

    def kill(self, signal_num: int = 15) -> bool:
        """Send `signal_num` to the process if it is provably ours; True if sent."""
        return supervisor.kill(self, signal_num)

    def terminate(self, graceful_timeout: float = 5.0) -> bool:
        """SIGTERM, wait up to graceful_timeout, then SIGKILL; False if it was not running."""
        return supervisor.terminate(self, graceful_timeout)

    def kill_tree(self, graceful_timeout: float = 2.0) -> int:
        """End the process and every OS descendant (also setsid'd ones); return how many died."""
        return supervisor.kill_tree(self, graceful_timeout)

    # -- the original's scheduler helpers -----------------------------------------------------------

    def mark_running(
        self,
        *,
        process_type: str | None = None,
        pwd: str | os.PathLike | None = None,
        url: str | None = None,
        worker_type: str = "",
        timeout: int | None = None,
    ) -> None:
        """Mark the row RUNNING (not due: retry_at cleared); the given details are written if they changed."""
        self.status = ProcessStatus.RUNNING
        self.retry_at = None
        fields = ["status", "retry_at", "modified_at"]
        changes = {"process_type": process_type, "url": url, "timeout": timeout}
        changes["pwd"] = os.fspath(pwd) if pwd is not None else None
        changes["worker_type"] = worker_type or None
        for name, value in changes.items():
            if value is not None and getattr(self, name) != value:
                setattr(self, name, value)
                fields.append(name)
        self.save(update_fields=fields)

    def heartbeat(self) -> None:
        """Bump modified_at: this row's owner is still alive."""
        self.save(update_fields=["modified_at"])

    def mark_exited(self, *, exit_code: int = 0) -> None:
        """Close the row with `exit_code` (through the one close path); nothing to do if it already has it."""
        supervisor.mark_exited(self, exit_code)

    def kill_children_db(self) -> int:
        """Terminate the running DB children (parent FK) of this row; return how many were stopped."""
        self._require_local("stop the children of")
        stopped = 0
        for child in self.children.filter(status=ProcessStatus.RUNNING, machine_id=self.machine_id):
            if child.terminate():
                stopped += 1
        return stopped

    # -- class queries -----------------------------------------------------------------------------

    @classmethod
    def get_running(cls, process_type: str | None = None, machine=None) -> models.QuerySet:
        machine = cls._default_machine(machine)
        return cls._default_manager.running().on_machine(machine).of_type(process_type)

    @classmethod
    def get_running_count(cls, process_type: str | None = None, machine=None) -> int:
        return cls.get_running(process_type, machine).count()

    @classmethod
    def stop_all(cls, process_type: str | None = None, machine=None, graceful: bool = True) -> int:
        """terminate() (graceful) or kill() every running row of the type; return how many stopped.

        Only this machine's rows: another `machine` is refused (ForeignMachineError).
        """
        if machine is not None:
            refuse_foreign_machine(machine, cls._default_machine(), "stop the processes")
        stopped = 0
        for process in cls.get_running(process_type, machine):
            if process.terminate() if graceful else process.kill():
                stopped += 1
        return stopped

    @classmethod
    def get_next_worker_id(cls, process_type: str = ProcessType.WORKER, machine=None) -> int:
        return cls.get_running_count(process_type, machine)

    @classmethod
    def _stale_ids(cls, rows: Iterable[tuple], now: datetime) -> tuple[list, dict]:
        """Ids of RUNNING rows that are not provably alive or are past their limits; plus exit codes."""
        live_pids = set(psutil.pids())
        launched_here = process_utils.launched_pids()
        window_start = now - cls.pid_reuse_window
        stale, codes = [], {}
        for pk, pid, started_at, os_start, cmd, timeout, process_type, marker in rows:
            if pid is None or started_at is None:
                stale.append(pk)
                continue
            start = os_start if os_start is not None else started_at.timestamp()
            tolerance = (
                process_utils.EXACT_START_TOLERANCE if os_start is not None else cls.start_time_tolerance
            )
            identity = ProcessIdentity.of(pid, start, cmd, marker, tolerance)
            # Our own child that ended: keep its true exit code. (A dead pid is not in live_pids,
            # so only live ones, possibly our zombies, cost a look into /proc.)
            if pid in live_pids:
                code = process_utils.reap(identity)
            elif pid in launched_here:  # (asking only about our own children keeps 10k rows cheap)
                code = process_utils.known_exit_code(identity)
            else:
                code = None
            if code is not None:
                stale.append(pk)
                codes[pk] = code
                continue
            if pid not in live_pids or not process_utils.is_alive(identity):
                stale.append(pk)
                continue
            if os_start is None and started_at < window_start:
                stale.append(pk)  # identity only known to 5 s and the pid may have cycled: give up
                continue
            launched = bool(marker) or process_type == ProcessType.HOOK
            if launched and timeout and started_at + timedelta(seconds=timeout) + cls.timeout_grace < now:
                stale.append(pk)  # retired in the DB, not killed: the owner (or kill_tree) decides
        return stale, codes

    @classmethod
    def cleanup_stale_running(cls, machine=None) -> int:
        """Close RUNNING rows whose process is gone, recycled, too old or past timeout + grace.

        Only this machine's rows can be judged here: another `machine` is refused (ForeignMachineError).
        """
        if machine is not None:
            refuse_foreign_machine(machine, cls._default_machine(), "judge the running processes")
        machine = cls._default_machine(machine)
        now = timezone.now()
        rows = (
            cls._default_manager.running()
            .on_machine(machine)
            .judgeable_here()
            .values_list(
                "pk", "pid", "started_at", "os_start_time", "cmd", "timeout", "process_type", "launch_marker"
            )
        )
        stale, codes = cls._stale_ids(rows.iterator(chunk_size=2000), now)
        if not stale:
            return 0
        queryset = cls._default_manager.get_queryset()
        closed = 0
        with transaction.atomic():
            for pk, code in codes.items():  # our own children: their true exit codes
                closed += queryset.close_ids([pk], exit_code=code)
            closed += queryset.close_ids([pk for pk in stale if pk not in codes])
        return closed

    @classmethod
    def cleanup_orphaned_workers(cls) -> int:
        """Close this machine's running worker and hook rows that nothing keeps alive; return how many.

        For each RUNNING worker/hook row of this machine: a process that is no longer running is
        closed (as poll() closes it); a row that is its own root is a standalone run and stays; a
        row whose root is a running orchestrator/server/update/add/search/cli process stays; any
        other row (its root gone, or a root of another type) is closed in the database, with its
        recorded exit code or, unknown, 137 and a note. Nothing is signalled. Rows of other machines
        are left to their own hosts: the liveness of their pids cannot be judged here.
        """
        machine = cls._default_machine()
        rows = (
            cls._default_manager.running()
            .on_machine(machine)
            .filter(process_type__in=[ProcessType.WORKER, ProcessType.HOOK])
            .order_by("created_at")
        )
        closed = 0
        for process in list(rows):  # (few rows; and each may be written while we go)
            if not process.is_running:
                if process.poll() is not None:
                    closed += 1
                continue
            root = process.root
            if root.pk == process.pk:
                continue  # a worker or hook started on its own
            if root.process_type in COMMAND_ROOT_TYPES and root.is_running:
                continue
            supervisor.close(process, process.exit_code)
            closed += 1
        return closed

    @classmethod
    def cleanup_orphaned_chrome(
        cls, data_dir: str | os.PathLike | None = None, min_age: float = CHROME_PID_FILE_MIN_AGE
    ) -> int:
        """Kill browser trees named by stale `chrome*/*.pid` files under DATA_DIR; return how many died.

        A pid file's mtime is its process's start time: a live process whose start time, pid and
        browser command line do not all match is left alone. The stale pid file is removed.
        """
        root = Path(data_dir) if data_dir is not None else machine_settings.data_dir
        if not root.is_dir():
            return 0
        killed = 0
        cutoff = time.time() - min_age
        for pid_file in root.rglob("*.pid"):
            if "chrom" not in pid_file.parent.name.lower() and "chrom" not in pid_file.name.lower():
                continue
            try:
                stat = pid_file.stat()
                pid = int(pid_file.read_text().strip() or 0)
            except (OSError, ValueError):
                continue
            # (min_age=0 means no age limit: the mtime is psutil's start time, which can lie a few ms
            # ahead of time.time(), so comparing it with "now" would skip a file at random.)
            if min_age > 0 and stat.st_mtime > cutoff:
                continue  # a browser of a crawl that may still be running
            identity = ProcessIdentity.of(pid, stat.st_mtime, tolerance=cls.start_time_tolerance)
            proc = process_utils.proven_process(identity)
            if proc is not None:
                try:
                    name = " ".join(proc.cmdline()).lower()
                except psutil.Error:
                    name = ""
                if "chrom" in name:
                    killed += process_utils.kill_tree(identity, graceful_timeout=2.0)
            pid_file.unlink(missing_ok=True)
        return killed

    # -- JSON ----------------------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "type": "Process",
            "id": str(self.id),
            "machine_id": str(self.machine_id) if self.machine_id else None,
            "parent_id": str(self.parent_id) if self.parent_id else None,
            "binary_id": str(self.binary_id) if self.binary_id else None,
            "iface_id": str(self.iface_id) if self.iface_id else None,
        }
        for name in JSON_FIELDS:
            data[name] = getattr(self, name)
        secrets = self.mask_values()
        data["cmd"] = mask_cmd(self.cmd or [], secrets)
        data["env"] = mask_env(self.env or {}, secrets)
        data["stdout"] = mask_text(self.stdout or "", secrets)
        data["stderr"] = mask_text(self.stderr or "", secrets)
        data["url"] = mask_text(self.url) if self.url else self.url
        for name in ("started_at", "ended_at", "created_at", "modified_at", "retry_at"):
            value = getattr(self, name)
            data[name] = value.isoformat() if value else None
        data["os_start_time"] = self.os_start_time
        return data

    @classmethod
    def queue_from_json(cls, record: dict[str, Any], overrides: dict[str, Any] | None = None):
        """The row named by record["id"] if it exists, else a new queued row from the record; None if invalid.

        (`Process.from_json()` only ever returns an existing row, as the original's does.)
        """
        if not isinstance(record, dict):
            return None
        record = {**record, **(overrides or {})}
        record_id = record.get("id")
        if record_id:
            try:
                existing = cls._default_manager.filter(pk=record_id).first()
            except (ValueError, TypeError, ValidationError):
                return None  # not a valid id
            if existing is not None:
                return existing
        cmd = record.get("cmd")
        if not isinstance(cmd, list) or not cmd or not all(isinstance(a, str) and a for a in cmd[:1]):
            return None
        if not all(isinstance(a, str) for a in cmd):
            return None
        timeout = record.get("timeout", 120)
        if isinstance(timeout, bool) or not isinstance(timeout, int) or timeout < 0:
            return None
        env = record.get("env") or {}
        if not isinstance(env, dict):
            return None
        process_type = record.get("process_type") or ProcessType.BINARY
        if process_type not in ProcessType.values:
            return None
        fields = {
            "machine": cls._default_machine(record.get("machine")),
            "cmd": cmd,
            "pwd": str(record.get("pwd") or ""),
            "env": env,
            "timeout": timeout,
            "process_type": process_type,
            "worker_type": str(record.get("worker_type") or ""),
            "url": str(record.get("url") or "") or None,
            "status": ProcessStatus.QUEUED,
            "retry_at": timezone.now(),
        }
        for key in ("parent", "binary", "iface"):
            if record.get(key) is not None:
                fields[key] = record[key]
        if record_id:
            fields["id"] = record_id
        return cls._default_manager.create(**fields)

    # -- downstream links --------------------------------------------------------------------------

    def _archiveresult(self):
        # A downstream app may attach a OneToOne named `archiveresult`; a missing one raises a
        # RelatedObjectDoesNotExist, which is an AttributeError.
        return getattr(self, "archiveresult", None)

    @property
    def plugin(self) -> str:
        """The plugin of the downstream ArchiveResult this process ran for, else ''."""
        result = self._archiveresult()
        return str(getattr(result, "plugin", "") or "") if result is not None else ""

    @property
    def hook_name(self) -> str:
        """The hook name of the downstream ArchiveResult this process ran for, else '' (see hook_script_name)."""
        result = self._archiveresult()
        return str(getattr(result, "hook_name", "") or "") if result is not None else ""

    @property
    def cmd_version(self) -> str:
        """The version of the linked Binary, else ''."""
        return self.binary.version if self.binary_id else ""

    @property
    def bin_abspath(self) -> str:
        """The abspath of the linked Binary, else ''."""
        return self.binary.abspath if self.binary_id else ""
