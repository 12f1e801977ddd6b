"""The original's own tests of its machine app (archivebox/machine/tests/test_machine_models.py),
re-expressed in our code: same scenarios, same assertions.

Where our docs/compatibility.md documents a deliberate difference, the test asserts ours and names
the row. The PID-namespace tests are left out (a later issue adds namespaces), and so is the one
that exercises the archiver's own config app (`get_config()`), which is not part of this app.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psutil
import pytest
from django.db import IntegrityError, transaction
from django.utils import timezone

import machine.models as mm
from machine.detect import unknown_if_blank
from machine.models import (
    MACHINE_RECHECK_INTERVAL,
    PID_REUSE_WINDOW,
    PROCESS_TIMEOUT_GRACE,
    Binary,
    BinaryMachine,
    Machine,
    NetworkInterface,
    Process,
    ProcessMachine,
)
from machine.processes import UNKNOWN_EXIT_NOTE
from tests.compat.machine_helpers import lib_dir

pytestmark = pytest.mark.django_db

__all__ = ["lib_dir"]  # fixture


# -- fixtures: what the original's conftest provides ------------------------------------------------


def _started_at(pid: int) -> datetime:
    return datetime.fromtimestamp(psutil.Process(pid).create_time(), tz=UTC)


def _spawn_blocked_python() -> tuple[subprocess.Popen, datetime]:
    """A python child blocked on stdin (it exits 0 when given a line)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", "print('READY', flush=True); input()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stdout.readline() == "READY\n"
    return proc, _started_at(proc.pid)


def _reaped_identity() -> tuple[int, datetime]:
    proc, started_at = _spawn_blocked_python()
    proc.stdin.write("\n")
    proc.stdin.flush()
    assert proc.wait(timeout=5) == 0
    return proc.pid, started_at


def install_real_binary(name: str, *, machine=None, overrides=None, binproviders: str = "env") -> Binary:
    """The original's helper: a Binary row for a binary really on this host, installed.

    Re-expressed with the records an install run goes through: the request, then the provider's
    `Binary` record (here for this interpreter, which is always there).
    """
    request = {"name": name, "binproviders": binproviders}
    if overrides is not None:
        request["overrides"] = overrides
    Binary.from_json(request)
    binary = Binary.from_json(
        {"name": name, "abspath": sys.executable, "version": platform.python_version(), "binprovider": "env"}
    )
    assert binary.machine == (machine or Machine.current())
    return binary


@pytest.fixture
def machine():
    return Machine.current()


@pytest.fixture
def binary(machine, lib_dir):
    return install_real_binary("python", machine=machine)


@pytest.fixture
def process(machine, binary, tmp_path):
    return Process.objects.create(
        machine=machine, binary=binary, cmd=[binary.abspath, "--version"], pwd=str(tmp_path)
    )


@pytest.fixture
def live_process_identity_factory():
    spawned = []

    def spawn() -> tuple[int, datetime]:
        proc, started_at = _spawn_blocked_python()
        spawned.append(proc)
        return proc.pid, started_at

    yield spawn
    for proc in spawned:
        if proc.poll() is None:
            proc.stdin.write("\n")
            proc.stdin.flush()
            assert proc.wait(timeout=5) == 0


def _lib_binary(lib_dir: Path, name: str) -> Path:
    """`<lib>/env/bin/<name>`: a link to a real executable, as an env-provider install leaves it."""
    path = lib_dir / "env" / "bin" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.symlink_to(sys.executable)
    return path


# -- TestMachineModel --------------------------------------------------------------------------------


def test_machine_config_save_heals_json_encoded_string_values(machine):
    machine.config = {
        "EXTRA_CONTEXT": 'prefix "inner" suffix',
        "USER_AGENT": '"ArchiveBox \\"Quoted\\" Agent"',
    }
    machine.save(update_fields=["config"])
    machine.refresh_from_db()
    assert machine.config["EXTRA_CONTEXT"] == 'prefix "inner" suffix'
    assert machine.config["USER_AGENT"] == 'ArchiveBox "Quoted" Agent'


