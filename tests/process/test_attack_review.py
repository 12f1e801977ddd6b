"""Adversarial review (attack branch): launch in doubt, pidfd reaping."""

from __future__ import annotations

import os
import signal
import time

import psutil
import pytest

from machine.choices import ProcessStatus
from machine.launch_doubt import INTERRUPTED_NOTE
from machine.models import Process

from .test_launch_in_doubt import _gone, _later, _launch_and_die, _queued, _runs

pytestmark = pytest.mark.django_db(transaction=True)


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _kill(pid):
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def test_settle_closes_a_launch_whose_marked_descendant_still_runs(make_process, subprocess_env, tmp_path):
    """The launcher died after the spawn; the main process ended but left a background job of the
    launch (same session, carries the marker). settle() says 'no process of this launch runs any
    more', closes the row 137, and leaves the job running unsupervised."""
    runs = tmp_path / "runs"
    bg = tmp_path / "bg"
    row = _queued(make_process, runs, f"sleep 300 & echo $! > {bg}; exit 0")
    _launch_and_die(row, subprocess_env, tmp_path, wait=True)
    (pid,) = _runs(runs)
    _gone(pid)
    job = int(bg.read_text())
    try:
        assert _alive(job)
        row = _later(Process.objects.get(pk=row.pk))
        row.sm.tick()
        row = Process.objects.get(pk=row.pk)
        assert row.status == ProcessStatus.EXITED and INTERRUPTED_NOTE in row.stderr
        time.sleep(1)
        assert not _alive(job), "the row is closed as 'no process of this launch runs', yet its job runs"
    finally:
        _kill(job)


def test_a_transient_error_before_the_spawn_is_not_a_launch_in_doubt(make_process, monkeypatch, tmp_path):
    """spawn() fails before any child exists (here: EMFILE opening the log, once): nothing ran. The
    row is left marked and queued, i.e. 'in doubt'; once settled it is closed 137 'the command may
    have run, so it is not run again' although it never ran and could simply be retried."""
    import errno

    from machine import process_utils
    from machine.launch_doubt import LaunchInDoubtError

    from .test_launch_in_doubt import _later

    real = process_utils._open_log
    calls = {"n": 0}

    def flaky(path):
        calls["n"] += 1
        if calls["n"] == 1:
            raise OSError(errno.EMFILE, "Too many open files")
        return real(path)

    monkeypatch.setattr(process_utils, "_open_log", flaky)
    runs = tmp_path / "runs"
    row = make_process(["sh", "-c", f"echo $$ >> {runs}; exit 0"])
    row.save()
    with pytest.raises(OSError):
        row.launch(background=True)
    row = Process.objects.get(pk=row.pk)
    try:
        row.launch()  # a retry right away
    except LaunchInDoubtError as exc:
        retry_now = f"refused: {exc}"
    else:
        retry_now = "ran"
    row = _later(Process.objects.get(pk=row.pk))
    row.launch()  # a retry later
    row = Process.objects.get(pk=row.pk)
    assert runs.exists() and row.exit_code == 0, (retry_now, row.exit_code, row.stderr)


def test_a_claim_renewed_during_the_launch_is_not_overwritten_by_the_launch_save(make_process, monkeypatch):
    """In a runner tick the heartbeat thread may renew the claim (token1 -> token2) while launch()
    spawns. launch() then saves update_fields=LAUNCH_FIELDS, which include retry_at, from the row as
    the claim read it (token1): the claim the runner holds (token2) no longer matches the row, so
    the next fenced write or renewal says the claim was 'taken over by another worker'."""
    from machine import process_utils
    from workers import fencing
    from workers.fencing import Claim

    row = make_process(["sh", "-c", "sleep 1; exit 3"])
    row.save()
    (claimed,) = Process.claim_batch(limit=1, lock_seconds=60)
    claim = Claim(Process, claimed.pk, claimed.retry_at, 60)
    real_spawn = process_utils.spawn

    def spawn_while_the_heartbeat_renews(*args, **kwargs):
        spawned = real_spawn(*args, **kwargs)
        with claim.mutex:  # what Worker._renew_current_if_overtime does from its thread
            renewed, token = Process.renew_claim([claim.pk], claim.token, claim.lease)
            assert renewed
            claim.token = token
        return spawned

    monkeypatch.setattr(process_utils, "spawn", spawn_while_the_heartbeat_renews)
    with fencing.ticking(claim):
        claimed.sm.tick()
    in_db = Process.objects.values_list("retry_at", "status").get(pk=row.pk)
    try:
        assert in_db[0] == claim.token, (
            f"row retry_at {in_db[0]} != claim token {claim.token}: claim silently lost"
        )
        with fencing.ticking(claim):
            fencing.fenced_update(claimed, modified_at=claimed.modified_at)  # the follow-up's next write
    finally:
        claimed.kill_tree(graceful_timeout=0)


def test_the_loose_legacy_calls_also_accept_keywords():
    """process_utils' loose (pre-ProcessIdentity) form is kept 'for callers of the seam', but a
    call naming pid/start_time by keyword (legal before) is a TypeError: the wrapper's first
    parameter is positional-only in effect ('first')."""
    from machine import process_utils as pu

    spawned = pu.spawn(["sleep", "0.2"])
    try:
        assert pu.is_alive(pid=spawned.pid, start_time=spawned.start_time, marker=spawned.marker)
        assert pu.wait(pid=spawned.pid, start_time=spawned.start_time, marker=spawned.marker, timeout=5) == 0
    finally:
        pu.kill_tree(spawned.identity(), graceful_timeout=0)
