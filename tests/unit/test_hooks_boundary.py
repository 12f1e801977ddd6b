"""Where `hooks` ends: running hooks and applying records live in `machine.hook_runs`; `hooks`
re-exports those names for compatibility and never looks models up itself."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import hooks
import hooks.dispatch
import hooks.execution
from machine import hook_runs

WORKTREE = Path(__file__).resolve().parents[2]
HOOKS_DIR = WORKTREE / "hooks"
#: The only `hooks` modules allowed to import `machine`: the compatibility re-exports.
REEXPORTS = {"__init__.py", "execution.py", "dispatch.py"}


@pytest.mark.parametrize(
    ("module", "name"),
    [
        (hooks, "run_hook"),
        (hooks.execution, "run_hook"),
        (hooks.execution, "hook_env"),
        (hooks.execution, "EXIT_NOT_RUN"),
        (hooks.execution, "EXIT_TIMED_OUT"),
        (hooks.dispatch, "RECORD_MODELS"),
        (hooks.dispatch, "dispatch_record"),
        (hooks.dispatch, "dispatch_records"),
    ],
)
def test_hooks_reexports_the_objects_of_machine_hook_runs(module, name):
    assert getattr(module, name) is getattr(hook_runs, name)
    assert name in module.__all__


def _hooks_sources() -> list[Path]:
    sources = sorted(HOOKS_DIR.rglob("*.py"))
    assert HOOKS_DIR / "discovery.py" in sources and HOOKS_DIR / "provider_hook.py" in sources
    return sources


def _imported_modules(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
    return found


def test_no_hooks_module_looks_up_models_through_the_app_registry():
    offenders = [str(p.relative_to(WORKTREE)) for p in _hooks_sources() if "get_model" in p.read_text()]
    assert offenders == []


def test_only_the_reexports_import_machine_and_none_imports_the_app_registry():
    importing_machine = set()
    for path in _hooks_sources():
        imported = _imported_modules(path)
        assert "django.apps" not in imported, path
        if any(name == "machine" or name.startswith("machine.") for name in imported):
            importing_machine.add(str(path.relative_to(HOOKS_DIR)))
    assert importing_machine == REEXPORTS


def test_importing_hooks_and_the_provider_hook_loads_neither_django_nor_machine():
    code = (
        "import sys, hooks, hooks.provider_hook; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'django', 'machine'}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=WORKTREE, capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.strip() == "[]"


def test_hook_runs_may_be_imported_before_machine_models(tmp_path):
    """An app listed before `machine` whose models import hook_runs: no import cycle at setup."""
    app = tmp_path / "early_app"
    app.mkdir()
    (app / "__init__.py").write_text("")
    (app / "models.py").write_text("from machine import hook_runs  # before machine.models\n")
    (tmp_path / "early_settings.py").write_text(
        'from tests.settings import *  # noqa: F403\nINSTALLED_APPS = ["early_app", *INSTALLED_APPS]  # noqa: F405\n'
    )
    code = textwrap.dedent(
        """
        import django
        django.setup()
        from django.apps import apps
        import machine.binaries, machine.hook_runs, machine.models
        assert next(iter(apps.get_app_configs())).label == "early_app"
        assert machine.binaries.hook_runs is machine.hook_runs
        assert machine.hook_runs.machine_models.Process is machine.models.Process
        print("ok")
        """
    )
    env = {"PYTHONPATH": f"{tmp_path}:{WORKTREE}", "DJANGO_SETTINGS_MODULE": "early_settings"}
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=WORKTREE,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