def test_machine_current_creates_machine():
    machine = Machine.current()
    assert machine is not None and machine.id is not None and machine.guid is not None
    assert machine.hostname == os.uname().nodename
    assert machine.os_family in ["linux", "darwin", "windows", "freebsd"]


def test_machine_current_returns_cached():
    assert Machine.current().id == Machine.current().id


def test_machine_current_refreshes_after_interval():
    machine1 = Machine.current()
    machine1.modified_at = timezone.now() - timedelta(seconds=MACHINE_RECHECK_INTERVAL + 1)
    machine1.save()
    mm._CURRENT_MACHINE = machine1
    assert Machine.current().guid == machine1.guid


def test_machine_current_recreates_stale_cached_row():
    machine1 = Machine.current()
    machine1_id, machine1_guid = machine1.id, machine1.guid
    machine1.delete()
    mm._CURRENT_MACHINE = machine1
    machine2 = Machine.current()
    assert machine1_id != machine2.id and machine1_guid == machine2.guid


def test_machine_from_jsonl_update(lib_dir):
    Machine.current()
    wget_path = _lib_binary(lib_dir, "wget")
    result = Machine.from_json({"config": {"WGET_BINARY": str(wget_path)}})
    assert result is not None and result.config.get("WGET_BINARY") == str(wget_path)


def test_machine_from_jsonl_drops_invalid_binary_paths_keeps_mirror(lib_dir):
    Machine.current()
    wget_path = _lib_binary(lib_dir, "wget")
    record = {
        "config": {
            "WGET_BINARY": str(wget_path),
            "CHROMIUM_VERSION": "123.4.5",
            "YTDLP_BINARY": "/tmp/archivebox-test-missing-yt-dlp",
        }
    }
    result = Machine.from_json(record)
    assert result is not None
    assert result.config.get("WGET_BINARY") == str(wget_path)
    assert result.config.get("CHROMIUM_VERSION") == "123.4.5"
    assert "YTDLP_BINARY" not in result.config


def test_machine_from_jsonl_invalid():
    assert Machine.from_json({"invalid": "record"}) is None


def test_machine_current_drops_invalid_binary_paths_keeps_mirror(lib_dir):
    chrome_path = _lib_binary(lib_dir, "node")
    node_path = _lib_binary(lib_dir, "wget")
    machine = Machine.current()
    machine.config = {
        "CHROME_BINARY": str(chrome_path),
        "NODE_BINARY": str(node_path),
        "ABX_INSTALL_CACHE": {"wget": "2026-03-24T00:00:00+00:00"},
        "CHROME_ISOLATION": "snapshot",
        "CHROME_USER_DATA_DIR": "/tmp/profile",
        "CHROMIUM_VERSION": "123.4.5",
        "YTDLP_BINARY": str(Path(sys.executable)),
        "WGET_BINARY": "/tmp/archivebox-test-missing-wget",
    }
    machine.save(update_fields=["config"])
    mm._CURRENT_MACHINE = machine
    refreshed = Machine.current(refresh=True)
    assert refreshed.config.get("CHROME_BINARY") == str(chrome_path)
    assert refreshed.config.get("NODE_BINARY") == str(node_path)
    assert refreshed.config.get("ABX_INSTALL_CACHE") == {"wget": "2026-03-24T00:00:00+00:00"}
    assert refreshed.config.get("CHROME_ISOLATION") == "snapshot"
    assert refreshed.config.get("CHROME_USER_DATA_DIR") == "/tmp/profile"
    assert refreshed.config.get("CHROMIUM_VERSION") == "123.4.5"
    assert "YTDLP_BINARY" not in refreshed.config
    assert "WGET_BINARY" not in refreshed.config


# (The original's test_get_config_auto_applies_current_machine_config is not ported: get_config() is
# the archiver's own config app, not part of this app.)


def test_machine_manager_current():
    machine = Machine.current()
    assert machine is not None and Machine.objects.current().id == machine.id


# -- TestNetworkInterfaceModel -------------------------------------------------------------------------


def test_networkinterface_current_creates_interface():
    interface = NetworkInterface.current()
    assert interface is not None and interface.id is not None
    assert interface.machine is not None and interface.ip_local is not None


