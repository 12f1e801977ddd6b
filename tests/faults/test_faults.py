"""Every case of issue 12's "Why", reproduced with real processes, signals and database faults.

Each test states the case, injects the fault and asserts exact counts (see conftest.py):
lost, duplicated and concurrent committed ticks are all 0.
"""

from __future__ import annotations

import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta

import psutil
import pytest

from .conftest import ROOT, alive, backend, tick_pids, wait_for

pytestmark = pytest.mark.slow

ZERO = {"lost": 0, "duplicated": 0, "concurrent": 0}


def exact(counts: dict) -> dict:
    return {k: counts[k] for k in ("lost", "duplicated", "concurrent")}


def hold_sqlite_write_lock(path, seconds: float) -> threading.Thread:
    """Another writer holds SQLite's write lock for `seconds` (an outage, to the runner)."""
    ready = threading.Event()

    def hold() -> None:
        conn = sqlite3.connect(path, timeout=30, isolation_level=None)
        conn.execute("BEGIN IMMEDIATE")
        ready.set()
        time.sleep(seconds)
        conn.execute("ROLLBACK")
        conn.close()

    thread = threading.Thread(target=hold, daemon=True)
    thread.start()
    assert ready.wait(30)
    return thread


def outage(db, seconds: float, how: str = "restart") -> None:
    """Make the database unusable for `seconds`: PostgreSQL stopped (or its backends killed), SQLite locked."""
    if db.kind == "postgresql":
        if how == "terminate":
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                db.server.terminate_backends(db.name)
                time.sleep(0.3)
            return
        db.server.stop("fast")
        time.sleep(seconds)
        db.server.start()
        return
    hold_sqlite_write_lock(db.path, seconds).join()


SHORT_BUSY = {"TEST_SQLITE_TIMEOUT": "0.2"}


def test_the_heartbeat_survives_database_errors_so_a_long_tick_is_never_taken_over(fault_db, start_runner):
    """Why: the heartbeat thread died for good on its first database error; from then on a tick
    longer than the claim was taken and run again by another worker at the same time."""
    (probe,) = fault_db.add_probes(1, work_seconds=7.0)
    runner = start_runner("--workers=2", "--lock-seconds=2", "--heartbeat=0.2", "--poll=0.1", env=SHORT_BUSY)
    wait_for(lambda: tick_pids(fault_db, probe), 30, "the tick to start")
    time.sleep(0.7)
    if fault_db.kind == "postgresql":  # the heartbeats' sessions die while they renew the claim
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:
            fault_db.server.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name LIKE '%worker-heartbeat'"
            )
            time.sleep(0.1)
    else:  # SQLite: the write lock held past the busy timeout while the heartbeat renews
        hold_sqlite_write_lock(fault_db.path, 1.0).join()
    wait_for(
        lambda: fault_db.query("SELECT status FROM exampleapp_probe")[0][0] == "done", 30, "the tick to end"
    )
    counts = fault_db.counts()
    assert counts == {"started": 1, "committed": 1, **ZERO}, runner.output()[-4000:]
    assert runner.popen.poll() is None and len(runner.workers()) == 2  # nobody exited
    runner.popen.send_signal(signal.SIGTERM)
    assert runner.wait(30) == 0


def test_workers_and_orchestrator_survive_a_database_outage_and_retry_at_once(fault_db, start_runner):
    """Why: `pg_ctl stop` for 10 s made every worker and the orchestrator exit 1; ticks that failed on
    a connection error were pushed back 300 s (a 20 s drain took 303 s)."""
    ids = fault_db.add_probes(30, work_seconds=0.3)
    runner = start_runner("--workers=2", "--poll=0.1", "--until-idle", "--batch=2", env=SHORT_BUSY)
    wait_for(lambda: fault_db.counts()["committed"] >= 4, 60, "some ticks")
    workers = {p.pid for p in runner.workers()}
    began = time.monotonic()
    outage(fault_db, 4.0)
    assert runner.wait(120) == 0, runner.output()[-4000:]
    assert time.monotonic() - began < 40  # the interrupted ticks were retried as soon as it answered
    counts = fault_db.counts(ids)
    assert exact(counts) == ZERO and counts["committed"] == 30, runner.output()[-4000:]
    assert not fault_db.query("SELECT count(*) FROM workers_tickfailure WHERE attempts > 0")[0][
        0
    ]  # no failure
    assert "exited with" not in runner.output()  # no worker died: the same processes carried on
    assert workers  # (they were there)


