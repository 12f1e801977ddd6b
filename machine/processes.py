"""Process behaviour: the QuerySet and a plain mixin the Process model inherits.

The model keeps the fields, `current()` and `get_by_pid()`; everything here reaches related models
through `self._meta` and calls `machine.process_utils` for every OS action (spawn, signal, liveness,
tree walk, tail). Nothing here imports `machine.models`.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import psutil
from django.core.exceptions import ValidationError
from django.db import models, transaction
from django.db.models import Case, F, Q, Value, When
from django.db.models.functions import Concat, Right
from django.db.models.lookups import Exact
from django.utils import timezone

from machine import launch_doubt, process_utils, sealing, signals
from machine.choices import ProcessStatus, ProcessType
from machine.conf import machine_settings
from machine.detect import get_boot_id, get_pid_namespace
from machine.process_files import ProcessFilesMixin, storable_str
from machine.redaction import env_value_text, mask_cmd, mask_env, mask_text

#: How many rows one UPDATE closes in cleanup_stale_running() (well under SQLite's variable limit).
CLEANUP_BATCH_SIZE = 500
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


#: What _finish() writes to a row that is already saved.
FINISH_FIELDS = ("exit_code", "stdout", "stderr", "status", "ended_at", "retry_at", "modified_at", "sealed")


logger = logging.getLogger(__name__)


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


class ProcessInputError(ValueError):
    """A Process cannot be launched as described (bad cmd, pwd or timeout); nothing was spawned."""


#: How long after a background launch the row is first due for a poll (see ProcessMachine.poll_interval).
LAUNCH_POLL_DELAY = timedelta(seconds=1)
#: How often a worker checks the log sizes of the processes it launched (runner_attach).
LOG_CAP_INTERVAL = 0.2
#: The worker's event loop (runner_attach) and whether the log-cap timer is set on it.
_log_cap_timer: dict[str, Any] = {"loop": None, "set": False}


def _watch_log_sizes() -> None:
    """In a worker: check the launched children's logs every LOG_CAP_INTERVAL while any of them runs.

    Only while one runs: an idle worker's loop is not woken for nothing.
    """
    loop = _log_cap_timer["loop"]
    if loop is None or _log_cap_timer["set"]:
        return

    def cap() -> None:
        _log_cap_timer["set"] = False
        if process_utils.launched_running():
            process_utils.cap_running_logs(machine_settings.LOG_MAX_BYTES)
            _watch_log_sizes()

    _log_cap_timer["set"] = True
    loop.call_later(LOG_CAP_INTERVAL, cap)


#: The longest timeout a Process accepts, in seconds (a year: the column and every wait can hold it).
MAX_TIMEOUT = 365 * 24 * 3600


def _text_problem(value: str) -> str | None:
    """Why `value` cannot be an argument, path or env text of a launch (None if it can)."""
    if "\x00" in value:
        return "contains a NUL byte (the OS cannot pass it)"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return "is not valid UTF-8 text: the database cannot store it"
    return None


def validate_launch_input(cmd: Any, pwd: str | os.PathLike | None, timeout: Any, env: Any = None) -> None:
    """Raise ProcessInputError unless the launch can happen and be recorded; nothing exists yet.

    cmd: a non-empty list of str; every text (arguments, pwd, env keys and values) valid UTF-8
    without NUL; env keys without '='; pwd an existing directory; timeout 0..MAX_TIMEOUT seconds.
    """
    if not isinstance(cmd, (list, tuple)) or not cmd or not all(isinstance(arg, str) for arg in cmd):
        shown = mask_cmd(cmd) if isinstance(cmd, (list, tuple)) else type(cmd).__name__
        raise ProcessInputError(f"cmd must be a non-empty list of strings, got {shown!r}")
    if not cmd[0]:
        raise ProcessInputError("cmd[0] (the program) must not be empty")
    for index, arg in enumerate(cmd):
        if problem := _text_problem(arg):
            raise ProcessInputError(f"cmd[{index}] {problem}")
    if not pwd:
        raise ProcessInputError("pwd (the working directory) is not set")
    if problem := _text_problem(os.fspath(pwd)):
        raise ProcessInputError(f"pwd {problem}")
    if not os.path.isdir(pwd):
        raise ProcessInputError(f"working directory does not exist: {os.fspath(pwd)!r}")
    if (
        isinstance(timeout, bool)
        or not isinstance(timeout, (int, float))
        or not 0 <= timeout <= MAX_TIMEOUT  # (also refuses nan)
    ):
        raise ProcessInputError(
            f"timeout must be a number of seconds from 0 (no limit) to {MAX_TIMEOUT}, got {timeout!r}"
        )
    for key, value in (env or {}).items():
        if not isinstance(key, str) or not key or "=" in key:
            raise ProcessInputError(f"env keys must be non-empty strings without '=', got {key!r}")
        if problem := _text_problem(key):
            raise ProcessInputError(f"env key {key!r} {problem}")
        for text in _env_texts(value):  # (a dict or list value too: the row stores it as JSON)
            if problem := _text_problem(text):
                raise ProcessInputError(f"the value of env {key} {problem}")  # (never the value)


def _env_texts(value: Any) -> Iterable[str]:
    """Every text inside an env value: itself, or the keys and strings of a dict/list at any depth."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield str(key)
            yield from _env_texts(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _env_texts(item)


#: The exit code recorded when how a process ended can no longer be known (as for a SIGKILL).
UNKNOWN_EXIT_CODE = 137
#: The line appended to stderr whenever UNKNOWN_EXIT_CODE is recorded, so it is never mistaken for a real one.
UNKNOWN_EXIT_NOTE = (
    "exit status unknown: the row was closed without observing the process exit; recorded as 137"
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


def exit_code_from_status(code: int | None) -> int | None:
    """Normalise a recorded exit code: negative (-N = killed by signal N; -1 = unknown kill) -> 128 + N."""
    if code is None:
        return None
    if code == -1:
        return 137
    return 128 - code if code < 0 else code


def recorded_exit(code: int | None) -> tuple[int, str]:
    """The one rule for the exit code a closed row gets: (code, note for stderr or '').

    A known code is normalised (exit_code_from_status); an unknown one (None) becomes
    UNKNOWN_EXIT_CODE with UNKNOWN_EXIT_NOTE, never a made-up 0.
    """
    if code is None:
        return UNKNOWN_EXIT_CODE, UNKNOWN_EXIT_NOTE
    return exit_code_from_status(code), ""


def recorded_exit_sql() -> dict[str, Any]:
    """recorded_exit() for the rows of one UPDATE, applied to each row's own exit_code (and stderr)."""
    return {
        "exit_code": Case(
            When(exit_code__isnull=True, then=Value(UNKNOWN_EXIT_CODE)),
            When(exit_code=-1, then=Value(137)),
            When(exit_code__lt=0, then=Value(128) - F("exit_code")),
            default=F("exit_code"),
        ),
        "stderr": Case(
            When(exit_code__isnull=False, then=F("stderr")),
            When(stderr="", then=Value(UNKNOWN_EXIT_NOTE + "\n")),
            # (Right(), not __endswith: LIKE costs more than the whole rest of the UPDATE.)
            When(
                Exact(Right("stderr", 1), Value("\n")),
                then=Concat(F("stderr"), Value(UNKNOWN_EXIT_NOTE + "\n")),
            ),
            default=Concat(F("stderr"), Value("\n" + UNKNOWN_EXIT_NOTE + "\n")),
            output_field=models.TextField(),
        ),
    }


def append_line(text: str, line: str) -> str:
    """`text` with `line` appended as a line of its own."""
    if not line:
        return text
    if text and not text.endswith("\n"):
        text += "\n"
    return f"{text}{line}\n"


def _ts(value: datetime | None) -> float | None:
    return value.timestamp() if value is not None else None


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
        """Mark the RUNNING rows among `ids` EXITED, CLEANUP_BATCH_SIZE ids per UPDATE.

        The batch form of ProcessMixin._finish() for rows whose output is not captured: the same
        rule (recorded_exit) gives each row `exit_code`, else the code it already has, else
        UNKNOWN_EXIT_CODE with UNKNOWN_EXIT_NOTE appended to its stderr. Their sealed values are
        cleared, after the log files of the (few) rows that still have some are masked with them.
        """
        now = timezone.now()
        closed = 0
        values: dict[str, Any] = {
            "status": ProcessStatus.EXITED,
            "ended_at": now,
            "retry_at": None,
            "modified_at": now,
            "sealed": None,
        }
        if exit_code is None:
            values.update(recorded_exit_sql())
        else:
            values["exit_code"] = recorded_exit(exit_code)[0]
        self._mask_sealed_logs(ids)
        for start in range(0, len(ids), CLEANUP_BATCH_SIZE):
            chunk = ids[start : start + CLEANUP_BATCH_SIZE]
            closed += self.model._default_manager.filter(pk__in=chunk, status=ProcessStatus.RUNNING).update(
                **values
            )
        return closed

    def _mask_sealed_logs(self, ids: list) -> None:
        """Mask the log files of the RUNNING rows among `ids` that carry sealed mask values.

        One query whatever the number of ids: running rows with sealed values are few (only
        launched rows whose caller gave secrets), so they are listed and matched here.
        """
        wanted = set(ids)
        rows = self.model._default_manager.filter(status=ProcessStatus.RUNNING, sealed__isnull=False)
        for row in rows.only("id", "pwd", "cmd", "env", "sealed", "process_type"):
            if row.pk in wanted:
                row._read_logs()


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

    def _identity(self) -> tuple[int | None, float | None, float]:
        """(pid, expected start time, tolerance): exact when the OS start time was recorded."""
        if self.os_start_time is not None:
            return self.pid, self.os_start_time, process_utils.EXACT_START_TOLERANCE
        return self.pid, _ts(self.started_at), self.start_time_tolerance

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
        """Close this row: the one path that records how a process ended.

        The exit code goes through recorded_exit() (a known code normalised; an unknown one, None,
        becomes 137 with a note in stderr). The output is captured from the log files (a row
        without them keeps what it stored), `note` is appended to stderr, ended_at is kept if set,
        and the pid file goes away.
        """
        self._end_leftovers()
        code, unknown = recorded_exit(exit_code)
        secrets = self.mask_values()
        self._cap_logs(secrets)
        stdout, stderr = self._read_logs(secrets)  # (masked, bounded)
        self.stdout = stdout if stdout is not None else mask_text(self.stdout or "", secrets)
        self.stderr = stderr if stderr is not None else mask_text(self.stderr or "", secrets)
        for line in (note, unknown):
            self.stderr = append_line(self.stderr or "", mask_text(line, secrets))
        self.stdout, self.stderr = storable_str(self.stdout), storable_str(self.stderr)
        self.sealed = None  # a closed row keeps no secret, not even sealed
        self.exit_code = code
        self.status = ProcessStatus.EXITED
        self.ended_at = self.ended_at or timezone.now()
        self.retry_at = None
        self._remove_pid_file()
        if all_fields or self._state.adding:
            self.save()
        else:  # a saved row: only what ending changed
            self.save(update_fields=FINISH_FIELDS)
        signals.process_exited.send_robust(type(self), process=self, exit_code=self.exit_code)

    def launch(self, background: bool = False, cwd: str | None = None):
        """Spawn cmd (in its own session, output to the log files) and record pid and start time.

        Foreground: wait (past `timeout` the whole tree is killed, exit code 137). Background: return
        at once; `poll()`/`wait()` collect the exit code. A command that cannot be executed ends
        EXITED with 127/126 and the reason in stderr. Bad input raises ProcessInputError first.
        """
        if launch_doubt.in_doubt(self):  # its launcher may have died after the spawn: never run twice
            launch_doubt.settle(self, background=background)
            return self
        workdir = cwd or self.pwd
        validate_launch_input(self.cmd, workdir, self.timeout, self.env)
        if self.status == ProcessStatus.RUNNING and self.is_running:
            raise RuntimeError(f"{self} is already running (pid {self.pid})")
        # The caller's real argv and env (restored from the seal for a queued row), or refused.
        argv, env_overlay = sealing.unseal_for_launch(self)
        validate_launch_input(argv, workdir, self.timeout, env_overlay)
        self.cmd = argv  # (in memory; every save stores it masked)
        if not self.pwd:
            self.pwd = os.fspath(workdir)
        if self.machine_id is None:
            self.machine = self._machine_model().current()
        self.runtime_dir.mkdir(parents=True, exist_ok=True)
        self._write_cmd_file(os.fspath(workdir))
        for path in (self.stdout_file, self.stderr_file):
            with open(path, "ab") as log:
                log.truncate(0)  # one run per row: start clean (and create the file)
        report = sealing.env_report(env_overlay)
        if report:  # which value each secret env key gets (never the value)
            self.stderr_file.write_text("".join(line + "\n" for line in report))
        files = (self.stdout_file, self.stderr_file)
        # The child's environment is _build_env(); process_utils only adds the launch marker.
        child_env = self._build_env(env_overlay)
        # started_at is the wall clock at the spawn: the OS start time (kept for identity) counts
        # from a boot time the kernel gives in whole seconds, so as a date it can be ~1 s early.
        spawned_at = timezone.now()
        marker = launch_doubt.mark_launching(self)  # on the row first: a launch in doubt is detectable
        spawned = process_utils.spawn(argv, workdir, child_env, *files, inherit_env=False, marker=marker)
        # The child has its secrets: the row keeps at most the values to mask, sealed (saved below).
        sealing.wipe_sealed(self, save=False)
        self.pid = spawned.pid
        self.launch_marker = spawned.marker
        self.os_start_time = spawned.start_time
        self.started_at = spawned_at
        self.exit_code = None
        self.ended_at = None
        if spawned.exit_code is not None:  # could not be executed (127/126, reason in stderr)
            self._finish(spawned.exit_code, all_fields=True)
            return self
        try:
            self.status = ProcessStatus.RUNNING
            # Due for a poll after POLL_INTERVAL; the runner's launching worker ticks it at the exit
            # (its pidfd wakes it: runner_wake_fd), so a poll right away would only find it running.
            self.retry_at = timezone.now() + LAUNCH_POLL_DELAY
            if background:
                self._write_pid_file()
            self.save()  # visible (and findable by the child's own Process.current()) while it runs
        except BaseException as exc:  # no child without a row: it dies, the row says why if it can
            self._abandon_launch(exc)
            raise
        signals.process_started.send_robust(type(self), process=self)
        if background:
            _watch_log_sizes()
        if not background:
            self._finish(self._wait_foreground())
        return self

    def _abandon_launch(self, exc: BaseException) -> None:
        """After a failure past the spawn: kill the new tree and close the row with the reason."""
        pid, start, cmd, tolerance, marker = self._proven_args()
        process_utils.kill_tree(pid, start, cmd, marker, graceful_timeout=0, tolerance=tolerance)
        code = process_utils.reap(pid, start, marker=marker, tolerance=tolerance)
        try:
            self._finish(code, note=f"launch failed after the spawn: {type(exc).__name__}: {exc}")
        except Exception:  # the database may be what failed: the child is gone at least
            logger.warning("could not close %s after a failed launch", self.pk, exc_info=True)

    def _wait_foreground(self) -> int | None:
        """Wait for our child; past `timeout` its whole tree (escaped descendants too) dies: 137."""
        pid, start, cmd, tolerance, marker = self._proven_args()
        try:
            return process_utils.wait(
                pid, start, cmd, marker=marker, timeout=self.timeout or None, tolerance=tolerance,
                on_tick=self._cap_logs,
            )  # fmt: skip
        except TimeoutError:
            process_utils.kill_tree(pid, start, cmd, marker, graceful_timeout=0, tolerance=tolerance)
            return process_utils.EXIT_KILLED
        except BaseException:  # e.g. KeyboardInterrupt: never leave the tree running behind us
            process_utils.kill_tree(pid, start, cmd, marker, graceful_timeout=0, tolerance=tolerance)
            raise

    def _end_leftovers(self) -> int:
        """Kill what is left of our launch once its main process has exited (a setsid daemon, say)."""
        # Called before the logs are read, so a leftover writing to them has stopped. Only a launch
        # of this process that it has reaped counts (process_utils.end_leftovers).
        return process_utils.end_leftovers(self.launch_marker or None)

    def record_launch_failure(self, message: str) -> None:
        """Record that this row could not be launched: EXITED, exit code 126, the reason in stderr."""
        self._finish(process_utils.EXIT_NOT_EXECUTABLE, note=f"cannot launch: {message}", all_fields=True)

    def _proven_args(self) -> tuple[int | None, float | None, list | None, float, str | None]:
        pid, start, tolerance = self._identity()
        return pid, start, self.cmd or None, tolerance, self.launch_marker or None

    def poll(self) -> int | None:
        """None while the process runs (or has not started); once it has ended, its exit code.

        An exited row always answers an int: a recorded code is never overwritten (a recorded -1
        becomes 137); a code that can no longer be known is recorded as 137 with a note in stderr.
        A running row of this machine whose process is gone is closed: with the true code when it
        was our child, else as unknown. A row of another machine is not judged here: None.
        """
        if self.status == ProcessStatus.EXITED:
            if recorded_exit(self.exit_code)[0] != self.exit_code:
                self._finish(self.exit_code)
            return self.exit_code
        if self.status != ProcessStatus.RUNNING or not self._is_local():
            return None
        pid, start, _cmd, tolerance, marker = self._proven_args()
        if pid is not None and start is not None:
            code = process_utils.reap(pid, start, marker=marker, tolerance=tolerance)
            if code is not None:
                self._finish(code)
                return self.exit_code
            if self.is_running:
                self._cap_logs()  # whoever watches a child keeps its logs within the cap
                return None
        # Gone, and not our child: its exit status went to its real parent. A code recorded on the
        # row is kept; otherwise the row says that nobody knows it.
        self._finish(self.exit_code)
        return self.exit_code

    @classmethod
    def runner_attach(cls, loop) -> None:
        """In each worker: keep the logs of the processes it launched within the cap while they run."""
        _log_cap_timer["loop"] = loop

    def runner_wake_fd(self) -> int | None:
        """Our running child's pidfd (a dup): the worker that launched it ticks it the moment it exits."""
        if self.status != ProcessStatus.RUNNING:
            return None
        pid, start, _cmd, tolerance, marker = self._proven_args()
        return process_utils.exit_fd(pid, start, marker=marker, tolerance=tolerance)

    def wait(self, timeout: float | None = None) -> int:
        """Block until the process ends and return its exit code; TimeoutError past `timeout`.

        `timeout or self.timeout` seconds, as in the original (so 0 also means the row's timeout).
        Never kills: the caller decides what to do with a process that outlives the wait.
        """
        timeout = timeout or self.timeout
        deadline = time.monotonic() + (timeout or 0)
        while True:
            pid, start, cmd, tolerance, marker = self._proven_args()
            if (
                self.status == ProcessStatus.RUNNING
                and pid is not None
                and start is not None
                and self._is_local()
            ):
                try:
                    process_utils.wait(
                        pid, start, cmd, marker=marker, timeout=max(0.0, deadline - time.monotonic()),
                        tolerance=tolerance,
                    )  # fmt: skip
                except TimeoutError:
                    raise TimeoutError(f"Process {self.id} did not exit within {timeout}s") from None
            code = self.poll()
            if code is not None:
                return code
            if time.monotonic() >= deadline:
                raise TimeoutError(f"Process {self.id} did not exit within {timeout}s")
            time.sleep(0.1)
            if not self._state.adding:
                # Not ours to watch (queued, or another machine's): the row tells when it ends.
                self.refresh_from_db(fields=["status", "exit_code", "pid", "started_at", "os_start_time"])

    def kill(self, signal_num: int = 15) -> bool:
        """Send `signal_num` to the process if it is provably ours; True if sent.

        A process that is gone, or whose pid now names another process, is not signalled: its row
        (if still running) is closed as poll() closes it, and the answer is False. A row that is not
        running is left as it is (False); a row of another machine is refused (ForeignMachineError).
        """
        self._require_local("kill")
        if self.status != ProcessStatus.RUNNING or not self._is_local():
            return False
        pid, start, cmd, tolerance, marker = self._proven_args()
        if pid is not None and start is not None:
            if process_utils.send_signal(pid, start, cmd, signal_num, tolerance, marker=marker):
                self._settle(timeout=1.0, fallback_code=128 + int(signal_num))
                return True
        self.poll()
        return False

    def _settle(self, timeout: float, fallback_code: int | None) -> None:
        """After a signal: wait briefly for the end and record it (the true code for our children)."""
        pid, start, cmd, tolerance, marker = self._proven_args()
        try:
            code = process_utils.wait(pid, start, cmd, marker=marker, timeout=timeout, tolerance=tolerance)
        except TimeoutError:
            return  # still alive (it may handle the signal): the row stays RUNNING
        self._finish(code if code is not None else fallback_code)

    def terminate(self, graceful_timeout: float = 5.0) -> bool:
        """SIGTERM, wait up to graceful_timeout, then SIGKILL; False if it was not running.

        A row of another machine is refused (ForeignMachineError).
        """
        self._require_local("terminate")
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
        """End the process and every OS descendant (also setsid'd ones); return how many died.

        A row of another machine is refused (ForeignMachineError).
        """
        self._require_local("kill the tree of")
        if not self._is_local():
            return 0
        pid, start, cmd, tolerance, marker = self._proven_args()
        killed = 0
        if pid is not None and start is not None:
            killed = process_utils.kill_tree(
                pid, start, cmd, marker, graceful_timeout=graceful_timeout, tolerance=tolerance
            )
        if self.status == ProcessStatus.RUNNING:
            self.poll()  # the true code for our child; else recorded as unknown
        return killed

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
        if self.status == ProcessStatus.EXITED and exit_code is not None:
            if self.exit_code == recorded_exit(exit_code)[0]:
                return
        self._finish(exit_code)

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
            # Our own child that ended: keep its true exit code. (A dead pid is not in live_pids,
            # so only live ones, possibly our zombies, cost a look into /proc.)
            if pid in live_pids:
                code = process_utils.reap(pid, start, marker=marker or None, tolerance=tolerance)
            elif pid in launched_here:  # (asking only about our own children keeps 10k rows cheap)
                code = process_utils.known_exit_code(pid, start, marker=marker or None, tolerance=tolerance)
            else:
                code = None
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
            process._finish(process.exit_code)
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
