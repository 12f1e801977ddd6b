"""Issue 11, point 5: anything that judges liveness or sends signals acts only on this machine's rows.

"Why": `Process.cleanup_stale_running(machine=<another host>)` judged host B's rows against host A's
process table and closed a live row of host B; the admin's clean-up action exposed it.
"""

from __future__ import annotations

import subprocess
import sys
from datetime import timedelta

import psutil
import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.urls import reverse
from django.utils import timezone

from machine.choices import ProcessStatus
from machine.models import Binary, Machine, Process
from machine.processes import ForeignMachineError
from tests.machine_factories import make_machine

pytestmark = pytest.mark.django_db


@pytest.fixture
def host_b():
    return make_machine("host-b-guid-0001", hostname="host-b")


def unused_pid() -> int:
    """A pid with no process on this host (host B's live worker could well have it over there)."""
    proc = subprocess.Popen(["true"])
    proc.wait()
    assert not psutil.pid_exists(proc.pid) or psutil.Process(proc.pid).status() == psutil.STATUS_ZOMBIE
    return proc.pid


def live_row_of(machine, **fields) -> Process:
    """A RUNNING row of `machine` whose process (on that host) is alive and well."""
    fields.setdefault("pid", unused_pid())
    return Process.objects.create(
        machine=machine,
        cmd=["sleep", "3600"],
        status=ProcessStatus.RUNNING,
        started_at=timezone.now() - timedelta(minutes=5),
        os_start_time=(timezone.now() - timedelta(minutes=5)).timestamp(),
        launch_marker="b" * 32,
        timeout=60,
        **fields,
    )


def test_cleanup_of_another_host_is_refused_and_its_live_row_stays_open(host_b):
    row = live_row_of(host_b)
    with pytest.raises(ForeignMachineError, match="of machine host-b"):
        Process.cleanup_stale_running(machine=host_b)
    row.refresh_from_db()
    assert row.status == ProcessStatus.RUNNING and row.exit_code is None
    assert Process.cleanup_stale_running(machine=Machine.current()) == 0  # this host: allowed
    assert Process.cleanup_stale_running() == 0


def test_signals_and_clean_ups_refuse_another_hosts_rows(host_b):
    row = live_row_of(host_b)
    for act in (row.kill, row.terminate, row.kill_tree, row.kill_children_db):
        with pytest.raises(ForeignMachineError, match="of machine host-b"):
            act()
    with pytest.raises(ForeignMachineError):
        Process.stop_all(machine=host_b)
    binary = Binary.objects.create(machine=host_b, name="wget", status="installed")
    with pytest.raises(ForeignMachineError, match="clean up binary 'wget'"):
        binary.cleanup()
    row.refresh_from_db()
    assert row.status == ProcessStatus.RUNNING
    assert Process.stop_all(machine=Machine.current()) == 0


def test_manage_py_kill_refuses_another_hosts_row(host_b):
    row = live_row_of(host_b)
    with pytest.raises(CommandError, match="of machine host-b"):
        call_command("kill", str(row.pk))
    row.refresh_from_db()
    assert row.status == ProcessStatus.RUNNING


def test_cleanup_and_ps_commands_only_judge_this_host(host_b, capsys):
    row = live_row_of(host_b)
    call_command("cleanup")
    call_command("ps")
    row.refresh_from_db()
    assert row.status == ProcessStatus.RUNNING
    assert str(row.pk) not in capsys.readouterr().out


def _action(client, action, rows, **confirm):
    return client.post(
        reverse("admin:machine_process_changelist"),
        {"action": action, "_selected_action": [str(r.pk) for r in rows], **confirm},
        follow=True,
    )


def test_admin_actions_refuse_another_hosts_rows(admin_client, host_b, data_dir):
    here = Machine.current()
    remote = live_row_of(host_b)
    gone = live_row_of(here)  # this host's row whose process is gone: cleaned up
    response = _action(admin_client, "cleanup_stale", [remote, gone])
    messages = [str(m) for m in response.context["messages"]]
    assert "Marked 1 stale running process row(s) of this machine exited." in messages
    assert any("Refused to judge rows of other machines (host-b)" in m for m in messages)
    remote.refresh_from_db()
    gone.refresh_from_db()
    assert remote.status == ProcessStatus.RUNNING and gone.status == ProcessStatus.EXITED

    response = _action(admin_client, "terminate_processes", [remote], post="yes")
    (message,) = [str(m) for m in response.context["messages"]]
    assert "belongs to machine host-b; terminate it on that host" in message
    remote.refresh_from_db()
    assert remote.status == ProcessStatus.RUNNING


def test_a_live_process_here_with_host_bs_pid_is_never_signalled(host_b):
    """Host B's row names a pid that, here, is a live process of ours: nothing may touch it."""
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        row = live_row_of(host_b, pid=sleeper.pid)
        with pytest.raises(ForeignMachineError):
            row.kill(9)
        with pytest.raises(ForeignMachineError):
            Process.cleanup_stale_running(machine=host_b)
        assert sleeper.poll() is None
    finally:
        sleeper.kill()
        sleeper.wait()
