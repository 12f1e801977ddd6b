"""Fixtures for the secrets tests: real runners (shared with the runner tests) and a caller's secrets."""

from __future__ import annotations

from tests.runner.conftest import start_runner  # noqa: F401  (a fixture)