def test_a_frozen_database_does_not_hang_shutdown(fault_db, start_runner):
    """Why: a frozen database hung shutdown (no connect or statement timeouts)."""
    fault_db.add_probes(6, work_seconds=0.5)
    runner = start_runner("--workers=2", "--poll=0.1", "--grace=1")
    wait_for(lambda: fault_db.counts()["started"] >= 2, 60, "ticks")
    if fault_db.kind == "postgresql":
        fault_db.server.freeze()
    else:
        hold_sqlite_write_lock(fault_db.path, 60)  # (the default 30 s busy timeout: writers just wait)
    try:
        began = time.monotonic()
        runner.popen.send_signal(signal.SIGTERM)
        code = runner.wait(40)
        elapsed = time.monotonic() - began
    finally:
        if fault_db.kind == "postgresql":
            fault_db.server.thaw()
    assert elapsed < 25, runner.output()[-4000:]
    assert code == 0, runner.output()[-4000:]


def test_a_paused_worker_cannot_commit_after_its_claim_moved_on(fault_db, start_runner):
    """Why: a paused worker (SIGSTOP 5 s) let a second worker tick the same row; the first still committed."""
    (probe,) = fault_db.add_probes(1, work_seconds=2.0)
    runner = start_runner("--workers=2", "--lock-seconds=1", "--heartbeat=0.1", "--poll=0.1")
    (first,) = wait_for(lambda: tick_pids(fault_db, probe), 30, "the tick to start")
    psutil.Process(first).send_signal(signal.SIGSTOP)
    try:
        wait_for(lambda: len(tick_pids(fault_db, probe)) == 2, 30, "another worker to take the row over")
        wait_for(lambda: fault_db.counts()["committed"] == 1, 30, "the second tick to commit")
    finally:
        psutil.Process(first).send_signal(signal.SIGCONT)
    time.sleep(3.0)  # the first tick wakes up, finishes its work and tries to commit
    counts = fault_db.counts()
    assert counts == {"started": 2, "committed": 1, **ZERO}, runner.output()[-4000:]
    (pid,) = fault_db.query("SELECT pid FROM exampleapp_proberesult")[0]
    assert pid != first
    assert "claim taken over by another worker" in runner.output()


def test_a_tick_that_holds_the_gil_cannot_commit_after_its_claim_moved_on(fault_db, start_runner):
    """Why: a tick that holds the GIL stops the heartbeat; its claim runs out, another worker ticks the
    row, and the first one still committed."""
    (probe,) = fault_db.add_probes(1, mode="gil", work_seconds=3.0)
    runner = start_runner("--workers=2", "--lock-seconds=1", "--heartbeat=0.1", "--poll=0.1")
    wait_for(lambda: len(tick_pids(fault_db, probe)) >= 2, 60, "another worker to take the row over")
    wait_for(
        lambda: fault_db.query("SELECT count(*) FROM exampleapp_probetick WHERE ended_at IS NULL")[0][0] == 0,
        60,
        "both ticks to end",
    )
    counts = fault_db.counts()
    assert exact(counts) == ZERO and counts["committed"] == 1, runner.output()[-4000:]


def test_a_host_whose_clock_runs_ahead_neither_claims_early_nor_steals_a_claim(fault_db, start_runner):
    """Why: a host whose clock ran 30 s ahead let a second worker tick a row concurrently."""
    long_ids = fault_db.add_probes(2, work_seconds=3.0)
    later_ids = fault_db.add_probes(3, work_seconds=0.0, due_in=6.0)
    due_at = fault_db.now() + timedelta(seconds=5.5)
    honest = start_runner("--workers=1", "--lock-seconds=2", "--heartbeat=0.2", "--poll=0.1")
    wait_for(lambda: fault_db.counts()["started"] >= 1, 30, "the honest host to start a tick")
    ahead = start_runner(
        "--workers=2", "--lock-seconds=2", "--heartbeat=0.2", "--poll=0.1", env={"TEST_CLOCK_OFFSET": "30"}
    )
    wait_for(lambda: fault_db.counts(long_ids + later_ids)["committed"] == 5, 60, "every probe")
    counts = fault_db.counts()
    assert counts == {"started": 5, "committed": 5, **ZERO}, ahead.output()[-3000:] + honest.output()[-3000:]
    started = [
        row[0]
        for row in fault_db.query(
            "SELECT started_at FROM exampleapp_probetick WHERE probe_id IN (%s, %s, %s)", tuple(later_ids)
        )
    ]
    if fault_db.kind == "sqlite":
        started = [datetime.fromisoformat(s).replace(tzinfo=UTC) for s in started]
    assert min(started) >= due_at  # not one of them was ticked early


