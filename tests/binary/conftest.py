"""Fixtures for the Binary / hooks tests: a private lib dir and a private user hook folder."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def lib_dir(data_dir, settings) -> Path:
    """Installs go here (`<data_dir>/lib`), never into the system Python."""
    path = data_dir / "lib"
    settings.MACHINE_LIB_DIR = path
    return path


@pytest.fixture
def hook_dir(tmp_path, settings) -> Path:
    """A user plugin folder searched after the built-in one (settings.MACHINE_HOOK_DIRS)."""
    path = tmp_path / "plugins"
    path.mkdir()
    settings.MACHINE_HOOK_DIRS = (str(path),)
    return path


@pytest.fixture
def make_hook(hook_dir):
    """Write an executable hook script `<hook_dir>/<plugin>/<filename>` with `body`; its path."""

    def make(plugin: str, filename: str, body: str) -> Path:
        folder = hook_dir / plugin
        folder.mkdir(exist_ok=True)
        path = folder / filename
        path.write_text(body)
        path.chmod(path.stat().st_mode | stat.S_IXUSR)
        return path

    return make


@pytest.fixture
def marker_hook(make_hook, tmp_path):
    """A `.sh` provider hook for plugin `plugin` that appends its argv to a marker file and prints `output`."""

    def make(plugin: str, order: int, output: str, exit_code: int = 0) -> Path:
        marker = tmp_path / f"{plugin}.calls"
        body = f"#!/bin/sh\necho \"$@\" >> \"{marker}\"\nprintf '%s\\n' '{output}'\nexit {exit_code}\n"
        make_hook(plugin, f"on_BinaryRequest__{order:02d}_{plugin}.sh", body)
        return marker

    return make


def calls(marker: Path) -> list[str]:
    """Lines a marker hook wrote (one per run)."""
    return marker.read_text().splitlines() if marker.exists() else []


__all__ = ["ROOT", "calls", "os"]
