"""Files go under the project's data dir (MACHINE_DATA_DIR), never into the current directory."""

from __future__ import annotations

import pytest
from django.core.checks import run_checks
from django.core.exceptions import ImproperlyConfigured

from machine.conf import machine_settings


def test_run_from_another_directory_writes_nothing_there(new_project, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()

    done = new_project.manage("run", "--", "echo", "x", cwd=elsewhere)

    assert done.stdout == "x\n"
    assert list(elsewhere.iterdir()) == []
    # BASE_DIR / "data" of the project: the default when neither MACHINE_DATA_DIR nor DATA_DIR is set.
    logs = list((new_project.path / "data" / "processes").glob("*/stdout.log"))
    assert [log.read_text() for log in logs] == ["x\n"]


def test_the_data_dir_setting_and_its_defaults(settings, tmp_path):
    settings.MACHINE_DATA_DIR = tmp_path / "explicit"
    settings.DATA_DIR = tmp_path / "project-data"
    settings.BASE_DIR = tmp_path / "base"
    assert machine_settings.data_dir == tmp_path / "explicit"
    del settings.MACHINE_DATA_DIR
    assert machine_settings.data_dir == tmp_path / "project-data"
    del settings.DATA_DIR
    assert machine_settings.data_dir == tmp_path / "base" / "data"
    assert machine_settings.processes_dir == tmp_path / "base" / "data" / "processes"


def test_without_any_directory_setting_it_is_a_clear_configuration_error(settings, monkeypatch, tmp_path):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    for name in ("MACHINE_DATA_DIR", "DATA_DIR", "BASE_DIR"):
        if hasattr(settings, name):
            delattr(settings, name)
    with pytest.raises(ImproperlyConfigured, match="set MACHINE_DATA_DIR"):
        _ = machine_settings.data_dir
    (error,) = [m for m in run_checks() if m.id == "machine.E001"]
    assert "MACHINE_DATA_DIR" in error.hint
    assert list(cwd.iterdir()) == []
