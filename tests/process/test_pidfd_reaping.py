"""Children are reaped through their pidfds (waitid P_PIDFD), and the recorded codes are exact."""

from __future__ import annotations

import os
import signal
import subprocess

import pytest

from machine import process_utils as pu
from machine.choices import ProcessStatus
from machine.models import Process

pytestmark = [
    pytest.mark.django_db,
    pytest.mark.skipif(not pu._HAVE_PIDFD_WAIT, reason="needs waitid(P_PIDFD) (Linux 5.4+)"),
]


@pytest.fixture
def no_wait_by_pid(monkeypatch):
    """Fail when a launch of ours is waited on by its pid (os.waitpid, Popen.poll/wait); record waitid calls.

    (Other code's children, e.g. platform's `uname -p`, are left to wait as they always do.)
    """
    calls: list[tuple[int, int]] = []
    real_waitid, real_waitpid = os.waitid, os.waitpid
    real_poll, real_wait = subprocess.Popen.poll, subprocess.Popen.wait

    def waitid(idtype, ident, options):
        calls.append((idtype, ident))
        return real_waitid(idtype, ident, options)

    def refused(pid: int) -> None:
        if pid in pu.launched_pids():
            raise AssertionError(f"our launch {pid} was waited on by its pid")

    def waitpid(pid, options):
        refused(pid)
        return real_waitpid(pid, options)

    def poll(self):
        refused(self.pid)
        return real_poll(self)

    def wait(self, timeout=None):
        refused(self.pid)
        return real_wait(self, timeout)

    monkeypatch.setattr(os, "waitid", waitid)
    monkeypatch.setattr(os, "waitpid", waitpid)
    monkeypatch.setattr(subprocess.Popen, "poll", poll)
    monkeypatch.setattr(subprocess.Popen, "wait", wait)
    return calls


def _popen(row: Process) -> subprocess.Popen:
    return pu._children[row.launch_marker].popen


@pytest.mark.parametrize(
    ("script", "code", "returncode"),
    [
        ("exit 3", 3, 3),
        ("kill -KILL $$", 137, -signal.SIGKILL),
        ("kill -TERM $$", 143, -signal.SIGTERM),
        ("exit 130", 130, 130),  # (an exit status above 128 stays an exit status)
    ],
)
def test_a_background_launch_is_reaped_through_its_pidfd_with_its_exact_code(
    make_process, no_wait_by_pid, script, code, returncode
):
    row = make_process(["sh", "-c", f"sleep 0.1; {script}"], timeout=10)
    row.launch(background=True)
    assert row.wait(10) == code
    assert any(idtype == os.P_PIDFD for idtype, _fd in no_wait_by_pid)
    stored = Process.objects.get(pk=row.pk)
    assert (stored.status, stored.exit_code) == (ProcessStatus.EXITED, code)
    assert stored.ended_at is not None and stored.ended_at >= stored.started_at
    # Popen is told the status: neither it nor its finalizer (subprocess._active) waits on the pid.
    assert _popen(row).returncode == returncode
    assert _popen(row) not in subprocess._active


def test_a_foreground_launch_is_reaped_through_its_pidfd(make_process, no_wait_by_pid):
    row = make_process(["sh", "-c", "exit 5"], timeout=10)
    row.launch()
    assert (row.status, row.exit_code) == (ProcessStatus.EXITED, 5)
    assert Process.objects.get(pk=row.pk).exit_code == 5


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGKILL, 137), (signal.SIGTERM, 143)])
def test_a_signalled_row_records_the_signal_as_128_plus_n(make_process, no_wait_by_pid, sig, code):
    row = make_process(["sleep", "30"], timeout=60)
    row.launch(background=True)
    assert row.kill(sig)
    assert (row.status, row.exit_code) == (ProcessStatus.EXITED, code)
    assert Process.objects.get(pk=row.pk).exit_code == code


def test_terminate_records_143_through_the_pidfd(make_process, no_wait_by_pid):
    row = make_process(["sleep", "30"], timeout=60)
    row.launch(background=True)
    assert row.terminate(graceful_timeout=5)
    assert Process.objects.get(pk=row.pk).exit_code == 143


def test_the_reaped_code_is_kept_and_never_asked_of_the_pid_again(make_process, no_wait_by_pid):
    """Once reaped, the pid may be handed to anyone: the registry answers from what the pidfd gave."""
    row = make_process(["sh", "-c", "exit 9"], timeout=10)
    row.launch(background=True)
    assert row.wait(10) == 9
    waits = len(no_wait_by_pid)
    assert pu.reap(row.identity) == 9
    assert pu.known_exit_code(row.identity) == 9
    assert not pu.is_alive(row.identity)
    assert len(no_wait_by_pid) == waits  # (nothing waited on again: no pid, no fd)


def test_run_foreground_reaps_through_the_pidfd(workdir, no_wait_by_pid):
    spawned = pu.run_foreground(["sh", "-c", "kill -TERM $$"], workdir)
    assert spawned.exit_code == 143 and not spawned.timed_out
    assert spawned.popen.returncode == -signal.SIGTERM
    timed = pu.run_foreground(["sleep", "30"], workdir, timeout=0.2)
    assert (timed.exit_code, timed.timed_out) == (137, True)


def test_identity_is_one_frozen_value(make_process):
    row = make_process(["sleep", "30"], timeout=60)
    row.launch(background=True)
    identity = row.identity
    assert identity == pu.ProcessIdentity(
        row.pid, row.os_start_time, ("sleep", "30"), row.launch_marker, pu.EXACT_START_TOLERANCE
    )
    with pytest.raises(AttributeError):
        identity.pid = 1  # type: ignore[misc]
    assert pu.is_alive(identity)
    # The loose form of the seam answers the same.
    assert pu.is_alive(
        row.pid, row.os_start_time, ["sleep"], pu.EXACT_START_TOLERANCE, marker=row.launch_marker
    )
