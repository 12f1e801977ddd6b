"""Fault injection: real runner processes, real signals, and a PostgreSQL server these tests own.

The suite runs on SQLite, or (when DATABASE_URL names PostgreSQL) on a PostgreSQL 15 cluster it
creates with Debian's initdb/pg_ctl on a spare port and stops, freezes and restarts itself; the
shared server the rest of the suite uses is never touched. Each test gets a fresh database copied
from a migrated template, so no test sees another's rows, and talks to it with plain SQL (the test
process's own Django database is not the one under test).

Counts every test reports (exampleapp.Probe: each tick logs a ProbeTick, and commits one ProbeResult
with its final state in a fenced transaction):
- started: ticks begun; committed: ticks whose result committed;
- lost: probes never done; duplicated: results beyond the first of a probe;
- concurrent: pairs of committed ticks of one probe whose [start, end] overlap.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parents[2]
PG_BIN = Path("/usr/lib/postgresql/15/bin")


def backend() -> str:
    return "postgresql" if os.environ.get("DATABASE_URL", "").startswith("postgres") else "sqlite"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _as_postgres(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    return subprocess.run([*prefix, *cmd], check=True, capture_output=True, text=True, **kwargs)


class PostgresServer:
    """A throwaway PostgreSQL cluster on 127.0.0.1:<spare port>."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="faults-pg-"))
        self.data = self.dir / "data"
        self.port = _free_port()
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres", "postgres")
        _as_postgres(
            [str(PG_BIN / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres", "-E", "UTF8"]
        )
        self.options = (
            f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off "
            "-c max_connections=200 -c shared_buffers=32MB"
        )
        self.start()

    def start(self) -> None:
        _as_postgres(
            [
                str(PG_BIN / "pg_ctl"),
                "-D",
                str(self.data),
                "-o",
                self.options,
                "-l",
                str(self.dir / "log"),
                "-w",
                "start",
            ]
        )

    def stop(self, mode: str = "fast") -> None:
        _as_postgres([str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop"])

    def processes(self) -> list[psutil.Process]:
        pid = int((self.data / "postmaster.pid").read_text().split()[0])
        postmaster = psutil.Process(pid)
        return [postmaster, *postmaster.children(recursive=True)]

    def freeze(self) -> None:
        self._signal_all(signal.SIGSTOP)

    def thaw(self) -> None:
        self._signal_all(signal.SIGCONT)

    def _signal_all(self, sig: int) -> None:
        for proc in self.processes():
            try:
                proc.send_signal(sig)
            except psutil.NoSuchProcess:
                pass  # a backend that ended meanwhile

    def url(self, database: str) -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/{database}"

    def execute(self, sql: str, database: str = "postgres") -> list:
        import psycopg

        with psycopg.connect(self.url(database), autocommit=True) as conn:
            cursor = conn.execute(sql)
            return cursor.fetchall() if cursor.description else []

    def terminate_backends(self, database: str) -> int:
        rows = self.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            f"WHERE datname = '{database}' AND pid <> pg_backend_pid()"
        )
        return len(rows)

    def destroy(self) -> None:
        try:
            self.thaw()
        except (OSError, psutil.Error, ValueError):
            pass
        try:
            self.stop("immediate")
        except (subprocess.CalledProcessError, OSError):
            pass
        shutil.rmtree(self.dir, ignore_errors=True)


def _base_env(tmp: Path) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("MACHINE_", "WORKERS_", "TEST_", "DATABASE_"))
    }
    env.update(
        DJANGO_SETTINGS_MODULE="tests.settings",
        PYTHONPATH=str(ROOT),
        DATA_DIR=str(tmp / "data"),
        MACHINE_PUBLIC_IP_LOOKUP="0",
        PYTHONUNBUFFERED="1",
    )
    return env


@pytest.fixture(scope="session")
def pg_server():
    if backend() != "postgresql":
        yield None
        return
    server = PostgresServer()
    yield server
    server.destroy()


@pytest.fixture(scope="session")
def template(pg_server, tmp_path_factory):
    """A migrated database to copy: (kind, location)."""
    tmp = tmp_path_factory.mktemp("faults-template")
    env = _base_env(tmp)
    if pg_server is not None:
        pg_server.execute("CREATE DATABASE faults_template")
        env["DATABASE_URL"] = pg_server.url("faults_template")
    subprocess.run([sys.executable, str(ROOT / "manage.py"), "migrate", "-v0"], env=env, cwd=ROOT, check=True)
    if pg_server is not None:
        return "postgresql", "faults_template"
    return "sqlite", tmp / "data" / "index.sqlite3"


@dataclass
class FaultDb:
    """The database under test, reached with plain SQL (%s placeholders on both backends)."""

    kind: str
    env: dict[str, str]
    server: PostgresServer | None = None
    name: str = ""
    path: Path | None = None

    def query(self, sql: str, params: tuple = ()) -> list[tuple]:
        if self.kind == "postgresql":
            import psycopg

            with psycopg.connect(self.server.url(self.name), autocommit=True) as conn:
                cursor = conn.execute(sql, params)
                return cursor.fetchall() if cursor.description else []
        with sqlite3.connect(self.path, timeout=60) as conn:
            cursor = conn.execute(sql.replace("%s", "?"), params)
            rows = cursor.fetchall()
        conn.close()
        return rows

    def at(self, when: datetime):
        """A datetime parameter as the backend stores it (SQLite: Django's text in UTC)."""
        return when if self.kind == "postgresql" else when.astimezone(UTC).replace(tzinfo=None).isoformat(" ")

    def now(self) -> datetime:
        if self.kind == "postgresql":
            return self.query("SELECT now()")[0][0]
        return datetime.now(UTC)

    def add_probes(
        self, count: int, mode: str = "sleep", work_seconds: float = 0.0, due_in: float = 0.0
    ) -> list[int]:
        due = self.at(datetime.now(UTC) + timedelta(seconds=due_in))
        ids = []
        for _ in range(count):
            if self.kind == "postgresql":
                (row,) = self.query(
                    "INSERT INTO exampleapp_probe (mode, work_seconds, status, retry_at) VALUES (%s, %s, 'queued', %s) "
                    "RETURNING id",
                    (mode, work_seconds, due),
                )
                ids.append(row[0])
            else:
                with sqlite3.connect(self.path, timeout=60) as conn:
                    cursor = conn.execute(
                        "INSERT INTO exampleapp_probe (mode, work_seconds, status, retry_at) VALUES (?, ?, 'queued', ?)",
                        (mode, work_seconds, due),
                    )
                    ids.append(cursor.lastrowid)
                conn.close()
        return ids

    def counts(self, ids: list[int] | None = None) -> dict[str, int]:
        """started / committed / lost / duplicated / concurrent (see the module docstring)."""
        probes = dict(self.query("SELECT id, status FROM exampleapp_probe"))
        if ids is not None:
            probes = {pk: status for pk, status in probes.items() if pk in set(ids)}
        results = Counter(
            pk for (pk,) in self.query("SELECT probe_id FROM exampleapp_proberesult") if pk in probes
        )
        ticks = [
            t
            for t in self.query("SELECT probe_id, started_at, ended_at, committed FROM exampleapp_probetick")
            if t[0] in probes
        ]
        committed = [t for t in ticks if t[3]]
        concurrent = 0
        for i, a in enumerate(committed):
            for b in committed[i + 1 :]:
                if a[0] == b[0] and a[1] < (b[2] or a[1]) and b[1] < (a[2] or b[1]):
                    concurrent += 1
        return {
            "started": len(ticks),
            "committed": len(committed),
            "lost": sum(1 for pk, status in probes.items() if status != "done" or not results[pk]),
            "duplicated": sum(max(0, n - 1) for n in results.values()),
            "concurrent": concurrent,
        }


@pytest.fixture
def fault_db(pg_server, template, tmp_path) -> FaultDb:
    kind, location = template
    env = _base_env(tmp_path)
    env["FAULT_TEST_ID"] = uuid.uuid4().hex  # finds this test's processes at teardown
    if kind == "postgresql":
        name = f"faults_{uuid.uuid4().hex[:12]}"
        pg_server.execute(f"CREATE DATABASE {name} TEMPLATE faults_template")
        env["DATABASE_URL"] = pg_server.url(name)
        return FaultDb(kind, env, server=pg_server, name=name)
    path = tmp_path / "data" / "index.sqlite3"
    path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(location, path)
    return FaultDb(kind, env, path=path)


@dataclass
class Runner:
    """A `manage.py runworker` process and its log."""

    popen: subprocess.Popen
    log: Path
    started: float = field(default_factory=time.monotonic)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def wait(self, timeout: float) -> int:
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"runworker still running after {timeout}s:\n{self.output()[-8000:]}"
            ) from None

    def workers(self) -> list[psutil.Process]:
        try:
            return [p for p in psutil.Process(self.pid).children() if "--worker" in p.cmdline()]
        except psutil.Error:
            return []


