"""The main job (`manage.py quickstart`) run for real, twice: the second run reuses what is installed."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from tests.conftest import ROOT

pytestmark = pytest.mark.django_db(transaction=True)


def run_quickstart(manifest, env, data_dir) -> tuple[list[dict], str]:
    completed = subprocess.run(
        [sys.executable, str(ROOT / "manage.py"), "quickstart", "--json", "--no-progress", f"--manifest={manifest}"],
        cwd=ROOT, env={**env, "DATA_DIR": str(data_dir)}, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr
    return [json.loads(line) for line in completed.stdout.splitlines()], completed.stderr


def test_quickstart_installs_runs_and_reports_then_reuses_the_install(subprocess_env, tmp_path):
    manifest = tmp_path / "manifest.json"
    manifest.write_text(
        json.dumps(
            {
                "binaries": [{"name": "git", "binproviders": "env"}],
                "processes": [{"cmd": ["sh", "-c", "echo hi; exit 4"]}],
            }
        )
    )

    first, first_log = run_quickstart(manifest, subprocess_env, tmp_path / "data")

    by_type: dict[str, list[dict]] = {}
    for record in first:
        by_type.setdefault(record["type"], []).append(record)
    assert len(by_type["Machine"]) == 1 and len(by_type["NetworkInterface"]) == 1
    (binary,) = by_type["Binary"]
    assert (binary["name"], binary["status"], binary["binprovider"]) == ("git", "installed", "env")
    assert binary["abspath"].endswith("/git") and binary["version"]
    demo, version_check = by_type["Process"]
    assert (demo["cmd"], demo["exit_code"], demo["stdout"].strip()) == (
        ["sh", "-c", "echo hi; exit 4"],
        4,
        "hi",
    )
    assert version_check["cmd"] == [binary["abspath"], "--version"]
    assert version_check["exit_code"] == 0 and binary["version"] in version_check["stdout"]
    assert version_check["binary_id"] == binary["id"]
    assert "0 already installed" in first_log

    second, second_log = run_quickstart(manifest, subprocess_env, tmp_path / "data")

    (again,) = [r for r in second if r["type"] == "Binary"]
    assert again["id"] == binary["id"]  # reused, not installed again
    assert "1 already installed" in second_log
    assert [p["exit_code"] for p in second if p["type"] == "Process"] == [4, 0]


def test_a_missing_manifest_is_a_clear_error(tmp_path):
    with pytest.raises(CommandError, match="manifest not found"):
        call_command("quickstart", f"--manifest={tmp_path / 'nope.json'}")


def test_a_malformed_manifest_is_a_clear_error(tmp_path):
    manifest = tmp_path / "m.json"
    manifest.write_text(json.dumps({"processes": [{"cmd": "not a list"}]}))
    with pytest.raises(CommandError, match='"cmd", a non-empty list of strings'):
        call_command("quickstart", f"--manifest={manifest}")
