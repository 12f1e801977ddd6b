import json
import time
from datetime import timedelta

import pytest
from django.core.management import call_command
from django.utils import timezone

import machine.detect as detect
import machine.models as mm
from machine.models import Binary, Machine, NetworkInterface, _sanitize_machine_config


@pytest.mark.django_db
def test_current_creates_one_row_with_detected_facts():
    machine = Machine.current()
    assert Machine.objects.count() == 1
    assert machine.guid == mm.get_host_guid()
    assert machine.hostname and machine.os_family and machine.os_arch
    assert machine.stats["cpu_count"] >= 1
    assert Machine.objects.current() == machine


@pytest.mark.django_db
def test_warm_current_is_served_from_cache_without_queries(django_assert_num_queries):
    first = Machine.current()
    with django_assert_num_queries(0):
        for _ in range(100):
            assert Machine.current() is first


@pytest.mark.django_db
def test_deleted_cached_row_is_recreated():
    first = Machine.current()
    old_id = first.pk
    first.delete()  # Django sets pk to None on the (cached) instance
    assert first.pk is None
    second = Machine.current()
    assert second.pk is not None and second.pk != old_id
    assert Machine.objects.filter(guid=second.guid).count() == 1


@pytest.mark.django_db
def test_stale_cache_is_refreshed_after_the_interval(monkeypatch):
    machine = Machine.current()
    old = timezone.now() - timedelta(seconds=mm.MACHINE_RECHECK_INTERVAL + 60)
    Machine.objects.filter(pk=machine.pk).update(hostname="old-name", stats={}, modified_at=old)
    machine.modified_at = old
    monkeypatch.setattr(mm, "get_os_info", lambda: {**detect.get_os_info(), "hostname": "new-name"})
    refreshed = Machine.current()
    assert refreshed.pk == machine.pk
    assert refreshed.hostname == "new-name"
    assert refreshed.stats  # stats re-read
    assert Machine.objects.get(pk=machine.pk).hostname == "new-name"
    assert timezone.now() - refreshed.modified_at < timedelta(seconds=5)


@pytest.mark.django_db
def test_within_interval_a_new_process_reuses_the_row_without_redetecting(monkeypatch):
    machine = Machine.current()
    mm._CURRENT_MACHINE = None  # as in a freshly started process

    def boom():
        raise AssertionError("detection must not run for a fresh row")

    monkeypatch.setattr(mm, "get_os_info", boom)
    assert Machine.current().pk == machine.pk


@pytest.mark.django_db
def test_guid_override_simulates_another_host(settings):
    here = Machine.current()
    settings.MACHINE_GUID = "second-host-guid"
    there = Machine.current()
    assert there.guid == "second-host-guid" and there.pk != here.pk
    assert Machine.objects.count() == 2


@pytest.mark.django_db
def test_patched_detection_is_used_by_name(monkeypatch):
    monkeypatch.setattr(mm, "get_host_guid", lambda: "patched-guid")
    assert Machine.current().guid == "patched-guid"


def test_sanitize_machine_config_rules(tmp_path):
    existing = tmp_path / "lib" / "wget"
    existing.parent.mkdir()
    existing.write_text("")
    outside = tmp_path / "curl"
    outside.write_text("")
    config = {
        "WGET_BINARY": str(existing),
        "CURL_BINARY": "/definitely/not/here/curl",
        "NODE_BINARY": "node",
        "YTDLP_BINARY": "   ",
        "CHROME_BINARY": None,
        "ABX_INSTALL_CACHE": {"wget": "2024-01-01"},
        "SECRET_KEY": "hunter2",
        "TIMEOUT": 60,
        3: "x",
    }
    kept = {
        "WGET_BINARY": str(existing),
        "NODE_BINARY": "node",
        "CHROME_BINARY": None,  # not a str: not examined
        "ABX_INSTALL_CACHE": {"wget": "2024-01-01"},
        "SECRET_KEY": "hunter2",
        "TIMEOUT": 60,
        3: "x",
    }
    assert _sanitize_machine_config(config) == kept
    assert _sanitize_machine_config({**config, "CURL_BINARY": str(outside)}) == {
        **kept,
        "CURL_BINARY": str(outside),
    }
    # With a lib dir, a path outside it is dropped too; a path inside it and command names stay.
    with_lib = _sanitize_machine_config({**config, "CURL_BINARY": str(outside)}, lib_dir=tmp_path / "lib")
    assert with_lib == kept
    assert config["YTDLP_BINARY"] == "   "  # the input is not changed
    for junk in (None, [], "WGET_BINARY=/bin/sh", 42):
        assert _sanitize_machine_config(junk) == {}


@pytest.mark.django_db
def test_sanitize_config_persists_only_when_changed(django_assert_num_queries):
    machine = Machine.current()
    Machine.objects.filter(pk=machine.pk).update(config={"WGET_BINARY": "wget", "API_TOKEN": "abc"})
    machine.refresh_from_db()
    with django_assert_num_queries(0):
        Machine._sanitize_config(machine)
    Machine.objects.filter(pk=machine.pk).update(config={"WGET_BINARY": "/no/such/wget", "API_TOKEN": "abc"})
    machine.refresh_from_db()
    with django_assert_num_queries(1):
        Machine._sanitize_config(machine)
    assert Machine.objects.get(pk=machine.pk).config == {"API_TOKEN": "abc"} == machine.config


