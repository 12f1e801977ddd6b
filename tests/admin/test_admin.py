"""The admin through Django's test client: access rules, actions, and secrets never shown."""

from __future__ import annotations

from datetime import timedelta

import psutil
import pytest
from django.contrib.auth.models import Permission, User
from django.urls import reverse
from django.utils import timezone

from machine.binaries import RETRY_DELAY
from machine.choices import BinaryStatus, ProcessStatus, ProcessType
from machine.models import Binary, Machine, NetworkInterface, Process
from machine.redaction import redact_nested
from tests.admin.rows import PLAIN_ENV, SECRET_ENV, SECRET_VALUES, os_process_gone
from tests.machine_factories import make_machine

pytestmark = pytest.mark.django_db(transaction=True)

MODELS = (Machine, NetworkInterface, Binary, Process)


def changelist(model) -> str:
    return reverse(f"admin:machine_{model._meta.model_name}_changelist")


def change(obj) -> str:
    return reverse(f"admin:machine_{obj._meta.model_name}_change", args=[obj.pk])


def all_pages(machine, rows) -> list[str]:
    pages = [changelist(model) for model in MODELS]
    pages += [change(machine), change(rows["iface"]), change(rows["binary"])]
    pages += [change(rows["parent"]), change(rows["hook"]), change(rows["leaky"])]
    pages += [reverse("admin:machine_process_history", args=[rows[name].pk]) for name in ("leaky", "hook")]
    pages += [
        changelist(Process) + "?q=on_BinaryRequest",
        changelist(Process) + "?binary__id__exact=" + str(rows["binary"].pk),
    ]
    return pages


def messages_of(response) -> list[str]:
    return [str(m) for m in response.context["messages"]]


def run_action(client, model, action: str, rows, confirm: bool = True):
    """Post an action; `confirm` also answers "yes" to an action that asks first (terminate)."""
    data = {"action": action, "_selected_action": [str(r.pk) for r in rows]}
    if confirm:
        data["post"] = "yes"
    return client.post(changelist(model), data, follow=True)


# -- access ---------------------------------------------------------------------------------------


def test_anonymous_users_are_sent_to_the_login_page(client, machine, rows):
    for url in all_pages(machine, rows):
        response = client.get(url)
        assert response.status_code == 302, url
        assert response["Location"].startswith(reverse("admin:login")), url


def test_non_staff_users_are_sent_to_the_login_page(client, machine, rows):
    user = User.objects.create_user("visitor", password="pw")
    user.user_permissions.set(Permission.objects.filter(content_type__app_label="machine"))
    client.force_login(user)
    for url in all_pages(machine, rows):
        response = client.get(url)
        assert response.status_code == 302, url
        assert response["Location"].startswith(reverse("admin:login")), url


def test_staff_without_change_permission_cannot_run_actions(client, machine, rows, sleep_process):
    user = User.objects.create_user("viewer", password="pw", is_staff=True)
    user.user_permissions.set(Permission.objects.filter(codename__in=["view_binary", "view_process"]))
    client.force_login(user)
    assert client.get(changelist(Binary)).status_code == 200

    binary = rows["binary"]
    response = run_action(client, Binary, "retry_install", [binary])
    binary.refresh_from_db()
    assert binary.status == BinaryStatus.INSTALLED
    assert "retry_install" not in response.content.decode()

    response = run_action(client, Process, "terminate_processes", [sleep_process])
    sleep_process.refresh_from_db()
    assert sleep_process.status == ProcessStatus.RUNNING
    assert psutil.pid_exists(sleep_process.pid)
    assert sleep_process.proc is not None


def test_staff_with_change_permission_can_retry_a_binary(client, machine, rows):
    user = User.objects.create_user("operator", password="pw", is_staff=True)
    user.user_permissions.set(Permission.objects.filter(codename__in=["view_binary", "change_binary"]))
    client.force_login(user)
    binary = rows["binary"]
    before = timezone.now()
    response = run_action(client, Binary, "retry_install", [binary])
    binary.refresh_from_db()
    assert binary.status == BinaryStatus.QUEUED
    assert before <= binary.retry_at <= timezone.now()
    assert messages_of(response) == ["Re-queued 1 binary(ies) for install: wget."]
    assert binary in Binary.get_queue()


def test_retry_makes_a_backing_off_binary_due_but_never_breaks_a_workers_lease(admin_client, rows):
    now = timezone.now()
    backing_off = Binary.objects.get(name="yt-dlp")
    Binary.objects.filter(pk=backing_off.pk).update(modified_at=now, retry_at=now + RETRY_DELAY)
    held = Binary.objects.create(machine=backing_off.machine, name="gallery-dl", binproviders="pip")
    held_until = now + timedelta(minutes=30)  # a worker's claim: retry_at moved, modified_at not
    Binary.objects.filter(pk=held.pk).update(retry_at=held_until)

    response = run_action(admin_client, Binary, "retry_install", [backing_off, held])
    assert messages_of(response) == [
        "Re-queued 1 binary(ies) for install: yt-dlp.",
        "Not re-queued, a worker is installing them right now: gallery-dl.",
    ]
    backing_off.refresh_from_db()
    held.refresh_from_db()
    assert backing_off.retry_at <= timezone.now()
    assert held.retry_at == held_until