def test_networkinterface_current_returns_cached():
    assert NetworkInterface.current().id == NetworkInterface.current().id


def test_networkinterface_manager_current():
    assert NetworkInterface.objects.current() is not None


def test_networkinterface_optional_location_fields_default_to_blank(machine):
    interface = NetworkInterface.objects.create(
        machine=machine, mac_address="00:00:00:00:00:01", ip_public="127.0.0.1", ip_local="127.0.0.1",
        dns_server="127.0.0.1",
    )  # fmt: skip
    assert [interface.hostname, interface.iface, interface.isp] == ["", "", ""]
    assert [interface.city, interface.region, interface.country] == ["", "", ""]


def test_unknown_if_blank_normalizes_null_api_fields():
    assert unknown_if_blank(None) == "Unknown"
    assert unknown_if_blank("") == "Unknown"
    assert unknown_if_blank("  ") == "Unknown"
    assert unknown_if_blank("California") == "California"


def test_networkinterface_identity_ignores_randomized_mac_address(machine):
    """Original: a second row with the same machine, IPs and DNS server but another MAC raises
    IntegrityError (the identity ignores the MAC).

    Ours (row "NetworkInterface identity"): the MAC is part of the identity, as our contract says:
    two interfaces differing only by MAC are two rows; the same MAC again still collides.
    """
    fields = {
        "machine": machine,
        "ip_public": "127.0.0.1",
        "ip_local": "127.0.0.1",
        "dns_server": "127.0.0.1",
    }
    NetworkInterface.objects.create(mac_address="00:00:00:00:00:01", **fields)
    NetworkInterface.objects.create(mac_address="00:00:00:00:00:02", **fields)
    with pytest.raises(IntegrityError), transaction.atomic():
        NetworkInterface.objects.create(mac_address="00:00:00:00:00:02", **fields)


# -- TestBinaryModel -------------------------------------------------------------------------------------


def test_binary_creation(machine, lib_dir):
    binary = install_real_binary("python", machine=machine)
    assert binary.id is not None and binary.name == "python"
    assert binary.status == Binary.StatusChoices.INSTALLED
    assert binary.is_valid


def test_binary_is_valid(machine, lib_dir):
    assert install_real_binary("python", machine=machine).is_valid


def test_binary_manager_get_valid_binary(machine, lib_dir):
    binary = install_real_binary("python", machine=machine)
    result = Binary.objects.get_valid_binary("python")
    assert result is not None and result.id == binary.id
    assert Path(result.abspath).resolve() == Path(sys.executable).resolve()


def test_binary_update_and_requeue(machine, lib_dir):
    binary = install_real_binary("python", machine=machine)
    old_modified = binary.modified_at
    binary.update_and_requeue(
        status=Binary.StatusChoices.QUEUED, retry_at=timezone.now() + timedelta(seconds=60)
    )
    binary.refresh_from_db()
    assert binary.status == Binary.StatusChoices.QUEUED
    assert binary.modified_at > old_modified


def test_binary_from_json_preserves_provider_overrides(machine, lib_dir):
    overrides = {
        "apt": {"install_args": ["chromium"]},
        "pnpm": {"install_args": "puppeteer"},
        "custom": {"install": "bash -lc 'echo ok'"},
    }
    binary = install_real_binary("python", machine=machine, overrides=overrides)
    assert binary is not None and binary.overrides == overrides


def test_binary_from_json_preserves_provider_package_metadata(machine, lib_dir):
    binary = install_real_binary("python", machine=machine, overrides={"pip": {"install_args": ["python"]}})
    assert binary is not None and binary.overrides == {"pip": {"install_args": ["python"]}}


@pytest.mark.django_db(transaction=True)
def test_binary_lib_bin_symlink_waits_for_outer_transaction_commit(tmp_path, lib_dir):
    binary = install_real_binary("python", machine=Machine.current())
    source = Path(binary.abspath)
    lib_bin_dir = tmp_path / "lib" / "bin"
    symlink = lib_bin_dir / "python"
    with transaction.atomic():
        binary.symlink_to_lib_bin_after_commit(lib_bin_dir)
        assert not symlink.exists()
    assert symlink.is_symlink()
    assert symlink.resolve() == source.resolve()


