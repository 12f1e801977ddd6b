"""process_utils against real processes, real signals and real (recycled) pids."""

import fcntl
import os
import signal
import sys
import textwrap
import threading
import time
from pathlib import Path

import psutil
import pytest

from machine import process_utils as pu

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="process_utils targets Linux")

NS_LAST_PID = Path("/proc/sys/kernel/ns_last_pid")
REPO = Path(__file__).resolve().parents[2]
EXACT = pu.EXACT_START_TOLERANCE

DAEMONIZE = textwrap.dedent(
    """
    import os, sys, time
    pidfile, linger = sys.argv[1], float(sys.argv[2])
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:  # the grandchild: re-parented to init, in its own session
            with open(pidfile + ".tmp", "w") as f:
                f.write(str(os.getpid()))
            os.rename(pidfile + ".tmp", pidfile)
            time.sleep(1000)
        os._exit(0)
    os.wait()
    time.sleep(linger)
    """
)


def gone(pid: int) -> bool:
    """True once pid no longer runs (absent, or a zombie nobody has reaped yet)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def wait_until(predicate, timeout=5.0, message="condition"):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {message}")
        time.sleep(0.01)


def wait_for_pidfile(path: Path) -> int:
    # A shell's `echo $! > file` creates the file before it writes the pid.
    wait_until(lambda: path.exists() and path.read_text().strip().isdigit(), message=f"a pid in {path}")
    return int(path.read_text())


@pytest.fixture
def launched():
    """Record every launch; afterwards kill each tree (by marker) and reap, whatever the test did."""
    spawned: list[pu.Spawned] = []
    yield spawned
    for sp in spawned:
        if sp.pid is not None:
            pu.kill_tree(sp.pid, sp.start_time, None, sp.marker, graceful_timeout=0, tolerance=EXACT)
            for proc in pu._scan_marker(sp.marker):
                proc.kill()
        if sp.popen is not None and sp.popen.poll() is None:
            sp.popen.kill()
            sp.popen.wait(5)


@pytest.fixture
def spawn(launched, tmp_path):
    """spawn() with logs in tmp_path and cleanup guaranteed."""

    def _spawn(cmd, **kwargs):
        kwargs.setdefault("cwd", tmp_path)
        kwargs.setdefault("stdout_path", tmp_path / "stdout.log")
        kwargs.setdefault("stderr_path", tmp_path / "stderr.log")
        sp = pu.spawn(cmd, **kwargs)
        launched.append(sp)
        return sp

    return _spawn


@pytest.fixture
def spawn_at_pid(spawn):
    """Start cmd so that the kernel gives it exactly `pid` (root + ns_last_pid), or skip.

    With foreign=True the process is started without spawn() and without any marker, like a process
    of some other program, and its pid is returned.
    """
    try:
        NS_LAST_PID.write_text(NS_LAST_PID.read_text())
    except OSError as exc:
        pytest.skip(f"needs root on Linux with a writable {NS_LAST_PID} ({exc})")
    foreign_pids: list[int] = []
    plain_env = {k: v for k, v in os.environ.items() if k not in (pu.MARKER_ENV, pu.LINEAGE_ENV)}

    def _start(cmd, foreign):
        if foreign:
            foreign_pids.append(os.posix_spawnp(cmd[0], cmd, plain_env))
            return foreign_pids[-1]
        return spawn(cmd)

    def _spawn_at(pid, cmd, foreign=False):
        # Serialise with other test runs on this host; another fork between our write and our
        # fork steals the pid, so retry a few times.
        with open("/tmp/machine-ns_last_pid.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            for _ in range(20):
                NS_LAST_PID.write_text(str(pid - 1))
                started = _start(cmd, foreign)
                if (started if foreign else started.pid) == pid:
                    return started
                os.kill(pid if foreign else started.pid, signal.SIGKILL)
        pytest.skip(f"could not get pid {pid} back from the kernel: other processes kept taking it")

    yield _spawn_at
    for pid in foreign_pids:
        if not gone(pid):
            os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)


def kill_and_reap(sp):
    sp.popen.kill()
    sp.popen.wait(5)
    assert pu.reap(sp.pid, sp.start_time, marker=sp.marker) == 137


# --- identity and pid reuse -----------------------------------------------------------------


def test_recycled_pid_is_not_the_old_process(spawn_at_pid, spawn, monkeypatch):
    a = spawn(["sleep", "30"])
    a_id = (a.pid, a.start_time, ["sleep", "30"])
    kill_and_reap(a)
    b = spawn_at_pid(a.pid, ["sleep", "30"])  # same pid, same command line
    assert b.pid == a.pid and b.marker != a.marker
    assert abs(b.start_time - a.start_time) < 1.0

    assert pu.proven_process(*a_id, EXACT, marker=a.marker) is None
    assert not pu.is_alive(*a_id, EXACT, marker=a.marker)
    assert not pu.send_signal(*a_id, signal.SIGTERM, EXACT, marker=a.marker)
    assert pu.kill_tree(*a_id, a.marker, graceful_timeout=0.2, tolerance=EXACT) == 0
    assert pu.find_descendants(a.pid, a.start_time, a.marker, tolerance=EXACT) == []
    assert pu.reap(a.pid, a.start_time, marker=a.marker) == 137  # still A's own exit code
    assert b.popen.poll() is None and not gone(b.pid)

    # A restarted worker has no registry: the marker in /proc/<pid>/environ still tells them apart.
    monkeypatch.setattr(pu, "_children", {})
    assert not pu.is_alive(*a_id, EXACT, marker=a.marker)
    assert not pu.send_signal(*a_id, signal.SIGTERM, EXACT, marker=a.marker)
    assert pu.is_alive(b.pid, b.start_time, ["sleep"], EXACT, marker=b.marker)
    monkeypatch.undo()

    assert b.popen.poll() is None
    assert pu.proven_process(b.pid, b.start_time, ["sleep"], EXACT, marker=b.marker).pid == b.pid
    assert pu.send_signal(b.pid, b.start_time, ["sleep"], signal.SIGTERM, EXACT, marker=b.marker)
    assert pu.wait(b.pid, b.start_time, marker=b.marker, timeout=5, tolerance=EXACT) == 143


def test_own_child_pid_recycled_by_a_process_without_marker(spawn_at_pid, spawn):
    # The new process carries no marker, so only the registry knows our child has exited.
    a = spawn(["sleep", "30"])
    kill_and_reap(a)
    other = spawn_at_pid(a.pid, ["sleep", "30"], foreign=True)
    assert pu.get_start_time(other) is not None
    assert not pu.is_alive(a.pid, a.start_time, ["sleep"], EXACT, marker=a.marker)
    assert not pu.send_signal(a.pid, a.start_time, ["sleep"], signal.SIGTERM, EXACT, marker=a.marker)
    assert pu.kill_tree(a.pid, a.start_time, ["sleep"], a.marker, 0.2, tolerance=EXACT) == 0
    assert not gone(other)


def test_same_tick_reuse_defeats_start_time_but_not_marker(spawn_at_pid, spawn):
    """Documents the finding: a recycled pid usually gets the very same start-time tick."""
    for _ in range(30):
        a = spawn(["sleep", "30"])
        proc_a = psutil.Process(a.pid)
        kill_and_reap(a)
        b = spawn_at_pid(a.pid, ["sleep", "30"])
        if b.start_time == a.start_time:
            break
        kill_and_reap(b)
    else:
        pytest.skip("no same-tick pid reuse in 30 tries on this host")
    assert proc_a.is_running()  # psutil's pid + create_time identity is fooled
    # Without the marker, A's identity is indistinguishable from B's, even with the tight tolerance.
    assert pu.proven_process(a.pid, a.start_time, ["sleep"], EXACT).pid == b.pid
    assert pu.proven_process(a.pid, a.start_time, ["sleep"], EXACT, marker=a.marker) is None
    assert not pu.send_signal(a.pid, a.start_time, ["sleep"], signal.SIGKILL, EXACT, marker=a.marker)
    assert b.popen.poll() is None


def test_identity_is_visible_as_soon_as_spawn_returns(spawn):
    # Popen returns mid-execve(); without spawn() waiting, cmdline/environ read empty ~1 time in 6.
    for _ in range(50):
        sp = spawn(["sleep", "30"])
        assert psutil.Process(sp.pid).cmdline() == ["sleep", "30"]
        assert pu._read_markers(sp.pid)[0] == sp.marker
        assert pu.is_alive(sp.pid, sp.start_time, ["sleep"], EXACT, marker=sp.marker)
        kill_and_reap(sp)


def test_start_time_is_exact_and_tolerance_is_honoured(spawn):
    sp = spawn(["sleep", "30"])
    assert sp.start_time == pu.get_start_time(sp.pid) == psutil.Process(sp.pid).create_time()
    assert pu.is_alive(sp.pid, sp.start_time + 0.01, ["sleep"], EXACT)
    assert not pu.is_alive(sp.pid, sp.start_time + 0.05, ["sleep"], EXACT)
    assert pu.is_alive(sp.pid, sp.start_time - 4.0, ["sleep"])  # the contract's 5 s default
    assert not pu.is_alive(sp.pid, sp.start_time - 6.0, ["sleep"])
    assert not pu.is_alive(sp.pid, sp.start_time, ["python3"], EXACT)
    assert not pu.is_alive(sp.pid, sp.start_time, ["sleep"], EXACT, marker="f" * 32)  # another launch
    assert pu.get_start_time(2**22 + 1) is None


def test_visible_marker_survives_a_wall_clock_step(spawn):
    # A stepped wall clock shifts every create_time; the marker still proves the process.
    sp = spawn(["sleep", "30"])
    stepped = sp.start_time + 1.0
    assert pu.is_alive(sp.pid, stepped, ["sleep"], EXACT, marker=sp.marker)
    assert not pu.is_alive(sp.pid, stepped, ["sleep"], EXACT)
    assert not pu.is_alive(sp.pid, sp.start_time + 6.0, ["sleep"], EXACT, marker=sp.marker)


def test_process_without_marker_falls_back_to_start_time_and_command():
    env = {k: v for k, v in os.environ.items() if k not in (pu.MARKER_ENV, pu.LINEAGE_ENV)}
    pid = os.posix_spawn("/bin/sleep", ["sleep", "30"], env)
    try:
        start = pu.get_start_time(pid)
        assert pu.is_alive(pid, start, ["sleep"], EXACT)
        assert not pu.is_alive(pid, start + 1.0, ["sleep"], EXACT)
        # Asked for a launch marker it does not carry: a recycled pid, whatever the start time says.
        assert not pu.is_alive(pid, start, ["sleep"], EXACT, marker="a" * 32)
        assert not pu.send_signal(pid, start, ["sleep"], signal.SIGTERM, EXACT, marker="a" * 32)
        assert pu.send_signal(pid, start, ["sleep"], signal.SIGTERM, EXACT)
        wait_until(lambda: gone(pid), message="sleep to die")
        assert pu.reap(pid, start, tolerance=EXACT) == 143
    finally:
        if not gone(pid):
            os.kill(pid, signal.SIGKILL)
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:
            pass


def test_command_match_accepts_interpreter_wrapped_scripts(spawn, tmp_path):
    script = tmp_path / "hook.py"
    script.write_text(f"#!{sys.executable}\nimport time\ntime.sleep(30)\n")
    script.chmod(0o755)
    shell_script = tmp_path / "hook.sh"
    shell_script.write_text("sleep 30\n")
    for cmd, check in [([str(script)], [str(script)]), (["/bin/sh", str(shell_script)], [str(shell_script)])]:
        sp = spawn(cmd)
        wait_until(lambda sp=sp: len(psutil.Process(sp.pid).cmdline()) > 1, message="exec")
        assert pu.is_alive(sp.pid, sp.start_time, check, EXACT, marker=sp.marker)
        assert not pu.is_alive(sp.pid, sp.start_time, ["other.py"], EXACT)
    assert pu.cmdline_matches(["python3", "-u", "/x/run.py", "--a"], ["run.py"])
    assert pu.cmdline_matches(["/usr/bin/wget", "-q"], ["/usr/local/bin/wget"])
    assert not pu.cmdline_matches(["python3", "/x/other.py"], ["run.py"])
    assert not pu.cmdline_matches(["sleep", "run.py"], ["run.py"])  # sleep is no interpreter
    assert pu.cmdline_matches(["anything"], None)


def test_zombie_is_not_alive_and_reap_returns_its_code(spawn):
    sp = spawn(["sh", "-c", "exit 3"])
    wait_until(lambda: psutil.Process(sp.pid).status() == psutil.STATUS_ZOMBIE, message="zombie")
    assert psutil.Process(sp.pid).is_running()  # psutil says yes, we must say no
    assert not pu.is_alive(sp.pid, sp.start_time, ["sh"], EXACT, marker=sp.marker)
    assert pu.reap(sp.pid, sp.start_time, marker=sp.marker) == 3
    assert pu.reap(sp.pid, sp.start_time, marker=sp.marker) == 3  # idempotent
    assert not psutil.pid_exists(sp.pid)


def test_reap_zombie_child_not_launched_by_spawn():
    pid = os.posix_spawn("/bin/sh", ["sh", "-c", "exit 5"], os.environ)
    try:
        start = pu.get_start_time(pid)
        wait_until(lambda: psutil.Process(pid).status() == psutil.STATUS_ZOMBIE, message="zombie")
        assert not pu.is_alive(pid, start, ["sh"], EXACT)
        assert not pu.is_alive(pid, start, None, EXACT)
        assert pu.reap(pid, start + 10, tolerance=EXACT) is None  # not proven: left alone
        assert pu.reap(pid, start, tolerance=EXACT) == 5
    finally:
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:
            pass


# --- spawning and exit codes ----------------------------------------------------------------


@pytest.mark.parametrize(("cmd", "code"), [(["true"], 0), (["sh", "-c", "exit 3"], 3), (["cat"], 0)])
def test_true_exit_codes_and_stdin_is_devnull(launched, tmp_path, cmd, code):
    sp = pu.run_foreground(cmd, tmp_path, timeout=10)  # `cat` would hang on a terminal stdin
    launched.append(sp)
    assert (sp.exit_code, sp.timed_out) == (code, False)
    assert pu.reap(sp.pid, sp.start_time, marker=sp.marker) == code


def test_sigterm_gives_143(spawn):
    sp = spawn(["sleep", "30"])
    assert pu.send_signal(sp.pid, sp.start_time, ["sleep"], signal.SIGTERM, EXACT, marker=sp.marker)
    assert pu.wait(sp.pid, sp.start_time, marker=sp.marker, timeout=5) == 143
    assert not pu.send_signal(sp.pid, sp.start_time, ["sleep"], signal.SIGTERM, EXACT, marker=sp.marker)


def test_wait_times_out(spawn):
    sp = spawn(["sleep", "30"])
    with pytest.raises(TimeoutError):
        pu.wait(sp.pid, sp.start_time, marker=sp.marker, timeout=0.1)


def test_spawn_environment_session_and_logs(spawn, tmp_path):
    out = tmp_path / "logs" / "out.log"
    code = "import os; print(os.environ['MACHINE_PROCESS_MARKER'], os.environ['MACHINE_PROCESS_LINEAGE'], os.getsid(0) == os.getpid(), os.environ['X'])"
    for _ in range(2):
        sp = spawn([sys.executable, "-c", code], env={"X": 7, "HOME": None}, stdout_path=out)
        assert isinstance(sp.pidfd, int) and sp.start_time is not None
        assert pu.wait(sp.pid, sp.start_time, marker=sp.marker, timeout=10) == 0
    first, second = out.read_text().splitlines()  # appended, not overwritten
    marker, lineage, own_session, x = second.split()
    assert marker == sp.marker and lineage.split(",")[-1] == sp.marker and own_session == "True" and x == "7"
    assert first.split()[0] != marker


def test_missing_and_non_executable_commands_do_not_raise(spawn, tmp_path):
    missing = spawn(["/nonexistent/tool", "--x"])
    assert (missing.exit_code, missing.pid) == (127, None)
    assert spawn(["no-such-command-xyzzy"]).exit_code == 127
    plain = tmp_path / "plain.txt"
    plain.write_text("echo hi\n")
    assert spawn([str(plain)]).exit_code == 126
    assert spawn([str(tmp_path)]).exit_code == 126
    stderr = (tmp_path / "stderr.log").read_text()
    assert "cannot execute '/nonexistent/tool'" in stderr and "exit code 127" in stderr
    assert "exit code 126" in stderr
    assert pu.run_foreground(["/nonexistent/tool"], tmp_path).exit_code == 127


@pytest.mark.parametrize(
    "kwargs",
    [{"cmd": []}, {"cmd": "sleep 1"}, {"cmd": ["sleep", 1]}, {"cmd": [""]}, {"cwd": "/nonexistent/dir"},
     {"marker": "short"}, {"env": {"A=B": "x"}}],
)  # fmt: skip
def test_spawn_validates_input(tmp_path, kwargs):
    kwargs = {"cmd": ["true"], "cwd": tmp_path, **kwargs}
    with pytest.raises(ValueError):
        pu.spawn(**kwargs)


@pytest.mark.parametrize("timeout", [-1, "5", float("nan")])
def test_run_foreground_validates_timeout(tmp_path, timeout):
    with pytest.raises(ValueError):
        pu.run_foreground(["true"], tmp_path, timeout=timeout)


def test_foreground_timeout_kills_whole_tree_with_137(launched, tmp_path):
    started = time.monotonic()
    sp = pu.run_foreground(
        ["sh", "-c", "sleep 1000 & echo $! > bg.pid; setsid sleep 1000 & echo $! > daemon.pid; wait"],
        tmp_path, timeout=0.5,
    )  # fmt: skip
    launched.append(sp)
    assert (sp.exit_code, sp.timed_out) == (137, True)
    assert time.monotonic() - started < 5
    for pid in (sp.pid, wait_for_pidfile(tmp_path / "bg.pid"), wait_for_pidfile(tmp_path / "daemon.pid")):
        wait_until(lambda pid=pid: gone(pid), timeout=2, message=f"pid {pid} to go")


# --- signalling safety and trees ------------------------------------------------------------


def test_never_signals_init_self_or_unproven(spawn):
    me = os.getpid()
    assert not pu.send_signal(me, pu.get_start_time(me), None, signal.SIGTERM)
    assert not pu.send_signal(1, pu.get_start_time(1), None, signal.SIGTERM)
    assert not pu.send_signal(0, 0.0, None, signal.SIGTERM)
    assert not pu.send_signal(-me, 0.0, None, signal.SIGTERM)
    sp = spawn(["sleep", "30"])
    assert not pu.send_signal(sp.pid, sp.start_time, ["python3"], signal.SIGKILL, EXACT)
    assert not pu.send_signal(sp.pid, sp.start_time - 1, ["sleep"], signal.SIGKILL, EXACT)
    assert pu.kill_tree(sp.pid, sp.start_time, ["python3"], None, tolerance=EXACT) == 0
    assert sp.popen.poll() is None
    assert pu.is_alive(me, pu.get_start_time(me), [sys.executable])


@pytest.mark.parametrize("root_linger", [30, 0])
def test_kill_tree_catches_double_forked_setsid_daemon(spawn, tmp_path, root_linger):
    pidfile = tmp_path / "daemon.pid"
    sp = spawn([sys.executable, "-c", DAEMONIZE, str(pidfile), str(root_linger)])
    daemon = wait_for_pidfile(pidfile)
    assert os.getsid(daemon) != sp.pid and daemon not in pu.children_pids(sp.pid, recursive=True)
    if root_linger == 0:  # the root is gone: only the marker still leads to the daemon
        assert pu.wait(sp.pid, sp.start_time, marker=sp.marker, timeout=5) == 0
    found = [p.pid for p in pu.find_descendants(sp.pid, sp.start_time, sp.marker, tolerance=EXACT)]
    assert daemon in found and os.getpid() not in found and sp.pid not in found
    assert pu.find_descendants(sp.pid, sp.start_time, None, tolerance=EXACT) == []  # escaped the tree walk

    killed = pu.kill_tree(
        sp.pid, sp.start_time, [sys.executable], sp.marker, graceful_timeout=1.0, tolerance=EXACT
    )
    assert killed == (2 if root_linger else 1)
    # Dead; its pid disappears once init reaps it (this host's init does so only every second or so).
    assert gone(daemon) and gone(sp.pid)
    if root_linger:
        assert pu.reap(sp.pid, sp.start_time, marker=sp.marker) == 143


def test_kill_tree_sigkills_what_ignores_sigterm(spawn, tmp_path):
    sp = spawn(["sh", "-c", "trap '' TERM; sleep 1000 & echo $! > child.pid; wait"])
    child = wait_for_pidfile(tmp_path / "child.pid")
    assert pu.children_pids(sp.pid) == [child]
    started = time.monotonic()
    assert pu.kill_tree(sp.pid, sp.start_time, ["sh"], sp.marker, graceful_timeout=0.3, tolerance=EXACT) == 2
    assert 0.3 <= time.monotonic() - started < 3
    assert pu.reap(sp.pid, sp.start_time, marker=sp.marker) == 137  # the shell ignored TERM
    assert gone(child)


def test_find_descendants_excludes_the_caller(spawn, tmp_path):
    code = (
        "import os; from machine import process_utils as pu; "
        "print([p.pid for p in pu.find_descendants(2**22 + 1, 0.0, os.environ['MACHINE_PROCESS_MARKER'])])"
    )
    sp = spawn([sys.executable, "-c", code], cwd=REPO, env={"PYTHONPATH": str(REPO)})
    assert pu.wait(sp.pid, sp.start_time, marker=sp.marker, timeout=20) == 0
    assert (tmp_path / "stdout.log").read_text().strip() == "[]"


# --- tail -----------------------------------------------------------------------------------


def test_tail_last_lines_of_a_big_sparse_file(tmp_path):
    log = tmp_path / "big.log"
    with open(log, "wb") as f:
        f.truncate(1 << 30)  # 1 GiB hole: reading it whole would take seconds and a GiB of RAM
        f.seek(0, os.SEEK_END)
        f.write(b"".join(b"line %d\n" % i for i in range(100_000)))
    started = time.monotonic()
    assert list(pu.tail(log, lines=5)) == [f"line {i}" for i in range(99_995, 100_000)]
    assert len(list(pu.tail(log, lines=50))) == 50
    assert time.monotonic() - started < 1.0


def test_tail_edge_cases(tmp_path):
    log = tmp_path / "small.log"
    assert list(pu.tail(log)) == []  # missing file
    log.write_bytes(b"")
    assert list(pu.tail(log)) == []
    log.write_bytes(b"a\n\nb\nno newline \xff")
    assert list(pu.tail(log, lines=10)) == ["a", "", "b", "no newline \ufffd"]
    assert list(pu.tail(log, lines=2)) == ["b", "no newline \ufffd"]
    assert list(pu.tail(log, lines=0)) == []
    with pytest.raises(ValueError):
        list(pu.tail(log, lines=-1))


def test_tail_follow_yields_appended_lines_until_stopped(tmp_path):
    log = tmp_path / "follow.log"
    log.write_text("old 1\nold 2\nhalf")
    done = threading.Event()

    def writer():
        with open(log, "a") as f:
            for i in range(5):
                f.write(" line\n" if i == 0 else f"new {i}\n")
                f.flush()
                time.sleep(0.03)
            f.write("unterminated")
        done.set()

    lines = pu.tail(log, lines=1, follow=True, poll_interval=0.01, stop=done.is_set)
    assert next(lines) == "old 2"  # the partial "half" waits for its newline
    thread = threading.Thread(target=writer)
    thread.start()
    got = list(lines)
    thread.join()
    assert got == ["half line", "new 1", "new 2", "new 3", "new 4", "unterminated"]


def test_tail_follow_waits_for_file_and_survives_truncation(tmp_path):
    log = tmp_path / "later.log"
    done = threading.Event()

    def writer():
        time.sleep(0.05)
        log.write_text("first\n")
        time.sleep(0.1)
        log.write_text("new\n")  # truncated and rewritten shorter, as a restarted process would
        time.sleep(0.1)
        done.set()

    thread = threading.Thread(target=writer)
    thread.start()
    got = list(pu.tail(log, follow=True, poll_interval=0.01, stop=done.is_set))
    thread.join()
    assert got == ["first", "new"]


# --- redaction ------------------------------------------------------------------------------


def test_redact_env():
    env = {
        "API_KEY": "abc", "github_token": "t", "DB_PASSWORD": "p", "SESSION_COOKIE": "c",
        "AWS_SECRET_ACCESS_KEY": "s", "PATH": "/bin", "EMPTY_TOKEN": "", pu.MARKER_ENV: "a" * 32,
    }  # fmt: skip
    redacted = pu.redact_env(env)
    assert redacted == {
        "API_KEY": "********", "github_token": "********", "DB_PASSWORD": "********",
        "SESSION_COOKIE": "********", "AWS_SECRET_ACCESS_KEY": "********", "PATH": "/bin",
        "EMPTY_TOKEN": "", pu.MARKER_ENV: "a" * 32,
    }  # fmt: skip
    assert env["API_KEY"] == "abc"  # a copy
    assert pu.marker_from_env(redacted) == "a" * 32 and pu.marker_from_env({}) is None


def test_known_exit_code_comes_from_the_registry_only(spawn):
    sp = spawn(["sh", "-c", "exit 7"])
    assert pu.wait(sp.pid, sp.start_time, marker=sp.marker, timeout=5) == 7
    assert pu.known_exit_code(sp.pid, sp.start_time, marker=sp.marker, tolerance=EXACT) == 7
    assert pu.known_exit_code(sp.pid, sp.start_time, marker="b" * 32, tolerance=EXACT) is None
    assert pu.known_exit_code(os.getpid(), pu.get_start_time(os.getpid()), tolerance=EXACT) is None
