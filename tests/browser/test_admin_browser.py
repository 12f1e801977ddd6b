"""An operator's day in the admin, in a real browser: log in, browse, filter, search, act."""

from __future__ import annotations

import re

import pytest
from django.utils import timezone
from playwright.sync_api import expect

from machine.choices import BinaryStatus, ProcessStatus
from tests.admin.rows import SECRET_ENV, SECRET_VALUES, launch_sleep, os_process_gone

pytestmark = pytest.mark.django_db(transaction=True)


def open_admin(page, live_server, path: str) -> None:
    page.goto(f"{live_server.url}/admin/machine/{path}")


def assert_no_secret(page) -> None:
    html = page.content()
    for secret in SECRET_VALUES:
        assert secret not in html


def run_action(page, pks, action: str) -> None:
    for pk in pks:
        page.check(f'input[name="_selected_action"][value="{pk}"]')
    page.select_option('select[name="action"]', action)
    page.click('button[name="index"]')
    page.wait_for_load_state()


def test_login_and_every_changelist(admin_page, live_server, rows, screenshot):
    page = admin_page
    expect(page.locator("#content")).to_contain_text("Machine")
    screenshot("00-admin-index")

    open_admin(page, live_server, "machine/")
    expect(page.locator("#result_list")).to_contain_text(rows["iface"].machine.hostname)
    screenshot("01-machine-changelist")

    open_admin(page, live_server, "networkinterface/")
    expect(page.locator("#result_list")).to_contain_text("203.0.113.7")
    expect(page.locator("#result_list")).to_contain_text("Example Transit")
    screenshot("02-networkinterface-changelist")

    open_admin(page, live_server, "binary/")
    expect(page.locator("#result_list")).to_contain_text("/usr/bin/wget")
    expect(page.locator("#result_list")).to_contain_text("yt-dlp")
    screenshot("03-binary-changelist")

    open_admin(page, live_server, "process/")
    expect(page.locator("#result_list")).to_contain_text("on_BinaryRequest__10_env.sh")
    expect(page.locator("#result_list")).to_contain_text("--api-token=********")
    assert_no_secret(page)
    screenshot("04-process-changelist")


def test_filter_and_search(admin_page, live_server, rows, screenshot):
    page = admin_page
    open_admin(page, live_server, "binary/")
    page.locator("#changelist-filter").get_by_role("link", name="Queued").click()
    expect(page).to_have_url(re.compile(r"status__exact=queued"))
    expect(page.locator("#result_list")).to_contain_text("yt-dlp")
    expect(page.locator("#result_list")).not_to_contain_text("/usr/bin/wget")
    screenshot("10-binary-filtered-queued")

    open_admin(page, live_server, "binary/")
    page.fill("#searchbar", "wget")
    page.press("#searchbar", "Enter")
    expect(page).to_have_url(re.compile(r"q=wget"))
    expect(page.locator("#result_list")).to_contain_text("/usr/bin/wget")
    expect(page.locator("#result_list")).not_to_contain_text("yt-dlp")
    screenshot("11-binary-search-wget")

    open_admin(page, live_server, "networkinterface/")
    page.locator("#changelist-filter").get_by_role("link", name="FR").click()
    expect(page).to_have_url(re.compile(r"country=FR"))
    expect(page.locator("#result_list")).to_contain_text("10.1.2.3")
    screenshot("12-networkinterface-filtered-country")

    open_admin(page, live_server, "process/")
    page.locator("#changelist-filter").get_by_role("link", name="Hook").click()
    expect(page.locator("#result_list tbody tr")).to_have_count(1)
    screenshot("13-process-filtered-hook")


