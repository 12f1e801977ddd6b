"""What an operator gets from the admin: badges, live refresh, the process tree, logs, confirmations,
the install form, readable health and stats, and the queue helpers a downstream app reuses."""

from __future__ import annotations

import re
import tracemalloc
from datetime import timedelta

import pytest
from django.contrib.auth.models import Permission, User
from django.urls import reverse
from django.utils import timezone

from machine import admin as machine_admin
from machine.choices import BinaryStatus, ProcessStatus
from machine.models import Binary, Process
from tests.admin.rows import os_process_gone
from tests.exampleapp.models import Task

pytestmark = pytest.mark.django_db(transaction=True)


def changelist(model) -> str:
    return reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_changelist")


def change(obj) -> str:
    return reverse(f"admin:{obj._meta.app_label}_{obj._meta.model_name}_change", args=[obj.pk])


def exited(machine, code, **fields) -> Process:
    now = timezone.now()
    return Process.objects.create(
        machine=machine, cmd=["sh", "-c", f"exit {code}"], status=ProcessStatus.EXITED, exit_code=code,
        started_at=now - timedelta(seconds=90), ended_at=now, **fields,
    )  # fmt: skip


def badges(html: str) -> dict[str, str]:
    """{badge text: kind} of every badge on the page."""
    return {text: kind for kind, text in re.findall(r'sm-badge sm-badge-(\w+)"[^>]*>([^<]*)<', html)}


# -- badges and durations ---------------------------------------------------------------------------


def test_exit_codes_3_6_127_look_like_failures_and_0_like_success(admin_client, machine):
    for code in (0, 3, 6, 127, 143):
        exited(machine, code)
    html = admin_client.get(changelist(Process)).content.decode()
    found = badges(html)
    assert found["0"] == "ok"
    assert {found["3"], found["6"], found["127"], found["143"]} == {"failed"}
    assert 'title="exit code 127: command not found"' in html
    assert 'title="exit code 143: killed by SIGTERM"' in html
    assert found["Exited"] == "neutral"
    assert "1m 30s" in html  # the duration column


def test_a_running_process_has_an_active_badge_and_a_counting_duration(admin_client, sleep_process):
    html = admin_client.get(changelist(Process) + "?status__exact=running").content.decode()
    assert badges(html)["Running"] == "active"
    assert "(running)" in html
    assert f'data-live-id="{sleep_process.pk}" data-live-field="exit_code_badge" data-live-active="1"' in html


# -- live refresh -----------------------------------------------------------------------------------


def live(client, model, *objs, raw: str | None = None):
    url = reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_live")
    ids = raw if raw is not None else ",".join(str(o.pk) for o in objs)
    return client.get(url, {"ids": ids})


def test_the_live_view_reports_a_process_as_it_ends(admin_client, sleep_process):
    before = live(admin_client, Process, sleep_process).json()["rows"][str(sleep_process.pk)]
    assert before["active"] is True and "Running" in before["fields"]["status_badge"]

    sleep_process.terminate(graceful_timeout=5)

    after = live(admin_client, Process, sleep_process).json()["rows"][str(sleep_process.pk)]
    assert after["active"] is False
    assert "Exited" in after["fields"]["status_badge"]
    assert (
        "sm-badge-failed" in after["fields"]["exit_code_badge"]
        and ">143<" in after["fields"]["exit_code_badge"]
    )


def test_the_live_view_ignores_bad_ids_and_needs_view_permission(
    client, admin_client, machine, sleep_process
):
    response = live(admin_client, Process, raw=f"not-a-uuid,,{sleep_process.pk},../../etc")
    assert response.status_code == 200 and list(response.json()["rows"]) == [str(sleep_process.pk)]
    assert live(client, Process, sleep_process).status_code == 302  # anonymous: to the login page
    clerk = User.objects.create_user("clerk", password="pw", is_staff=True)
    client.force_login(clerk)
    assert live(client, Process, sleep_process).status_code == 403
    clerk.user_permissions.add(Permission.objects.get(codename="view_process"))
    assert live(client, Process, sleep_process).json()["rows"][str(sleep_process.pk)]["active"] is True