def test_nobody_can_add_rows_by_hand_except_a_binary_install_request(admin_client):
    for model in (Machine, NetworkInterface, Process):
        assert admin_client.get(reverse(f"admin:machine_{model._meta.model_name}_add")).status_code == 403
    page = admin_client.get(reverse("admin:machine_binary_add"))
    assert page.status_code == 200 and 'id="binary-install-form"' in page.content.decode()


def test_processes_are_read_only_and_machines_and_processes_cannot_be_deleted(admin_client, machine, rows):
    hook = rows["hook"]
    page = admin_client.get(change(hook)).content.decode()
    assert 'name="_save"' not in page and 'name="_continue"' not in page
    assert admin_client.post(change(hook), {"pid": "1"}).status_code == 403
    hook.refresh_from_db()
    assert hook.pid == 4243
    for obj in (hook, machine):
        url = reverse(f"admin:machine_{obj._meta.model_name}_delete", args=[obj.pk])
        assert admin_client.post(url, {"post": "yes"}).status_code == 403
    assert Process.objects.filter(pk=hook.pk).exists() and Machine.objects.filter(pk=machine.pk).exists()
    assert "delete_selected" not in admin_client.get(changelist(Process)).content.decode()


# -- pages ----------------------------------------------------------------------------------------


def test_every_page_renders_for_staff_and_never_shows_a_secret(admin_client, machine, rows):
    for url in all_pages(machine, rows):
        response = admin_client.get(url)
        assert response.status_code == 200, url
        html = response.content.decode()
        for secret in SECRET_VALUES:
            assert secret not in html, (url, secret)


def test_process_detail_shows_redacted_env_quoted_command_links_and_output(admin_client, rows):
    hook = rows["hook"]
    html = admin_client.get(change(hook)).content.decode()
    for key in SECRET_ENV:
        assert f"<code>{key}</code>" in html
    assert html.count("********") >= len(SECRET_ENV) + 2  # env values and the two argv secrets
    assert PLAIN_ENV["PATH"] in html
    assert "--api-token=********" in html
    assert "--cookie=********" in html  # the child, listed by its redacted label
    assert "&#x27;--name=wget and friends&#x27;" in html  # shell-quoted, then HTML-escaped
    assert change(rows["parent"]) in html
    assert change(rows["binary"]) in html
    assert "found wget in PATH" in html
    assert "&quot;type&quot;: &quot;Binary&quot;" in html

    parent_html = admin_client.get(change(rows["parent"])).content.decode()
    assert change(hook) in parent_html  # children as links


def test_process_detail_tails_the_log_files_else_the_stored_output(admin_client, machine, tmp_path):
    logged = Process.objects.create(machine=machine, cmd=["seq", "200"], pwd=str(tmp_path / "a"))
    logged.stdout_file.parent.mkdir(parents=True)
    logged.stdout_file.write_text("".join(f"file line {i}\n" for i in range(1, 201)))
    stored = Process.objects.create(
        machine=machine,
        cmd=["seq", "200"],
        pwd=str(tmp_path / "b"),
        stdout="".join(f"row line {i}\n" for i in range(1, 201)),
    )
    broken = Process.objects.create(machine=machine, cmd=["seq", "1"], pwd=str(tmp_path / "c"))
    broken.stderr_file.mkdir(parents=True)  # a directory where the log should be: unreadable as a file

    html = admin_client.get(change(logged)).content.decode()
    assert "file line 200" in html and "file line 151" in html and "file line 150\n" not in html
    html = admin_client.get(change(stored)).content.decode()
    assert "row line 200" in html and "row line 151" in html and "row line 150\n" not in html
    response = admin_client.get(change(broken))
    assert response.status_code == 200
    assert "(log file unreadable: Is a directory)" in response.content.decode()


def test_binary_page_links_to_its_hook_runs(admin_client, rows):
    html = admin_client.get(change(rows["binary"])).content.decode()
    assert change(rows["hook"]) in html
    assert "1.21.3" in html and "/usr/bin/wget" in html
    assert "75" in html  # health: 3 succeeded, 1 failed


