"""The sdist and wheel a user installs: everything the apps need at run time, and nothing else."""

from __future__ import annotations

import subprocess
import sys
import tarfile
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest

from tests.conftest import ROOT

PACKAGES = ("base_models", "hooks", "machine", "workers")


def _source_files(folder: str) -> set[str]:
    """Files under ROOT/folder as package-relative paths (caches left out)."""
    base = ROOT / folder
    return {
        path.relative_to(ROOT).as_posix()
        for path in base.rglob("*")
        if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc"
    }


def _expected_package_files() -> set[str]:
    """Non-Python files and migrations the apps read at run time, taken from the source tree."""
    expected = {f"{package}/py.typed" for package in PACKAGES}
    expected |= _source_files("machine/templates") | _source_files("machine/static")
    expected |= _source_files("workers/static")
    expected |= _source_files("hooks/builtin")
    expected |= {p for p in _source_files("machine/migrations") if p.endswith(".py")}
    expected |= {"machine/demo/manifest.json"}
    return expected


@pytest.fixture(scope="module")
def dists(tmp_path_factory) -> tuple[Path, Path, str]:
    """`python -m build`: the sdist, then the wheel built from that sdist (as pip and PyPI would)."""
    out = tmp_path_factory.mktemp("dist")
    done = subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(ROOT)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (sdist,) = out.glob("*.tar.gz")
    (wheel,) = out.glob("*.whl")
    return sdist, wheel, done.stdout + done.stderr


def test_the_wheel_carries_templates_static_files_hooks_migrations_and_the_demo_manifest(dists):
    _sdist, wheel, _log = dists
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = _expected_package_files()
    # (The source has them: the admin's templates and the live-refresh script.)
    assert "machine/templates/admin/machine/process/change_form.html" in expected
    assert "workers/static/workers/admin/live.js" in expected
    assert expected - names == set()


def test_the_wheel_installs_only_the_four_apps(dists):
    _sdist, wheel, _log = dists
    top_level = {name.split("/")[0] for name in zipfile.ZipFile(wheel).namelist()}
    assert {name for name in top_level if not name.endswith(".dist-info")} == set(PACKAGES)


def test_the_metadata_is_standard(dists):
    _sdist, wheel, log = dists
    with zipfile.ZipFile(wheel) as whl:
        (metadata_name,) = [n for n in whl.namelist() if n.endswith(".dist-info/METADATA")]
        metadata = Parser().parsestr(whl.read(metadata_name).decode())
        assert any(n.endswith(".dist-info/licenses/LICENSE") for n in whl.namelist())
    assert metadata["License-Expression"] == "MIT"
    assert metadata.get_all("License-File") == ["LICENSE"]
    classifiers = metadata.get_all("Classifier")
    assert "Framework :: Django" in classifiers and "Typing :: Typed" in classifiers
    required = [r for r in metadata.get_all("Requires-Dist") if "extra ==" not in r]
    assert any(r.startswith("rich") for r in required)
    assert not any(r.startswith(("psycopg", "dj-database-url")) for r in required)  # optional now
    assert "postgres" in metadata.get_all("Provides-Extra")
    assert any(
        r.startswith("psycopg[binary]") and 'extra == "postgres"' in r
        for r in metadata.get_all("Requires-Dist")
    )
    assert "Deprecat" not in log  # e.g. no "project.license as a TOML table is deprecated"


def test_the_sdist_carries_the_same_package_data_and_the_license(dists):
    sdist, _wheel, _log = dists
    with tarfile.open(sdist) as tar:
        root = tar.getnames()[0].split("/")[0]
        names = {name.removeprefix(root + "/") for name in tar.getnames()}
    assert _expected_package_files() - names == set()
    assert {"LICENSE", "README.md", "pyproject.toml"} <= names
