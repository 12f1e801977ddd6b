"""Process behaviour: the QuerySet and a plain mixin the Process model inherits.

The model keeps the fields, `current()` and `get_by_pid()`; everything here reaches related models
through `self._meta` and calls `machine.process_utils` for every OS action (spawn, signal, liveness,
tree walk, tail). Nothing here imports `machine.models`.
"""

from __future__ import annotations

import os
import shlex
import time
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psutil
from django.core.exceptions import ValidationError
from django.db import models, transaction
from django.db.models import Q
from django.utils import timezone

from machine import process_utils
from machine.choices import ProcessStatus, ProcessType
from machine.conf import machine_settings
from machine.detect import get_boot_id, get_pid_namespace
from machine.process_files import ProcessFilesMixin
from machine.redaction import redact_cmd

#: How many rows one UPDATE closes in cleanup_stale_running() (well under SQLite's variable limit).
CLEANUP_BATCH_SIZE = 500
#: Browser pid files older than this are leftovers of a crashed run.
CHROME_PID_FILE_MIN_AGE = 5 * 60
#: Secret values shorter than this are not scrubbed from logs: they would match everywhere.
MIN_SCRUB_LENGTH = 4

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


#: What _finish() writes to a row that is already saved.
FINISH_FIELDS = ("exit_code", "stdout", "stderr", "status", "ended_at", "retry_at", "modified_at")


class ProcessInputError(ValueError):
    """A Process cannot be launched as described (bad cmd, pwd or timeout); nothing was spawned."""


def validate_launch_input(cmd: Any, pwd: str | os.PathLike | None, timeout: Any) -> None:
    """Raise ProcessInputError unless cmd is a non-empty list of str, pwd a directory, timeout >= 0."""
    if not isinstance(cmd, (list, tuple)) or not cmd or not all(isinstance(arg, str) for arg in cmd):
        raise ProcessInputError(f"cmd must be a non-empty list of strings, got {cmd!r}")
    if not cmd[0]:
        raise ProcessInputError("cmd[0] (the program) must not be empty")
    if not pwd:
        raise ProcessInputError("pwd (the working directory) is not set")
    if not os.path.isdir(pwd):
        raise ProcessInputError(f"working directory does not exist: {os.fspath(pwd)!r}")
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout < 0:
        raise ProcessInputError(f"timeout must be a non-negative number of seconds, got {timeout!r}")


def exit_code_from_status(code: int | None) -> int | None:
    """Normalise a recorded exit code: negative (-N = killed by signal N; -1 = unknown kill) -> 128 + N."""
    if code is None:
        return None
    if code == -1:
        return 137
    return 128 - code if code < 0 else code


def _ts(value: datetime | None) -> float | None:
    return value.timestamp() if value is not None else None


def _from_ts(value: float) -> datetime:
    return datetime.fromtimestamp(value, tz=UTC)


def scrub_secrets(text: str, env: dict[str, Any] | None) -> str:
    """Replace the values of secret-looking env keys that appear in text by the redaction mark."""
    if not text or not env:
        return text
    redacted = process_utils.redact_env(env)
    for key, value in env.items():
        if redacted.get(key) != value and isinstance(value, str) and len(value) >= MIN_SCRUB_LENGTH:
            text = text.replace(value, process_utils.REDACTED)
    return text