@pytest.fixture
def start_runner(fault_db, tmp_path):
    started: list[Runner] = []

    def start(*args: str, env: dict[str, str] | None = None, wrap: list[str] | None = None) -> Runner:
        log = tmp_path / f"runner-{len(started)}.log"
        with open(log, "wb") as out:
            popen = subprocess.Popen(
                [*(wrap or []), sys.executable, str(ROOT / "manage.py"), "runworker", "--models=exampleapp.Probe", *args],
                cwd=ROOT, env={**fault_db.env, **(env or {})}, stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
        runner = Runner(popen, log)
        started.append(runner)
        return runner

    yield start

    marker = fault_db.env["FAULT_TEST_ID"]
    for runner in started:
        if runner.popen.poll() is None:
            runner.popen.kill()
            runner.popen.wait(10)
    # Workers whose orchestrator a test killed carry this test's marker in their environment.
    for proc in psutil.process_iter(["pid", "environ"]):
        try:
            if (proc.info["environ"] or {}).get("FAULT_TEST_ID") == marker and proc.pid != os.getpid():
                proc.kill()
        except psutil.Error:
            pass
    if fault_db.kind == "postgresql" and fault_db.server is not None:
        try:
            fault_db.server.thaw()
        except (OSError, psutil.Error):
            pass


def wait_for(predicate, timeout: float, what: str, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def tick_pids(db: FaultDb, probe_id: int) -> list[int]:
    return [
        pid
        for (pid,) in db.query(
            "SELECT pid FROM exampleapp_probetick WHERE probe_id = %s ORDER BY id", (probe_id,)
        )
    ]


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


class PgBouncer:
    """Debian's pgbouncer in transaction-pooling mode in front of a PostgresServer."""

    def __init__(self, server: PostgresServer, pool_size: int = 10):
        binary = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
        self.dir = Path(tempfile.mkdtemp(prefix="faults-pgbouncer-"))
        self.port = _free_port()
        (self.dir / "users.txt").write_text('"postgres" ""\n')
        (self.dir / "pgbouncer.ini").write_text(
            f"[databases]\n* = host=127.0.0.1 port={server.port}\n[pgbouncer]\nlisten_addr = 127.0.0.1\n"
            f"listen_port = {self.port}\nunix_socket_dir =\nauth_type = trust\nauth_file = {self.dir / 'users.txt'}\n"
            f"pool_mode = transaction\ndefault_pool_size = {pool_size}\nmax_client_conn = 500\n"
            "server_reset_query =\nignore_startup_parameters = extra_float_digits,options\n"
            f"logfile = {self.dir / 'log'}\n"
        )
        prefix = []
        if os.geteuid() == 0:
            for path in (self.dir, self.dir / "users.txt", self.dir / "pgbouncer.ini"):
                shutil.chown(path, "postgres")
            prefix = ["runuser", "-u", "postgres", "--"]
        self.popen = subprocess.Popen(
            [*prefix, binary, str(self.dir / "pgbouncer.ini")], stdout=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.1)
        raise RuntimeError("pgbouncer did not start")

    def url(self, database: str) -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/{database}"

    def stop(self) -> None:
        self.popen.terminate()
        self.popen.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)
