"""machine.models.Machine, NetworkInterface and the module helpers against the original (issue 9, item 3).

Each test states the original's behaviour; where ours deliberately differs, the docstring names the
row of docs/compatibility.md ("## machine.models") that says why, and the test asserts ours.
"""

from __future__ import annotations

import inspect
import os

import pytest
from django.db import IntegrityError, transaction
from django.db.models import GenericIPAddressField

import machine.models as mm
from machine import detect
from machine.models import Machine, NetworkInterface, Process, _sanitize_machine_config

pytestmark = pytest.mark.django_db

HOST_FACTS = (
    "hostname", "hw_manufacturer", "hw_product", "hw_uuid",
    "os_arch", "os_family", "os_platform", "os_release", "os_kernel",
)  # fmt: skip


# -- 14. fields ------------------------------------------------------------------------------------


def test_machine_host_facts_are_required():
    """Original: guid, hostname, hw_manufacturer, hw_product, hw_uuid and os_* are CharFields with
    default=None, null=False (no blank): a row cannot be saved without them. Detection always
    supplies a value. stats and config are JSONField(default=dict, null=True, blank=True)."""
    for name in ("guid", *HOST_FACTS):
        field = Machine._meta.get_field(name)
        assert (field.default, field.null, field.blank) == (None, False, False), name
    for name in ("stats", "config"):
        field = Machine._meta.get_field(name)
        assert (field.default, field.null, field.blank) == (dict, True, True), name
    assert Machine._meta.get_field("config").help_text == "Machine-specific config overrides."
    with pytest.raises(IntegrityError), transaction.atomic():
        Machine.objects.create(guid="half-described-host")
    machine = Machine.current()
    assert all(isinstance(getattr(machine, name), str) for name in HOST_FACTS)


def test_machine_detection_always_supplies_every_fact(monkeypatch):
    """Original: current() creates the row from get_os_info() and get_vm_info(). Ours: a fact the
    detection leaves out (or reports as None) is stored as '', never NULL."""
    monkeypatch.setattr(mm, "get_vm_info", lambda: {"hw_in_docker": False, "hw_manufacturer": None})
    machine = Machine.current()
    assert (machine.hw_manufacturer, machine.hw_product, machine.hw_uuid) == ("", "", "")


def test_network_interface_fields():
    """Original: dns_server is a GenericIPAddressField(default=None, null=False) like ip_local;
    mac_address default=None (required); hostname, iface, isp, city, region, country default "".
    Ours keeps ip_public nullable (row "NetworkInterface.ip_public")."""
    field = NetworkInterface._meta.get_field
    assert isinstance(field("dns_server"), GenericIPAddressField)
    for name in ("dns_server", "ip_local", "mac_address"):
        assert (field(name).default, field(name).null) == (None, False), name
    assert field("ip_public").null is True
    interface = NetworkInterface.objects.create(
        machine=Machine.current(), mac_address="00:00:00:00:00:01", ip_public="127.0.0.1",
        ip_local="127.0.0.1", dns_server="127.0.0.1",
    )  # fmt: skip
    interface.refresh_from_db()
    assert [getattr(interface, n) for n in ("hostname", "iface", "isp", "city", "region", "country")] == [
        ""
    ] * 6


def test_dns_server_falls_back_to_127_0_0_1(monkeypatch):
    """Original: dns_server comes from `dig`, else the first resolv.conf nameserver, else "127.0.0.1"."""
    monkeypatch.setattr(detect, "_dns_server", lambda: "")
    assert detect.get_host_network(public_lookups=False)["dns_server"] == "127.0.0.1"
    assert NetworkInterface.current(refresh=True).dns_server == "127.0.0.1"


# -- 21. config sanitising, current(refresh), save(), current_readonly() ---------------------------


def test_sanitize_machine_config_rules(tmp_path):
    """Original: _sanitize_machine_config(config, *, lib_dir=None) examines only `*_BINARY` keys with a
    str value: blank -> dropped; path-like (contains `/` or starts with `~`) that does not exist ->
    dropped; outside lib_dir when given -> dropped; a bare command name is kept; non-str values are
    kept. Every other key passes untouched; kept values keep their original text; not a dict -> {}."""
    lib = tmp_path / "lib"
    inside = lib / "bin" / "wget"
    inside.parent.mkdir(parents=True)
    inside.write_text("")
    outside = tmp_path / "node"
    outside.write_text("")
    config = {
        "WGET_BINARY": f" {inside} ", "NODE_BINARY": str(outside), "CURL_BINARY": "curl",
        "YTDLP_BINARY": "  ", "CHROME_BINARY": str(tmp_path / "missing"), "GIT_BINARY": ["git"],
        "CHROME_USER_DATA_DIR": "/no/such/profile", "CHROMIUM_VERSION": "123.4.5",
        "ABX_INSTALL_CACHE": {"wget": "2026-03-24"},
    }  # fmt: skip
    common = {
        "WGET_BINARY": f" {inside} ", "CURL_BINARY": "curl", "GIT_BINARY": ["git"],
        "CHROME_USER_DATA_DIR": "/no/such/profile", "CHROMIUM_VERSION": "123.4.5",
        "ABX_INSTALL_CACHE": {"wget": "2026-03-24"},
    }  # fmt: skip
    assert _sanitize_machine_config(config) == {**common, "NODE_BINARY": str(outside)}
    assert _sanitize_machine_config(config, lib_dir=lib) == common
    assert _sanitize_machine_config(config, lib_dir=str(lib)) == common
    assert config["YTDLP_BINARY"] == "  "  # the input is not changed
    assert _sanitize_machine_config(None) == {} and _sanitize_machine_config(["x"]) == {}
    assert list(inspect.signature(_sanitize_machine_config).parameters) == ["config", "lib_dir"]


