"""A real Chromium (Debian's /usr/bin/chromium, driven by Playwright) against pytest-django's live server.

Playwright's sync API runs an asyncio event loop in the test's thread, and Django refuses ORM calls
from a thread with a running loop (SynchronousOnlyOperation). The tests only use the loop to drive
the browser and never share a connection with async code, so DJANGO_ALLOW_ASYNC_UNSAFE is set while
(and only while) this module-scoped browser is alive.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from django.contrib.auth.models import User
from django.db import connection
from playwright.sync_api import sync_playwright

from machine.models import Machine
from tests.admin.rows import make_rows

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ADMIN_USERNAME = "operator"
ADMIN_PASSWORD = "correct horse battery staple"


@pytest.fixture(scope="module")
def browser():
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium (apt-get install -y chromium)")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
        with sync_playwright() as playwright:
            chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
            yield chromium
            chromium.close()


@pytest.fixture
def machine(transactional_db, data_dir):
    return Machine.current()


@pytest.fixture
def rows(machine):
    return make_rows(machine)


@pytest.fixture
def admin_page(browser, live_server, transactional_db):
    """A browser page logged in to the admin as a superuser, through the login form."""
    User.objects.create_superuser(ADMIN_USERNAME, "operator@example.com", ADMIN_PASSWORD)
    context = browser.new_context(viewport={"width": 1920, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(15_000)
    page.goto(f"{live_server.url}/admin/login/?next=/admin/")
    page.fill("#id_username", ADMIN_USERNAME)
    page.fill("#id_password", ADMIN_PASSWORD)
    page.click("input[type=submit]")
    page.wait_for_url(f"{live_server.url}/admin/")
    yield page
    context.close()


@pytest.fixture
def screenshot(admin_page):
    """Save a full-page screenshot to artifacts/screenshots/<db vendor>/<name>.png."""
    folder = ROOT / "artifacts" / "screenshots" / connection.vendor
    folder.mkdir(parents=True, exist_ok=True)

    def take(name: str) -> Path:
        path = folder / f"{name}.png"
        admin_page.screenshot(path=str(path), full_page=True)
        return path

    return take
