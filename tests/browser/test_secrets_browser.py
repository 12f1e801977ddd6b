"""Issue 11 in a real Chromium: a view-only staff user looks at a running process that printed secrets.

"Why": the detail page of a running process showed an env secret in clear, and the changelist
search over the raw command let a view-only user recover a redacted `--password=` value.
"""

from __future__ import annotations

import sys

import pytest
from django.contrib.auth.models import Permission, User
from playwright.sync_api import expect

from machine.choices import ProcessStatus
from machine.models import Process
from tests.runner.conftest import wait_for

pytestmark = pytest.mark.django_db(transaction=True)

TOKEN = "ghp_BrowserTok3n0042"
PASSWORD = "hunter2-Browser-0043"
INHERITED = "aws-Browser-Inherit-0044"
SECRETS = (TOKEN, PASSWORD, INHERITED)
CHILD = (
    "import os, pathlib, sys, time; "
    "print('token', os.environ['GITHUB_TOKEN']); print('aws', os.environ['AWS_SECRET_ACCESS_KEY']); "
    "print('argv', *sys.argv[1:]); print('ready', flush=True); "
    "gate = pathlib.Path(sys.argv[-1]); deadline = time.time() + 90\n"
    "while not gate.exists() and time.time() < deadline: time.sleep(0.05)"
)


@pytest.fixture
def viewer_page(browser, live_server):
    """A browser logged in, through the login form, as staff with view permissions only."""
    user = User.objects.create_user("viewer", password="view only please", is_staff=True)
    user.user_permissions.set(
        Permission.objects.filter(content_type__app_label="machine", codename__startswith="view_")
    )
    context = browser.new_context(viewport={"width": 1600, "height": 1000}, accept_downloads=True)
    page = context.new_page()
    page.set_default_timeout(15_000)
    page.goto(f"{live_server.url}/admin/login/?next=/admin/")
    page.fill("#id_username", "viewer")
    page.fill("#id_password", "view only please")
    page.click("input[type=submit]")
    page.wait_for_url(f"{live_server.url}/admin/")
    yield page
    context.close()


def test_a_running_process_and_its_logs_show_no_secret_and_search_finds_none(
    viewer_page, live_server, machine, data_dir, tmp_path, monkeypatch
):
    page = viewer_page
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", INHERITED)
    gate = tmp_path / "gate"
    (data_dir / "work").mkdir()
    process = Process.objects.create(
        machine=machine,
        cmd=[sys.executable, "-c", CHILD, f"--password={PASSWORD}", str(gate)],
        env={"GITHUB_TOKEN": TOKEN},
        pwd=str(data_dir / "work"),
        timeout=120,
    )
    process.launch(background=True)
    try:
        wait_for(lambda: "ready" in _read(process.stdout_file), 30, "the child to print")
        assert Process.objects.get(pk=process.pk).status == ProcessStatus.RUNNING

        page.goto(f"{live_server.url}/admin/machine/process/{process.pk}/change/")
        body = page.locator("body")
        expect(body).to_contain_text("token ********")
        expect(body).to_contain_text("aws ********")
        expect(body).to_contain_text("--password=********")
        for secret in SECRETS:
            expect(body).not_to_contain_text(secret)
        assert not [s for s in SECRETS if s in page.content()]

        page.click("text=Full stdout log")
        expect(page.locator("#log-text")).to_contain_text("token ********")
        assert not [s for s in SECRETS if s in page.content()]
        with page.expect_download() as download:
            page.click("#log-download")
        saved = tmp_path / "downloaded.log"
        download.value.save_as(saved)
        assert "token ********" in saved.read_text() and not [s for s in SECRETS if s in saved.read_text()]

        page.goto(f"{live_server.url}/admin/machine/process/")
        for probe, found in (
            ("--password=", 1),
            (f"--password={PASSWORD[:1]}", 0),
            (PASSWORD, 0),
            (TOKEN, 0),
        ):
            page.fill("#searchbar", probe)
            page.press("#searchbar", "Enter")
            expect(page.locator("#result_list tbody tr")).to_have_count(found)
        page.goto(f"{live_server.url}/admin/machine/process/?stdout__contains=t")
        expect(page.locator("#result_list")).to_have_count(0)  # no query-string oracle either
    finally:
        gate.touch()
        process.wait(30)
    assert not [
        s
        for s in SECRETS
        if s in Process.objects.filter(pk=process.pk).values_list("stdout", flat=True).get()
    ]


def _read(path) -> str:
    return path.read_text() if path.exists() else ""
