"""Real installs through BinaryMachine.tick(): env finds, pip and npm install into a temporary lib dir."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
from django.utils import timezone

from machine.binaries import RETRY_DELAY
from machine.models import Binary, Machine
from machine.statemachines import BinaryInstallError

from .conftest import calls

pytestmark = pytest.mark.django_db
BINARY_OK = '{{"type": "Binary", "name": "{name}", "abspath": "/bin/sh", "version": "1.2.3", "sha256": ""}}'


def tick(binary: Binary) -> Binary:
    assert binary.tick_claimed() is True
    binary.refresh_from_db()
    return binary


def assert_failed_once_and_backing_off(binary: Binary) -> None:
    assert binary.status == "queued"
    assert binary.abspath == ""
    assert binary.num_uses_failed == 1 and binary.num_uses_succeeded == 0
    expected = timezone.now() + RETRY_DELAY
    assert abs((binary.retry_at - expected).total_seconds()) < 30
    assert binary not in Binary.get_queue()


@pytest.mark.parametrize("name", ["python3", "git", "sh"])
def test_env_finds_system_binaries_with_abspath_version_and_sha256(lib_dir, name):
    binary = tick(Binary.from_json({"name": name, "binproviders": "env"}))
    assert binary.status == "installed" and binary.retry_at is None
    assert binary.binprovider == "env"
    assert Path(binary.abspath).resolve() == Path(shutil.which(name)).resolve()
    assert binary.version and binary.version[0].isdigit()
    assert binary.sha256 == hashlib.sha256(Path(binary.abspath).resolve().read_bytes()).hexdigest()
    assert binary.num_uses_succeeded == 1 and binary.health == 100
    hook = binary.hook_processes().get()
    assert hook.parent is not None and hook.parent.pid == os.getpid()
    link = lib_dir / "bin" / name
    assert link.is_symlink() and link.resolve() == Path(binary.abspath).resolve()


def test_an_impossible_binary_stays_queued_with_a_failure_counted(lib_dir):
    binary = tick(Binary.from_json({"name": "no-such-binary-zz9", "binproviders": "env"}))
    assert_failed_once_and_backing_off(binary)
    hook = binary.hook_processes().get()
    assert hook.exit_code == 1 and "no-such-binary-zz9" in hook.stderr


def test_sm_tick_on_a_failed_install_raises_but_leaves_a_consistent_row(lib_dir):
    binary = Binary.from_json({"name": "no-such-binary-zz9", "binproviders": "env"})
    with pytest.raises(BinaryInstallError):
        binary.sm.tick()
    assert binary.status == "queued"
    binary.refresh_from_db()
    assert_failed_once_and_backing_off(binary)


def test_min_version_from_overrides_is_honoured(lib_dir):
    binary = tick(
        Binary.from_json({"name": "python3", "binproviders": "env", "overrides": {"min_version": "999"}})
    )
    assert_failed_once_and_backing_off(binary)
    assert "--min-version=999" in binary.hook_processes().get().cmd


def test_a_provider_not_allowed_is_never_run(lib_dir, marker_hook):
    alpha = marker_hook("alpha", 5, BINARY_OK.format(name="tool"))
    beta = marker_hook("beta", 6, BINARY_OK.format(name="tool"))
    binary = tick(Binary.from_json({"name": "tool", "binproviders": "beta"}))
    assert calls(alpha) == []
    assert len(calls(beta)) == 1 and "--name=tool" in calls(beta)[0]
    assert (binary.status, binary.binprovider, binary.version) == ("installed", "beta", "1.2.3")
    # Built-in providers were not allowed either: only beta's hook ran.
    assert binary.hook_processes().count() == 1


def test_the_first_successful_allowed_provider_wins(lib_dir, marker_hook):
    failing = marker_hook("alpha", 5, "not json at all", exit_code=1)
    garbage = marker_hook("beta", 6, "{broken json", exit_code=0)
    winner = marker_hook("gamma", 7, BINARY_OK.format(name="tool"))
    later = marker_hook("delta", 8, BINARY_OK.format(name="tool"))
    binary = tick(Binary.from_json({"name": "tool", "binproviders": "alpha,beta,gamma,delta"}))
    assert [len(calls(m)) for m in (failing, garbage, winner, later)] == [1, 1, 1, 0]
    assert (binary.status, binary.binprovider) == ("installed", "gamma")
    assert binary.num_uses_succeeded == 1 and binary.num_uses_failed == 0


def test_a_record_for_another_binary_or_a_failing_exit_does_not_install(lib_dir, marker_hook):
    marker_hook("alpha", 5, BINARY_OK.format(name="tool"), exit_code=3)
    marker_hook("beta", 6, BINARY_OK.format(name="other"))
    binary = tick(Binary.from_json({"name": "tool", "binproviders": "alpha,beta"}))
    assert_failed_once_and_backing_off(binary)
    # A hook is trusted with its own request only: the other binary's record is dropped, and says so.
    assert not Binary.objects.filter(name="other").exists()
    (beta,) = [p for p in binary.hook_processes() if p.hook_script_name == "on_BinaryRequest__06_beta.sh"]
    assert "dropped 1 record(s) outside its request for 'tool'" in beta.stderr


def test_a_hanging_provider_is_bounded_by_the_install_timeout(lib_dir, make_hook, settings):
    settings.MACHINE_INSTALL_TIMEOUT = 2
    make_hook("slow", "on_BinaryRequest__05_slow.sh", "sleep 60 & wait\n")
    started = time.monotonic()
    binary = tick(Binary.from_json({"name": "tool", "binproviders": "slow"}))
    assert time.monotonic() - started < 30
    assert_failed_once_and_backing_off(binary)
    assert binary.hook_processes().get().exit_code == 137


def test_brew_is_unavailable_here_and_fails_fast_with_a_reason(lib_dir):
    if shutil.which("brew"):
        pytest.skip("brew is installed on this host")
    started = time.monotonic()
    binary = tick(Binary.from_json({"name": "git", "binproviders": "brew"}))
    assert time.monotonic() - started < 15
    assert_failed_once_and_backing_off(binary)
    hook = binary.hook_processes().get()
    assert hook.exit_code == 2
    assert hook.stderr.strip().splitlines()[-1].startswith("brew: brew unavailable")


def test_apt_finds_a_dpkg_installed_binary_or_refuses_without_root(lib_dir):
    if not shutil.which("dpkg"):
        pytest.skip("not a Debian-family host: no dpkg")
    binary = tick(Binary.from_json({"name": "git", "binproviders": "apt"}))
    if os.geteuid() != 0:
        assert_failed_once_and_backing_off(binary)
        assert "apt needs root" in binary.hook_processes().get().stderr
        return
    assert (binary.status, binary.binprovider) == ("installed", "apt")
    assert Path(binary.abspath).resolve() == Path(shutil.which("git")).resolve()


@pytest.mark.slow
def test_pip_installs_a_console_script_into_the_lib_dir(lib_dir):
    started = time.monotonic()
    binary = tick(Binary.from_json({"name": "cowsay", "binproviders": "pip"}))
    elapsed = time.monotonic() - started
    print(f"\n[provider timing] pip cowsay: {elapsed:.1f}s")
    assert binary.status == "installed", binary.hook_processes().last().stderr
    assert binary.binprovider == "pip"
    assert Path(binary.abspath).is_relative_to(lib_dir)
    assert binary.version and len(binary.sha256) == 64
    # Never into the interpreter running us.
    probe = subprocess.run([sys.executable, "-c", "import cowsay"], capture_output=True)
    assert probe.returncode != 0
    out = subprocess.run(
        [str(lib_dir / "bin" / "cowsay"), "-t", "moo"], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0 and "moo" in out.stdout


@pytest.mark.slow
def test_pip_honours_a_fixed_version_override(lib_dir):
    overrides = {"pip": {"install_args": ["cowsay==6.0"]}}
    binary = tick(Binary.from_json({"name": "cowsay", "binproviders": "pip", "overrides": overrides}))
    assert binary.status == "installed", binary.hook_processes().last().stderr
    assert binary.version in ("6.0", "6.0.0")  # abxpkg reports versions as 3-part SemVer
    assert Path(binary.abspath).is_relative_to(lib_dir)


@pytest.mark.slow
def test_npm_installs_a_package_bin_into_the_lib_dir(lib_dir):
    if not shutil.which("npm"):
        pytest.skip("npm is not installed on this host")
    started = time.monotonic()
    binary = tick(Binary.from_json({"name": "cowsay", "binproviders": "npm"}))
    elapsed = time.monotonic() - started
    print(f"\n[provider timing] npm cowsay: {elapsed:.1f}s")
    assert binary.status == "installed", binary.hook_processes().last().stderr
    assert binary.binprovider == "npm"
    assert Path(binary.abspath).is_relative_to(lib_dir)
    assert binary.version and len(binary.sha256) == 64
    out = subprocess.run([str(lib_dir / "bin" / "cowsay"), "moo"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "moo" in out.stdout


def test_retry_after_backoff_installs_and_counts_both_outcomes(lib_dir, marker_hook, tmp_path):
    flag = tmp_path / "ready"
    marker_hook("alpha", 5, BINARY_OK.format(name="tool"))
    # Replace alpha with a hook that fails until `flag` exists.
    hook = lib_dir.parent.parent / "plugins" / "alpha" / "on_BinaryRequest__05_alpha.sh"
    hook.write_text(
        f"#!/bin/sh\n[ -e \"{flag}\" ] || exit 1\nprintf '%s\\n' '{BINARY_OK.format(name='tool')}'\n"
    )
    binary = tick(Binary.from_json({"name": "tool", "binproviders": "alpha"}))
    assert_failed_once_and_backing_off(binary)
    flag.touch()
    Binary.objects.filter(pk=binary.pk).update(retry_at=timezone.now() - timedelta(seconds=1))
    binary.refresh_from_db()
    binary = tick(binary)
    assert binary.status == "installed" and binary.retry_at is None
    assert (binary.num_uses_succeeded, binary.num_uses_failed, binary.health) == (1, 1, 50)


@pytest.mark.slow
def test_shell_syntax_in_pip_overrides_is_data_not_a_command(lib_dir, tmp_path):
    pwned = tmp_path / "pwned"
    overrides = {"pip": {"install_args": [f"cowsay==6.1; touch {pwned}", f"$(touch {pwned})"]}}
    # Not a package name: refused before anything is written (hooks.overrides)...
    assert Binary.from_json({"name": "cowsay", "binproviders": "pip", "overrides": overrides}) is None
    # ... and a row that already holds it fails without running any hook.
    binary = tick(
        Binary.objects.create(
            name="cowsay", binproviders="pip", overrides=overrides, machine=Machine.current()
        )
    )
    assert_failed_once_and_backing_off(binary)
    assert not binary.hook_processes().exists()
    assert not pwned.exists()
