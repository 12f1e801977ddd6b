"""Many hosts on one PostgreSQL: HOSTS runners (one MACHINE_GUID each) x 2 workers, through PgBouncer.

Each host has its own Task rows (host-bound: claimed only by that host's runner) and all share Noop
rows (anyone's). Every runner runs `runworker --workers 2 --until-idle` through a PgBouncer in
transaction-pooling mode (Debian's pgbouncer, started here on a spare port as the postgres user), so
WORKERS_POOLED=1: no LISTEN (wake-ups fall back to polling), no session settings. Prints JSON:
exact counts (lost, duplicated, cross-host ticks), the drain time, and the measured load on the
server (transactions from pg_stat_database, peak server connections from pg_stat_activity).
Needs DATABASE_URL (PostgreSQL); creates and drops its own scratch database. docs/capacity.md
explains the figures.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from urllib.parse import urlparse

ROOT = Path(__file__).resolve().parent.parent
HOSTS = int(os.environ.get("BENCH_HOSTS", "32"))
WORKERS = 2
TASKS_PER_HOST = int(os.environ.get("BENCH_HOSTS_TASKS", "25"))
SHARED = int(os.environ.get("BENCH_HOSTS_SHARED", "1600"))
POOL_SIZE = int(os.environ.get("BENCH_HOSTS_POOL", "20"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_pgbouncer(server: str, tmp: Path) -> tuple[subprocess.Popen, int]:
    """PgBouncer in transaction mode in front of `server` (host:port of DATABASE_URL)."""
    binary = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
    if not os.path.exists(binary):
        raise SystemExit("pgbouncer is not installed (apt-get install pgbouncer)")
    url = urlparse(server)
    port = free_port()
    (tmp / "users.txt").write_text(f'"{url.username or "postgres"}" ""\n')
    (tmp / "pgbouncer.ini").write_text(
        f"""[databases]