# -- the process tree -------------------------------------------------------------------------------


def test_the_process_tree_nests_ancestors_and_descendants(admin_client, rows, machine):
    parent, hook, leaky = rows["parent"], rows["hook"], rows["leaky"]
    grandchild = exited(machine, 0, parent=leaky)
    html = admin_client.get(change(hook)).content.decode()
    tree = html[html.index('<ul class="machine-tree">') :]
    tree = tree[: tree.index("</fieldset>")]
    order = [tree.index(change(p)) for p in (parent, hook, leaky, grandchild)]
    assert order == sorted(order)
    # Each level sits one <ul> deeper: root, then this process, then its child, then the grandchild.
    depth = [
        tree[: tree.index(change(p))].count("<ul") - tree[: tree.index(change(p))].count("</ul>")
        for p in (parent, hook, leaky, grandchild)
    ]
    assert depth == [1, 2, 3, 4]
    assert 'class="machine-tree-self"><a href="' + change(hook) in tree


def test_a_huge_tree_is_cut_with_a_link_to_the_rest(admin_client, machine, monkeypatch):
    monkeypatch.setattr(machine_admin, "TREE_LIMIT", 3)
    root = exited(machine, 0)
    for _ in range(5):
        exited(machine, 0, parent=root)
    html = admin_client.get(change(root)).content.decode()
    assert "… and 2 more" in html and f"parent__id__exact={root.pk}" in html


# -- logs -------------------------------------------------------------------------------------------


def log_url(process, stream="stdout", download=False) -> str:
    name = "machine_process_log_download" if download else "machine_process_log"
    return reverse(f"admin:{name}", args=[process.pk, stream])


def test_the_log_view_pages_through_a_big_log_and_the_download_streams_it(admin_client, machine, tmp_path):
    process = exited(machine, 0, pwd=str(tmp_path))
    lines = [f"line {i:06d} " + "x" * 50 for i in range(20000)]  # ~1.2 MB
    process.stdout_file.parent.mkdir(parents=True)
    process.stdout_file.write_text("\n".join(lines) + "\n")
    size = process.stdout_file.stat().st_size

    html = admin_client.get(log_url(process)).content.decode()
    assert lines[-1] in html and lines[0] not in html  # the end of the log, one window of it
    assert len(html) < machine_admin.LOG_WINDOW + 20_000
    earlier = re.search(r'href="\?start=(\d+)" id="log-earlier"', html)
    assert earlier and f"of {size}" in html
    first = admin_client.get(log_url(process) + "?start=0").content.decode()
    assert lines[0] in first and lines[-1] not in first and 'id="log-later"' in first

    download = admin_client.get(log_url(process, download=True))
    assert download.streaming and download["Content-Disposition"].startswith("attachment")
    assert b"".join(download.streaming_content) == process.stdout_file.read_bytes()


def test_a_200_mb_log_is_never_read_into_memory(admin_client, machine, tmp_path):
    process = exited(machine, 0, pwd=str(tmp_path))
    process.stdout_file.parent.mkdir(parents=True)
    with open(process.stdout_file, "wb") as log:
        log.truncate(200 * 1024 * 1024)  # sparse: 200 MB long, no disk used
        log.seek(-20, 2)
        log.write(b"\nthe very last line\n")
    tracemalloc.start()
    try:
        html = admin_client.get(log_url(process)).content.decode()
        _current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert "the very last line" in html
    assert peak < 10 * 1024 * 1024


