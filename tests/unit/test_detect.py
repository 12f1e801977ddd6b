"""Tests for machine.detect on the real host; only unreachable services and odd hosts are faked."""

import io
import ipaddress
import json
import os
import platform
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections import namedtuple
from pathlib import Path

import psutil
import pytest

from machine import detect

WORKTREE = Path(__file__).resolve().parents[2]
NETWORK_KEYS = {
    "mac_address",
    "ip_public",
    "ip_local",
    "dns_server",
    "hostname",
    "iface",
    "isp",
    "city",
    "region",
    "country",
}
PUBLIC_KEYS = ("ip_public", "isp", "city", "region", "country")
FakeAddr = namedtuple("FakeAddr", "family address netmask broadcast ptp")
FakeStats = namedtuple("FakeStats", "isup duplex speed mtu flags")


def _fake_files(monkeypatch, files):
    """Make detect._read_text return `files[path]` for the given paths and read the rest for real."""
    real = detect._read_text
    monkeypatch.setattr(detect, "_read_text", lambda path: files[path] if path in files else real(path))


def _record_urlopen(monkeypatch, response=None):
    """Replace urlopen with a fake that records URLs and returns `response` bytes (or raises)."""
    calls = []

    def fake_urlopen(url, timeout=None):
        calls.append((url, timeout))
        if response is None:
            raise OSError("no network in this test")
        return io.BytesIO(response(url) if callable(response) else response)

    monkeypatch.setattr(urllib.request, "urlopen", fake_urlopen)
    return calls


# --- _read_text --------------------------------------------------------------------------------


def test_read_text_returns_stripped_content(tmp_path):
    path = tmp_path / "f"
    path.write_text("  abc\n")
    assert detect._read_text(str(path)) == "abc"


def test_read_text_unreadable_paths_give_empty_string(tmp_path):
    assert detect._read_text(str(tmp_path / "missing")) == ""
    assert detect._read_text(str(tmp_path)) == ""  # a directory
    binary = tmp_path / "bin"
    binary.write_bytes(b"\xff\xfe\x00ok")
    assert detect._read_text(str(binary)).endswith("ok")  # undecodable bytes are replaced, not raised


# --- get_host_guid -----------------------------------------------------------------------------


def test_guid_is_fixed_length_hex_and_not_the_hostname():
    guid = detect.get_host_guid()
    assert len(guid) == 32
    int(guid, 16)
    assert guid != socket.gethostname()
    assert socket.gethostname() not in guid


