"""`make test` on a fresh machine: it provisions Debian's Chromium, or stops at once saying how."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.skipif(not shutil.which("make"), reason="needs GNU make (the README's commands)")


@pytest.fixture
def make(tmp_path):
    """`make -s ARGS` in the checkout; the set-up step sees an installed venv, the suite is `echo`."""
    venv = tmp_path / "venv"
    venv.mkdir()
    (venv / ".installed").touch()  # newer than pyproject.toml: nothing to install
    env = {k: v for k, v in os.environ.items() if k not in {"MAKEFLAGS", "MAKELEVEL", "MFLAGS"}}

    def run(*args: str) -> subprocess.CompletedProcess:
        argv = ["make", "-s", f"VENV={venv}", "PY=echo SUITE-RAN", *args]
        return subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)

    return run


def test_without_chromium_and_without_root_make_test_stops_before_the_suite(make, tmp_path):
    done = make("test", f"CHROMIUM={tmp_path / 'chromium'}", "AS_ROOT=")
    assert done.returncode != 0
    assert "Run: sudo apt-get install -y chromium" in done.stderr
    assert "SUITE-RAN" not in done.stdout


def test_as_root_make_test_installs_chromium_with_apt_first(make, tmp_path):
    chromium = tmp_path / "chromium"
    calls = tmp_path / "apt-calls"
    fake_apt = tmp_path / "apt-get"
    # Stands in for apt-get: records its arguments; "install" puts the browser in place.
    fake_apt.write_text(
        f'#!/bin/sh\necho "$*" >> {calls}\n'
        f'case "$*" in *install*chromium*) printf "#!/bin/sh\\n" > {chromium}; chmod +x {chromium};; esac\n'
    )
    fake_apt.chmod(0o755)

    done = make("test", f"CHROMIUM={chromium}", "AS_ROOT=yes", f"APT_GET={fake_apt}")

    assert done.returncode == 0, done.stderr
    assert calls.read_text().splitlines() == ["update -qq", "install -y -qq chromium"]
    assert done.stdout.splitlines()[-1] == "SUITE-RAN -m pytest -q"


def test_a_failed_install_is_reported_with_the_command_to_run(make, tmp_path):
    done = make("browser", f"CHROMIUM={tmp_path / 'chromium'}", "AS_ROOT=yes", "APT_GET=false")
    assert done.returncode != 0
    assert "Could not install chromium. Run: sudo apt-get install -y chromium" in done.stderr
