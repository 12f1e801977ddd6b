"""Drain: 1,000 queued `true` Processes run by `runworker --workers 4 --until-idle`; prints JSON.

Baseline (same run): a bare loop of `subprocess.run(["true"])`, 1,000 times. The runner does much
more per process (a claimed row, log files, pid file, exact start time, reaping, the exit code and
output stored), so the ratio says what that bookkeeping costs. Throughput counts the whole command,
start-up included, and separately the span from the first launch to the last recorded exit.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COUNT = int(os.environ.get("BENCH_DRAIN_COUNT", "1000"))
WORKERS = int(os.environ.get("BENCH_DRAIN_WORKERS", "4"))
BATCH = int(os.environ.get("BENCH_DRAIN_BATCH", "10"))


def bare_loop() -> float:
    started = time.perf_counter()
    for _ in range(COUNT):
        subprocess.run(["true"], check=True)
    return time.perf_counter() - started


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from common import setup_django

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "demo.settings")
    vendor = setup_django()
    from django.db import connection
    from django.db.models import Max, Min

    from machine.conf import machine_settings
    from machine.models import Machine, Process

    machine = Machine.current()
    runs = machine_settings.data_dir / "drain"
    rows = []
    for i in range(COUNT):
        pwd = runs / f"{i:04d}"  # a Process keeps its log files in its pwd
        pwd.mkdir(parents=True, exist_ok=True)
        rows.append(Process(machine=machine, cmd=["true"], pwd=str(pwd), timeout=60, process_type="binary"))
    Process.objects.bulk_create(rows)

    cpu_before = _children_cpu()
    baseline_s = bare_loop()
    baseline_cpu_s = _children_cpu() - cpu_before  # (the `true` children's own CPU time)

    env = {
        **os.environ,
        "DATABASE_NAME": str(connection.settings_dict["NAME"]),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH", "")])),
    }
    cmd = [
        sys.executable, str(ROOT / "manage.py"), "runworker", f"--workers={WORKERS}", "--until-idle",
        "--models=machine.Process", "--poll=0.05", f"--batch={BATCH}", "-v0",
    ]  # fmt: skip
    started = time.perf_counter()
    cpu_before = _children_cpu()
    completed = subprocess.run(cmd, env=env, cwd=ROOT, timeout=900)
    runner_s = time.perf_counter() - started
    runner_cpu_s = _children_cpu() - cpu_before - baseline_cpu_s
    if completed.returncode != 0:
        raise SystemExit(f"runworker failed with exit code {completed.returncode}")

    launched = Process.objects.filter(process_type=Process.TypeChoices.BINARY, cmd=["true"])
    span = launched.aggregate(first=Min("started_at"), last=Max("ended_at"))
    span_s = (span["last"] - span["first"]).total_seconds()
    exited_ok = launched.filter(status="exited", exit_code=0).count()
    distinct_pids = len(set(launched.values_list("pid", flat=True)))
    print(
        json.dumps(
            {
                "benchmark": "drain_true_processes",
                "database": vendor,
                "processes": COUNT,
                "workers": WORKERS,
                "batch_size": BATCH,
                "cpus": os.cpu_count(),
                "load_average_1m": round(os.getloadavg()[0], 2),
                "exited_with_0": exited_ok,
                "distinct_pids": distinct_pids,
                "runner_seconds_including_startup": round(runner_s, 3),
                "runner_processes_per_second": round(COUNT / runner_s, 1),
                "first_launch_to_last_exit_seconds": round(span_s, 3),
                "processes_per_second_first_launch_to_last_exit": round(COUNT / span_s, 1),
                "bare_subprocess_run_seconds": round(baseline_s, 3),
                "bare_subprocess_run_per_second": round(COUNT / baseline_s, 1),
                "ratio_runner_vs_bare_loop": round(baseline_s / runner_s, 4),
                # CPU seconds the runner's processes used per launched process, the children's own
                # CPU excluded (less sensitive to a busy machine than the wall-clock ratio).
                "runner_cpu_ms_per_process": round(1000 * runner_cpu_s / COUNT, 3),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