@pytest.mark.django_db
def test_to_json_and_from_json():
    machine = Machine.current()
    record = machine.to_json()
    assert record["type"] == "Machine" and record["id"] == str(machine.id) and record["guid"] == machine.guid
    assert "schema_version" in record
    json.dumps(record)
    updated = Machine.from_json({"type": "Machine", "config": {"GIT_BINARY": "git", "PASSWORD": "x"}})
    assert updated.pk == machine.pk and updated.config == {"GIT_BINARY": "git", "PASSWORD": "x"}
    assert Machine.objects.get(pk=machine.pk).config == {"GIT_BINARY": "git", "PASSWORD": "x"}
    assert updated.to_json()["config"] == {"GIT_BINARY": "git", "PASSWORD": "********"}
    assert Machine.from_json({"type": "Machine"}) is None
    assert Machine.from_json({"type": "Machine", "config": {"YTDLP_BINARY": "/no/such/yt-dlp"}}) is None
    assert Machine.from_json("not a dict") is None


def _fake_network(**changes):
    base = {
        "mac_address": "02:00:00:00:00:01",
        "ip_public": "",
        "ip_local": "10.1.2.3",
        "dns_server": "10.1.2.1",
        "hostname": "h",
        "iface": "eth0",
        "isp": "",
        "city": "",
        "region": "",
        "country": "",
    }
    base.update(changes)
    return lambda public_lookups=True, timeout=2.0: dict(base)


@pytest.mark.django_db
def test_interface_cached_then_refreshed_and_new_fingerprint_new_row(monkeypatch, django_assert_num_queries):
    monkeypatch.setattr(mm, "get_host_network", _fake_network())
    first = NetworkInterface.current()
    assert first.ip_public is None and first.machine == Machine.current()
    with django_assert_num_queries(0):
        assert NetworkInterface.current() is first
    # same fingerprint on refresh: same row, details updated
    monkeypatch.setattr(mm, "get_host_network", _fake_network(isp="Example ISP"))
    again = NetworkInterface.current(refresh=True)
    assert again.pk == first.pk and again.isp == "Example ISP"
    # changed fingerprint: a new row
    monkeypatch.setattr(mm, "get_host_network", _fake_network(ip_local="10.9.9.9"))
    moved = NetworkInterface.current(refresh=True)
    assert moved.pk != first.pk
    assert NetworkInterface.objects.count() == 2


@pytest.mark.django_db
def test_interface_recheck_after_interval(monkeypatch):
    monkeypatch.setattr(mm, "get_host_network", _fake_network())
    first = NetworkInterface.current()
    first.modified_at = timezone.now() - timedelta(seconds=mm.NETWORK_INTERFACE_RECHECK_INTERVAL + 1)
    calls = []
    monkeypatch.setattr(mm, "get_host_network", lambda **kw: calls.append(kw) or _fake_network()())
    assert NetworkInterface.current().pk == first.pk
    assert len(calls) == 1


@pytest.mark.django_db
def test_interface_lookups_follow_the_setting(monkeypatch, settings):
    calls = []
    monkeypatch.setattr(
        mm, "get_host_network", lambda *args, **kw: calls.append((args, kw)) or _fake_network()()
    )
    NetworkInterface.current()
    assert calls == [((), {})]  # no arguments: the detection reads its options itself
    seen = []
    monkeypatch.setattr(detect, "_public_lookup", lambda deadline: seen.append(deadline) or {})
    settings.MACHINE_PUBLIC_IP_LOOKUP = False
    detect.get_host_network()
    assert seen == []
    settings.MACHINE_PUBLIC_IP_LOOKUP = True
    settings.MACHINE_DETECT_TIMEOUT = 1.5
    assert detect._lookup_options() == (True, 1.5)
    detect.get_host_network()
    assert len(seen) == 1


@pytest.mark.django_db
def test_interface_offline_with_real_lookups_is_bounded(settings):
    settings.MACHINE_PUBLIC_IP_LOOKUP = True
    started = time.monotonic()
    interface = NetworkInterface.current()
    assert time.monotonic() - started < 3.0
    assert interface.ip_local and interface.mac_address


@pytest.mark.django_db
def test_interface_to_json():
    record = NetworkInterface.current().to_json()
    assert record["type"] == "NetworkInterface" and record["machine_id"] == str(Machine.current().id)
    json.dumps(record)


@pytest.mark.django_db
def test_machine_command_table_and_json(capsys):
    call_command("machine")
    out = capsys.readouterr().out
    assert "Machine" in out and Machine.current().guid in out and "local ip" in out
    call_command("machine", "--json")
    lines = capsys.readouterr().out.strip().splitlines()
    records = [json.loads(line) for line in lines]
    assert [r["type"] for r in records] == ["Machine", "NetworkInterface"]


@pytest.mark.django_db
def test_binary_str_and_valid_lookup():
    machine = Machine.current()
    Binary.objects.create(machine=machine, name="git", abspath="", version="")
    newest = Binary.objects.create(
        machine=machine, name="git", abspath="/usr/bin/git", version="2.39.5", binprovider="env"
    )
    assert str(newest) == "git@env+/usr/bin/git@2.39.5"
    assert Binary.objects.get_valid_binary("GIT") == newest
    assert Binary.objects.get_valid_binary("nope") is None


@pytest.mark.django_db
def test_primary_keys_are_time_ordered_uuid7():
    machine = Machine.current()
    first = Binary.objects.create(machine=machine, name="a")
    second = Binary.objects.create(machine=machine, name="b")
    assert machine.id.version == first.id.version == 7
    assert first.id < second.id and first.created_at <= second.created_at