def test_without_a_log_file_the_stored_output_is_shown_and_bad_streams_are_404(admin_client, rows):
    hook = rows["hook"]
    html = admin_client.get(log_url(hook, "stderr")).content.decode()
    assert "found wget in PATH" in html and "showing the output stored with the row" in html
    download = admin_client.get(log_url(hook, "stderr", download=True))
    assert download.content == b"found wget in PATH\n"
    assert admin_client.get(f"{change(hook)}log/environ/").status_code == 404
    assert (
        admin_client.get(
            f"{change(hook)}log/stdout/download/".replace(
                str(hook.pk), "0190f0a0-0000-7000-8000-000000000009"
            )
        ).status_code
        == 404
    )


# -- terminate asks first ---------------------------------------------------------------------------


def test_the_terminate_action_asks_before_signalling(admin_client, sleep_process):
    data = {"action": "terminate_processes", "_selected_action": [str(sleep_process.pk)]}
    page = admin_client.post(changelist(Process), data)
    html = page.content.decode()
    assert page.status_code == 200 and "Are you sure?" in html and 'value="Yes, terminate"' in html
    assert sleep_process.proc is not None  # nothing signalled yet

    done = admin_client.post(changelist(Process), {**data, "post": "yes"}, follow=True)

    assert any(str(m).startswith("Terminated 1 process(es)") for m in done.context["messages"])
    assert os_process_gone(sleep_process.pid)


def test_the_terminate_button_of_a_running_process_asks_then_terminates(client, admin_client, sleep_process):
    page = admin_client.get(change(sleep_process)).content.decode()
    url = reverse("admin:machine_process_terminate", args=[sleep_process.pk])
    assert f'href="{url}"' in page
    confirm = admin_client.get(url).content.decode()
    assert "Are you sure?" in confirm and "sleep 120" in confirm
    assert sleep_process.proc is not None

    viewer = User.objects.create_user("viewer", password="pw", is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename="view_process"))
    client.force_login(viewer)
    assert client.post(url, {"post": "yes"}).status_code == 403
    assert sleep_process.proc is not None

    response = admin_client.post(url, {"post": "yes"})
    assert response.status_code == 302 and response["Location"] == change(sleep_process)
    sleep_process.refresh_from_db()
    assert (sleep_process.status, sleep_process.exit_code) == (ProcessStatus.EXITED, 143)
    assert f'href="{url}"' not in admin_client.get(change(sleep_process)).content.decode()


# -- install a binary -------------------------------------------------------------------------------


def test_the_install_form_queues_a_request_with_from_json(admin_client, machine):
    form = admin_client.get(reverse("admin:machine_binary_add")).content.decode()
    for provider in ("env", "apt", "brew", "pip", "npm"):
        assert f'value="{provider}"' in form
    assert "Install a binary" in admin_client.get(changelist(Binary)).content.decode()

    response = admin_client.post(
        reverse("admin:machine_binary_add"),
        {
            "name": " cowsay ",
            "binproviders": ["pip", "env"],
            "overrides": '{"pip": {"install_args": ["cowsay==6.1"]}}',
        },
        follow=True,
    )

    binary = Binary.objects.get(name="cowsay")
    assert (binary.status, binary.binproviders, binary.machine_id) == (
        BinaryStatus.QUEUED,
        "pip,env",
        machine.pk,
    )
    assert binary.overrides == {"pip": {"install_args": ["cowsay==6.1"]}}
    assert binary.retry_at <= timezone.now()  # due: the next worker takes it
    assert response.redirect_chain[-1][0] == change(binary)
    assert any("Queued cowsay for install" in str(m) for m in response.context["messages"])


@pytest.mark.parametrize(
    ("data", "error"),
    [
        ({"name": "../evil"}, "invalid binary name"),
        ({"name": ""}, "This field is required"),
        ({"name": "wget", "binproviders": ["nope"]}, "Select a valid choice"),
        ({"name": "wget", "overrides": "{not json"}, "--overrides is not valid JSON"),
        ({"name": "wget", "overrides": '{"cargo": {}}'}, "unknown: cargo"),
        ({"name": "x" * 64}, "at most 63 characters"),
    ],
)
def test_a_bad_install_request_is_refused_with_a_clear_error(admin_client, data, error):
    response = admin_client.post(reverse("admin:machine_binary_add"), data)
    assert response.status_code == 200
    assert error in response.content.decode()
    assert not Binary.objects.exists()


