"""The one owner of a Process row's lifecycle: spawn, watch, reap, signal and close.

Every way a row ends goes through `close()` (one row: its logs captured, its note added) or
`close_batch()` (many rows in a few UPDATEs, output not captured); both record the exit code by the
one rule, `recorded_exit()` (`recorded_exit_sql()` is the same rule for an UPDATE). The OS work is
`machine.process_utils`', which is given the row's identity as one value (`identity()`): our own
children are reaped through their pidfds, so a recycled pid never answers for a row.

The Process model's lifecycle methods (`launch`, `poll`, `wait`, `kill`, `terminate`, `kill_tree`,
`mark_exited`, `run_attached`, ...) are one-line delegations to the functions here. This module
reaches the row only through the model's own methods and fields; it never imports `machine.models`.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Iterable
from datetime import timedelta
from typing import Any

from django.db import models
from django.db.models import Case, F, Value, When
from django.db.models.functions import Concat, Right
from django.db.models.lookups import Exact
from django.utils import timezone

from machine import launch_doubt, process_utils, sealing, signals
from machine.choices import ProcessStatus
from machine.conf import machine_settings
from machine.process_files import storable_str
from machine.process_utils import ProcessIdentity
from machine.redaction import mask_cmd, mask_text
from workers import fencing

logger = logging.getLogger(__name__)

# -- the one exit-code rule -------------------------------------------------------------------------

#: The exit code recorded when how a process ended can no longer be known (as for a SIGKILL).
UNKNOWN_EXIT_CODE = 137
#: The line appended to stderr whenever UNKNOWN_EXIT_CODE is recorded, so it is never mistaken for a real one.
UNKNOWN_EXIT_NOTE = (
    "exit status unknown: the row was closed without observing the process exit; recorded as 137"
)
#: A stored -1: killed, by a signal nobody knows (the original's convention): recorded as a SIGKILL.
UNKNOWN_KILL = -1


def exit_code_from_status(code: int | None) -> int | None:
    """Normalise a recorded exit code: negative (-N = killed by signal N; -1 = unknown kill) -> 128 + N."""
    if code is None:
        return None
    if code == UNKNOWN_KILL:
        return UNKNOWN_EXIT_CODE
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
            When(exit_code=UNKNOWN_KILL, then=Value(UNKNOWN_EXIT_CODE)),
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


# -- launch input -----------------------------------------------------------------------------------

#: The longest timeout a Process accepts, in seconds (a year: the column and every wait can hold it).
MAX_TIMEOUT = 365 * 24 * 3600


class ProcessInputError(ValueError):
    """A Process cannot be launched as described (bad cmd, pwd or timeout); nothing was spawned."""


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


# -- watching from a worker's loop ------------------------------------------------------------------

#: How long after a background launch the row is first due for a poll (see ProcessMachine.poll_interval).
LAUNCH_POLL_DELAY = timedelta(seconds=1)
#: How often a worker checks the log sizes of the processes it launched (attach).
LOG_CAP_INTERVAL = 0.2
#: The worker's event loop (attach) and whether the log-cap timer is set on it.
_log_cap_timer: dict[str, Any] = {"loop": None, "set": False}


def attach(loop) -> None:
    """In each worker: keep the logs of the processes it launched within the cap while they run."""
    _log_cap_timer["loop"] = loop


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


def wake_fd(process) -> int | None:
    """Our running child's pidfd (a dup): the worker that launched it ticks it the moment it exits."""
    if process.status != ProcessStatus.RUNNING:
        return None
    return process_utils.exit_fd(identity(process))


# -- identity -------------------------------------------------------------------------------------


def identity(process) -> ProcessIdentity:
    """The row's process identity: exact when the OS start time was recorded, else to the contract's tolerance."""
    if process.os_start_time is not None:
        start, tolerance = process.os_start_time, process_utils.EXACT_START_TOLERANCE
    else:
        started_at = process.started_at
        start = started_at.timestamp() if started_at is not None else None
        tolerance = process.start_time_tolerance
    return ProcessIdentity.of(process.pid, start, process.cmd, process.launch_marker, tolerance)