def test_binary_from_json_canonicalizes_path_like_names():
    binary = Binary.from_json({"name": "/tmp/old-lib/pip/venv/bin/trafilatura", "binproviders": "pip"})
    assert binary.name == "trafilatura"


def test_binary_from_json_does_not_coerce_legacy_override_shapes():
    overrides = {"apt": ["chromium"], "npm": "puppeteer"}
    binary = Binary.from_json({"name": "chromium", "binproviders": "apt,npm", "overrides": overrides})
    assert binary.overrides == overrides


# -- TestBinaryStateMachine --------------------------------------------------------------------------------


def test_binary_state_machine_initial_state(binary):
    """Original: BinaryMachine(binary).current_state_value == "queued" for the fixture binary (there a
    machine built directly on a row does not read the row's status, so it starts in the initial state).

    Ours (workers.models row "BaseStateMachine(obj)"): the machine follows the row's status, so an
    installed row is "installed" and a queued row "queued".
    """
    assert BinaryMachine(binary).current_state_value == Binary.StatusChoices.INSTALLED
    queued = Binary.from_json({"name": "wget", "binproviders": "env"})
    assert BinaryMachine(queued).current_state_value == Binary.StatusChoices.QUEUED


def test_binary_state_machine_can_start(binary):
    sm = BinaryMachine(binary)
    assert sm.can_install()
    binary.binproviders = ""
    binary.save()
    assert not BinaryMachine(binary).can_install()


# -- TestProcessModel --------------------------------------------------------------------------------------


def test_process_creation(machine, binary, tmp_path):
    process = Process.objects.create(
        machine=machine, binary=binary, cmd=[binary.abspath, "--version"], pwd=str(tmp_path)
    )
    assert process.id is not None
    assert process.cmd == [binary.abspath, "--version"]
    assert process.status == Process.StatusChoices.QUEUED
    assert process.pid is None and process.exit_code is None


def test_process_to_jsonl(machine, binary, tmp_path):
    process = Process.objects.create(
        machine=machine, binary=binary, cmd=[binary.abspath, "--version"], pwd=str(tmp_path), timeout=60
    )
    json_data = process.to_json()
    assert json_data["type"] == "Process"
    assert json_data["cmd"] == [binary.abspath, "--version"]
    assert json_data["pwd"] == str(tmp_path)
    assert json_data["timeout"] == 60


def test_process_update_and_requeue(machine, binary, tmp_path):
    process = Process.objects.create(
        machine=machine, binary=binary, cmd=[binary.abspath, "--version"], pwd=str(tmp_path)
    )
    process.update_and_requeue(
        status=Process.StatusChoices.RUNNING, pid=os.getpid(), started_at=_started_at(os.getpid())
    )
    process.refresh_from_db()
    assert process.status == Process.StatusChoices.RUNNING
    assert process.pid == os.getpid() and process.started_at is not None


# -- TestProcessCurrent --------------------------------------------------------------------------------------


def test_process_current_creates_record():
    proc = Process.current()
    assert proc is not None and proc.pid == os.getpid()
    assert proc.status == Process.StatusChoices.RUNNING
    assert proc.machine is not None and proc.iface is not None
    assert proc.iface.machine_id == proc.machine_id
    assert proc.started_at is not None
    # (The original's last assertion, the PID namespace stamped into env, waits for the later issue.)


def test_process_current_caches():
    assert Process.current().id == Process.current().id


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["archivebox", "run", "--daemon"], Process.TypeChoices.ORCHESTRATOR),
        (
            ["archivebox", "manage", "runner_watch", "--bind-url=http://127.0.0.1:8000"],
            Process.TypeChoices.WORKER,
        ),
        (["archivebox", "add", "http://example.com"], Process.TypeChoices.ADD),
        (["/usr/bin/wget", "https://example.com"], Process.TypeChoices.BINARY),
    ],
    ids=["runner", "runner_watch", "cli", "binary"],
)
def test_process_detect_type(monkeypatch, argv, expected):
    """The original's test_process_detect_type_runner / _runner_watch / _cli / _binary."""
    monkeypatch.setattr(sys, "argv", argv)
    assert Process._detect_process_type() == expected