def test_poison_rows_are_recorded_backed_off_and_parked_and_until_idle_exits(fault_db, start_runner):
    """Why: a failing tick left nothing on the row; one that rescheduled itself before raising spun
    (113 ticks in 25 s); ticks that killed their worker used up the orchestrator's lifetime budget of
    restarts and the runner exited, stranding the healthy rows; --until-idle never exited while a
    failing row existed."""
    healthy = fault_db.add_probes(12, work_seconds=0.05)
    failing = fault_db.add_probes(2, mode="fail")
    rescheduling = fault_db.add_probes(1, mode="fail_reschedule")
    killing = fault_db.add_probes(1, mode="kill")
    env = {
        "WORKERS_RETRY_BASE": "0.3",
        "WORKERS_MAX_ATTEMPTS": "3",
        "WORKERS_RESTART_BUDGET": "2",
        # (a window that three worker start-ups cannot outlast, however loaded: the budget trips)
        "WORKERS_RESTART_WINDOW": "30",
    }
    poison = failing + rescheduling + killing
    runner = start_runner("--workers=2", "--poll=0.05", "--batch=2", env=env)
    parked = "SELECT count(*) FROM workers_tickfailure WHERE parked_at IS NOT NULL"
    wait_for(lambda: fault_db.query(parked)[0][0] == len(poison), 120, "the poison rows to be parked")
    wait_for(lambda: fault_db.counts(healthy)["committed"] == 12, 60, "the healthy rows")
    runner.popen.send_signal(signal.SIGTERM)
    assert runner.wait(60) == 0, runner.output()[-6000:]
    output = runner.output()
    # --until-idle does not wait for rows backing off or parked: it lists them and exits.
    idle = start_runner("--workers=1", "--until-idle", "--poll=0.05", env=env)
    assert idle.wait(60) == 0, idle.output()[-3000:]
    assert "wait for a retry (4 parked)" in idle.output()
    assert exact(fault_db.counts(healthy)) == ZERO and fault_db.counts(healthy)["committed"] == 12
    records = {
        int(pk): (attempts, parked, error, tb)
        for pk, attempts, parked, error, tb in fault_db.query(
            "SELECT object_id, attempts, parked_at IS NOT NULL, error, traceback FROM workers_tickfailure"
        )
    }
    assert set(records) == set(failing + rescheduling + killing)
    assert all(attempts == 3 and parked for attempts, parked, _, _ in records.values())
    for pk in failing + rescheduling:
        assert "ValueError" in records[pk][2] and "Traceback" in records[pk][3]
    assert "SIGKILL" in records[killing[0]][2]
    # Three ticks each, no spinning: the self-rescheduling one too.
    for pk in failing + rescheduling + killing:
        assert len(tick_pids(fault_db, pk)) == 3
    parked_retry = fault_db.query("SELECT retry_at FROM exampleapp_probe WHERE id = %s", (killing[0],))[0][0]
    assert str(parked_retry).startswith("9999-01-01")
    assert "Traceback" not in output  # one line per failure in the log; tracebacks go to the record
    assert "workers keep failing" in output  # the restart budget slowed the crash loop, never gave up


def test_sigterm_hands_back_every_claim_at_once_even_with_a_background_child(fault_db, start_runner):
    """Why: after SIGTERM a worker with a background child left the row it was ticking claimed for
    about a minute, although the log said it handed it back."""
    (probe,) = fault_db.add_probes(1, mode="child", work_seconds=60)
    others = fault_db.add_probes(4, work_seconds=60)
    runner = start_runner("--workers=1", "--batch=5", "--grace=1", "--poll=0.1", "--lock-seconds=120")
    (worker,) = wait_for(lambda: tick_pids(fault_db, probe), 30, "the tick to start")
    child = wait_for(
        lambda: [c for c in psutil.Process(worker).children() if "sleep" in c.name()], 10, "the child"
    )[0]
    began = time.monotonic()
    runner.popen.send_signal(signal.SIGTERM)

    def all_due() -> bool:
        rows = fault_db.query("SELECT retry_at FROM exampleapp_probe")
        now = fault_db.now()
        if fault_db.kind == "sqlite":
            return all(datetime.fromisoformat(r).replace(tzinfo=UTC) <= now for (r,) in rows)
        return all(r <= now for (r,) in rows)

    wait_for(all_due, 10, "every claim handed back")
    assert time.monotonic() - began < 3  # the grace (1 s) plus a little, not the claim (120 s)
    assert runner.wait(30) == 0, runner.output()[-4000:]
    assert not alive(child.pid)
    counts = fault_db.counts([probe, *others])
    assert counts["committed"] == 0 and counts["duplicated"] == 0