def test_guid_is_stable_across_calls_and_processes():
    guid = detect.get_host_guid()
    assert detect.get_host_guid() == guid
    out = subprocess.run(
        [sys.executable, "-c", "from machine.detect import get_host_guid; print(get_host_guid())"],
        cwd=WORKTREE,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert out.stdout.strip() == guid


@pytest.mark.parametrize(
    "machine_id, mac",
    [
        ("0123456789abcdef0123456789abcdef", "02:fc:00:00:00:01"),
        ("fedcba9876543210fedcba9876543210", "02:fc:00:00:00:01"),  # other machine-id, same MAC
        ("0123456789abcdef0123456789abcdef", "52:54:00:12:34:56"),  # cloned machine-id, other MAC
    ],
)
def test_guid_differs_when_identity_sources_differ(monkeypatch, machine_id, mac):
    real_guid = detect.get_host_guid()
    monkeypatch.setattr(detect, "_read_machine_id", lambda: machine_id)
    monkeypatch.setattr(detect, "_guid_mac", lambda: mac)
    other = detect.get_host_guid()
    assert other != real_guid
    assert len(other) == 32
    assert other == detect.get_host_guid()


def test_guid_sources_each_change_the_result(monkeypatch):
    monkeypatch.setattr(detect, "_read_machine_id", lambda: "a" * 32)
    monkeypatch.setattr(detect, "_guid_mac", lambda: "02:00:00:00:00:01")
    first = detect.get_host_guid()
    monkeypatch.setattr(detect, "_read_machine_id", lambda: "b" * 32)
    second = detect.get_host_guid()
    monkeypatch.setattr(detect, "_guid_mac", lambda: "02:00:00:00:00:02")
    third = detect.get_host_guid()
    assert len({first, second, third}) == 3


def test_guid_ignores_product_uuid_when_machine_id_exists(monkeypatch):
    # product_uuid is root-only on most hosts: root and non-root processes must agree on the guid.
    monkeypatch.setattr(detect, "_read_machine_id", lambda: "a" * 32)
    monkeypatch.setattr(detect, "_guid_mac", lambda: "02:00:00:00:00:01")
    monkeypatch.setattr(detect, "_read_product_uuid", lambda: "")
    as_user = detect.get_host_guid()
    monkeypatch.setattr(detect, "_read_product_uuid", lambda: "4C4C4544-0042-3510-8052-B4C04F563432")
    assert detect.get_host_guid() == as_user


def test_guid_uses_product_uuid_without_machine_id(monkeypatch):
    monkeypatch.setattr(detect, "_read_machine_id", lambda: "")
    monkeypatch.setattr(detect, "_guid_mac", lambda: "")
    monkeypatch.setattr(detect, "_read_product_uuid", lambda: "4C4C4544-0042-3510-8052-B4C04F563432")
    one = detect.get_host_guid()
    monkeypatch.setattr(detect, "_read_product_uuid", lambda: "11111111-2222-3333-4444-555555555555")
    assert detect.get_host_guid() != one


def test_guid_without_any_source_hashes_the_hostname(monkeypatch):
    for reader in ("_read_machine_id", "_read_product_uuid", "_guid_mac"):
        monkeypatch.setattr(detect, reader, lambda: "")
    monkeypatch.setattr(socket, "gethostname", lambda: "host-a")
    guid_a = detect.get_host_guid()
    monkeypatch.setattr(socket, "gethostname", lambda: "host-b")
    guid_b = detect.get_host_guid()
    assert len(guid_a) == len(guid_b) == 32
    assert guid_a != guid_b
    assert "host-a" not in guid_a


def test_guid_mac_ignores_null_mac(monkeypatch):
    monkeypatch.setattr(detect, "_permanent_mac", lambda: "")
    monkeypatch.setattr(psutil, "net_if_addrs", lambda: {})
    assert detect._guid_mac() == ""


def test_module_does_not_import_django():
    code = "import sys, machine.detect; print(sorted(m for m in sys.modules if m.split('.')[0] == 'django'))"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=WORKTREE, capture_output=True, text=True, timeout=30, check=True
    )
    assert out.stdout.strip() == "[]"


# --- get_os_info / get_vm_info -----------------------------------------------------------------


def test_os_info_keys_and_types():
    info = detect.get_os_info()
    assert set(info) == {"hostname", "os_arch", "os_family", "os_platform", "os_release", "os_kernel"}
    assert all(isinstance(v, str) for v in info.values())
    assert info["hostname"] == socket.gethostname()
    assert info["os_family"] == platform.system().lower()
    assert info["os_arch"] and info["os_kernel"] and info["os_platform"]


def test_vm_info_keys_and_types():
    info = detect.get_vm_info()
    assert set(info) == {"hw_in_docker", "hw_in_vm", "hw_manufacturer", "hw_product", "hw_uuid"}
    assert isinstance(info["hw_in_docker"], bool) and isinstance(info["hw_in_vm"], bool)
    assert all(isinstance(info[k], str) for k in ("hw_manufacturer", "hw_product", "hw_uuid"))


def test_vm_info_unreadable_sources_give_fallbacks(monkeypatch):
    monkeypatch.setattr(detect, "_read_text", lambda path: "")
    monkeypatch.setattr(os.path, "exists", lambda path: False)
    assert detect.get_vm_info() == {
        "hw_in_docker": False,
        "hw_in_vm": False,
        "hw_manufacturer": "",
        "hw_product": "",
        "hw_uuid": "",
    }