def test_binary_hook_runs_include_processes_run_in_its_output_dir(admin_client, machine, rows):
    binary = rows["binary"]
    unlinked = Process.objects.create(
        machine=machine,
        process_type=ProcessType.HOOK,
        cmd=["on_BinaryRequest__20_apt.sh"],
        pwd=str(binary.output_dir / ".hooks" / "apt"),
        status=ProcessStatus.EXITED,
        exit_code=1,
    )
    html = admin_client.get(change(binary)).content.decode()
    assert change(unlinked) in html


def test_machine_changelist_counts_binaries_and_running_processes(admin_client, machine, rows, sleep_process):
    html = admin_client.get(changelist(Machine)).content.decode()
    binaries = f'?machine__id__exact={machine.pk}">2</a>'
    running = f'?machine__id__exact={machine.pk}&amp;status__exact=running">1</a>'
    assert binaries in html
    assert running in html


def test_machine_page_shows_facts_interfaces_and_saves_a_valid_config(
    admin_client, machine, rows, tmp_path, settings
):
    html = admin_client.get(change(machine)).content.decode()
    assert machine.os_platform in html and machine.guid in html
    assert "10.1.2.3" in html and "Example Transit" in html  # the interfaces inline

    settings.MACHINE_LIB_DIR = tmp_path / "lib"
    tool = tmp_path / "lib" / "wget"
    tool.parent.mkdir()
    tool.write_text("#!/bin/sh\n")
    response = admin_client.post(
        change(machine),
        {
            "config": f'{{"WGET_BINARY": "  {tool}  ", "CURL_BINARY": "curl"}}',
            "networkinterface_set-TOTAL_FORMS": "1",
            "networkinterface_set-INITIAL_FORMS": "1",
            "networkinterface_set-MIN_NUM_FORMS": "0",
            "networkinterface_set-MAX_NUM_FORMS": "0",
            "networkinterface_set-0-id": str(rows["iface"].pk),
            "networkinterface_set-0-machine": str(machine.pk),
        },
    )
    assert response.status_code == 302, response.content.decode()[:3000]
    machine.refresh_from_db()
    assert machine.config == {"WGET_BINARY": f"  {tool}  ", "CURL_BINARY": "curl"}  # kept as typed


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ('{"WGET_BINARY": "/no/such/wget"}', "WGET_BINARY: the value is blank, or a path that does not"),
        ('{"WGET_BINARY": "/bin/sh"}', "lies outside the lib dir"),
        ('{"WGET_BINARY": "   "}', "WGET_BINARY: the value is blank"),
        ('["WGET_BINARY"]', "The config must be a JSON object"),
    ],
)
def test_machine_config_is_validated_by_the_sanitiser(admin_client, machine, rows, config, message):
    machine.config = {"CURL_BINARY": "curl"}
    machine.save()
    response = admin_client.post(
        change(machine),
        {
            "config": config,
            "networkinterface_set-TOTAL_FORMS": "1",
            "networkinterface_set-INITIAL_FORMS": "1",
            "networkinterface_set-MIN_NUM_FORMS": "0",
            "networkinterface_set-MAX_NUM_FORMS": "0",
            "networkinterface_set-0-id": str(rows["iface"].pk),
            "networkinterface_set-0-machine": str(machine.pk),
        },
    )
    assert response.status_code == 200
    assert message in response.content.decode()
    machine.refresh_from_db()
    assert machine.config == {"CURL_BINARY": "curl"}


def test_binary_install_request_is_editable_and_the_result_is_not(admin_client, rows):
    binary = rows["binary"]
    response = admin_client.post(
        change(binary),
        {"binproviders": "apt,brew", "overrides": '{"apt": {"packages": ["wget2"]}}', "abspath": "/tmp/evil"},
    )
    assert response.status_code == 302
    binary.refresh_from_db()
    assert binary.binproviders == "apt,brew"
    assert binary.overrides == {"apt": {"packages": ["wget2"]}}
    assert binary.abspath == "/usr/bin/wget"


def test_binary_overrides_with_a_secret_are_shown_redacted_and_cannot_be_edited(admin_client, rows):
    binary = rows["binary"]
    overrides = {
        "pip": {"install_args": ["--index-url", "https://pypi.example"], "env": {"PIP_TOKEN": "planted-999"}}
    }
    Binary.objects.filter(pk=binary.pk).update(overrides=overrides)
    html = admin_client.get(change(binary)).content.decode()
    assert "planted-999" not in html
    assert "&quot;PIP_TOKEN&quot;: &quot;********&quot;" in html and "https://pypi.example" in html
    assert 'name="overrides"' not in html
    response = admin_client.post(change(binary), {"binproviders": "pip", "overrides": "{}"})
    assert response.status_code == 302
    binary.refresh_from_db()
    # (stored masked in the first place: the field masks secrets at rest)
    assert binary.overrides == redact_nested(overrides)[0] and binary.binproviders == "pip"