class RedactedEnvField(models.JSONField):
    """A JSONField whose stored value has secret-looking keys redacted; the in-memory dict keeps them.

    So a row built with a real token can still launch with it, while the database (and anything that
    reads the row back) never sees it. Deconstructs as a plain JSONField: no schema change.
    """

    def get_prep_value(self, value):
        if isinstance(value, dict):
            value = process_utils.redact_env(value)
        return super().get_prep_value(value)

    def deconstruct(self):
        name, _path, args, kwargs = super().deconstruct()
        return name, "django.db.models.JSONField", args, kwargs


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
        """Mark the RUNNING rows among `ids` EXITED, CLEANUP_BATCH_SIZE ids per UPDATE."""
        now = timezone.now()
        closed = 0
        for start in range(0, len(ids), CLEANUP_BATCH_SIZE):
            chunk = ids[start : start + CLEANUP_BATCH_SIZE]
            values: dict[str, Any] = {
                "status": ProcessStatus.EXITED,
                "ended_at": now,
                "retry_at": None,
                "modified_at": now,
            }
            if exit_code is not None:
                values["exit_code"] = exit_code
            closed += self.model._default_manager.filter(pk__in=chunk, status=ProcessStatus.RUNNING).update(
                **values
            )
        return closed


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

    def get_descendants(self, include_self: bool = False) -> list:
        """All DB children, grandchildren, ... breadth first (one query per level)."""
        found = [self] if include_self else []
        seen, frontier = {self.pk}, [self.pk]
        manager = type(self)._default_manager
        while frontier:
            level = [
                p for p in manager.filter(parent_id__in=frontier).order_by("created_at") if p.pk not in seen
            ]
            seen.update(p.pk for p in level)
            found.extend(level)
            frontier = [p.pk for p in level]
        return found

    # -- identity and the OS view ----------------------------------------------------------------

    def _identity(self) -> tuple[int | None, float | None, float]:
        """(pid, expected start time, tolerance): exact when the OS start time was recorded."""
        if self.os_start_time is not None:
            return self.pid, self.os_start_time, process_utils.EXACT_START_TOLERANCE
        return self.pid, _ts(self.started_at), self.start_time_tolerance

    def _is_local(self) -> bool:
        machine = self._machine_model()
        cached = machine.current()
        return self.machine_id == cached.pk

    @property
    def proc(self) -> psutil.Process | None:
        """The live psutil.Process only if pid, start time, command (and launch marker) prove it is ours."""
        pid, start, tolerance = self._identity()
        if pid is None or start is None or not self._is_local():
            return None
        return process_utils.proven_process(
            pid, start, self.cmd or None, tolerance, marker=self.launch_marker or None
        )

    @property
    def is_running(self) -> bool:
        """True only while the proven OS process runs (a zombie or a recycled pid is not running)."""
        return self.proc is not None

    def is_alive(self) -> bool:
        return self.is_running

    def get_memory_info(self):
        """psutil memory info of the proven process, or None."""
        proc = self.proc
        try:
            return proc.memory_info() if proc else None
        except psutil.Error:
            return None

    def get_cpu_percent(self, interval: float | None = None) -> float | None:
        proc = self.proc
        try:
            return proc.cpu_percent(interval=interval) if proc else None
        except psutil.Error:
            return None

    def get_children_pids(self) -> list[int]:
        """OS pids of the proven process's descendants (including escaped, marker-carrying ones)."""
        pid, start, tolerance = self._identity()
        if self.proc is None and not self.launch_marker:
            return []
        return [
            p.pid
            for p in process_utils.find_descendants(
                pid, start, self.launch_marker or None, tolerance=tolerance
            )
        ]

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

    @staticmethod
    def format_table(rows: Iterable) -> str:
        """A plain text table of processes: id, pid, type, status, started_at, cmd."""
        header = ("ID", "PID", "TYPE", "STATUS", "STARTED", "CMD")
        lines = [header]
        for p in rows:
            started = p.started_at.strftime("%Y-%m-%d %H:%M:%S") if p.started_at else "-"
            cmd = shlex.join(redact_cmd(p.cmd or []))
            lines.append((str(p.id), str(p.pid or "-"), p.process_type, p.status, started, cmd[:80]))
        widths = [max(len(row[i]) for row in lines) for i in range(len(header) - 1)]
        return "\n".join(
            "  ".join(col.ljust(widths[i]) for i, col in enumerate(row[:-1])) + "  " + row[-1]
            for row in lines
        )

    # -- lifecycle ---------------------------------------------------------------------------------

    def _child_env(self) -> dict[str, Any]:
        # Redacted placeholders (a row read back from the database) are dropped, so the child
        # inherits the real value from this process's environment instead of the mark.
        return {k: v for k, v in (self.env or {}).items() if v != process_utils.REDACTED}

    def _read_logs(self) -> tuple[str, str]:
        """Both logs, secrets scrubbed; the files are rewritten when scrubbing changed them."""
        texts = []
        for path in (self.stdout_file, self.stderr_file):
            text = ""
            if path is not None:
                try:
                    text = path.read_text(errors="replace")
                except FileNotFoundError:
                    text = ""
                clean = scrub_secrets(text, self.env)
                if clean != text:
                    path.write_text(clean)
                text = clean
            texts.append(text)
        return texts[0], texts[1]

    def _finish(self, exit_code: int | None, *, all_fields: bool = False) -> None:
        """Record the end: exit code, captured output, ended_at; the pid file goes away."""
        self.exit_code = exit_code_from_status(exit_code)
        self.stdout, self.stderr = self._read_logs()
        self.status = ProcessStatus.EXITED
        self.ended_at = timezone.now()
        self.retry_at = None
        self._remove_pid_file()
        if all_fields or self._state.adding:
            self.save()
        else:  # a saved running row: only what ending changed
            self.save(update_fields=FINISH_FIELDS)

    def launch(self, background: bool = False, cwd: str | None = None):
        """Spawn cmd (in its own session, output to the log files) and record pid and start time.

        Foreground: wait (past `timeout` the whole tree is killed, exit code 137). Background: return
        at once; `poll()`/`wait()` collect the exit code. A command that cannot be executed ends
        EXITED with 127/126 and the reason in stderr. Bad input raises ProcessInputError first.
        """
        workdir = cwd or self.pwd
        validate_launch_input(self.cmd, workdir, self.timeout)
        if self.status == ProcessStatus.RUNNING and self.is_running:
            raise RuntimeError(f"{self} is already running (pid {self.pid})")
        self.cmd = list(self.cmd)
        if not self.pwd:
            self.pwd = os.fspath(workdir)
        if self.machine_id is None:
            self.machine = self._machine_model().current()
        self.runtime_dir.mkdir(parents=True, exist_ok=True)
        self._write_cmd_file(os.fspath(workdir))
        for path in (self.stdout_file, self.stderr_file):
            with open(path, "ab") as log:
                log.truncate(0)  # one run per row: start clean (and create the file)
        files = (self.stdout_file, self.stderr_file)
        spawned = process_utils.spawn(self.cmd, workdir, self._child_env(), *files)
        self.pid = spawned.pid
        self.launch_marker = spawned.marker
        self.os_start_time = spawned.start_time
        self.started_at = _from_ts(spawned.start_time) if spawned.start_time else timezone.now()
        if spawned.exit_code is not None:  # could not be executed (127/126, reason in stderr)
            self._finish(spawned.exit_code, all_fields=True)
            return self
        self.status = ProcessStatus.RUNNING
        self.exit_code = None
        self.ended_at = None
        self.retry_at = timezone.now()  # due: the next tick polls it
        if background:
            self._write_pid_file()
        self.save()  # visible (and findable by the child's own Process.current()) while it runs
        if not background:
            self._finish(self._wait_foreground())
        return self

    def _wait_foreground(self) -> int | None:
        """Wait for our child; past `timeout` its whole tree (escaped descendants too) dies: 137."""
        pid, start, cmd, tolerance, marker = self._proven_args()
        try:
            return process_utils.wait(
                pid, start, cmd, marker=marker, timeout=self.timeout or None, tolerance=tolerance
            )
        except TimeoutError:
            process_utils.kill_tree(pid, start, cmd, marker, graceful_timeout=0, tolerance=tolerance)
            return process_utils.EXIT_KILLED
        except BaseException:  # e.g. KeyboardInterrupt: never leave the tree running behind us
            process_utils.kill_tree(pid, start, cmd, marker, graceful_timeout=0, tolerance=tolerance)
            raise

    def record_launch_failure(self, message: str) -> None:
        """Record that this row could not be launched: EXITED, exit code 126, the reason in stderr."""
        self.exit_code = process_utils.EXIT_NOT_EXECUTABLE
        self.stderr = f"cannot launch: {message}\n"
        self.status = ProcessStatus.EXITED
        self.ended_at = timezone.now()
        self.retry_at = None
        self.save()

    def _proven_args(self) -> tuple[int | None, float | None, list | None, float, str | None]:
        pid, start, tolerance = self._identity()
        return pid, start, self.cmd or None, tolerance, self.launch_marker or None

    def poll(self) -> int | None:
        """The exit code once the process has ended (recording it), None while it runs."""
        if self.status == ProcessStatus.EXITED:
            return self.exit_code
        if self.status != ProcessStatus.RUNNING:
            return None
        pid, start, _cmd, tolerance, marker = self._proven_args()
        if pid is not None and start is not None:
            code = process_utils.reap(pid, start, marker=marker, tolerance=tolerance)
            if code is not None:
                self._finish(code)
                return self.exit_code
            if self.is_running:
                return None
        # Gone, and not our child: its exit status went to its real parent; record that we don't know.
        self._finish(None)
        return self.exit_code

    def wait(self, timeout: float | None = None) -> int | None:
        """Block until the process ends and return its exit code; TimeoutError past `timeout`."""
        timeout = self.timeout if timeout is None else timeout
        pid, start, cmd, tolerance, marker = self._proven_args()
        if self.status == ProcessStatus.RUNNING and pid is not None and start is not None:
            process_utils.wait(pid, start, cmd, marker=marker, timeout=timeout, tolerance=tolerance)
        return self.poll()

    def kill(self, signal_num: int = 15) -> bool:
        """Send `signal_num` to the process if it is provably ours; record its end if it went away."""
        pid, start, cmd, tolerance, marker = self._proven_args()
        if pid is None or start is None or not self._is_local():
            return False
        sent = process_utils.send_signal(pid, start, cmd, signal_num, tolerance, marker=marker)
        if not sent:
            return False
        self._settle(timeout=1.0, fallback_code=128 + int(signal_num))
        return True

    def _settle(self, timeout: float, fallback_code: int | None) -> None:
        """After a signal: wait briefly for the end and record it (the true code for our children)."""
        pid, start, cmd, tolerance, marker = self._proven_args()
        try:
            code = process_utils.wait(pid, start, cmd, marker=marker, timeout=timeout, tolerance=tolerance)
        except TimeoutError:
            return  # still alive (it may handle the signal): the row stays RUNNING
        self._finish(code if code is not None else fallback_code)

    def terminate(self, graceful_timeout: float = 5.0) -> bool:
        """SIGTERM, wait up to graceful_timeout, then SIGKILL; False if it was not running."""
        pid, start, cmd, tolerance, marker = self._proven_args()
        if pid is None or start is None or not self._is_local() or not self.is_running:
            if self.status == ProcessStatus.RUNNING:
                self.poll()
            return False
        if not process_utils.send_signal(pid, start, cmd, 15, tolerance, marker=marker):
            return False
        try:
            code = process_utils.wait(
                pid, start, cmd, marker=marker, timeout=graceful_timeout, tolerance=tolerance
            )
            self._finish(code if code is not None else 128 + 15)
            return True
        except TimeoutError:
            pass
        process_utils.send_signal(pid, start, cmd, 9, tolerance, marker=marker)
        self._settle(timeout=5.0, fallback_code=137)
        return True

    def kill_tree(self, graceful_timeout: float = 2.0) -> int:
        """End the process and every OS descendant (also setsid'd ones); return how many died."""
        pid, start, cmd, tolerance, marker = self._proven_args()
        if pid is None or start is None or not self._is_local():
            return 0
        killed = process_utils.kill_tree(
            pid, start, cmd, marker, graceful_timeout=graceful_timeout, tolerance=tolerance
        )
        if self.status == ProcessStatus.RUNNING and not self.is_running:
            code = process_utils.reap(pid, start, marker=marker, tolerance=tolerance)
            self._finish(code if code is not None else 137)
        return killed

    def kill_children_db(self) -> int:
        """Terminate the running DB children (parent FK) of this row; return how many were stopped."""
        stopped = 0
        for child in self.children.filter(status=ProcessStatus.RUNNING):
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
        """terminate() (graceful) or kill() every running row of the type; return how many stopped."""
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
            # Our own child that ended: keep its true exit code. (A dead pid is not in live_pids,
            # so only live ones, possibly our zombies, cost a look into /proc.)
            if pid in live_pids:
                code = process_utils.reap(pid, start, marker=marker or None, tolerance=tolerance)
            else:
                code = process_utils.known_exit_code(pid, start, marker=marker or None, tolerance=tolerance)
            if code is not None:
                stale.append(pk)
                codes[pk] = code
                continue
            if pid not in live_pids or not process_utils.is_alive(
                pid, start, cmd or None, tolerance, marker=marker or None
            ):
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
        """Close RUNNING rows whose process is gone, recycled, too old or past timeout + grace."""
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
        manager = cls._default_manager
        closed = 0
        with transaction.atomic():
            for pk, code in codes.items():
                closed += manager.filter(pk=pk, status=ProcessStatus.RUNNING).update(
                    status=ProcessStatus.EXITED,
                    exit_code=exit_code_from_status(code),
                    ended_at=now,
                    retry_at=None,
                    modified_at=now,
                )
            closed += manager.get_queryset().close_ids([pk for pk in stale if pk not in codes])
        return closed

    @classmethod
    def cleanup_orphaned_workers(cls, machine=None) -> int:
        """Terminate running worker rows whose parent row is no longer running; return how many."""
        machine = cls._default_machine(machine)
        orphans = (
            cls._default_manager.running()
            .on_machine(machine)
            .of_type(ProcessType.WORKER)
            .filter(parent__isnull=False)
            .exclude(parent__status=ProcessStatus.RUNNING)
        )
        stopped = 0
        for worker in orphans:
            if worker.terminate():
                stopped += 1
        return stopped

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
            proc = process_utils.proven_process(pid, stat.st_mtime, None, cls.start_time_tolerance)
            if proc is not None:
                try:
                    name = " ".join(proc.cmdline()).lower()
                except psutil.Error:
                    name = ""
                if "chrom" in name:
                    killed += process_utils.kill_tree(
                        pid,
                        stat.st_mtime,
                        None,
                        None,
                        graceful_timeout=2.0,
                        tolerance=cls.start_time_tolerance,
                    )
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
        data["env"] = process_utils.redact_env(self.env or {})
        for name in ("started_at", "ended_at", "created_at", "modified_at", "retry_at"):
            value = getattr(self, name)
            data[name] = value.isoformat() if value else None
        data["os_start_time"] = self.os_start_time
        return data

    @classmethod
    def from_json(cls, record: dict[str, Any], overrides: dict[str, Any] | None = None):
        """The row named by record["id"] if it exists, else a new queued row from the record; None if invalid."""
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
            "url": str(record.get("url") or ""),
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
        result = self._archiveresult()
        return str(getattr(result, "plugin", "") or "") if result is not None else ""

    @property
    def hook_name(self) -> str:
        result = self._archiveresult()
        if result is not None and getattr(result, "hook_name", ""):
            return str(result.hook_name)
        if self.process_type == ProcessType.HOOK:
            return self.hook_script_name or ""
        return ""