def test_workers_stop_at_once_when_their_orchestrator_is_sigkilled(fault_db, start_runner):
    """Why: after the orchestrator was SIGKILLed its workers ran 11.6 s longer and started 4 new ticks."""
    fault_db.add_probes(40, work_seconds=0.5)
    runner = start_runner("--workers=2", "--batch=3", "--grace=5", "--poll=0.1")
    wait_for(lambda: fault_db.counts()["started"] >= 3, 60, "ticks")
    workers = [p.pid for p in runner.workers()]
    assert len(workers) == 2
    runner.popen.kill()
    killed_at = fault_db.now()
    runner.popen.wait(10)
    wait_for(lambda: not any(alive(pid) for pid in workers), 10, "the workers to stop")
    started_after = fault_db.query(
        "SELECT count(*) FROM exampleapp_probetick WHERE started_at > %s",
        (fault_db.at(killed_at + timedelta(milliseconds=200)),),
    )[0][0]
    assert started_after == 0  # no new tick began once the orchestrator was gone
    counts = fault_db.counts()
    assert counts["duplicated"] == 0 and counts["concurrent"] == 0
    # What they held went back to the queue: every unfinished probe is due now.
    pending = fault_db.query("SELECT retry_at FROM exampleapp_probe WHERE status = 'queued'")
    now = fault_db.now()
    if fault_db.kind == "sqlite":
        assert all(datetime.fromisoformat(r).replace(tzinfo=UTC) <= now for (r,) in pending)
    else:
        assert all(r <= now for (r,) in pending)


def test_a_clone_in_another_pid_namespace_never_marks_a_live_runner_dead(fault_db, start_runner):
    """Why: a cloned machine with the same host id in another PID namespace marked a live runner's
    orchestrator and workers "exited 137"; they kept working and the rows kept the lie."""
    if subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", "true"], capture_output=True).returncode:
        pytest.skip("cannot create a PID namespace here")
    fault_db.add_probes(2, work_seconds=30)
    env = {"MACHINE_GUID": "cloned-host"}
    original = start_runner("--workers=1", "--poll=0.1", env=env)
    wait_for(lambda: fault_db.counts()["started"] >= 1, 60, "the original runner to work")
    clone = start_runner(
        "--workers=1", "--poll=0.1", env=env, wrap=["unshare", "--pid", "--fork", "--mount-proc"]
    )
    wait_for(lambda: "another boot or PID namespace alone" in clone.output(), 60, "the clone to start")
    rows = fault_db.query(
        "SELECT pid, status, exit_code, pid_namespace FROM machine_process WHERE process_type IN ('orchestrator', 'worker')"
    )
    ours = psutil.Process(original.pid)
    mine = [row for row in rows if row[0] in {original.pid, *(c.pid for c in ours.children())}]
    assert len(mine) == 2 and all(row[1] == "running" and row[2] is None for row in mine), rows
    assert len({row[3] for row in rows}) == 2  # two namespaces recorded
    assert re.search(r"leaving \d+ runner row\(s\) of another boot or PID namespace alone", clone.output())
    # Stop the clone through its orchestrator (pid 1 of its namespace; `unshare` waits for it).
    for proc in psutil.Process(clone.pid).children():
        proc.send_signal(signal.SIGTERM)
    original.popen.send_signal(signal.SIGTERM)
    assert clone.wait(60) == 0, clone.output()[-3000:]
    assert original.wait(60) == 0, original.output()[-3000:]


def test_runworker_help_runs_without_a_database():
    """(Sanity: the suite's own helper invocations work.)"""
    out = subprocess.run(
        [sys.executable, str(ROOT / "manage.py"), "runworker", "--help"], capture_output=True, text=True
    )
    assert out.returncode == 0 and "--until-idle" in out.stdout
    assert backend() in ("sqlite", "postgresql")