def test_interface_fingerprint_is_read_only(admin_client, rows):
    iface = rows["iface"]
    response = admin_client.post(
        change(iface),
        {
            "ip_local": "192.168.9.9",
            "mac_address": "02:00:00:00:00:99",
            "hostname": "renamed",
            "iface": "eth9",
            "isp": "Other ISP",
            "city": "Lyon",
            "region": "ARA",
            "country": "FR",
        },
    )
    assert response.status_code == 302
    iface.refresh_from_db()
    assert (iface.ip_local, iface.mac_address, iface.isp) == ("10.1.2.3", "02:00:00:00:00:01", "Other ISP")


def test_changelists_filter_and_search(admin_client, machine, rows):
    url = changelist(NetworkInterface)
    assert "10.1.2.3" in admin_client.get(url + "?country=FR").content.decode()
    assert "10.1.2.3" not in admin_client.get(url + "?country=DE").content.decode()
    assert "10.1.2.3" in admin_client.get(url + "?isp=Example+Transit").content.decode()

    url = changelist(Binary)
    queued = admin_client.get(url + "?status__exact=queued").content.decode()
    assert "yt-dlp" in queued and "/usr/bin/wget" not in queued
    found = admin_client.get(url + "?q=wget").content.decode()
    assert "/usr/bin/wget" in found and "yt-dlp" not in found
    assert "/usr/bin/wget" in admin_client.get(url + "?binprovider=env").content.decode()

    url = changelist(Process)
    hooks = admin_client.get(url + "?process_type__exact=hook")
    assert list(hooks.context["cl"].result_list) == [rows["hook"]]
    by_pid = admin_client.get(url + "?q=4242")
    assert list(by_pid.context["cl"].result_list) == [rows["parent"]]
    by_cmd = admin_client.get(url + "?q=run_worker")
    assert list(by_cmd.context["cl"].result_list) == [rows["parent"]]
    children = admin_client.get(url + f"?parent__id__exact={rows['hook'].pk}")
    assert list(children.context["cl"].result_list) == [rows["leaky"]]
    assert f'?parent__id__exact={rows["parent"].pk}">1</a>' in admin_client.get(url).content.decode()


# -- actions on real processes --------------------------------------------------------------------


def test_terminate_stops_a_real_process_and_marks_its_row_exited(admin_client, sleep_process):
    pid = sleep_process.pid
    response = run_action(admin_client, Process, "terminate_processes", [sleep_process])
    assert any(m.startswith("Terminated 1 process(es)") for m in messages_of(response))
    sleep_process.refresh_from_db()
    assert sleep_process.status == ProcessStatus.EXITED
    assert sleep_process.exit_code == 128 + 15
    assert sleep_process.ended_at is not None
    assert os_process_gone(pid)


def test_terminate_refuses_a_pid_that_is_not_provably_ours(admin_client, machine, foreign_sleep):
    proc = psutil.Process(foreign_sleep.pid)
    # A real, running pid whose recorded start time does not match: a reused PID as far as we can tell.
    stale = Process.objects.create(
        machine=machine,
        cmd=["sleep", "120"],
        pid=foreign_sleep.pid,
        os_start_time=proc.create_time() - 3600,
        started_at=timezone.now() - timedelta(hours=1),
        status=ProcessStatus.RUNNING,
    )
    other_machine = make_machine("other-host-guid", hostname="elsewhere")
    remote = Process.objects.create(
        machine=other_machine,
        cmd=["sleep", "120"],
        pid=foreign_sleep.pid,
        os_start_time=proc.create_time(),
        started_at=timezone.now(),
        status=ProcessStatus.RUNNING,
    )
    response = run_action(admin_client, Process, "terminate_processes", [stale, remote])
    (message,) = messages_of(response)
    assert message.startswith("Refused to signal 2 process(es)")
    assert "not provably ours" in message
    assert foreign_sleep.poll() is None and proc.is_running()
    stale.refresh_from_db()
    remote.refresh_from_db()
    assert stale.status == remote.status == ProcessStatus.RUNNING


def test_terminate_refuses_rows_that_are_not_running(admin_client, rows):
    response = run_action(admin_client, Process, "terminate_processes", [rows["parent"]])
    (message,) = messages_of(response)
    assert "not running" in message


def test_cleanup_marks_rows_of_dead_processes_exited(admin_client, machine, rows):
    gone = psutil.Popen(["true"])
    gone.wait()
    stale = Process.objects.create(
        machine=machine,
        cmd=["true"],
        pid=gone.pid,
        started_at=timezone.now() - timedelta(seconds=10),
        status=ProcessStatus.RUNNING,
    )
    response = run_action(admin_client, Process, "cleanup_stale", [stale])
    assert messages_of(response) == ["Marked 1 stale running process row(s) of this machine exited."]
    stale.refresh_from_db()
    assert stale.status == ProcessStatus.EXITED