def test_process_proc_allows_interpreter_wrapped_script(tmp_path):
    script = tmp_path / "archivebox_manage.py"
    script.write_text("import sys\nsys.stdin.read()\n")
    proc = subprocess.Popen(
        [sys.executable, str(script), "shell"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        row = Process.objects.create(
            machine=Machine.current(), cmd=[str(script), "shell"], pid=proc.pid,
            status=Process.StatusChoices.RUNNING, started_at=_started_at(proc.pid),
        )  # fmt: skip
        resolved = row.proc
        assert resolved is not None and resolved.pid == proc.pid
    finally:
        proc.stdin.close()
        proc.wait(timeout=30)


# -- TestProcessHierarchy --------------------------------------------------------------------------------------


def test_process_parent_child(machine, live_process_identity_factory):
    parent_pid, parent_started_at = live_process_identity_factory()
    child_pid, child_started_at = live_process_identity_factory()
    parent = Process.objects.create(
        machine=machine, process_type=Process.TypeChoices.CLI, status=Process.StatusChoices.RUNNING,
        pid=parent_pid, started_at=parent_started_at,
    )  # fmt: skip
    child = Process.objects.create(
        machine=machine, parent=parent, process_type=Process.TypeChoices.WORKER,
        status=Process.StatusChoices.RUNNING, pid=child_pid, started_at=child_started_at,
    )  # fmt: skip
    assert child.parent == parent
    assert child in parent.children.all()


def test_process_root(machine, live_process_identity_factory):
    rows = []
    for i in range(3):
        pid, started_at = live_process_identity_factory()
        rows.append(
            Process.objects.create(
                machine=machine,
                parent=rows[-1] if rows else None,
                status=Process.StatusChoices.RUNNING,
                pid=pid,
                started_at=started_at,
                **({"process_type": Process.TypeChoices.CLI} if i == 0 else {}),
            )  # fmt: skip
        )
    root, child, grandchild = rows
    assert grandchild.root == root and child.root == root and root.root == root


def test_process_depth(machine, live_process_identity_factory):
    root_pid, root_started_at = live_process_identity_factory()
    child_pid, child_started_at = live_process_identity_factory()
    root = Process.objects.create(
        machine=machine, status=Process.StatusChoices.RUNNING, pid=root_pid, started_at=root_started_at
    )
    child = Process.objects.create(
        machine=machine, parent=root, status=Process.StatusChoices.RUNNING, pid=child_pid,
        started_at=child_started_at,
    )  # fmt: skip
    assert root.depth == 0 and child.depth == 1


# -- TestProcessLifecycle ------------------------------------------------------------------------------------------


def test_process_is_running_current_pid(machine):
    proc = Process.objects.create(
        machine=machine,
        status=Process.StatusChoices.RUNNING,
        pid=os.getpid(),
        started_at=_started_at(os.getpid()),
    )
    assert proc.is_running


def test_process_is_running_reaped_process(machine):
    pid, started_at = _reaped_identity()
    proc = Process.objects.create(
        machine=machine, status=Process.StatusChoices.RUNNING, pid=pid, started_at=started_at
    )
    assert not proc.is_running


def test_process_poll_detects_exit(machine):
    pid, started_at = _reaped_identity()
    proc = Process.objects.create(
        machine=machine, status=Process.StatusChoices.RUNNING, pid=pid, started_at=started_at
    )
    assert proc.poll() is not None
    proc.refresh_from_db()
    assert proc.status == Process.StatusChoices.EXITED


def test_process_poll_normalizes_negative_exit_code(machine):
    pid, started_at = _reaped_identity()
    proc = Process.objects.create(
        machine=machine, status=Process.StatusChoices.EXITED, pid=pid, exit_code=-1, started_at=started_at
    )
    assert proc.poll() == 137
    proc.refresh_from_db()
    assert proc.exit_code == 137


def test_process_terminate_dead_process(machine):
    pid, started_at = _reaped_identity()
    proc = Process.objects.create(
        machine=machine, status=Process.StatusChoices.RUNNING, pid=pid, started_at=started_at
    )
    assert not proc.terminate()
    proc.refresh_from_db()
    assert proc.status == Process.StatusChoices.EXITED


# -- TestProcessClassMethods -----------------------------------------------------------------------------------------


def _hook_row(machine, **fields) -> Process:
    fields.setdefault("pid", os.getpid())
    fields.setdefault("started_at", _started_at(os.getpid()))
    return Process.objects.create(
        machine=machine, process_type=Process.TypeChoices.HOOK, status=Process.StatusChoices.RUNNING, **fields
    )


def test_get_running(machine):
    proc = _hook_row(machine)
    assert proc in Process.get_running(process_type=Process.TypeChoices.HOOK)


def test_get_running_count(machine):
    for _ in range(3):
        _hook_row(machine)
    assert Process.get_running_count(process_type=Process.TypeChoices.HOOK) >= 3


def test_cleanup_stale_running(machine):
    pid, _started_at_ = _reaped_identity()
    stale = Process.objects.create(
        machine=machine, status=Process.StatusChoices.RUNNING, pid=pid,
        started_at=timezone.now() - PID_REUSE_WINDOW - timedelta(hours=1),
    )  # fmt: skip
    assert Process.cleanup_stale_running() >= 1
    stale.refresh_from_db()
    assert stale.status == Process.StatusChoices.EXITED


def test_cleanup_stale_running_marks_timed_out_rows_exited(machine):
    pid, _started_at_ = _reaped_identity()
    stale = _hook_row(
        machine, pid=pid, timeout=5, started_at=timezone.now() - PROCESS_TIMEOUT_GRACE - timedelta(seconds=10)
    )
    assert Process.cleanup_stale_running() >= 1
    stale.refresh_from_db()
    assert stale.status == Process.StatusChoices.EXITED


def test_cleanup_stale_running_marks_timed_out_live_hooks_exited(machine):
    stale = _hook_row(
        machine, timeout=5, started_at=timezone.now() - PROCESS_TIMEOUT_GRACE - timedelta(seconds=10)
    )
    assert Process.cleanup_stale_running() >= 1
    stale.refresh_from_db()
    assert stale.status == Process.StatusChoices.EXITED


def test_cleanup_orphaned_workers_marks_dead_root_children_exited(machine):
    parent_pid, parent_started_at = _reaped_identity()
    parent = Process.objects.create(
        machine=machine, process_type=Process.TypeChoices.CLI, status=Process.StatusChoices.RUNNING,
        pid=parent_pid, started_at=parent_started_at,
    )  # fmt: skip
    child = _hook_row(machine, parent=parent)
    assert Process.cleanup_orphaned_workers() == 1
    child.refresh_from_db()
    assert child.status == Process.StatusChoices.EXITED


def test_cleanup_orphaned_workers_marks_non_running_children_exited(machine):
    """Original: the row is closed with exit_code 143 (the default for a hook nobody saw end).

    Ours (row "poll() / unknown exit codes"): 137 with a note in stderr, the one rule for unknown exits.
    """
    pid, started_at = _reaped_identity()
    child = _hook_row(machine, pid=pid, started_at=started_at)
    assert Process.cleanup_orphaned_workers() == 1
    child.refresh_from_db()
    assert child.status == Process.StatusChoices.EXITED
    assert child.ended_at is not None
    assert child.exit_code == 137 and child.stderr == UNKNOWN_EXIT_NOTE + "\n"


# -- TestProcessStateMachine -------------------------------------------------------------------------------------------


def test_process_state_machine_initial_state(process):
    assert ProcessMachine(process).current_state_value == Process.StatusChoices.QUEUED


def test_process_state_machine_can_start(process):
    assert ProcessMachine(process).can_start()
    process.cmd = []
    process.save()
    assert not ProcessMachine(process).can_start()


def test_process_state_machine_is_exited(process):
    assert not ProcessMachine(process).is_exited()
    process.exit_code = 0
    process.save()
    assert ProcessMachine(process).is_exited()