def test_current_sanitizes_the_config_on_the_warm_path_without_a_query(
    tmp_path, settings, django_assert_num_queries
):
    """Original: Machine.current() passes the config through _sanitize_machine_config with the lib dir
    (and saves it when that changed it), re-reading the row when the cache was dropped.

    Ours: the warm call (no query) re-checks the `*_BINARY` paths on disk too; a change costs one
    UPDATE, and the next warm call is query-free again.
    """
    settings.MACHINE_LIB_DIR = tmp_path / "lib"
    binary = tmp_path / "lib" / "bin" / "wget"
    binary.parent.mkdir(parents=True)
    binary.write_text("")
    machine = Machine.current()
    Machine.objects.filter(pk=machine.pk).update(config={"WGET_BINARY": str(binary), "TIMEOUT": 60})
    machine = Machine.current(refresh=True)
    assert machine.config == {"WGET_BINARY": str(binary), "TIMEOUT": 60}
    with django_assert_num_queries(0):
        assert Machine.current() is machine
    binary.unlink()
    with django_assert_num_queries(1):
        assert Machine.current() is machine
    assert machine.config == {"TIMEOUT": 60} == Machine.objects.get(pk=machine.pk).config
    with django_assert_num_queries(0):
        assert Machine.current().config == {"TIMEOUT": 60}


def test_current_refresh_rereads_the_row():
    """Original: current(refresh: bool = False); refresh=True drops the cached row first."""
    assert inspect.signature(Machine.current).parameters["refresh"].default is False
    cached = Machine.current()
    Machine.objects.filter(pk=cached.pk).update(hostname="renamed-elsewhere")
    assert Machine.current() is cached and cached.hostname != "renamed-elsewhere"
    fresh = Machine.current(refresh=True)
    assert fresh is not cached and fresh.pk == cached.pk and fresh.hostname == "renamed-elsewhere"
    assert Machine.current() is fresh


def test_save_heals_json_quoted_config_strings_and_keeps_the_cache_in_step():
    """Original: Machine.save() passes config through normalize_config_json_values (a JSON-quoted
    string is unquoted; "config" is added to update_fields when that changed it). The newest
    original copies the saved fields into the cached row."""
    cached = Machine.current()
    other = Machine.objects.get(pk=cached.pk)
    other.config = {"USER_AGENT": '"ArchiveBox \\"Quoted\\" Agent"', "EXTRA": 'prefix "inner" suffix'}
    other.hostname = "renamed"
    other.save(update_fields=["hostname"])
    stored = Machine.objects.get(pk=cached.pk)
    assert stored.config == {"USER_AGENT": 'ArchiveBox "Quoted" Agent', "EXTRA": 'prefix "inner" suffix'}
    assert (cached.config, cached.hostname) == (stored.config, "renamed")


def test_current_readonly_never_writes(django_assert_num_queries):
    """Original (newest): Machine.current_readonly() is the cache, else the row of this host's guid, else
    None: it never creates, refreshes or writes. Process.current_readonly() is the cached row when
    its pid is ours, else None, without touching the database."""
    assert Machine.current_readonly() is None and Machine.objects.count() == 0
    machine = Machine.current()
    mm._CURRENT_MACHINE = None
    with django_assert_num_queries(1):
        assert Machine.current_readonly() == machine
    with django_assert_num_queries(0):
        assert Process.current_readonly() is None
        mm._CURRENT_MACHINE = machine
        assert Machine.current_readonly() is machine
    me = Process.current()
    with django_assert_num_queries(0):
        assert Process.current_readonly() is me
    mm._CURRENT_PROCESS = Process(pid=os.getpid() + 1)
    assert Process.current_readonly() is None


# -- 23. NetworkInterface.current() ----------------------------------------------------------------


def test_network_interface_current_calls_get_host_network_without_arguments(monkeypatch):
    """Original: NetworkInterface.current() calls get_host_network() with no arguments (the lookup
    options are read inside detection), so a zero-argument fake can stand in for it."""

    def fake():
        return {
            "mac_address": "02:00:00:00:00:07", "ip_public": "", "ip_local": "10.7.7.7", "dns_server": "",
            "hostname": "h", "iface": "eth7", "isp": "", "city": "", "region": "", "country": "",
        }  # fmt: skip

    monkeypatch.setattr(mm, "get_host_network", fake)
    interface = NetworkInterface.current()
    assert (interface.ip_local, interface.dns_server, interface.iface) == ("10.7.7.7", "127.0.0.1", "eth7")