def test_requesting_an_installed_binary_says_so(admin_client, rows):
    # As in the original, a request for an installed binary queues it to be checked again.
    response = admin_client.post(
        reverse("admin:machine_binary_add"), {"name": "wget", "binproviders": ["env", "apt"]}, follow=True
    )
    assert any(
        "Queued wget to be checked again (installed: 1.21.3 via env)" in str(m)
        for m in response.context["messages"]
    )


def test_the_install_form_needs_the_add_permission(client, machine):
    clerk = User.objects.create_user("clerk", password="pw", is_staff=True)
    clerk.user_permissions.add(Permission.objects.get(codename="view_binary"))
    client.force_login(clerk)
    assert client.post(reverse("admin:machine_binary_add"), {"name": "wget"}).status_code == 403
    assert not Binary.objects.filter(name="wget").exists()


# -- health and stats -------------------------------------------------------------------------------


def test_health_says_no_uses_yet_for_a_row_never_used(admin_client, rows):
    html = admin_client.get(changelist(Binary)).content.decode()
    found = badges(html)
    assert found["no uses yet"] == "neutral"  # yt-dlp: 0 ok / 0 failed
    assert found["75% (3 ok / 1 failed)"] == "unknown"
    detail = admin_client.get(change(Binary.objects.get(name="yt-dlp"))).content.decode()
    assert "no uses yet" in detail and ">0<" not in detail.split("field-health_percent")[1][:300]


def test_machine_stats_are_a_readable_table(admin_client, machine):
    machine.stats = {
        "cpu_count": 8,
        "mem_total": 16 * 1024**3,
        "disk_percent": 42.5,
        "load_avg": [0.5, 1.0, 1.5],
        "boot_time": 1767225600.0,
        "uptime_seconds": 3723.4,
    }
    machine.save()
    html = admin_client.get(change(machine)).content.decode()
    assert "<th>cpu count</th><td>8</td>" in html
    assert "<th>mem total</th><td>16.0 GiB</td>" in html
    assert "<th>disk percent</th><td>42.5 %</td>" in html
    assert "<th>load avg</th><td>0.5, 1, 1.5</td>" in html
    assert "<th>boot time</th><td>2026-01-01 00:00:00 UTC</td>" in html
    assert "<th>uptime seconds</th><td>1h 02m 03s</td>" in html
    assert "&quot;cpu_count&quot;" not in html  # not raw JSON


# -- a downstream queue model reuses the mixin ------------------------------------------------------


def test_a_downstream_queue_gets_badges_due_times_and_the_queue_filter(admin_client, machine):
    now = timezone.now()
    due = Task.objects.create(machine=machine, name="due", retry_at=now - timedelta(minutes=3))
    claimed = Task.objects.create(machine=machine, name="claimed", retry_at=now + timedelta(minutes=2))
    done = Task.objects.create(machine=machine, name="done", status="done", retry_at=None)

    def listed(query: str) -> set[str]:
        response = admin_client.get(changelist(Task) + query)
        return {task.name for task in response.context["cl"].result_list}

    assert listed("?queue=due") == {"due"}
    assert listed("?queue=claimed") == {"claimed"}
    assert listed("?queue=final") == {"done"}
    html = admin_client.get(changelist(Task)).content.decode()
    found = badges(html)
    assert found["Queued"] == "queued" and found["Done"] == "ok"
    assert "due 3\xa0minutes ago" in html and "in 1\xa0minute" in html
    rows = live(admin_client, Task, due, claimed, done).json()["rows"]
    assert {pk: row["active"] for pk, row in rows.items()} == {
        str(due.pk): True,
        str(claimed.pk): True,
        str(done.pk): False,
    }
