"""Issue 11, point 3: provider overrides stay inside the lib dir; index credentials are masked everywhere.

"Why": a pip override `install_args: ["--target=/elsewhere", ...]` wrote outside the lib dir; a
credential in `--index-url` leaked into the Binary row, the hook command, cmd.sh, stderr and the admin.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.urls import reverse

from hooks import provider_hook
from hooks.overrides import OverrideError, check_install_args, override_problems
from machine.models import Binary, Machine, Process
from machine.redaction import MASK

from .conftest import ROOT

INDEX_SECRET = "pw-index-7f3a9c"
INDEX_URL = f"https://deploy:{INDEX_SECRET}@pypi.internal.example/simple"


@pytest.mark.parametrize(
    ("provider", "args", "why"),
    [
        ("pip", ["--target=/elsewhere", "cowsay"], "write outside the lib dir"),
        ("pip", ["-t", "/elsewhere", "cowsay"], "write outside the lib dir"),
        ("pip", ["--prefix=/usr", "cowsay"], "write outside the lib dir"),
        ("pip", ["--root", "/", "cowsay"], "write outside the lib dir"),
        ("pip", ["--user", "cowsay"], "write outside the lib dir"),
        ("pip", ["--src=/tmp/src", "cowsay"], "write outside the lib dir"),
        ("pip", ["-e", "/home/me/project"], "write outside the lib dir"),
        ("pip", ["--editable=git+https://x/y"], "write outside the lib dir"),
        ("pip", [f"--index-url={INDEX_URL}", "cowsay"], "swap the package index (set MACHINE_PIP_INDEX_URL"),
        ("pip", ["-i", INDEX_URL, "cowsay"], "swap the package index"),
        ("pip", [f"-i{INDEX_URL}", "cowsay"], "swap the package index"),
        ("pip", ["--extra-index-url", INDEX_URL], "swap the package index"),
        ("pip", ["--find-links=/tmp/wheels", "cowsay"], "swap the package index"),
        ("pip", ["-f", "/tmp/wheels", "cowsay"], "swap the package index"),
        ("pip", ["--trusted-host", "evil.example"], "swap the package index"),
        ("pip", ["-r", "/etc/requirements.txt"], "read a local file or path"),
        ("pip", ["-c", "constraints.txt", "cowsay"], "read a local file or path"),
        ("pip", ["--only-binary=none", "cowsay"], "supply-chain defaults"),
        ("pip", ["--weird-flag"], "not one of the allowed options"),
        ("pip", [f"cowsay @ https://deploy:{INDEX_SECRET}@x/cowsay.whl"], "must be a package name"),
        ("pip", ["./local/project"], "must be a package name"),
        ("pip", ["git+https://github.com/x/y"], "must be a package name"),
        ("npm", ["--prefix=/usr/local", "left-pad"], "write outside the lib dir"),
        ("npm", ["-g", "left-pad"], "write outside the lib dir"),
        ("npm", ["--global", "left-pad"], "write outside the lib dir"),
        ("npm", ["--registry=https://evil.example", "left-pad"], "MACHINE_NPM_REGISTRY"),
        ("npm", ["--ignore-scripts=false", "left-pad"], "supply-chain defaults"),
        ("npm", ["git+https://github.com/x/y.git"], "must be a package name"),
        ("npm", ["file:../x"], "must be a package name"),
        ("npm", ["left-pad@git:x"], "must be a package name"),
        ("apt", ["-o", "Dir=/tmp"], "not one of the allowed options"),
        ("apt", ["./evil.deb"], "must be a Debian package name"),
        ("brew", ["evil/tap/formula"], "must be a formula name"),
        ("brew", ["--HEAD", "wget"], "not one of the allowed options"),
        ("env", ["anything"], "env finds binaries, it never installs"),
    ],
)
def test_installer_arguments_outside_the_allow_list_are_refused(provider, args, why):
    with pytest.raises(OverrideError) as info:
        check_install_args(provider, args)
    assert why in str(info.value)
    assert INDEX_SECRET not in str(info.value) and "/elsewhere" not in str(info.value)  # values never echoed


@pytest.mark.parametrize(
    ("provider", "args"),
    [
        ("pip", ["cowsay==6.1", "yt-dlp[default]>=2024.1,<2026", "--upgrade", "--no-deps", "-U", "--pre"]),
        ("npm", ["left-pad", "@scope/pkg@^1.2.3", "pkg@latest", "--no-audit", "--omit=dev"]),
        ("apt", ["git", "libssl3=3.0.2-0ubuntu1", "g++"]),
        ("brew", ["wget", "python@3.11"]),
        ("customprovider", ["--anything", "goes/here"]),  # a third-party hook checks its own
    ],
)
def test_package_names_and_harmless_switches_pass(provider, args):
    check_install_args(provider, args)
    assert override_problems({provider: {"install_args": args, "packages": args[:1]}}) == []


def run_hook(provider: str, overrides: dict, lib_dir, env=None) -> subprocess.CompletedProcess:
    script = (
        ROOT
        / "hooks"
        / "builtin"
        / provider
        / next(p.name for p in (ROOT / "hooks" / "builtin" / provider).iterdir() if p.name.startswith("on_"))
    )
    return subprocess.run(
        [
            sys.executable,
            str(script),
            "--name=cowsay",
            f"--overrides={json.dumps(overrides)}",
            "--timeout=60",
        ],
        env={**os.environ, "LIB_DIR": str(lib_dir), "PYTHONPATH": str(ROOT), **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_pip_hook_itself_refuses_a_target_outside_the_lib_dir_before_anything_runs(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    result = run_hook("pip", {"pip": {"install_args": [f"--target={elsewhere}", "cowsay"]}}, tmp_path / "lib")
    assert result.returncode == provider_hook.EXIT_UNUSABLE, result.stderr
    assert "option '--target' (argument 1) is refused: it would write outside the lib dir" in result.stderr
    assert not elsewhere.exists() and not (tmp_path / "lib" / "pip" / "venv").exists()  # nothing ran
    result = run_hook(
        "pip", {"pip": {"install_args": [f"--index-url={INDEX_URL}", "cowsay"]}}, tmp_path / "lib"
    )
    assert result.returncode == provider_hook.EXIT_UNUSABLE
    assert "swap the package index" in result.stderr and INDEX_SECRET not in result.stderr + result.stdout


def test_location_settings_inherited_from_the_environment_are_dropped_in_the_hook(monkeypatch):
    for key in ("PIP_TARGET", "PIP_PREFIX", "pip_user", "npm_config_prefix", "NPM_CONFIG_GLOBAL"):
        monkeypatch.setenv(key, "/elsewhere")
    monkeypatch.setenv("PIP_INDEX_URL", "https://mirror.example/simple")  # the operator's own index stays
    provider_hook._confine_installer_env("pip")
    provider_hook._confine_installer_env("npm")
    assert not {"PIP_TARGET", "PIP_PREFIX", "pip_user", "npm_config_prefix", "NPM_CONFIG_GLOBAL"} & set(
        os.environ
    )
    assert os.environ["PIP_INDEX_URL"] == "https://mirror.example/simple"


@pytest.mark.django_db
def test_a_refused_request_is_never_written_queued_or_run(lib_dir, capsys):
    bad = {"pip": {"install_args": ["--target=/elsewhere", "cowsay"]}}
    assert Binary.from_json({"name": "cowsay", "binproviders": "pip", "overrides": bad}) is None
    assert not Binary.objects.exists()
    with pytest.raises(CommandError, match="would write outside the lib dir"):
        call_command("install", "cowsay", "--binproviders=pip", f"--overrides={json.dumps(bad)}")
    assert not Binary.objects.exists() and not Process.objects.filter(process_type="hook").exists()


@pytest.mark.django_db
def test_a_credential_in_a_stored_override_is_masked_at_rest_and_never_run(lib_dir, admin_client):
    bad = {"pip": {"install_args": [f"--index-url={INDEX_URL}", "cowsay"]}}
    # Written behind the request checks (older code, a shell): stored masked, and refused at run time.
    binary = Binary.objects.create(
        machine=Machine.current(), name="cowsay", binproviders="pip", overrides=bad
    )
    stored = Binary.objects.filter(pk=binary.pk).values_list("overrides", flat=True).get()
    assert INDEX_SECRET not in json.dumps(stored) and MASK in json.dumps(stored)
    assert binary.tick_claimed() is True
    assert not binary.hook_processes().exists()  # no hook ran
    page = admin_client.get(reverse("admin:machine_binary_change", args=[binary.pk])).content.decode()
    assert INDEX_SECRET not in page
    assert 'name="overrides"' not in page  # holding the mask: read-only (saving it would store the mask)
    clean = Binary.objects.create(machine=Machine.current(), name="other", binproviders="pip")
    response = admin_client.post(
        reverse("admin:machine_binary_change", args=[clean.pk]),
        {
            "binproviders": "pip",
            "overrides": json.dumps({"pip": {"install_args": ["--target=/x", "cowsay"]}}),
        },
    )
    assert response.status_code == 200 and "would write outside the lib dir" in response.content.decode()


HOOK_PRINTS_INDEX = """#!/bin/sh
echo "index is $PIP_INDEX_URL" >&2
python3 -c 'import hashlib, os; print("sha", hashlib.sha256(os.environ["PIP_INDEX_URL"].encode()).hexdigest())' >&2
exit 1
"""


@pytest.mark.django_db
def test_the_index_comes_from_the_setting_and_its_credential_is_masked_wherever_shown(
    lib_dir, make_hook, settings, admin_client
):
    settings.MACHINE_PIP_INDEX_URL = INDEX_URL
    make_hook("fakepip", "on_BinaryRequest__30_fakepip.sh", HOOK_PRINTS_INDEX)
    binary = Binary.from_json({"name": "cowsay", "binproviders": "fakepip"})
    binary.tick_claimed()
    (hook,) = binary.hook_processes()
    assert f"sha {hashlib.sha256(INDEX_URL.encode()).hexdigest()}" in hook.stderr  # the hook got it
    assert "index is https://" in hook.stderr and f"{MASK}@pypi.internal.example/simple" in hook.stderr
    row = Process.objects.filter(pk=hook.pk).values().get()
    assert INDEX_SECRET not in json.dumps(row, default=str)
    for path in (hook.cmd_file, hook.stdout_file, hook.stderr_file):
        assert INDEX_SECRET not in path.read_text()
    for url in (
        reverse("admin:machine_process_change", args=[hook.pk]),
        reverse("admin:machine_binary_change", args=[binary.pk]),
        reverse("admin:machine_process_changelist"),
    ):
        assert INDEX_SECRET not in admin_client.get(url).content.decode()
