"""Fixtures for the admin tests: this host's machine with rows, users, and real processes."""

from __future__ import annotations

import pytest

from machine.models import Machine
from tests.admin.rows import launch_sleep, make_rows, spawn_foreign_sleep


@pytest.fixture
def machine(db, data_dir):
    return Machine.current()


@pytest.fixture
def rows(machine):
    return make_rows(machine)


@pytest.fixture
def sleep_process(machine, data_dir):
    """A running `sleep` launched through Process.launch; killed at teardown if a test left it."""
    process = launch_sleep(machine, data_dir / "sleep")
    yield process
    process.refresh_from_db()
    proc = process.proc
    if proc is not None:
        proc.kill()
        proc.wait(5)


@pytest.fixture
def foreign_sleep():
    """A real running process that no Process row launched."""
    popen = spawn_foreign_sleep()
    yield popen
    popen.kill()
    popen.wait(5)