* = host={url.hostname or "127.0.0.1"} port={url.port or 5432}
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = trust
auth_file = {tmp / "users.txt"}
pool_mode = transaction
default_pool_size = {POOL_SIZE}
max_client_conn = 1000
server_reset_query =
ignore_startup_parameters = extra_float_digits,options
logfile = {tmp / "pgbouncer.log"}
pidfile = {tmp / "pgbouncer.pid"}
"""
    )
    if os.geteuid() == 0:
        shutil.chown(tmp, "postgres")
        for name in ("users.txt", "pgbouncer.ini"):
            shutil.chown(tmp / name, "postgres")
        cmd = ["runuser", "-u", "postgres", "--", binary, str(tmp / "pgbouncer.ini")]
    else:
        cmd = [binary, str(tmp / "pgbouncer.ini")]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return proc, port
        time.sleep(0.1)
    raise SystemExit("pgbouncer did not start")


def main() -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    os.environ["DJANGO_SETTINGS_MODULE"] = "tests.settings"
    if not os.environ.get("DATABASE_URL", "").startswith("postgres"):
        raise SystemExit("set DATABASE_URL=postgres://...: several hosts share one PostgreSQL")
    from common import setup_django

    setup_django()
    from django.db import connection

    from machine.models import Machine, Process
    from tests.exampleapp.models import Effect, Noop, Task

    db_name = str(connection.settings_dict["NAME"])
    machines = [
        Machine.objects.create(guid=f"bench-host-{i:02d}", hostname=f"bench-host-{i:02d}")
        for i in range(HOSTS)
    ]
    for machine in machines:
        Task.objects.bulk_create(
            [Task(machine=machine, name=f"{machine.guid}-{i}") for i in range(TASKS_PER_HOST)]
        )
    Noop.objects.bulk_create([Noop() for _ in range(SHARED)])

    tmp = Path(tempfile.mkdtemp(prefix="bench-hosts-"))
    bouncer, port = start_pgbouncer(os.environ["DATABASE_URL"], tmp)
    url = urlparse(os.environ["DATABASE_URL"])
    pooled_url = f"postgres://{url.username or 'postgres'}@127.0.0.1:{port}/{db_name}"

    def snapshot() -> tuple[int, int]:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_stat_clear_snapshot()")
            cursor.execute(
                "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = current_database()"
            )
            xacts = int(cursor.fetchone()[0])
            cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()")
            return xacts, int(cursor.fetchone()[0])

    peak = [0]
    stop = threading.Event()

    def sample() -> None:
        from django.db import connections

        try:
            while not stop.wait(0.5):
                peak[0] = max(peak[0], snapshot()[1])
        finally:
            connections.close_all()

    xacts_before, _ = snapshot()
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    env = {
        **os.environ, "DATABASE_URL": pooled_url, "DATABASE_NAME": db_name, "PYTHONPATH": str(ROOT),
        "WORKERS_POOLED": "1", "MACHINE_PUBLIC_IP_LOOKUP": "0",
    }  # fmt: skip
    logs = tmp / "logs"
    logs.mkdir()
    began = time.perf_counter()
    runners = []
    for machine in machines:
        log = open(logs / f"{machine.guid}.log", "wb")
        cmd = [
            sys.executable, str(ROOT / "manage.py"), "runworker", f"--workers={WORKERS}", "--until-idle",
            "--models=exampleapp.Task,exampleapp.Noop", "--batch=10", "--poll=0.2", "-v1",
        ]  # fmt: skip
        runners.append(
            (
                machine,
                subprocess.Popen(
                    cmd,
                    env={**env, "MACHINE_GUID": machine.guid},
                    cwd=ROOT,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                ),
            )
        )
    codes = {}
    for machine, proc in runners:
        try:
            codes[machine.guid] = proc.wait(1200)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGTERM)
            codes[machine.guid] = proc.wait(60)
    seconds = time.perf_counter() - began
    stop.set()
    sampler.join()
    xacts_after, _ = snapshot()
    bouncer.terminate()
    bouncer.wait(10)

    worker_host = {
        pid: machine_id
        for pid, machine_id in Process.objects.filter(process_type="worker").values_list("pid", "machine_id")
    }
    results = Counter(Effect.objects.values_list("task_id", flat=True))
    tasks = list(Task.objects.values_list("pk", "machine_id", "status", "attempts"))
    cross = sum(
        1 for task_id, machine_id, pid in Effect.objects.values_list("task_id", "task__machine_id", "pid")
        if worker_host.get(pid) != machine_id
    )  # fmt: skip
    ticks = len(tasks) + SHARED
    report = {
        "benchmark": "many_hosts_one_postgresql",
        "hosts": HOSTS,
        "workers_per_host": WORKERS,
        "through": f"pgbouncer transaction pooling, default_pool_size={POOL_SIZE} (LISTEN off: polling)",
        "host_bound_rows": len(tasks),
        "shared_rows": SHARED,
        "runner_exit_codes": dict(Counter(codes.values())),
        "lost": sum(1 for _pk, _m, status, _a in tasks if status != "done")
        + Noop.objects.exclude(status="done").count(),
        "duplicated": sum(n - 1 for n in results.values() if n > 1) + sum(1 for *_x, a in tasks if a > 1),
        "cross_host_ticks": cross,
        "seconds_including_startup": round(seconds, 1),
        "ticks_per_second_including_startup": round(ticks / seconds, 1),
        "server_transactions": xacts_after - xacts_before,
        "server_transactions_per_second": round((xacts_after - xacts_before) / seconds, 1),
        "transactions_per_tick": round((xacts_after - xacts_before) / ticks, 2),
        "peak_server_connections": peak[0],
        "client_processes": HOSTS * (WORKERS + 1),
        "cpus": os.cpu_count(),
        "load_average_1m": round(os.getloadavg()[0], 2),
    }
    print(json.dumps(report, indent=2))
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
