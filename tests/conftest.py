"""Shared fixtures: clean MACHINE_* environment, reset process-local caches, subprocess DB access."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# Our own variables must not leak into the tests from the developer's shell.
for _name in list(os.environ):
    if _name.startswith("MACHINE_"):
        del os.environ[_name]


@pytest.fixture(autouse=True)
def _reset_machine_caches():
    """Every test starts with empty module-level caches, as a fresh process would."""
    import machine.models as mm
    from machine import process_utils

    mm._CURRENT_MACHINE = None
    mm._CURRENT_INTERFACE = None
    mm._CURRENT_BINARIES = {}
    mm._CURRENT_PROCESS = None
    # Children an earlier test launched and that have ended: a pid the kernel hands out again (the
    # PID-reuse tests force that) would otherwise match one of them here, as a fresh process's never do.
    process_utils.forget_finished_children()
    yield
    mm._CURRENT_MACHINE = None
    mm._CURRENT_INTERFACE = None
    mm._CURRENT_BINARIES = {}
    mm._CURRENT_PROCESS = None


@pytest.fixture(autouse=True)
def data_dir(tmp_path, settings):
    """Every test gets a private MACHINE_DATA_DIR (process logs, hook output, lib dir)."""
    path = tmp_path / "data"
    path.mkdir()
    settings.MACHINE_DATA_DIR = path
    return path


@pytest.fixture
def subprocess_env(data_dir):
    """Environment for a child Python process that must open the database and data dir this test uses."""
    from django.db import connection

    env = {k: v for k, v in os.environ.items() if not k.startswith("MACHINE_")}
    env["DATA_DIR"] = str(data_dir)
    env["DJANGO_SETTINGS_MODULE"] = "tests.settings"
    env["DATABASE_NAME"] = str(connection.settings_dict["NAME"])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH", "")]))
    return env


@pytest.fixture
def python_exe() -> str:
    return sys.executable
