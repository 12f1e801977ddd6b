"""Rows and real OS processes that the admin tests (client and browser) look at."""

from __future__ import annotations

import subprocess
import time
from datetime import timedelta
from pathlib import Path

import psutil
from django.utils import timezone

from machine.choices import BinaryStatus, ProcessStatus, ProcessType
from machine.models import Binary, Machine, NetworkInterface, Process

#: Secret values planted in env and argv; none of them may ever appear in a page.
SECRET_ENV = {
    "OPENAI_API_KEY": "sk-planted-api-key-111",
    "GITHUB_TOKEN": "ghp_planted_token_222",
    "DB_PASSWORD": "planted-password-333",
    "SESSION_COOKIE": "planted-cookie-444",
    "AWS_SECRET_ACCESS_KEY": "planted-secret-555",
}
SECRET_ARGS = ("planted-cli-token-666", "planted-cli-password-777", "planted-cookie-arg-888")
SECRET_VALUES = (*SECRET_ENV.values(), *SECRET_ARGS)
PLAIN_ENV = {"PATH": "/usr/local/bin:/usr/bin", "LANG": "C.UTF-8"}


def make_rows(machine: Machine) -> dict:
    """An interface, an installed binary with a hook run, and a parent/child pair of exited processes."""
    iface = NetworkInterface.objects.create(
        machine=machine,
        mac_address="02:00:00:00:00:01",
        ip_local="10.1.2.3",
        ip_public="203.0.113.7",
        dns_server="10.1.2.1",
        iface="eth9",
        isp="Example Transit",
        city="Lyon",
        region="ARA",
        country="FR",
    )
    wget = Binary.objects.create(
        machine=machine,
        name="wget",
        binproviders="env,apt",
        binprovider="env",
        abspath="/usr/bin/wget",
        version="1.21.3",
        sha256="ab" * 32,
        status=BinaryStatus.INSTALLED,
        retry_at=None,
        num_uses_succeeded=3,
        num_uses_failed=1,
    )
    Binary.objects.create(machine=machine, name="yt-dlp", binproviders="pip", status=BinaryStatus.QUEUED)
    now = timezone.now()
    parent = Process.objects.create(
        machine=machine,
        process_type=ProcessType.WORKER,
        worker_type="binary",
        cmd=["python", "manage.py", "run_worker"],
        env=PLAIN_ENV,
        status=ProcessStatus.EXITED,
        exit_code=0,
        pid=4242,
        started_at=now - timedelta(minutes=5),
        ended_at=now - timedelta(minutes=1),
        iface=iface,
    )
    hook = Process.objects.create(
        machine=machine,
        parent=parent,
        binary=wget,
        process_type=ProcessType.HOOK,
        cmd=[
            "/usr/bin/env",
            "bash",
            "on_BinaryRequest__10_env.sh",
            f"--api-token={SECRET_ARGS[0]}",
            "--password",
            SECRET_ARGS[1],
            "--name=wget and friends",
        ],
        env={**PLAIN_ENV, **SECRET_ENV},
        status=ProcessStatus.EXITED,
        exit_code=0,
        pid=4243,
        started_at=now - timedelta(minutes=4, seconds=30),
        ended_at=now - timedelta(minutes=4),
        stdout='{"type": "Binary", "name": "wget", "abspath": "/usr/bin/wget"}\n',
        stderr="found wget in PATH\n",
    )
    # Short enough that str(process) (argv joined, cut at 60 characters) would show the whole secret.
    leaky = Process.objects.create(
        machine=machine,
        parent=hook,
        binary=wget,
        process_type=ProcessType.BINARY,
        cmd=["curl", f"--cookie={SECRET_ARGS[2]}"],
        status=ProcessStatus.EXITED,
        exit_code=6,
        pid=4244,
        started_at=now - timedelta(minutes=4, seconds=20),
        ended_at=now - timedelta(minutes=4, seconds=10),
    )
    return {"iface": iface, "binary": wget, "parent": parent, "hook": hook, "leaky": leaky}


def launch_sleep(machine: Machine, workdir: Path, seconds: int = 120) -> Process:
    """A real `sleep` launched through the Process model, in the background."""
    workdir.mkdir(parents=True, exist_ok=True)
    process = Process.objects.create(
        machine=machine,
        process_type=ProcessType.BINARY,
        cmd=["sleep", str(seconds)],
        env=dict(PLAIN_ENV),
        pwd=str(workdir),
        timeout=seconds + 60,
    )
    process.launch(background=True)
    process.refresh_from_db()
    assert process.status == ProcessStatus.RUNNING, process.status
    assert psutil.pid_exists(process.pid)
    return process


def os_process_gone(pid: int, timeout: float = 5.0) -> bool:
    """True once `pid` no longer exists or is only a zombie waiting to be reaped."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.05)
    return False


def spawn_foreign_sleep(seconds: int = 120) -> subprocess.Popen:
    """A real process that no Process row launched (the test owns and must reap it)."""
    return subprocess.Popen(["sleep", str(seconds)])
