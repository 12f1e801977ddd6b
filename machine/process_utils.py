"""The OS seam: spawn, prove, signal, walk, reap and tail processes (no Django imports).

Identity. A pid names nothing by itself. A process is "ours" only when its pid, its start time
(psutil ``create_time``: boot time + clock ticks, so 0.01 s resolution) and its command match.
Linux hands a freed pid to the next fork, and measured on this kernel the recycled pid nearly always
gets the *same* start-time tick, so a start time alone cannot tell the old process from the new one
(psutil's own ``is_running()`` is fooled too). Two things can, and we use both:

* a per-launch marker: every child gets ``MACHINE_PROCESS_MARKER=<uuid hex>`` (and the markers of
  all launches above it in ``MACHINE_PROCESS_LINEAGE``). ``/proc/<pid>/environ`` shows it for the
  whole life of the process and of every descendant, even after they double-fork and ``setsid()``;
* a pidfd for the children launched here: it refers to one process, never to a recycled pid.

The identity travels as one frozen value, `ProcessIdentity` (pid, start time, cmd, marker,
tolerance); the functions that prove, signal, walk, wait on or reap a process take it whole (the
older loose arguments are still accepted, for callers outside this package).

Signals go through a pidfd opened *before* the identity check: a pinned pid cannot be recycled,
so the check and the signal see the same process. Our children are reaped through their pidfds too
(`waitid(P_PIDFD)`), never by pid, and Popen is handed the status so it never waits on the pid.

Leftovers. When a launch's main process has ended, what still carries its marker is killed
(``end_leftovers``): a ``setsid`` daemon does not outlive the tree it was started by. A process that
also drops its environment (``env -i``) carries no marker; only a ``PR_SET_CHILD_SUBREAPER`` parent
gets it back, as an adopted child. Importing this module never makes anyone a subreaper: the
processes that own everything they start (``manage.py run``, the runner's orchestrator) ask for it
(``become_subreaper``) and end their adopted orphans by pid (``end_orphans``), never with
``waitpid(-1)``, which would steal the exit statuses of children other code in the process owns.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import functools
import json
import os
import re
import select
import signal
import stat
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import psutil

from machine.redaction import REDACTED, SECRET_KEY_PARTS, redact_env  # noqa: F401  (re-exported)

#: The contract's tolerance, for start times not taken from the OS (and the floor once the marker is seen).
START_TIME_TOLERANCE = 5.0
#: For start times recorded from the OS (``Spawned.start_time``, ``get_start_time``): 2 clock ticks.
EXACT_START_TOLERANCE = 0.02
MARKER_ENV = "MACHINE_PROCESS_MARKER"
LINEAGE_ENV = "MACHINE_PROCESS_LINEAGE"
EXIT_NOT_EXECUTABLE = 126
EXIT_NOT_FOUND = 127
EXIT_KILLED = 128 + signal.SIGKILL

Cmd = Sequence[str] | None
Marker = str | None
StartTime = float | None
StrPath = str | os.PathLike | None

_KILL_WAIT = 2.0  # bound on waiting for SIGKILLed processes to disappear
#: SIGTERM grace for what is left of a finished launch (a daemon that honours SIGTERM goes at once).
LEFTOVER_GRACE = 1.0
_PR_SET_CHILD_SUBREAPER = 36
_PR_GET_CHILD_SUBREAPER = 37
_TAIL_BLOCK = 64 * 1024
_TAIL_MAX_BYTES = 16 * 1024 * 1024  # never scan further back than this, however long the lines
_MAX_FINISHED_CHILDREN = 256
_HAVE_PIDFD = hasattr(os, "pidfd_open") and hasattr(signal, "pidfd_send_signal")
#: waitid(P_PIDFD) (Linux 5.4): a launch is reaped through its pidfd, never by a pid that may be reused.
_HAVE_PIDFD_WAIT = _HAVE_PIDFD and hasattr(os, "P_PIDFD") and hasattr(os, "waitid")
_MARKER_RE = re.compile(r"^[A-Za-z0-9_-]{8,128}$")
# `python3 -u run.py`, `/bin/sh run.sh`, `node hook.js`: the script, not the interpreter, names it.
_INTERPRETER_RE = re.compile(
    r"^(python[\d.]*|pypy[\d.]*|(ba|da|z|k)?sh|node(js)?|deno|bun|perl|ruby|php[\d.]*)$"
)


@dataclass(frozen=True, slots=True)
class ProcessIdentity:
    """Who a process is: pid, start time (on get_start_time()'s clock), command, launch marker, and
    how far the start time may be off. Passed whole, so no caller can swap two of them."""

    pid: int | None
    start_time: StartTime
    cmd: tuple[str, ...] | None = None
    marker: Marker = None
    tolerance: float = START_TIME_TOLERANCE

    @classmethod
    def of(
        cls,
        pid: int | None,
        start_time: StartTime,
        cmd: Cmd = None,
        marker: Marker = None,
        tolerance: float = START_TIME_TOLERANCE,
    ) -> ProcessIdentity:
        """Build one from stored values: an empty cmd or marker means none."""
        return cls(pid, start_time, tuple(str(arg) for arg in cmd) if cmd else None, marker or None, tolerance)  # fmt: skip

    @property
    def known(self) -> bool:
        """Whether there is anything to prove (a pid and a start time)."""
        return self.pid is not None and self.start_time is not None


def _loose(legacy: Callable[..., tuple[ProcessIdentity, dict]]):
    """Let a function taking a ProcessIdentity also be called the older way, with loose values.

    `legacy` has the old signature and returns (identity, the function's other keyword arguments).
    Code in this package passes a ProcessIdentity; the loose form is kept for callers of the seam.
    """

    def decorate(function):
        @functools.wraps(function)
        def wrapper(*args, **kwargs):
            if (args and isinstance(args[0], ProcessIdentity)) or "identity" in kwargs:
                return function(*args, **kwargs)
            identity, rest = legacy(*args, **kwargs)  # (pid=..., start_time=... by keyword too)
            return function(identity, **rest)

        return wrapper

    return decorate


def _ident_only(pid, start_time, cmd=None, tolerance=START_TIME_TOLERANCE, *, marker=None):
    # (pid, start_time, cmd, tolerance, *, marker): proven_process, is_alive
    return ProcessIdentity.of(pid, start_time, cmd, marker, tolerance), {}


def _ident_by_keyword(pid, start_time, *, marker=None, tolerance=START_TIME_TOLERANCE, **rest):
    # (pid, start_time, *, marker, tolerance, ...): exit_fd, known_exit_code, reap
    return ProcessIdentity.of(pid, start_time, None, marker, tolerance), rest


@dataclass
class Spawned:
    """One launch: persist pid, start_time and marker; the handles live in this process only."""

    pid: int | None
    start_time: StartTime
    marker: str
    pidfd: int | None = None  #: owned by the registry, closed once the child is reaped
    popen: subprocess.Popen | None = field(default=None, repr=False)
    exit_code: int | None = None  #: set when cmd could not be executed, or by run_foreground
    timed_out: bool = False
    error: str = ""

    def identity(self, cmd: Cmd = None) -> ProcessIdentity:
        """The identity of this launch (its start time read from the OS: exact)."""
        return ProcessIdentity.of(self.pid, self.start_time, cmd, self.marker, EXACT_START_TOLERANCE)


@dataclass
class _Child:
    pid: int
    start_time: float
    marker: str
    popen: subprocess.Popen
    pidfd: int | None
    exit_code: int | None = None
    #: _pid_counters() read just before the fork: how far pid allocation can have moved since.
    counters: tuple[int, int] | None = None
    #: The log files its output goes to (cap_running_logs keeps them within a cap while it runs).
    logs: tuple[str, ...] = ()


# Children launched by this process, by marker: unique per launch, unlike pid + start tick.
_children: dict[str, _Child] = {}
_children_lock = threading.RLock()
_inherited_children: list[dict[str, _Child]] = []


def _forget_children_after_fork() -> None:
    # A forked copy is not the parent of our children: it must not wait on them, and a lock held by
    # another thread at fork time would stay locked forever. The old entries stay referenced so
    # their Popen finalizers never run in the wrong process.
    global _children, _children_lock
    _inherited_children.append(_children)
    _children, _children_lock = {}, threading.RLock()


os.register_at_fork(after_in_child=_forget_children_after_fork)


def _exit_code(returncode: int) -> int:
    # Popen reports death by signal N as -N; shells and the contract say 128 + N.
    return 128 - returncode if returncode < 0 else returncode


def _reap_by_pidfd(child: _Child) -> int | None:
    """Reap our child through its pidfd (waitid P_PIDFD): its exit code, or None while it runs.

    The pidfd pins one process, so a recycled pid can never answer for it. Popen is handed the
    status (its returncode): neither it nor its finalizer (subprocess._active) waits on the pid again.
    """
    popen = child.popen
    lock = getattr(popen, "_waitpid_lock", None)
    if lock is not None and not lock.acquire(blocking=False):
        return None  # (Popen itself is waiting on it right now: the next poll reads its status)
    try:
        if popen.returncode is None:
            info = os.waitid(os.P_PIDFD, child.pidfd, os.WEXITED | os.WNOHANG)
            if info is None:  # (WNOHANG, and nothing has changed)
                return None
            # CLD_EXITED: si_status is the exit status; CLD_KILLED/CLD_DUMPED: the signal (-N for Popen).
            popen.returncode = info.si_status if info.si_code == os.CLD_EXITED else -info.si_status
        return _exit_code(popen.returncode)
    except OSError:  # ECHILD (reaped behind our back), EINVAL (a kernel before 5.4): Popen's view
        pass
    finally:
        if lock is not None:
            lock.release()
    return None if popen.poll() is None else _exit_code(popen.returncode)


def _lookup_child(identity: ProcessIdentity) -> _Child | None:
    pid, start_time, marker = identity.pid, identity.start_time, identity.marker
    with _children_lock:
        # Without a marker, the newest launch with this pid and start time is the best answer.
        candidates = [_children.get(marker)] if marker is not None else reversed(_children.values())
        for child in candidates:
            if child and child.pid == pid and start_time is not None:
                if abs(child.start_time - start_time) <= max(identity.tolerance, EXACT_START_TOLERANCE):
                    return child
    return None


def _poll_child(child: _Child) -> int | None:
    with _children_lock:
        if child.exit_code is None:
            if child.pidfd is not None and _HAVE_PIDFD_WAIT:
                code = _reap_by_pidfd(child)
            else:  # no pidfd: Popen's waitpid() by pid (the pid is ours until it is reaped)
                returncode = child.popen.poll()
                code = None if returncode is None else _exit_code(returncode)
            if code is not None:
                child.exit_code = code
                if child.pidfd is not None:
                    os.close(child.pidfd)
                    child.pidfd = None
        return child.exit_code


def _register(child: _Child) -> None:
    with _children_lock:
        _children[child.marker] = child
        finished = [marker for marker, c in _children.items() if c.exit_code is not None]
        for marker in finished[: max(0, len(finished) - _MAX_FINISHED_CHILDREN)]:
            del _children[marker]


def _pin(pid: int, child: _Child | None = None) -> int | None:
    """Return a new pidfd for pid (None if unsupported); raise ProcessLookupError if it is gone."""
    with _children_lock:
        # A private dup of our child's pidfd: another thread reaping the child closes the original,
        # and its fd number could then be reused by an unrelated open().
        if child is not None and child.pidfd is not None:
            return os.dup(child.pidfd)
    if not _HAVE_PIDFD:
        return None
    try:
        return os.pidfd_open(pid)
    except ProcessLookupError:
        raise
    except OSError:  # ENOSYS/EPERM in old kernels or seccomp sandboxes: plain kill() it is
        return None


def _signallable(pid: object) -> bool:
    # Only single positive pids are ever signalled (never killpg, never pid <= 0), so our process
    # group cannot be hit; init and ourselves are refused outright.
    return isinstance(pid, int) and not isinstance(pid, bool) and pid > 1 and pid != os.getpid()


def _is_alive_proc(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _read_markers(pid: int, needle: bytes = b"") -> tuple[str | None, set[str]] | None:
    """Return (own marker, lineage) from /proc/<pid>/environ; None if unreadable or needle absent."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            environ = f.read()
    except OSError:  # gone, or another user's process we may not read
        return None
    if needle not in environ:
        return None
    own, lineage = None, set()
    for item in environ.split(b"\0"):
        name, _, value = item.partition(b"=")
        if name == MARKER_ENV.encode():
            own = value.decode(errors="replace")
        elif name == LINEAGE_ENV.encode():
            lineage = set(value.decode(errors="replace").split(","))
    return own, lineage


def marker_from_env(env: Mapping[str, object] | None) -> str | None:
    """Return the launch marker kept in a (possibly redacted) env dict, if any."""
    value = (env or {}).get(MARKER_ENV)
    return value if isinstance(value, str) and _MARKER_RE.match(value) else None


def get_start_time(pid: int) -> float | None:
    """Return the OS start time of pid (epoch seconds, exact to the clock tick), or None if it is gone."""
    try:
        return psutil.Process(pid).create_time()
    except (psutil.Error, ValueError, TypeError):
        return None


def start_clock_now() -> float:
    """Now, on the clock of get_start_time() (boot time plus time since boot)."""
    # Not time.time(): OS start times count from the boot time in whole seconds (/proc/stat), up to
    # a second off the wall clock, so a process started after time.time() may seem older than it.
    try:
        return psutil.boot_time() + time.clock_gettime(time.CLOCK_BOOTTIME)
    except (AttributeError, OSError):  # no CLOCK_BOOTTIME (not Linux)
        return time.time()


def cmdline_matches(cmdline: Sequence[str], cmd: Cmd) -> bool:
    """Tell whether an OS cmdline runs cmd[0] (by basename, also as an interpreter's script)."""
    if not cmd:
        return True
    if not cmdline:
        return False
    want = os.path.basename(cmd[0])
    if os.path.basename(cmdline[0]) == want:
        return True
    if _INTERPRETER_RE.match(os.path.basename(cmdline[0])):
        script = next((arg for arg in cmdline[1:] if not arg.startswith("-")), None)
        return script is not None and os.path.basename(script) == want
    return False


@_loose(_ident_only)
def proven_process(identity: ProcessIdentity) -> psutil.Process | None:
    """Return the live (non-zombie) psutil.Process only if pid, start time, cmd and marker match.

    With a marker, a readable environ must carry it (a recycled pid does not, even on the same start
    tick with the same command); once seen it settles identity, so the start time then only has to be
    within START_TIME_TOLERANCE (a wall-clock step moves every create_time).
    """
    pid, start_time, cmd, marker, tolerance = (
        identity.pid, identity.start_time, identity.cmd, identity.marker, identity.tolerance,
    )  # fmt: skip
    if not isinstance(pid, int) or pid <= 0 or start_time is None:
        return None
    child = _lookup_child(identity)
    if child is not None:
        if _poll_child(child) is not None:
            return None  # our child has exited: whatever holds the pid now is someone else
        # An unreaped child of ours keeps its pid, so check the command it was launched with: it may
        # have exec'd into another program since (a pyenv shim, `sh -c 'exec ...'`).
        if cmd and not cmdline_matches([str(arg) for arg in child.popen.args], cmd):
            return None
        try:
            return psutil.Process(pid)
        except psutil.Error:
            return None
    if marker is not None:
        markers = _read_markers(pid)
        own = markers[0] if markers is not None else None
        # Every process launched with a marker starts with it in its environ, so a readable environ
        # without it (or with another launch's) is a recycled pid, even on the same start tick with
        # the same command line. Only an unreadable environ leaves start time and command to decide.
        if markers is not None and own != marker:
            return None
        if own == marker:
            tolerance = max(tolerance, START_TIME_TOLERANCE)
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE or abs(proc.create_time() - start_time) > tolerance:
            return None
        # Our own marker in its environ already proves the launch, even after an exec changed argv.
        own_marker_seen = marker is not None and own == marker
        if cmd and not own_marker_seen and not cmdline_matches(proc.cmdline(), cmd):
            # Programs that rewrite their argv (browsers) still run the same executable.
            if os.path.basename(proc.exe()) != os.path.basename(cmd[0]):
                return None
    except psutil.Error:
        return None
    return proc


@_loose(_ident_only)
def is_alive(identity: ProcessIdentity) -> bool:
    """Tell whether the proven process is running (zombies and recycled pids are not)."""
    return proven_process(identity) is not None


def children_pids(pid: int, recursive: bool = False) -> list[int]:
    """Return the pids of pid's children (all descendants if recursive); [] if pid is gone."""
    try:
        return sorted(p.pid for p in psutil.Process(pid).children(recursive=recursive))
    except (psutil.Error, ValueError):
        return []


def _signal_pinned(
    pid: int, child: _Child | None, sig: int, prove: Callable[[], psutil.Process | None]
) -> bool:
    # Pin first, then prove, then signal through the pin: the pid cannot be recycled in between.
    if not _signallable(pid):
        return False
    try:
        pidfd = _pin(pid, child)
    except ProcessLookupError:
        return False
    try:
        proc = prove()
        if proc is None:
            return False
        if pidfd is not None:
            signal.pidfd_send_signal(pidfd, sig)
        else:
            proc.send_signal(sig)  # psutil re-checks pid + create time right before kill()
        return True
    except (ProcessLookupError, PermissionError, psutil.Error):
        return False
    finally:
        if pidfd is not None:
            os.close(pidfd)


def _loose_signal(pid, start_time, cmd, sig, tolerance=START_TIME_TOLERANCE, *, marker=None):
    return ProcessIdentity.of(pid, start_time, cmd, marker, tolerance), {"sig": sig}


@_loose(_loose_signal)
def send_signal(identity: ProcessIdentity, sig: int) -> bool:
    """Send sig to the process only if its identity is proven; return whether it was sent."""
    return _signal_pinned(identity.pid, _lookup_child(identity), sig, lambda: proven_process(identity))


def _scan_marker(marker: str, min_pid: int = 0) -> Iterator[psutil.Process]:
    try:
        names = os.listdir("/proc")
    except OSError:  # no procfs: only psutil's children() walk is available
        return
    for name in names:
        if not name.isdigit() or int(name) < min_pid or int(name) == os.getpid():
            continue
        found = _read_markers(int(name), marker.encode())
        if found and (found[0] == marker or marker in found[1]):
            try:
                yield psutil.Process(int(name))
            except psutil.Error:
                continue


def _loose_descendants(pid, start_time, marker=None, *, tolerance=START_TIME_TOLERANCE, min_pid=0):
    return ProcessIdentity.of(pid, start_time, None, marker, tolerance), {"min_pid": min_pid}


@_loose(_loose_descendants)
def find_descendants(identity: ProcessIdentity, *, min_pid: int = 0) -> list[psutil.Process]:
    """Return the live descendants: children of the proven root plus every process carrying the marker."""
    # (`min_pid` skips lower pids in the marker scan: for a caller that knows none can be one. The
    # root is proven without its command: a descendant search is about the tree, not the program.)
    found: dict[int, psutil.Process] = {}
    marker = identity.marker
    root = proven_process(replace(identity, cmd=None))
    if root is not None:
        try:
            found.update((p.pid, p) for p in root.children(recursive=True))
        except psutil.Error:
            pass
    if marker is not None:
        found.update((p.pid, p) for p in _scan_marker(marker, min_pid) if p.pid not in found)
    if root is not None:
        found.pop(root.pid, None)  # with the root gone, a marked process on its pid is a descendant
    found.pop(os.getpid(), None)
    return [p for _, p in sorted(found.items()) if p.pid > 1 and _is_alive_proc(p)]


def _wait_gone(procs: list[psutil.Process], child: _Child | None, deadline: float) -> None:
    # Not psutil.wait_procs: it waitpid()s our own children behind Popen's back (Popen then reports
    # exit code 0), and it counts other parents' unreaped zombies as alive.
    delay = 0.005
    while True:
        if child is not None:
            _poll_child(child)
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not any(_is_alive_proc(p) for p in procs):
            return
        time.sleep(min(delay, remaining))
        delay = min(delay * 2, 0.05)


def _loose_kill_tree(
    pid, start_time, cmd=None, marker=None, graceful_timeout=2.0, *, tolerance=START_TIME_TOLERANCE, min_pid=0
):
    identity = ProcessIdentity.of(pid, start_time, cmd, marker, tolerance)
    return identity, {"graceful_timeout": graceful_timeout, "min_pid": min_pid}


@_loose(_loose_kill_tree)
def kill_tree(identity: ProcessIdentity, graceful_timeout: float = 2.0, *, min_pid: int = 0) -> int:
    """SIGTERM the proven root and all descendants at once, SIGKILL survivors; return how many died."""
    root = proven_process(identity)
    child = _lookup_child(identity)
    if root is None and identity.marker is None:
        return 0  # nothing proven, and no marker to find escaped descendants by
    known: dict[int, psutil.Process] = {root.pid: root} if root is not None else {}
    signalled: dict[int, psutil.Process] = {}
    sig, wait_s = (signal.SIGTERM, graceful_timeout) if graceful_timeout > 0 else (signal.SIGKILL, _KILL_WAIT)
    # Several rounds: what forks while we signal carries the marker and turns up in the rescan.
    for _ in range(4):
        found = find_descendants(identity, min_pid=min_pid)
        known.update((p.pid, p) for p in found)
        targets = [p for p in known.values() if _is_alive_proc(p)]
        if not targets:
            break
        for proc in targets:
            # A tree member is proven by psutil's pid + create time identity, checked after pinning.
            own = child if root is not None and proc.pid == root.pid else None
            if _signal_pinned(proc.pid, own, sig, lambda p=proc: p if _is_alive_proc(p) else None):
                signalled[proc.pid] = proc
        _wait_gone(targets, child, time.monotonic() + wait_s)
        sig, wait_s = signal.SIGKILL, _KILL_WAIT
    if child is not None:
        _poll_child(child)
    return sum(1 for proc in signalled.values() if not _is_alive_proc(proc))


def end_leftovers(marker: Marker, *, grace: float = LEFTOVER_GRACE) -> int:
    """Kill what still carries the marker of a launch of ours whose main process has exited; return how many."""
    # Only then is the tree known to be over: a launch made elsewhere, or still running, is left alone.
    if not marker:
        return 0
    with _children_lock:
        child = _children.get(marker)
    if child is None or _poll_child(child) is None:
        return 0
    identity = ProcessIdentity(child.pid, child.start_time, None, marker, EXACT_START_TOLERANCE)
    return kill_tree(identity, graceful_timeout=grace, min_pid=_first_pid_since(child))


def _pid_counters() -> tuple[int, int] | None:
    """(forks since boot, tasks alive now), host-wide; None without procfs."""
    try:
        with open("/proc/stat", "rb") as f:
            forks = next(int(line.split()[1]) for line in f if line.startswith(b"processes "))
        with open("/proc/loadavg", "rb") as f:
            tasks = int(f.read().split()[3].partition(b"/")[2])
        return forks, tasks
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def _pid_max() -> int:
    try:
        with open("/proc/sys/kernel/pid_max", "rb") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 0  # unknown: never assume that pids did not wrap


def _first_pid_since(child: _Child) -> int:
    """The lowest pid a process started after child can have: child.pid + 1, or 0 if pids may have wrapped."""
    # Pids are handed out upwards from the last one given, skipping those in use, and wrap at
    # pid_max. Since the child's fork the allocator has moved past at most one pid per fork since
    # (threads included) plus one per task alive before it: while that stays below pid_max, nothing
    # younger than the child has a lower pid, and the marker scan skips most of /proc.
    now = _pid_counters()
    if child.counters is None or now is None:
        return 0
    forks, tasks = child.counters
    return child.pid + 1 if child.pid + (now[0] - forks) + tasks < _pid_max() else 0


def _libc_prctl(option: int, *args: int | ctypes.c_int) -> int | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(option, *args, *([0] * (4 - len(args))))
    except (OSError, AttributeError):
        return None


def become_subreaper(on: bool = True) -> bool:
    """Make this process a child subreaper (Linux prctl; on=False clears it); False where unsupported."""
    # Orphans among our descendants (double fork, setsid, env -i) then re-parent to us, not init:
    # the caller must end_orphans(), or they stay our zombies.
    return _libc_prctl(_PR_SET_CHILD_SUBREAPER, int(on)) == 0


def is_subreaper() -> bool:
    """Tell whether this process is a child subreaper."""
    flag = ctypes.c_int(0)
    return _libc_prctl(_PR_GET_CHILD_SUBREAPER, ctypes.byref(flag)) == 0 and flag.value != 0


def _direct_children() -> set[int]:
    # The kernel's per-thread lists are one small read each; psutil's children() reads the stat
    # file of every process on the host.
    me, found = os.getpid(), set()
    try:
        tids = os.listdir(f"/proc/{me}/task")
        for tid in tids:
            with open(f"/proc/{me}/task/{tid}/children", "rb") as f:
                found.update(int(pid) for pid in f.read().split())
        return found
    except (OSError, ValueError):  # no procfs or no CONFIG_PROC_CHILDREN
        try:
            return {p.pid for p in psutil.Process(me).children()}
        except psutil.Error:
            return set()


def process_markers(pid: int) -> tuple[str | None, set[str]] | None:
    """(own launch marker, lineage markers) from pid's environment; None if unreadable."""
    return _read_markers(pid)


def _zombie(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.Error:
        return True  # (reaped meanwhile: gone all the same)


def _wait_exited(pinned: dict[int, int | None], timeout: float) -> None:
    # Until every one of our children here has exited (a zombie: its pidfd turns readable then).
    deadline = time.monotonic() + timeout
    while True:
        alive = [pid for pid in pinned if not _zombie(pid)]
        remaining = deadline - time.monotonic()
        if not alive or remaining <= 0:
            return
        fds = [pinned[pid] for pid in alive if pinned[pid] is not None]
        if fds:
            select.select(fds, [], [], min(remaining, 0.2))
        else:
            time.sleep(min(remaining, 0.01))


def _reap_child(pid: int) -> int | None:
    try:
        waited, status = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return None
    return _exit_code(os.waitstatus_to_exitcode(status)) if waited else None


def _end_orphans_once(
    since: float, keep: Collection[int], should_end: Callable[[psutil.Process], bool] | None, grace: float
) -> dict[int, int | None]:
    me, my_session = os.getpid(), os.getsid(0)
    with _children_lock:
        unreaped = {child.pid for child in _children.values() if child.exit_code is None}
    ended: dict[int, int | None] = {}
    pinned: dict[int, int | None] = {}  # live orphans to end: pid -> pidfd
    try:
        for pid in sorted(_direct_children() - set(keep) - unreaped):
            if not _signallable(pid):
                continue
            try:
                pidfd = _pin(pid)
            except ProcessLookupError:
                continue
            try:
                # Pinned, and a child of ours cannot be recycled before we reap it: what is proven
                # here is what gets signalled and reaped.
                proc = psutil.Process(pid)
                if proc.ppid() != me or proc.create_time() < since - EXACT_START_TOLERANCE:
                    raise LookupError
                # In our own session it was forked here (by other code in this process): spawn()
                # puts every launch in a session of its own, so nothing adopted from one is.
                if os.getsid(pid) == my_session:
                    raise LookupError
                if proc.status() == psutil.STATUS_ZOMBIE:
                    ended[pid] = _reap_child(pid)
                elif should_end is None or should_end(proc):
                    pinned[pid], pidfd = pidfd, None  # (closed below, once it is reaped)
            except (LookupError, ProcessLookupError, PermissionError, psutil.Error):
                pass
            finally:
                if pidfd is not None:
                    os.close(pidfd)
        steps = [(signal.SIGTERM, grace)] if grace > 0 else []
        for sig, wait_s in [*steps, (signal.SIGKILL, _KILL_WAIT)]:
            alive = [pid for pid in pinned if not _zombie(pid)]
            for pid in alive:
                try:
                    if pinned[pid] is not None:
                        signal.pidfd_send_signal(pinned[pid], sig)
                    else:
                        os.kill(pid, sig)  # our unreaped child: its pid cannot name anyone else
                except (ProcessLookupError, PermissionError):
                    pass
            _wait_exited({pid: pinned[pid] for pid in alive}, wait_s)
        for pid in pinned:
            ended[pid] = _reap_child(pid)
    finally:
        for pidfd in pinned.values():
            if pidfd is not None:
                os.close(pidfd)
    return ended


def end_orphans(
    since: float,
    *,
    keep: Collection[int] = (),
    should_end: Callable[[psutil.Process], bool] | None = None,
    grace: float = 0.0,
    rounds: int = 4,
) -> dict[int, int | None]:
    """Reap our adopted orphans and end (TERM, grace, KILL) those should_end() picks; return {pid: exit code}."""
    # Only direct children started at or after `since` (on get_start_time()'s clock: take it from
    # start_clock_now()) and outside our session, never one in `keep` nor an unreaped launch of
    # ours (its status is the registry's); each is pinned and proven before it is signalled. What
    # an ended orphan leaves behind is adopted in turn, hence the rounds.
    ended: dict[int, int | None] = {}
    for _ in range(rounds):
        found = _end_orphans_once(since, keep, should_end, grace)
        ended.update(found)
        if not found:
            break
    return ended


@contextmanager
def ending_orphans(grace: float = LEFTOVER_GRACE) -> Iterator[bool]:
    """Be a child subreaper while the block runs (yields whether it is), then end the orphans adopted meanwhile."""
    # The flag is cleared afterwards unless it was set before: a caller in passing stays as it was.
    was = is_subreaper()
    adopting = was or become_subreaper()
    since = start_clock_now()
    try:
        yield adopting
    finally:
        if adopting:
            end_orphans(since, grace=grace)
            if not was:
                become_subreaper(False)


def launched_running() -> bool:
    """Whether a child launched here still runs (those that ended are reaped, their status kept)."""
    with _children_lock:
        children = [child for child in _children.values() if child.exit_code is None]
    return any(_poll_child(child) is None for child in children)


def cap_running_logs(max_bytes: int) -> int:
    """cap_log() the log files of every child launched here that still runs; return the bytes cut."""
    with _children_lock:
        paths = [path for child in _children.values() if child.exit_code is None for path in child.logs]
    return sum(cap_log(path, max_bytes) for path in paths)


def adopted_zombies(keep: Collection[int] = ()) -> dict[int, float]:
    """Our exited children that no launch of ours owns (adopted orphans): pid -> OS start time.

    A subreaper's, e.g. the launches of a worker that was SIGKILLed: their rows can be closed with
    the true exit code (reap() of the proven zombie) before end_orphans() reaps the rest.
    """
    with _children_lock:
        mine = {child.pid for child in _children.values()}
    found: dict[int, float] = {}
    for pid in sorted(_direct_children() - set(keep) - mine):
        try:
            proc = psutil.Process(pid)
            if proc.status() == psutil.STATUS_ZOMBIE and proc.ppid() == os.getpid():
                found[pid] = proc.create_time()
        except psutil.Error:
            continue
    return found


def forget_finished_children() -> int:
    """Drop the registry entries of children that have ended (their statuses were read); return how many."""
    with _children_lock:
        finished = [marker for marker, child in _children.items() if _poll_child(child) is not None]
        for marker in finished:
            del _children[marker]
    return len(finished)


def launched_pids() -> set[int]:
    """Pids of the children launched by this process that the registry still remembers."""
    with _children_lock:
        return {child.pid for child in _children.values()}


@_loose(_ident_by_keyword)
def exit_fd(identity: ProcessIdentity) -> int | None:
    """A new fd (the caller closes it) readable once our running child exits; None if not ours."""
    if identity.pid is None:
        return None
    child = _lookup_child(identity)
    with _children_lock:
        if child is None or child.pidfd is None or child.exit_code is not None:
            return None
        return os.dup(child.pidfd)


@_loose(_ident_by_keyword)
def known_exit_code(identity: ProcessIdentity) -> int | None:
    """Exit code of a child spawned here that has ended (reaping it if needed); no /proc access."""
    child = _lookup_child(identity)
    return _poll_child(child) if child is not None else None


@_loose(_ident_by_keyword)
def reap(identity: ProcessIdentity) -> int | None:
    """Return the true exit code of our exited child (reaping it); None if still running or not ours."""
    child = _lookup_child(identity)
    if child is not None:
        return _poll_child(child)
    # Not launched through spawn() in this process: reap it only if it is our own proven zombie child.
    pid, start_time = identity.pid, identity.start_time
    if not _signallable(pid) or start_time is None:
        return None
    try:
        pidfd = _pin(pid) if _HAVE_PIDFD_WAIT else None  # pinned before it is proven
    except ProcessLookupError:
        return None
    try:
        proc = psutil.Process(pid)
        if proc.ppid() != os.getpid() or proc.status() != psutil.STATUS_ZOMBIE:
            return None
        if abs(proc.create_time() - start_time) > identity.tolerance:
            return None
        if pidfd is not None:
            info = os.waitid(os.P_PIDFD, pidfd, os.WEXITED | os.WNOHANG)
            if info is None:
                return None
            return info.si_status if info.si_code == os.CLD_EXITED else 128 + info.si_status
        waited, status = os.waitpid(pid, os.WNOHANG)
    except (psutil.Error, OSError, ValueError):
        return None
    finally:
        if pidfd is not None:
            os.close(pidfd)
    return _exit_code(os.waitstatus_to_exitcode(status)) if waited else None


def _loose_wait(pid, start_time, cmd=None, *, marker=None, tolerance=START_TIME_TOLERANCE, **rest):
    return ProcessIdentity.of(pid, start_time, cmd, marker, tolerance), rest


@_loose(_loose_wait)
def wait(
    identity: ProcessIdentity,
    *,
    timeout: float | None = None,
    poll_interval: float = 0.05,
    on_tick: Callable[[], object] | None = None,
    tick_interval: float = 0.1,
) -> int | None:
    """Wait until the proven process ends; return its exit code if known; TimeoutError past timeout.

    on_tick (e.g. keeping the logs capped) is called about every tick_interval while waiting.
    """
    _check_timeout(timeout)
    pid = identity.pid
    deadline = None if timeout is None else time.monotonic() + timeout
    child = _lookup_child(identity)
    if child is not None:
        while _poll_child(child) is None:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise TimeoutError(f"process {pid} still running after {timeout}s")
            step = remaining if on_tick is None else min(tick_interval, remaining or tick_interval)
            _wait_exit(child, step)
            if on_tick is not None:
                on_tick()
        return child.exit_code
    while is_alive(identity):
        if deadline is not None and time.monotonic() >= deadline:
            raise TimeoutError(f"process {pid} still running after {timeout}s")
        if on_tick is not None:
            on_tick()
        time.sleep(poll_interval)
    return reap(identity)


def _wait_exit(child: _Child, timeout: float | None) -> None:
    """Block until our child has exited or timeout passes (its pidfd wakes us at once; no reaping)."""
    with _children_lock:  # a dup of its own pidfd: never a pid opened anew (it may be reused by then)
        pidfd = os.dup(child.pidfd) if child.pidfd is not None else None
    if pidfd is None:  # no pidfd: Popen's own wait (it reaps; _poll_child then reads its status)
        try:
            child.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            pass
        return
    try:
        poller = select.poll()
        poller.register(pidfd, select.POLLIN)
        poller.poll(None if timeout is None else max(0, int(timeout * 1000)))
    finally:
        os.close(pidfd)


def _check_timeout(timeout: object) -> None:
    if timeout is not None and (
        isinstance(timeout, bool) or not isinstance(timeout, int | float) or not timeout >= 0
    ):
        raise ValueError(f"timeout must be None or a non-negative number of seconds, got {timeout!r}")


def _child_env(env: Mapping[str, object] | None, inherit_env: bool, marker: str) -> dict[str, str]:
    result = dict(os.environ) if inherit_env else {}
    for key, value in (env or {}).items():
        if not isinstance(key, str) or not key or "=" in key:
            raise ValueError(f"env keys must be non-empty str without '=', got {key!r}")
        if value is None:
            result.pop(key, None)
        elif isinstance(value, list | dict):
            result[key] = json.dumps(value)
        else:
            result[key] = str(value)
    # The lineage comes from *this* process, so a launch made by a launched process stays findable
    # from every level above it.
    lineage = [m for m in os.environ.get(LINEAGE_ENV, "").split(",") if m]
    result[MARKER_ENV] = marker
    result[LINEAGE_ENV] = ",".join([*lineage, marker])
    return result


def _open_log(path: StrPath):
    if path is None:
        return open(os.devnull, "ab")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return open(path, "ab")


def _wait_exec_visible(popen: subprocess.Popen, timeout: float = 1.0) -> None:
    # Popen returns once execve() has closed its error pipe, but the new image's argv/environ pages
    # are mapped a moment later: until then /proc/<pid>/cmdline and environ read empty, and an
    # identity check (command, marker) made right away would wrongly refuse our own child.
    deadline = time.monotonic() + timeout
    delay = 0.0001
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{popen.pid}/cmdline", "rb") as f:
                if f.read(1):
                    return
            with open(f"/proc/{popen.pid}/stat", "rb") as f:
                if f.read().rpartition(b")")[2].split()[0] == b"Z":
                    return  # already exited (not reaped here: its status stays with the registry)
        except (OSError, IndexError):
            return  # no procfs (or gone): nothing to wait for
        time.sleep(delay)
        delay = min(delay * 2, 0.01)


def spawn(
    cmd: Sequence[str],
    cwd: StrPath = None,
    env: Mapping[str, object] | None = None,
    stdout_path: StrPath = None,
    stderr_path: StrPath = None,
    *,
    inherit_env: bool = True,
    marker: Marker = None,
) -> Spawned:
    """Start cmd in its own session with output appended to files; exec failures give exit 127/126."""
    if (
        isinstance(cmd, str | bytes)
        or not isinstance(cmd, Sequence)
        or not cmd
        or not cmd[0]
        or not all(isinstance(arg, str) for arg in cmd)
    ):
        raise ValueError(f"cmd must be a non-empty list of str, got {cmd!r}")
    cwd = os.fspath(cwd) if cwd is not None else os.getcwd()
    if not os.path.isdir(cwd):
        raise ValueError(f"cwd does not exist or is not a directory: {cwd!r}")
    if marker is None:
        marker = uuid.uuid4().hex
    elif not _MARKER_RE.match(marker):
        raise ValueError(f"marker must be 8-128 characters of [A-Za-z0-9_-], got {marker!r}")
    child_env = _child_env(env, inherit_env, marker)
    counters = _pid_counters()
    with _open_log(stdout_path) as out, _open_log(stderr_path) as err:
        try:
            popen = subprocess.Popen(
                list(cmd), cwd=cwd, env=child_env, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                start_new_session=True, close_fds=True,
            )  # fmt: skip
        except OSError as exc:
            # What a shell would say: 127 when there is no such file, 126 when it cannot be run.
            code = EXIT_NOT_FOUND if isinstance(exc, FileNotFoundError) else EXIT_NOT_EXECUTABLE
            message = f"cannot execute {cmd[0]!r}: {exc.strerror or exc} (exit code {code})"
            err.write(f"[machine.process_utils] {message}\n".encode())
            return Spawned(pid=None, start_time=None, marker=marker, exit_code=code, error=message)
    # Until we wait() on it the child cannot be reaped, so its pid and /proc entry are still its own.
    try:
        pidfd = _pin(popen.pid)
    except ProcessLookupError:
        pidfd = None
    start_time = get_start_time(popen.pid) or time.time()  # (an unreaped child always has one)
    _wait_exec_visible(popen)
    logs = tuple(os.fspath(path) for path in (stdout_path, stderr_path) if path is not None)
    _register(_Child(popen.pid, start_time, marker, popen, pidfd, counters=counters, logs=logs))
    return Spawned(pid=popen.pid, start_time=start_time, marker=marker, pidfd=pidfd, popen=popen)


def run_foreground(
    cmd: Sequence[str],
    cwd: StrPath = None,
    env: Mapping[str, object] | None = None,
    stdout_path: StrPath = None,
    stderr_path: StrPath = None,
    *,
    timeout: float | None = None,
    grace: float = 0.0,
    inherit_env: bool = True,
    marker: Marker = None,
) -> Spawned:
    """Spawn cmd and wait for it; past timeout kill the whole tree (SIGTERM + grace) and report 137."""
    _check_timeout(timeout)
    spawned = spawn(cmd, cwd, env, stdout_path, stderr_path, inherit_env=inherit_env, marker=marker)
    if spawned.exit_code is not None:
        return spawned
    identity = spawned.identity(cmd)
    try:
        spawned.exit_code = wait(identity, timeout=timeout)  # (reaped through its pidfd)
    except TimeoutError:
        kill_tree(identity, graceful_timeout=grace)
        spawned.exit_code, spawned.timed_out = EXIT_KILLED, True
    except BaseException:  # e.g. KeyboardInterrupt: never leave the tree running behind us
        kill_tree(identity, graceful_timeout=0)
        raise
    return spawned


#: How cap_log() says what it cut (one line between the kept head and the kept tail).
_CUT_LINE = b"\n[... %d bytes cut: the log keeps its first and last %d bytes (MACHINE_LOG_MAX_BYTES) ...]\n"
_CUT_RE = re.compile(rb"\n\[\.\.\. (\d+) bytes cut: the log keeps its first and last \d+ bytes [^\n]*\]\n")
_COPY_CHUNK = 1024 * 1024


def _blank_split_secrets(fd: int, boundary: int, needles: list[bytes], *, kept_after: bool) -> None:
    """Overwrite with '*' the kept part of every needle that a cut at `boundary` splits in two."""
    longest = max(len(needle) for needle in needles)
    start = max(0, boundary - longest + 1)
    window = os.pread(fd, boundary - start + longest - 1, start)
    spans = []
    for needle in needles:
        at = window.find(needle)
        while at >= 0:
            if start + at < boundary < start + at + len(needle):
                spans.append((start + at, start + at + len(needle)))
            at = window.find(needle, at + 1)
    if not spans:
        return
    if kept_after:  # the kept tail starts at boundary
        end = max(stop for _, stop in spans)
        os.pwrite(fd, b"*" * (end - boundary), boundary)
    else:  # the kept head ends at boundary
        first = min(begin for begin, _ in spans)
        os.pwrite(fd, b"*" * (boundary - first), first)


def cap_log(
    path: StrPath,
    max_bytes: int,
    secrets: Iterable[bytes] | Callable[[], Iterable[bytes]] = (),
) -> int:
    """Keep a log within about max_bytes: its first and last max_bytes/2, and a line saying what was cut.

    Safe while the child still appends (its fd is O_APPEND, so it writes at the new end): where
    the filesystem can (ext4, xfs), the middle is removed in one atomic step (_cut_by_collapse) and
    no write is lost; elsewhere the tail is moved down in bounded chunks, never read whole. Returns
    the bytes cut now (0: nothing to do).
    `secrets` (byte strings, or a callable giving them, asked only when something is cut): a secret
    the cut splits in two keeps no part of it (it is overwritten with '*'), since neither half can be
    recognised and masked afterwards.
    """
    if path is None or max_bytes <= 0:
        return 0
    try:
        # (not O_APPEND: pwrite must write where it is told; O_NONBLOCK: never wait on a FIFO)
        fd = os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return 0
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        return 0
    try:
        # One cut at a time (threads or processes watching the same child): a cut that truncates
        # the file under another one in progress made that one cut it down to its head.
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return 0  # (being cut right now)
    try:
        size = os.fstat(fd).st_size
        if size <= max_bytes:
            return 0
        keep = max(1, max_bytes // 2)
        earlier = _CUT_RE.match(os.pread(fd, 256, keep))
        cut_before = int(earlier.group(1)) if earlier else 0
        old_line = len(earlier.group(0)) if earlier else 0
        cut_now = size - keep - old_line - keep
        if cut_now <= 256:  # (the moved tail must start past where it goes, and cutting crumbs is noise)
            return 0
        needles = [needle for needle in (secrets() if callable(secrets) else secrets) if needle]
        collapsed = _cut_by_collapse(fd, size, max_bytes, needles)
        if collapsed is not None:
            return collapsed
        if needles:
            if not earlier:  # (the head is cut once: later cuts keep it as it is)
                _blank_split_secrets(fd, keep, needles, kept_after=False)
            _blank_split_secrets(fd, size - keep, needles, kept_after=True)
        # Without FALLOC_FL_COLLAPSE_RANGE (tmpfs, small caps): move the tail down and truncate. A
        # write the child makes between the last size check and the truncate is lost with the cut.
        line = _CUT_LINE % (cut_before + cut_now, keep)
        os.pwrite(fd, line, keep)
        src, dest = size - keep, keep + len(line)
        while True:  # the child may append while we move: move that too, then cut the file there
            end = os.fstat(fd).st_size
            while src < end:
                chunk = os.pread(fd, min(_COPY_CHUNK, end - src), src)
                if not chunk:
                    break
                os.pwrite(fd, chunk, dest)
                src, dest = src + len(chunk), dest + len(chunk)
            if os.fstat(fd).st_size == end:
                break
        os.ftruncate(fd, dest)
        return cut_now
    except OSError:
        return 0
    finally:
        os.close(fd)


_FALLOC_FL_COLLAPSE_RANGE = 0x08
_fallocate: list = []


def _collapse_range(fd: int, offset: int, length: int) -> bool:
    """fallocate(FALLOC_FL_COLLAPSE_RANGE): remove [offset, offset+length) in place; False if unsupported."""
    if not _fallocate:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            function = libc.fallocate
            function.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong]
            function.restype = ctypes.c_int
        except (OSError, AttributeError):
            function = None
        _fallocate.append(function)
    function = _fallocate[0]
    return function is not None and function(fd, _FALLOC_FL_COLLAPSE_RANGE, offset, length) == 0


def _cut_by_collapse(fd: int, size: int, max_bytes: int, needles: list[bytes]) -> int | None:
    """cap_log's cut as one atomic step, where the filesystem can (ext4, xfs); None where it cannot.

    The kernel removes the middle under the inode lock that the child's appends take too, so no
    write is lost. Its offsets must be whole blocks: the head is the largest whole-block part of
    max_bytes/2, one block after it holds the cut line (padded), and the tail starts at a block.
    """
    block = os.fstat(fd).st_blksize or 4096
    head = (max_bytes // 2) // block * block
    if head < block:
        return None
    notice_end = head + block
    tail_start = (size - head) // block * block
    if tail_start - notice_end < block:
        return 0
    earlier = _CUT_RE.match(os.pread(fd, block, head))
    cut_before = int(earlier.group(1)) if earlier else 0
    cut_now = tail_start - notice_end + (0 if earlier else block)
    if needles:
        if not earlier:
            _blank_split_secrets(fd, head, needles, kept_after=False)
        _blank_split_secrets(fd, tail_start, needles, kept_after=True)
    text = _CUT_LINE % (cut_before + cut_now, head)
    line = text[:-2] + b" " * (block - len(text)) + b"]\n"  # (one block; _CUT_RE still matches)
    if len(line) != block:
        return None
    if earlier is None:  # (once collapsed, the block at `head` is the notice: a failed try keeps data)
        original = os.pread(fd, block, head)
        os.pwrite(fd, line, head)
        if not _collapse_range(fd, notice_end, tail_start - notice_end):
            os.pwrite(fd, original, head)
            return None
        return cut_now
    if not _collapse_range(fd, notice_end, tail_start - notice_end):
        return None
    os.pwrite(fd, line, head)
    return cut_now


def open_log(path: StrPath):
    """A log file opened for reading (binary); OSError unless it is a regular file.

    A child can swap its log for a FIFO or a device: opening a FIFO for reading blocks until a
    writer comes, which would hang whoever closes the row or tails it. O_NONBLOCK makes that open
    return at once, and anything but a regular file is refused.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise OSError(errno.EISDIR, os.strerror(errno.EISDIR), os.fspath(path))
        if not stat.S_ISREG(mode):
            raise OSError(errno.EINVAL, "not a regular file", os.fspath(path))
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_tail(path: StrPath, max_bytes: int) -> tuple[bytes, int] | None:
    """The last max_bytes of a file and how many bytes come before them; None if it cannot be read."""
    try:
        with open_log(path) as f:
            size = f.seek(0, os.SEEK_END)
            start = max(0, size - max_bytes)
            f.seek(start)
            return f.read(max_bytes), start
    except (OSError, TypeError):
        return None


def _last_lines(f, lines: int, keep_partial: bool) -> tuple[list[bytes], bytes, int]:
    # Read blocks backwards from the end until lines + 1 newlines are seen (or the scan cap).
    end = f.seek(0, os.SEEK_END)
    pos, chunks, newlines = end, [], 0
    while pos > 0 and newlines <= lines and end - pos < _TAIL_MAX_BYTES:
        step = min(_TAIL_BLOCK, pos)
        pos -= step
        f.seek(pos)
        chunks.append(f.read(step))
        newlines += chunks[-1].count(b"\n")
    body, newline, partial = b"".join(reversed(chunks)).rpartition(b"\n")
    found = body.split(b"\n") if newline else []
    if keep_partial and partial:
        found, partial = [*found, partial], b""
    if pos > 0:
        found = found[1:]  # the first one was cut at the block boundary
    return (found[-lines:] if lines else []), partial, end


def tail(
    path: str | os.PathLike,
    lines: int = 50,
    follow: bool = False,
    poll_interval: float = 0.1,
    stop: Callable[[], bool] | None = None,
    max_line: int = 1024 * 1024,
    from_start: bool = False,
) -> Iterator[str]:
    """Yield the last lines of path (without newlines); with follow, then appended lines until stop().

    from_start: every line from the beginning instead (read like appended ones: in bounded chunks,
    stop() asked between them). A line longer than max_line comes out in pieces while following.
    """
    if lines < 0:
        raise ValueError(f"lines must be >= 0, got {lines!r}")
    stopped = stop or (lambda: False)
    while True:  # following a file that does not exist yet means waiting for it
        try:
            f = open_log(path)
            break
        except FileNotFoundError:
            if not follow or stopped():
                return
            time.sleep(poll_interval)
    try:
        if from_start:
            found, partial, pos = [], b"", 0
        else:
            found, partial, pos = _last_lines(f, lines, keep_partial=not follow)
        head = os.pread(f.fileno(), 256, 0) if follow else b""  # tells a cut from a rewrite
        yield from (line.decode(errors="replace") for line in found)
        while follow:
            done = stopped()  # asked before the last read, so nothing written before stop() is lost
            try:
                st = os.stat(path)
                if st.st_ino != os.fstat(f.fileno()).st_ino:  # replaced (rotated): follow the new file
                    f.close()
                    f, pos, partial = open_log(path), 0, b""
                elif st.st_size < pos:
                    if head and os.pread(f.fileno(), len(head), 0) == head:
                        # Same beginning: cap_log cut its middle. Go on from the new end.
                        pos, partial = st.st_size, b""
                        yield "[... the log was cut while it was being read ...]"
                    else:  # truncated and rewritten (a restarted process): start over
                        pos, partial = 0, b""
            except FileNotFoundError:
                pass
            # Read what is there now in bounded chunks (a child writing faster than we copy never
            # makes us hold more than a chunk), and at most one max_line of an unfinished line.
            end = os.fstat(f.fileno()).st_size
            while pos < end:
                f.seek(pos)
                data = f.read(min(_TAIL_BLOCK, end - pos))
                if not data:
                    break
                pos += len(data)
                if len(head) < 256:
                    head = os.pread(f.fileno(), 256, 0)
                *complete, partial = (partial + data).split(b"\n")
                if len(partial) > max_line:
                    complete.append(partial)
                    partial = b""
                for line in complete:
                    yield line.decode(errors="replace")
                if not done and stopped():
                    done, end = True, pos  # asked to stop mid-way: what came after is not copied
            if done:
                if partial:
                    yield partial.decode(errors="replace")
                return
            time.sleep(poll_interval)
    finally:
        f.close()  # the one open now, which after a rotation is not the first


def find_launch(marker: str) -> tuple[int, float] | None:
    """(pid, OS start time) of the live main process of the launch with this marker; None if none runs.

    For a launch whose launcher died before it recorded the pid. spawn() starts each launch in a
    session of its own, so its main process is a session leader that carries the marker as its own
    while its parent does not; if several qualify (a setsid daemon of the same launch whose main
    process has gone), the oldest. A zombie shows no environ: an ended launch is not found.
    """
    found: tuple[int, float] | None = None
    for proc in _scan_marker(marker):
        try:
            markers = _read_markers(proc.pid)
            if markers is None or markers[0] != marker or os.getsid(proc.pid) != proc.pid:
                continue
            parent = _read_markers(proc.ppid())
            if parent is not None and parent[0] == marker:
                continue
            start = get_start_time(proc.pid)
            if start is None or not _is_alive_proc(proc):
                continue
        except (psutil.Error, OSError):
            continue
        if found is None or start < found[1]:
            found = (proc.pid, start)
    return found