@pytest.mark.parametrize(
    "vendor, product",
    [
        ("QEMU", "Standard PC (Q35 + ICH9, 2009)"),
        ("VMware, Inc.", "VMware7,1"),
        ("innotek GmbH", "VirtualBox"),
        ("Microsoft Corporation", "Virtual Machine"),
        ("Xen", "HVM domU"),
    ],
)
def test_vm_info_detects_hypervisor_vendor(monkeypatch, vendor, product):
    monkeypatch.setattr(
        detect,
        "_read_text",
        lambda path: {
            "/sys/class/dmi/id/sys_vendor": vendor,
            "/sys/class/dmi/id/product_name": product,
        }.get(path, ""),
    )
    info = detect.get_vm_info()
    assert info["hw_in_vm"] is True
    assert (info["hw_manufacturer"], info["hw_product"]) == (vendor, product)


def test_vm_info_bare_metal_is_not_a_vm(monkeypatch):
    monkeypatch.setattr(
        detect,
        "_read_text",
        lambda path: {
            "/sys/class/dmi/id/sys_vendor": "Microsoft Corporation",  # a Surface laptop, not Hyper-V
            "/sys/class/dmi/id/product_name": "Surface Laptop 4",
            "/proc/cpuinfo": "processor\t: 0\nflags\t\t: fpu vme sse sse2 avx2\n",
        }.get(path, ""),
    )
    assert detect.get_vm_info()["hw_in_vm"] is False


def test_vm_info_detects_hypervisor_cpu_flag(monkeypatch):
    monkeypatch.setattr(
        detect,
        "_read_text",
        lambda path: {
            "/proc/cpuinfo": "processor\t: 0\nflags\t\t: fpu vme sse hypervisor avx2\n",
        }.get(path, ""),
    )
    assert detect.get_vm_info()["hw_in_vm"] is True


@pytest.mark.parametrize(
    "cgroup, mountinfo",
    [
        ("12:memory:/docker/3f9a2b1c\n", ""),
        ("0::/kubepods/besteffort/pod1234\n", ""),
        (
            "0::/\n",
            "612 540 0:50 / / rw,relatime - overlay overlay rw,lowerdir=/var/lib/docker/overlay2/l/X\n",
        ),
    ],
)
def test_vm_info_detects_container_hints(monkeypatch, cgroup, mountinfo):
    monkeypatch.setattr(os.path, "exists", lambda path: False)  # no /.dockerenv, /run/.containerenv
    monkeypatch.setattr(
        detect,
        "_read_text",
        lambda path: {
            "/proc/1/cgroup": cgroup,
            "/proc/self/mountinfo": mountinfo,
        }.get(path, ""),
    )
    assert detect.get_vm_info()["hw_in_docker"] is True


# --- get_host_network --------------------------------------------------------------------------


def _assert_network_shape(info):
    assert set(info) == NETWORK_KEYS
    assert all(isinstance(v, str) for v in info.values())
    ipaddress.ip_address(info["ip_local"])
    assert len(info["mac_address"].split(":")) == 6


def test_network_offline_with_public_lookups_is_bounded():
    start = time.monotonic()
    info = detect.get_host_network(public_lookups=True)
    elapsed = time.monotonic() - start
    assert elapsed < 3.0
    _assert_network_shape(info)
    assert info["hostname"] == socket.gethostname()


def test_network_local_facts_match_psutil():
    info = detect.get_host_network(public_lookups=False)
    _assert_network_shape(info)
    if info["iface"]:
        addrs = psutil.net_if_addrs()[info["iface"]]
        macs = [a.address.lower() for a in addrs if a.family == psutil.AF_LINK]
        assert info["mac_address"] in macs or info["mac_address"] == detect.NULL_MAC


def test_network_without_public_lookups_makes_no_web_call(monkeypatch):
    calls = _record_urlopen(monkeypatch)
    info = detect.get_host_network(public_lookups=False)
    time.sleep(0.1)  # a stray background thread would have called by now
    assert calls == []
    assert all(info[k] == "" for k in PUBLIC_KEYS)