def _ours(process) -> ProcessIdentity | None:
    """The identity of a row of this machine with something to prove, else None."""
    ident = identity(process)
    return ident if ident.known and process._is_local() else None


# -- the one close path -----------------------------------------------------------------------------

#: What launch() writes to a row that a runner's claim has just read whole. Not retry_at: it holds
#: the claim's token, which the worker's heartbeat may have renewed during the spawn.
LAUNCH_FIELDS = (
    "pwd", "machine", "pid", "launch_marker", "os_start_time", "started_at", "exit_code", "ended_at",
    "status", "modified_at", "sealed",
)  # fmt: skip
#: What close() writes to a row that is already saved.
FINISH_FIELDS = ("exit_code", "stdout", "stderr", "status", "ended_at", "retry_at", "modified_at", "sealed")
#: How many rows one UPDATE closes in close_batch() (well under SQLite's variable limit).
CLEANUP_BATCH_SIZE = 500


def close(process, exit_code: int | None, *, note: str = "", all_fields: bool = False) -> None:
    """Close this row: the one path that records how a process ended.

    The exit code goes through recorded_exit() (a known code normalised; an unknown one, None,
    becomes 137 with a note in stderr). What is left of the launch is ended first, the output is
    captured from the log files (a row without them keeps what it stored), `note` is appended to
    stderr, ended_at is kept if set, and the pid file goes away.
    """
    # Before the logs are read, so a leftover writing to them has stopped. Only a launch of this
    # process that it has reaped counts (process_utils.end_leftovers).
    process_utils.end_leftovers(process.launch_marker or None)
    code, unknown = recorded_exit(exit_code)
    secrets = process.mask_values()
    process._cap_logs(secrets)
    stdout, stderr = process._read_logs(secrets)  # (masked, bounded)
    process.stdout = stdout if stdout is not None else mask_text(process.stdout or "", secrets)
    process.stderr = stderr if stderr is not None else mask_text(process.stderr or "", secrets)
    for line in (note, unknown):
        process.stderr = append_line(process.stderr or "", mask_text(line, secrets))
    process.stdout, process.stderr = storable_str(process.stdout), storable_str(process.stderr)
    process.sealed = None  # a closed row keeps no secret, not even sealed
    process.exit_code = code
    process.status = ProcessStatus.EXITED
    process.ended_at = process.ended_at or timezone.now()
    process.retry_at = None
    process._remove_pid_file()
    if all_fields or process._state.adding:
        process.save()
    else:  # a saved row: only what ending changed
        process.save(update_fields=FINISH_FIELDS)
    signals.process_exited.send_robust(type(process), process=process, exit_code=process.exit_code)


