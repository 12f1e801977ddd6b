"""The operator views in a real Chromium: live refresh, tree, logs, confirmations, install form, queues."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.utils import timezone
from playwright.sync_api import expect

from machine.choices import BinaryStatus, ProcessStatus
from machine.models import Binary, Process
from tests.admin.rows import launch_sleep, os_process_gone
from tests.exampleapp.models import Task

pytestmark = pytest.mark.django_db(transaction=True)


def open_admin(page, live_server, path: str) -> None:
    page.goto(f"{live_server.url}/admin/{path}")


def launch(machine, workdir, script: str) -> Process:
    workdir.mkdir(parents=True, exist_ok=True)
    process = Process.objects.create(machine=machine, cmd=["sh", "-c", script], pwd=str(workdir), timeout=60)
    process.launch(background=True)
    return process


def test_running_rows_refresh_in_place_until_they_end(admin_page, live_server, machine, data_dir, screenshot):
    page = admin_page
    process = launch(machine, data_dir / "work", "sleep 1; exit 3")
    open_admin(page, live_server, "machine/process/?status__exact=running")
    row = page.locator("#result_list tr", has_text="exit 3")
    expect(row.locator(".field-status_badge .sm-badge-active")).to_have_text("Running")
    page.evaluate("window.__notReloaded = true")
    screenshot("50-process-live-running")

    assert process.wait(10) == 3  # the launching process records the exit, as its worker would

    expect(row.locator(".field-exit_code_badge .sm-badge-failed")).to_have_text("3", timeout=15_000)
    expect(row.locator(".field-status_badge")).to_have_text("Exited")
    assert page.evaluate("window.__notReloaded") is True  # updated in place, not by a reload
    screenshot("51-process-live-exited")


def test_a_running_process_page_asks_before_terminating_and_then_shows_the_end(
    admin_page, live_server, machine, data_dir, screenshot
):
    page = admin_page
    sleep = launch_sleep(machine, data_dir / "sleep")
    try:
        open_admin(page, live_server, f"machine/process/{sleep.pk}/change/")
        page.click("a.terminatelink")
        expect(page.locator("#terminate-list")).to_contain_text("sleep 120")
        expect(page.locator("#terminate-list")).to_contain_text("yes")
        screenshot("52-process-terminate-confirm")
        page.click("a.cancel-link")  # No, take me back
        expect(page).to_have_url(re.compile(rf"{sleep.pk}/change/$"))
        assert sleep.proc is not None

        page.click("a.terminatelink")
        page.click('input[value="Yes, terminate"]')

        expect(page.locator(".messagelist")).to_contain_text("Terminated 1 process(es)")
        expect(page.locator(".field-exit_code_badge .sm-badge-failed")).to_have_text("143")
        expect(page.locator("a.terminatelink")).to_have_count(0)
        assert os_process_gone(sleep.pid)
        screenshot("53-process-terminated-from-detail")
    finally:
        sleep.refresh_from_db()
        if sleep.proc is not None:
            sleep.proc.kill()


def test_a_detail_page_reloads_itself_when_its_process_ends(admin_page, live_server, machine, data_dir):
    page = admin_page
    process = launch(machine, data_dir / "work", "echo done at last; sleep 1")
    open_admin(page, live_server, f"machine/process/{process.pk}/change/")
    expect(page.locator(".fieldBox.field-status_badge")).to_contain_text("Running")
    assert process.wait(10) == 0
    expect(page.locator(".fieldBox.field-status_badge")).to_contain_text("Exited", timeout=15_000)
    expect(page.locator(".field-stdout_tail")).to_contain_text("done at last")


def test_the_process_tree_shows_three_generations(admin_page, live_server, rows, machine, screenshot):
    page = admin_page
    hook, leaky = rows["hook"], rows["leaky"]
    open_admin(page, live_server, f"machine/process/{hook.pk}/change/")
    tree = page.locator(".field-process_tree .machine-tree")
    expect(tree.locator(":scope > li > a")).to_contain_text("run_worker")  # the root
    expect(tree.locator(".machine-tree-self > a")).to_contain_text("on_BinaryRequest__10_env.sh")
    expect(tree.locator(".machine-tree-self > ul > li > a")).to_contain_text(str(leaky.pk)[-12:])
    expect(tree.locator(".machine-tree-self .sm-badge-failed")).to_have_text("6")  # the child's exit code
    page.locator(".field-process_tree").scroll_into_view_if_needed()
    screenshot("54-process-tree")


def test_the_full_log_pages_and_downloads(admin_page, live_server, machine, data_dir, screenshot, tmp_path):
    page = admin_page
    process = Process.objects.create(
        machine=machine,
        cmd=["seq", "1", "60000"],
        pwd=str(data_dir),
        status=ProcessStatus.EXITED,
        exit_code=0,
    )
    process.stdout_file.parent.mkdir(parents=True)
    process.stdout_file.write_text("".join(f"log line {i}\n" for i in range(1, 60001)))  # ~0.8 MB

    open_admin(page, live_server, f"machine/process/{process.pk}/change/")
    page.click("text=Full stdout log")
    expect(page.locator("#log-text")).to_contain_text("log line 60000")
    expect(page.locator("#log-text")).not_to_contain_text("log line 1\n")
    screenshot("55-process-log-end")
    page.click("#log-earlier")
    expect(page.locator("#log-text")).not_to_contain_text("log line 60000")
    expect(page.locator("#log-later")).to_be_visible()

    with page.expect_download() as download:
        page.click("#log-download")
    saved = tmp_path / "downloaded.log"
    download.value.save_as(saved)
    assert saved.read_bytes() == process.stdout_file.read_bytes()
    assert download.value.suggested_filename == f"process-{process.pk}-stdout.log"


def test_install_a_binary_from_the_admin(admin_page, live_server, machine, data_dir, settings, screenshot):
    page = admin_page
    settings.MACHINE_LIB_DIR = data_dir / "lib"
    open_admin(page, live_server, "machine/binary/")
    page.click("text=Install a binary")
    page.fill("#id_name", "../sh")
    page.click('input[value="Queue the install"]')
    expect(page.locator(".errorlist")).to_contain_text("invalid binary name")
    screenshot("56-binary-install-form-error")
    assert not Binary.objects.exists()

    page.fill("#id_name", "sh")
    page.check('input[name="binproviders"][value="env"]')
    page.click('input[value="Queue the install"]')
    expect(page.locator(".messagelist")).to_contain_text("Queued sh for install (providers: env)")
    expect(page.locator(".fieldBox.field-status_badge")).to_contain_text("Queued")
    screenshot("57-binary-install-queued")

    binary = Binary.objects.get(name="sh")
    assert binary.tick_claimed()  # what a worker does with the request

    expect(page.locator(".fieldBox.field-status_badge .sm-badge-ok")).to_have_text(
        "Installed", timeout=15_000
    )
    expect(page.locator(".field-abspath")).to_contain_text("/sh")
    binary.refresh_from_db()
    assert binary.status == BinaryStatus.INSTALLED
    screenshot("58-binary-installed")


def test_health_and_host_stats_read_like_text(admin_page, live_server, rows, machine, screenshot):
    page = admin_page
    open_admin(page, live_server, "machine/binary/")
    expect(page.locator("#result_list tr", has_text="yt-dlp").locator(".field-health_percent")).to_have_text(
        "no uses yet"
    )
    expect(page.locator("#result_list tr", has_text="wget").locator(".field-health_percent")).to_have_text(
        "75% (3 ok / 1 failed)"
    )
    screenshot("59-binary-health")
    open_admin(page, live_server, f"machine/machine/{machine.pk}/change/")
    stats = page.locator(".field-stats_display table.machine-pairs")
    expect(stats.locator("tr", has_text="cpu count")).to_contain_text(str(machine.stats["cpu_count"]))
    expect(stats).not_to_contain_text('"cpu_count"')
    stats.scroll_into_view_if_needed()
    screenshot("60-machine-stats")


def test_a_downstream_queue_model_gets_the_same_help(admin_page, live_server, machine, screenshot):
    page = admin_page
    now = timezone.now()
    Task.objects.create(machine=machine, name="late-task", retry_at=now - timedelta(minutes=5))
    Task.objects.create(machine=machine, name="claimed-task", retry_at=now + timedelta(minutes=1))
    Task.objects.create(machine=machine, name="done-task", status="done", retry_at=None)
    open_admin(page, live_server, "exampleapp/task/")
    page.locator("#changelist-filter").get_by_role("link", name="Due now").click()
    expect(page).to_have_url(re.compile(r"queue=due"))
    expect(page.locator("#result_list tbody tr")).to_have_count(1)
    row = page.locator("#result_list tr", has_text="late-task")
    expect(row.locator(".field-status_badge .sm-badge-queued")).to_have_text("Queued")
    expect(row.locator(".field-due")).to_contain_text("due 5")
    open_admin(page, live_server, "exampleapp/task/")
    expect(page.locator("#result_list tr", has_text="done-task").locator(".sm-badge-ok")).to_have_text("Done")
    screenshot("61-downstream-task-queue")