def test_network_hanging_web_service_returns_within_timeout(monkeypatch):
    release = threading.Event()

    def hanging_urlopen(url, timeout=None):
        release.wait(10)  # what a stalled DNS lookup or TLS handshake looks like to the caller
        raise OSError("timed out")

    monkeypatch.setattr(urllib.request, "urlopen", hanging_urlopen)
    try:
        start = time.monotonic()
        info = detect.get_host_network(public_lookups=True, timeout=1.0)
        elapsed = time.monotonic() - start
    finally:
        release.set()
    assert elapsed < 1.0 + 0.5
    _assert_network_shape(info)
    assert all(info[k] == "" for k in PUBLIC_KEYS)


def test_network_public_lookup_parses_ipinfo(monkeypatch):
    payload = {
        "ip": "203.0.113.7",
        "city": "Berlin",
        "region": "Berlin",
        "country": "DE",
        "org": "AS3320 Deutsche Telekom AG",
    }
    calls = _record_urlopen(monkeypatch, json.dumps(payload).encode())
    info = detect.get_host_network(public_lookups=True, timeout=2.0)
    assert (info["ip_public"], info["isp"], info["city"], info["region"], info["country"]) == (
        "203.0.113.7",
        "Deutsche Telekom AG",
        "Berlin",
        "Berlin",
        "DE",
    )
    assert [url for url, _ in calls] == [detect._IPINFO_URL]
    assert all(0 < t <= 2.0 for _, t in calls)  # every call carries a timeout within the budget


def test_network_public_lookup_falls_back_to_ipify(monkeypatch):
    responses = {detect._IPINFO_URL: b"<html>captive portal</html>", detect._IPIFY_URL: b"198.51.100.4\n"}
    _record_urlopen(monkeypatch, lambda url: responses[url])
    info = detect.get_host_network(public_lookups=True)
    assert info["ip_public"] == "198.51.100.4"
    assert (info["isp"], info["city"], info["country"]) == ("", "", "")


def test_network_public_lookup_rejects_garbage(monkeypatch):
    _record_urlopen(monkeypatch, b"<html>not an ip</html>")
    assert all(v == "" for k, v in detect.get_host_network().items() if k in PUBLIC_KEYS)


@pytest.mark.parametrize(
    "addrs",
    [
        {},
        {"lo": [FakeAddr(socket.AF_INET, "127.0.0.1", "255.0.0.0", None, None)]},
        {"eth0": [FakeAddr(socket.AF_INET, "192.0.2.2", "255.255.255.0", None, None)]},  # IP but no MAC
    ],
)
def test_network_host_without_mac_gives_null_mac(monkeypatch, addrs):
    monkeypatch.setattr(psutil, "net_if_addrs", lambda: addrs)
    info = detect.get_host_network(public_lookups=False)
    assert info["mac_address"] == detect.NULL_MAC == "00:00:00:00:00:00"
    _assert_network_shape(info)


def test_network_host_without_any_interface_uses_fallbacks(monkeypatch):
    _fake_files(monkeypatch, {"/proc/net/route": "", "/etc/resolv.conf": ""})
    monkeypatch.setattr(psutil, "net_if_addrs", lambda: {})
    monkeypatch.setattr(psutil, "net_if_stats", lambda: {})
    monkeypatch.setattr(detect, "_route_source_ip", lambda: "")
    info = detect.get_host_network(public_lookups=False)
    assert info == {
        "mac_address": "00:00:00:00:00:00",
        "ip_public": "",
        "ip_local": "127.0.0.1",
        "dns_server": "127.0.0.1",
        "hostname": socket.gethostname(),
        "iface": "",
        "isp": "",
        "city": "",
        "region": "",
        "country": "",
    }