def close_batch(model, ids: list, *, exit_code: int | None = None) -> int:
    """close() for many RUNNING rows whose output is not captured, CLEANUP_BATCH_SIZE ids per UPDATE.

    The same rule (recorded_exit) gives each row `exit_code`, else the code it already has, else
    UNKNOWN_EXIT_CODE with UNKNOWN_EXIT_NOTE appended to its stderr. Their sealed values are
    cleared, after the log files of the (few) rows that still have some are masked with them.
    Returns how many rows this call closed.
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
    manager = model._default_manager
    _mask_sealed_logs(manager, ids)
    for start in range(0, len(ids), CLEANUP_BATCH_SIZE):
        chunk = ids[start : start + CLEANUP_BATCH_SIZE]
        closed += manager.filter(pk__in=chunk, status=ProcessStatus.RUNNING).update(**values)
    return closed


def _mask_sealed_logs(manager, ids: list) -> None:
    """Mask the log files of the RUNNING rows among `ids` that carry sealed mask values.

    One query whatever the number of ids: running rows with sealed values are few (only
    launched rows whose caller gave secrets), so they are listed and matched here.
    """
    wanted = set(ids)
    rows = manager.filter(status=ProcessStatus.RUNNING, sealed__isnull=False)
    for row in rows.only("id", "pwd", "cmd", "env", "sealed", "process_type"):
        if row.pk in wanted:
            row._read_logs()


def mark_exited(process, exit_code: int | None = 0) -> None:
    """Close the row with `exit_code` (through close()); nothing to do if it already has it."""
    if process.status == ProcessStatus.EXITED and exit_code is not None:
        if process.exit_code == recorded_exit(exit_code)[0]:
            return
    close(process, exit_code)


def record_launch_failure(process, message: str) -> None:
    """Record that this row could not be launched: EXITED, exit code 126, the reason in stderr."""
    close(process, process_utils.EXIT_NOT_EXECUTABLE, note=f"cannot launch: {message}", all_fields=True)


# -- spawn ------------------------------------------------------------------------------------------


def launch(process, background: bool = False, cwd: str | None = None):
    """Spawn cmd (in its own session, output to the log files) and record pid and start time.

    Foreground: wait (past `timeout` the whole tree is killed, exit code 137). Background: return
    at once; poll()/wait() collect the exit code. A command that cannot be executed ends EXITED
    with 127/126 and the reason in stderr. Bad input raises ProcessInputError first.
    """
    if launch_doubt.in_doubt(process):  # its launcher may have died after the spawn: never run twice
        launch_doubt.settle(process, background=background)
        return process
    workdir = cwd or process.pwd
    validate_launch_input(process.cmd, workdir, process.timeout, process.env)
    if process.status == ProcessStatus.RUNNING and process.is_running:
        raise RuntimeError(f"{process} is already running (pid {process.pid})")
    # The caller's real argv and env (restored from the seal for a queued row), or refused.
    argv, env_overlay = sealing.unseal_for_launch(process)
    validate_launch_input(argv, workdir, process.timeout, env_overlay)
    process.cmd = argv  # (in memory; every save stores it masked)
    if not process.pwd:
        process.pwd = os.fspath(workdir)
    if process.machine_id is None:
        process.machine = process._machine_model().current()
    process.runtime_dir.mkdir(parents=True, exist_ok=True)
    process._write_cmd_file(os.fspath(workdir))
    for path in (process.stdout_file, process.stderr_file):
        with open(path, "ab") as log:
            log.truncate(0)  # one run per row: start clean (and create the file)
    report = sealing.env_report(env_overlay)
    if report:  # which value each secret env key gets (never the value)
        process.stderr_file.write_text("".join(line + "\n" for line in report))
    files = (process.stdout_file, process.stderr_file)
    # The child's environment is _build_env(); process_utils only adds the launch marker.
    child_env = process._build_env(env_overlay)
    # started_at is the wall clock at the spawn: the OS start time (kept for identity) counts
    # from a boot time the kernel gives in whole seconds, so as a date it can be ~1 s early.
    spawned_at = timezone.now()
    marker = launch_doubt.mark_launching(process)  # on the row first: a launch in doubt is detectable
    try:
        spawned = process_utils.spawn(argv, workdir, child_env, *files, inherit_env=False, marker=marker)
    except Exception:  # refused before any child exists (a vanished pwd, EMFILE on a log): not in doubt
        launch_doubt.unmark(process, marker)
        raise
    # The child has its secrets: the row keeps at most the values to mask, sealed (saved below).
    sealing.wipe_sealed(process, save=False)
    process.pid = spawned.pid
    process.launch_marker = spawned.marker
    process.os_start_time = spawned.start_time
    process.started_at = spawned_at
    process.exit_code = None
    process.ended_at = None
    if spawned.exit_code is not None:  # could not be executed (127/126, reason in stderr)
        close(process, spawned.exit_code, all_fields=True)
        return process
    try:
        process.status = ProcessStatus.RUNNING
        # Due for a poll after LAUNCH_POLL_DELAY; the runner's launching worker ticks it at the exit
        # (its pidfd wakes it: wake_fd), so a poll right away would only find it running. Inside a
        # runner's tick the schedule is asked of the runner, which keeps its claim on the row (so the
        # same worker reaps the child), instead of being written over the claim.
        poll_at = timezone.now() + LAUNCH_POLL_DELAY
        claimed = fencing.claim_for(process) is not None
        if not claimed:
            process.retry_at = poll_at
        if background:
            process._write_pid_file()
        # Visible (and findable by the child's own Process.current()) while it runs. A row a runner
        # claimed was read whole by the claim: only what the launch set is written.
        process.save(update_fields=LAUNCH_FIELDS if claimed else None)
        if claimed:
            fencing.fenced_update(process, retry_at=poll_at)  # (no write: the runner keeps it)
    except BaseException as exc:  # no child without a row: it dies, the row says why if it can
        abandon_launch(process, exc)
        raise
    signals.process_started.send_robust(type(process), process=process)
    if background:
        _watch_log_sizes()
    if not background:
        close(process, wait_foreground(process))
    return process


def abandon_launch(process, exc: BaseException) -> None:
    """After a failure past the spawn: kill the new tree and close the row with the reason."""
    ident = identity(process)
    process_utils.kill_tree(ident, graceful_timeout=0)
    code = process_utils.reap(ident)
    try:
        close(process, code, note=f"launch failed after the spawn: {type(exc).__name__}: {exc}")
    except Exception:  # the database may be what failed: the child is gone at least
        logger.warning("could not close %s after a failed launch", process.pk, exc_info=True)


def wait_foreground(process) -> int | None:
    """Wait for our child; past `timeout` its whole tree (escaped descendants too) dies: 137."""
    ident = identity(process)
    try:
        return process_utils.wait(ident, timeout=process.timeout or None, on_tick=process._cap_logs)
    except TimeoutError:
        process_utils.kill_tree(ident, graceful_timeout=0)
        return process_utils.EXIT_KILLED
    except BaseException:  # e.g. KeyboardInterrupt: never leave the tree running behind us
        process_utils.kill_tree(ident, graceful_timeout=0)
        raise


def run_attached(process, stdout=None, stderr=None, cwd: str | None = None) -> int | None:
    """Launch, stream the output live, enforce `timeout` (whole tree killed: 137); return the exit code."""
    launch(process, background=True, cwd=cwd)
    if process.status != ProcessStatus.RUNNING:
        (stderr or sys.stderr).write(process.stderr)
        return process.exit_code
    deadline = time.monotonic() + process.timeout if process.timeout else None
    try:
        process.stream_output(stdout, stderr, deadline=deadline)
    except BaseException:  # Ctrl-C: never leave the tree running behind us
        kill_tree(process, graceful_timeout=0)
        raise
    if process.is_running:  # past the deadline
        kill_tree(process, graceful_timeout=0)  # (closes the row with its true code, 137)
        if process.status != ProcessStatus.EXITED:
            close(process, process_utils.EXIT_KILLED)
        return process.exit_code
    return wait(process, timeout=5)


# -- watch and reap ---------------------------------------------------------------------------------


def poll(process) -> int | None:
    """None while the process runs (or has not started); once it has ended, its exit code.

    An exited row always answers an int: a recorded code is never overwritten (a recorded -1
    becomes 137); a code that can no longer be known is recorded as 137 with a note in stderr.
    A running row of this machine whose process is gone is closed: with the true code when it
    was our child (reaped through its pidfd), else as unknown. A row of another machine is not
    judged here: None.
    """
    if process.status == ProcessStatus.EXITED:
        if recorded_exit(process.exit_code)[0] != process.exit_code:
            close(process, process.exit_code)
        return process.exit_code
    if process.status != ProcessStatus.RUNNING or not process._is_local():
        return None
    ident = identity(process)
    if ident.known:
        code = process_utils.reap(ident)
        if code is not None:
            close(process, code)
            return process.exit_code
        if process.is_running:
            process._cap_logs()  # whoever watches a child keeps its logs within the cap
            return None
    # Gone, and not our child: its exit status went to its real parent. A code recorded on the
    # row is kept; otherwise the row says that nobody knows it.
    close(process, process.exit_code)
    return process.exit_code


def wait(process, timeout: float | None = None) -> int:
    """Block until the process ends and return its exit code; TimeoutError past `timeout`.

    `timeout or process.timeout` seconds, as in the original (so 0 also means the row's timeout).
    Never kills: the caller decides what to do with a process that outlives the wait.
    """
    timeout = timeout or process.timeout
    deadline = time.monotonic() + (timeout or 0)
    while True:
        ident = _ours(process) if process.status == ProcessStatus.RUNNING else None
        if ident is not None:
            try:
                process_utils.wait(ident, timeout=max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                raise TimeoutError(f"Process {process.id} did not exit within {timeout}s") from None
        code = poll(process)
        if code is not None:
            return code
        if time.monotonic() >= deadline:
            raise TimeoutError(f"Process {process.id} did not exit within {timeout}s")
        time.sleep(0.1)
        if not process._state.adding:
            # Not ours to watch (queued, or another machine's): the row tells when it ends.
            process.refresh_from_db(fields=["status", "exit_code", "pid", "started_at", "os_start_time"])


# -- signal -----------------------------------------------------------------------------------------


def kill(process, signal_num: int = 15) -> bool:
    """Send `signal_num` to the process if it is provably ours; True if sent.

    A process that is gone, or whose pid now names another process, is not signalled: its row
    (if still running) is closed as poll() closes it, and the answer is False. A row that is not
    running is left as it is (False); a row of another machine is refused (ForeignMachineError).
    """
    process._require_local("kill")
    if process.status != ProcessStatus.RUNNING or not process._is_local():
        return False
    ident = identity(process)
    if ident.known and process_utils.send_signal(ident, signal_num):
        _settle(process, timeout=1.0, fallback_code=128 + int(signal_num))
        return True
    poll(process)
    return False


def _settle(process, timeout: float, fallback_code: int | None) -> None:
    """After a signal: wait briefly for the end and record it (the true code for our children)."""
    try:
        code = process_utils.wait(identity(process), timeout=timeout)
    except TimeoutError:
        return  # still alive (it may handle the signal): the row stays RUNNING
    close(process, code if code is not None else fallback_code)


def terminate(process, graceful_timeout: float = 5.0) -> bool:
    """SIGTERM, wait up to graceful_timeout, then SIGKILL; False if it was not running.

    A row of another machine is refused (ForeignMachineError).
    """
    process._require_local("terminate")
    ident = _ours(process)
    if ident is None or not process.is_running:
        if process.status == ProcessStatus.RUNNING:
            poll(process)
        return False
    if not process_utils.send_signal(ident, 15):
        return False
    try:
        code = process_utils.wait(ident, timeout=graceful_timeout)
        close(process, code if code is not None else 128 + 15)
        return True
    except TimeoutError:
        pass
    process_utils.send_signal(ident, 9)
    _settle(process, timeout=5.0, fallback_code=137)
    return True


def kill_tree(process, graceful_timeout: float = 2.0) -> int:
    """End the process and every OS descendant (also setsid'd ones); return how many died.

    A row of another machine is refused (ForeignMachineError).
    """
    process._require_local("kill the tree of")
    if not process._is_local():
        return 0
    ident = identity(process)
    killed = process_utils.kill_tree(ident, graceful_timeout=graceful_timeout) if ident.known else 0
    if process.status == ProcessStatus.RUNNING:
        poll(process)  # the true code for our child; else recorded as unknown
    return killed
