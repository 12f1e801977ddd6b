"""A brand-new project made by `django-admin startproject`, with the apps added the README's way."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

#: Appended to the generated settings.py: the README's "As a library" set-up, nothing else.
APPS_SNIPPET = """
INSTALLED_APPS += ["base_models", "workers", "machine", "tests.exampleapp"]
MACHINE_PUBLIC_IP_LOOKUP = False  # offline test machines
"""


@dataclass
class Project:
    """A startproject project in `path` (its settings untouched but for the apps), run as a user would."""

    path: Path
    env: dict[str, str]

    @property
    def manage_py(self) -> Path:
        return self.path / "manage.py"

    def manage(self, *args: str, cwd: Path | None = None, timeout: float = 120, check: bool = True):
        """`python <project>/manage.py ARGS` from `cwd` (default: the project folder)."""
        done = subprocess.run(
            [sys.executable, str(self.manage_py), *args],
            cwd=cwd or self.path, env=self.env, capture_output=True, text=True, timeout=timeout,
        )  # fmt: skip
        if check:
            assert done.returncode == 0, f"manage.py {' '.join(args)} -> {done.returncode}\n{done.stderr}"
        return done

    def shell(self, code: str, **kwargs):
        return self.manage("shell", "-v", "0", "-c", code, **kwargs)


@pytest.fixture
def new_project(tmp_path) -> Project:
    """`django-admin startproject proj`, the apps appended to its settings, migrated."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("MACHINE_")
        and k
        not in {"DJANGO_SETTINGS_MODULE", "DATA_DIR", "DATABASE_URL", "DATABASE_NAME", "TEST_DATABASE_NAME"}
    }
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH", "")]))
    path = tmp_path / "proj"
    path.mkdir()
    subprocess.run(
        [sys.executable, "-m", "django", "startproject", "proj", str(path)],
        env=env, check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    with open(path / "proj" / "settings.py", "a") as settings:
        settings.write(APPS_SNIPPET)
    project = Project(path, env)
    project.manage("migrate", "-v", "0")
    return project