def test_default_iface_prefers_lowest_metric_default_route(monkeypatch):
    route = (
        "Iface\tDestination\tGateway\tFlags\tRefCnt\tUse\tMetric\tMask\tMTU\tWindow\tIRTT\n"
        "wlan0\t00000000\t0101A8C0\t0003\t0\t0\t600\t00000000\t0\t0\t0\n"
        "eth1\t00000000\t0100A8C0\t0003\t0\t0\t100\t00000000\t0\t0\t0\n"
        "eth9\t00000000\t0100A8C0\t0002\t0\t0\t1\t00000000\t0\t0\t0\n"  # not RTF_UP
        "eth1\t0000A8C0\t00000000\t0001\t0\t0\t100\t00FFFFFF\t0\t0\t0\n"
    )
    _fake_files(monkeypatch, {"/proc/net/route": route})
    assert detect._default_iface() == "eth1"


def test_default_iface_without_route_table_uses_first_up_non_loopback(monkeypatch):
    _fake_files(monkeypatch, {"/proc/net/route": ""})
    monkeypatch.setattr(detect, "_route_source_ip", lambda: "")
    monkeypatch.setattr(psutil, "net_if_addrs", lambda: {})
    monkeypatch.setattr(
        psutil,
        "net_if_stats",
        lambda: {
            "lo": FakeStats(True, 0, 0, 65536, "up,loopback,running"),
            "wlan0": FakeStats(True, 0, 0, 1500, "up,broadcast,running"),
            "eth0": FakeStats(False, 0, 0, 1500, "broadcast"),
            "enp3s0": FakeStats(True, 0, 0, 1500, "up,broadcast,running"),
        },
    )
    assert detect._default_iface() == "enp3s0"


@pytest.mark.parametrize(
    "files, expected",
    [
        (
            {"/etc/resolv.conf": "# comment\nsearch lan\nnameserver 192.168.1.1\nnameserver 1.1.1.1\n"},
            "192.168.1.1",
        ),
        (
            {
                "/etc/resolv.conf": "nameserver 127.0.0.53\n",
                "/run/systemd/resolve/resolv.conf": "nameserver 10.0.0.1\n",
            },
            "10.0.0.1",
        ),
        (
            {"/etc/resolv.conf": "nameserver 127.0.0.53\n", "/run/systemd/resolve/resolv.conf": ""},
            "127.0.0.53",
        ),
        ({"/etc/resolv.conf": "nameserver\n"}, ""),
        ({"/etc/resolv.conf": "nameserver not-an-ip\nnameserver fe80::1%eth0\n"}, "fe80::1"),
        ({"/etc/resolv.conf": ""}, ""),
    ],
)
def test_dns_server_from_resolv_conf(monkeypatch, files, expected):
    _fake_files(monkeypatch, files)
    assert detect._dns_server() == expected


# --- get_host_stats ----------------------------------------------------------------------------


def test_stats_are_json_serialisable_and_sane():
    stats = detect.get_host_stats()
    assert json.loads(json.dumps(stats)) == stats
    assert stats["cpu_count"] >= 1
    assert 0.0 <= stats["cpu_percent"] <= 100.0
    assert len(stats["load_avg"]) == 3 and all(x >= 0 for x in stats["load_avg"])
    assert 0 < stats["mem_available"] <= stats["mem_total"]
    assert 0.0 <= stats["mem_percent"] <= 100.0
    assert 0 <= stats["swap_used"] <= stats["swap_total"] or stats["swap_total"] == 0
    assert stats["disk_path"] == "/"
    assert 0 < stats["disk_free"] <= stats["disk_total"]
    assert 0.0 <= stats["disk_percent"] <= 100.0
    assert 0 < stats["boot_time"] < time.time()
    assert stats["uptime_seconds"] > 0
    assert stats["num_processes"] >= 1


def test_stats_for_given_and_missing_path(tmp_path):
    assert detect.get_host_stats(str(tmp_path))["disk_total"] > 0
    missing = detect.get_host_stats(str(tmp_path / "nope"))
    assert (missing["disk_total"], missing["disk_free"], missing["disk_percent"]) == (0, 0, 0.0)
    json.dumps(missing)