def test_detail_pages(admin_page, live_server, machine, rows, screenshot):
    page = admin_page
    hook = rows["hook"]
    open_admin(page, live_server, f"process/{hook.pk}/change/")
    env = page.locator(".field-env_display")
    for key in SECRET_ENV:
        expect(env.locator("tr", has_text=key)).to_contain_text("********")
    expect(env).to_contain_text("/usr/local/bin:/usr/bin")
    expect(page.locator(".field-stdout_tail")).to_contain_text('"type": "Binary"')
    expect(page.locator(".field-stderr_tail")).to_contain_text("found wget in PATH")
    expect(page.locator(".field-full_command")).to_contain_text("'--name=wget and friends'")
    assert_no_secret(page)
    screenshot("20-process-detail")

    page.locator(".field-process_tree .machine-tree > li > a").click()  # the root of its tree
    expect(page.locator(".field-process_tree .machine-tree-self")).to_contain_text("run_worker")
    expect(page.locator(".field-process_tree .machine-tree-self > ul")).to_contain_text(str(hook.pk)[-12:])
    screenshot("21-process-parent-detail")

    open_admin(page, live_server, f"binary/{rows['binary'].pk}/change/")
    expect(page.locator(".fieldBox.field-health_percent")).to_contain_text("75% (3 ok / 1 failed)")
    page.locator(".field-hook_runs a", has_text=str(hook.pk)[-12:]).click()
    expect(page).to_have_url(re.compile(str(hook.pk)))
    open_admin(page, live_server, f"binary/{rows['binary'].pk}/change/")
    screenshot("22-binary-detail")

    open_admin(page, live_server, f"machine/{rows['iface'].machine_id}/change/")
    expect(page.locator(".fieldBox.field-os_platform")).to_contain_text(machine.os_platform)
    expect(page.locator(".field-config textarea")).to_be_editable()
    expect(page.locator("#networkinterface_set-group")).to_contain_text("10.1.2.3")
    assert_no_secret(page)
    screenshot("23-machine-detail")

    open_admin(page, live_server, f"networkinterface/{rows['iface'].pk}/change/")
    expect(page.locator(".field-mac_address .readonly")).to_have_text("02:00:00:00:00:01")
    screenshot("24-networkinterface-detail")


def test_terminate_a_running_sleep_from_the_admin(admin_page, live_server, machine, data_dir, screenshot):
    page = admin_page
    sleep = launch_sleep(machine, data_dir / "sleep")
    try:
        open_admin(page, live_server, "process/?status__exact=running")
        expect(page.locator("#result_list")).to_contain_text("sleep 120")
        screenshot("30-process-running-sleep")

        run_action(page, [sleep.pk], "terminate_processes")
        expect(page.locator("#terminate-list")).to_contain_text("sleep 120")  # asked first
        screenshot("30b-process-terminate-confirmation")
        assert sleep.proc is not None
        page.click('input[value="Yes, terminate"]')
        expect(page.locator(".messagelist")).to_contain_text("Terminated 1 process(es)")
        assert os_process_gone(sleep.pid)
        sleep.refresh_from_db()
        assert sleep.status == ProcessStatus.EXITED
        assert sleep.exit_code == 128 + 15

        open_admin(page, live_server, f"process/{sleep.pk}/change/")
        expect(page.locator(".fieldBox.field-status_badge")).to_contain_text("Exited")
        expect(page.locator(".fieldBox.field-exit_code_badge .sm-badge-failed")).to_have_text("143")
        screenshot("31-process-terminated")
    finally:
        sleep.refresh_from_db()
        if sleep.proc is not None:
            sleep.proc.kill()


def test_retry_a_binary(admin_page, live_server, rows, screenshot):
    page = admin_page
    binary = rows["binary"]
    open_admin(page, live_server, "binary/")
    before = timezone.now()
    run_action(page, [binary.pk], "retry_install")
    expect(page.locator(".messagelist")).to_contain_text("Re-queued 1 binary(ies) for install: wget.")
    binary.refresh_from_db()
    assert binary.status == BinaryStatus.QUEUED
    assert binary.retry_at >= before
    row = page.locator("#result_list tr", has_text="/usr/bin/wget")
    expect(row.locator(".field-status_badge")).to_have_text("Queued")
    screenshot("40-binary-requeued")
