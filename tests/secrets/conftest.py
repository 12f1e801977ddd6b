"""Fixtures for the secrets tests: real runners (shared with the runner tests) and a caller's secrets."""

from __future__ import annotations

from tests.binary.conftest import ROOT, hook_dir, lib_dir, make_hook  # noqa: F401  (fixtures, and the repo root)
from tests.runner.conftest import start_runner  # noqa: F401  (a fixture)
