"""Pure host-fact detection: who is this host, what is it running on, how is it connected.

Nothing here touches the ORM, and nothing raises for a missing or unreadable fact: every value has a
documented fallback ('' for unknown strings, False for unknown flags). The only outside calls
(optional public-IP / geo web lookups) run in a daemon thread under a hard deadline. The one setting
read here is how `get_host_network()` may look outside (MACHINE_PUBLIC_IP_LOOKUP and
MACHINE_DETECT_TIMEOUT), so that callers can call it without arguments, as the original's do.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import platform
import queue
import socket
import threading
import time
import urllib.request

import psutil

#: MAC reported when the chosen interface has no link-layer address (or there is no interface).
NULL_MAC = "00:00:00:00:00:00"
#: Local IP reported when neither the interface nor the routing table yields one.
FALLBACK_IP_LOCAL = "127.0.0.1"
#: DNS server reported when no resolver configuration names one (as the original does).
FALLBACK_DNS_SERVER = "127.0.0.1"

# A benchmarking-range address (RFC 2544) that is never routed on the internet. connect() on a UDP
# socket only asks the kernel which source address it *would* use; no packet is sent.
_ROUTE_PROBE_ADDR = ("198.18.0.1", 9)
_IPINFO_URL = "https://ipinfo.io/json"  # ip + org (ISP) + city/region/country in one call
_IPIFY_URL = "https://api.ipify.org"  # plain-text IP, used only when ipinfo gave none
_MAX_RESPONSE_BYTES = 64 * 1024

# Substrings of DMI sys_vendor / product_name (lower-cased) that mean "this is a virtual machine".
_VM_MARKERS = (
    "kvm",
    "qemu",
    "vmware",
    "virtualbox",
    "innotek",
    "xen",
    "bochs",
    "parallels",
    "virtual machine",  # Hyper-V; not "Microsoft Corporation" alone, which Surface laptops report too
    "google compute engine",
    "openstack",
    "bhyve",
    "cloud hypervisor",
    "firecracker",
)
# Bare-metal cloud hosts (e.g. EC2 *.metal) report the cloud's vendor too, so vendor alone is not
# enough there; the CPU 'hypervisor' flag below covers the virtualised instances.
# Path fragments in /proc/1/cgroup or the root mount that only appear inside a container.
_CONTAINER_MARKERS = ("docker", "kubepods", "containerd", "libpod", "podman", "lxc", "/containers/")


def unknown_if_blank(value: object) -> str:
    """`value` as stripped text, or "Unknown" when that is empty (the original's helper for API fields).

    (This module's own detection reports an unknown fact as '' instead: see the module docstring.)
    """
    return str(value or "").strip() or "Unknown"


def _read_text(path: str) -> str:
    """Return the stripped text of a file, or '' if it is missing, unreadable or a directory."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read().strip()
    except (OSError, ValueError):
        return ""


def _read_machine_id() -> str:
    # systemd writes /etc/machine-id; older D-Bus setups only have the second path.
    return _read_text("/etc/machine-id") or _read_text("/var/lib/dbus/machine-id")


def _read_product_uuid() -> str:
    # Usually root-only (mode 0400), so it is readable by some processes on a host and not others.
    return _read_text("/sys/class/dmi/id/product_uuid")


def _permanent_mac() -> str:
    """MAC of the first (by name) physical NIC whose address is burned in, else ''."""
    # addr_assign_type 0 = NET_ADDR_PERM. Randomised (1) or user-set (3) MACs, e.g. Wi-Fi privacy
    # addresses, change between connections and would make the guid flap.
    base = "/sys/class/net"
    try:
        names = sorted(os.listdir(base))
    except OSError:
        return ""
    for name in names:
        if not os.path.exists(os.path.join(base, name, "device")):
            continue  # virtual: lo, bridges, veth, docker0, ifb...
        if _read_text(os.path.join(base, name, "addr_assign_type")) != "0":
            continue
        mac = _read_text(os.path.join(base, name, "address")).lower()
        if mac and mac != NULL_MAC:
            return mac
    return ""


def _guid_mac() -> str:
    # No physical NIC (containers, macOS, Windows): fall back to the default interface's current MAC.
    mac = _permanent_mac() or _iface_mac(_default_iface())
    return "" if mac == NULL_MAC else mac


def get_host_guid() -> str:
    """Return a stable 32-hex-char identity for this host (never raises).

    Recipe: sha256 over "machine-id=<id>\nproduct_uuid=<uuid>\nmac=<mac>", first 32 hex chars.

    - machine-id: /etc/machine-id, else /var/lib/dbus/machine-id (world-readable, per install).
    - product_uuid: DMI /sys/class/dmi/id/product_uuid, used ONLY when there is no machine-id:
      it is root-only on most hosts, so always mixing it in would give root and non-root
      processes on the same host different guids.
    - mac: the burned-in MAC of the first physical NIC (by name), else the default-route
      interface's MAC. It separates VMs/containers cloned with the same machine-id; a container
      that gets a fresh MAC on re-creation therefore counts as a new host.
    - If all three are empty, the hostname is hashed instead, so the result is still a
      fixed-length hex string and never the bare hostname.
    """
    machine_id = _read_machine_id()
    product_uuid = "" if machine_id else _read_product_uuid().lower()
    mac = _guid_mac()
    if not (machine_id or product_uuid or mac):
        return hashlib.sha256(f"hostname={socket.gethostname()}".encode()).hexdigest()[:32]
    recipe = f"machine-id={machine_id}\nproduct_uuid={product_uuid}\nmac={mac}"
    return hashlib.sha256(recipe.encode()).hexdigest()[:32]


def get_boot_id() -> str:
    """This boot's random id (changes at every boot; shared by every PID namespace of the host); '' if unknown."""
    return _read_text("/proc/sys/kernel/random/boot_id")[:36]


def get_pid_namespace() -> str:
    """This process's PID namespace, e.g. 'pid:[4026531836]' (pids mean something only inside it); '' if unknown."""
    try:
        return os.readlink("/proc/self/ns/pid")[:64]
    except OSError:
        return ""


def _os_release_name() -> str:
    system = platform.system()
    if system == "Linux":
        try:
            info = platform.freedesktop_os_release()
        except OSError:
            return platform.release()
        return info.get("PRETTY_NAME") or " ".join(filter(None, (info.get("NAME"), info.get("VERSION_ID"))))
    if system == "Darwin":
        return f"macOS {platform.mac_ver()[0]}".strip()
    return f"{system} {platform.release()} {platform.version()}".strip()


def get_os_info() -> dict:
    """Return hostname and OS facts: os_family is platform.system() lower-cased ('linux', 'darwin')."""
    uname = platform.uname()
    return {
        "hostname": socket.gethostname(),
        "os_arch": uname.machine,  # 'x86_64', 'arm64', ...
        "os_family": uname.system.lower(),
        "os_platform": platform.platform(),  # 'Linux-6.1.0-18-amd64-x86_64-with-glibc2.36'
        "os_release": _os_release_name(),  # distribution / product: 'Debian GNU/Linux 12 (bookworm)'
        "os_kernel": uname.release,  # kernel release: '6.1.0-18-amd64', Darwin '23.4.0'
    }


def _in_container() -> bool:
    if os.path.exists("/.dockerenv") or os.path.exists("/run/.containerenv"):  # docker / podman
        return True
    # cgroup v1 paths name the runtime; under cgroup v2 they are just "0::/", but the root mount
    # of an overlay-backed container still points into the runtime's storage directory.
    root_mounts = [line for line in _read_text("/proc/self/mountinfo").splitlines() if " / / " in line]
    hints = (_read_text("/proc/1/cgroup") + "\n" + "\n".join(root_mounts)).lower()
    return any(marker in hints for marker in _CONTAINER_MARKERS)


def get_vm_info() -> dict:
    """Return container/VM flags and DMI hardware facts; unknown strings are '', flags False."""
    # DMI is Linux-only (and absent in many containers); other systems get '' for the strings.
    manufacturer = _read_text("/sys/class/dmi/id/sys_vendor")
    product = _read_text("/sys/class/dmi/id/product_name")
    dmi = f"{manufacturer} {product}".lower()
    # The CPU 'hypervisor' flag is set by every mainstream hypervisor and survives into containers.
    cpu_flags = next(
        (line for line in _read_text("/proc/cpuinfo").splitlines() if line.startswith("flags")), ""
    )
    return {
        "hw_in_docker": _in_container(),  # any OCI/LXC container, not just Docker
        "hw_in_vm": any(m in dmi for m in _VM_MARKERS) or "hypervisor" in cpu_flags.split(),
        "hw_manufacturer": manufacturer,
        "hw_product": product,
        "hw_uuid": _read_product_uuid().lower(),  # '' unless readable (usually root-only)
    }


def _route_source_ip() -> str:
    """Source IPv4 the kernel would use for an off-link destination, or ''."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(_ROUTE_PROBE_ADDR)
            return s.getsockname()[0]
    except OSError:
        return ""


def _default_iface() -> str:
    """Interface of the default route, else the first non-loopback up interface, else ''."""
    best = None  # (metric, iface)
    for line in _read_text("/proc/net/route").splitlines()[1:]:
        fields = line.split()
        # Iface Destination Gateway Flags RefCnt Use Metric ...; Flags 0x1 = RTF_UP.
        if len(fields) > 6 and fields[1] == "00000000" and int(fields[3], 16) & 0x1:
            if best is None or int(fields[6]) < best[0]:
                best = (int(fields[6]), fields[0])
    if best:
        return best[1]
    try:
        addrs = psutil.net_if_addrs()
        stats = psutil.net_if_stats()
    except (OSError, RuntimeError):
        return ""
    # No /proc (macOS, Windows): the interface holding the routed source address is the default one.
    source_ip = _route_source_ip()
    for name, entries in addrs.items():
        if source_ip and any(a.family == socket.AF_INET and a.address == source_ip for a in entries):
            return name
    up = [n for n, st in stats.items() if st.isup and "loopback" not in st.flags and not n.startswith("lo")]
    return sorted(up)[0] if up else ""


def _iface_addr(iface: str, family: int) -> str:
    try:
        entries = psutil.net_if_addrs().get(iface, [])
    except (OSError, RuntimeError):
        return ""
    return next((a.address for a in entries if a.family == family and a.address), "")


def _iface_mac(iface: str) -> str:
    # psutil.AF_LINK is AF_PACKET on Linux and AF_LINK on BSD/macOS.
    return (_iface_addr(iface, psutil.AF_LINK).lower().replace("-", ":") if iface else "") or NULL_MAC


def _nameservers(path: str) -> list[str]:
    """The valid IP addresses of a resolv.conf's `nameserver` lines, in order (scope ids dropped)."""
    found = []
    for line in _read_text(path).splitlines():
        fields = line.split()
        if len(fields) > 1 and fields[0] == "nameserver":
            # `fe80::1%eth0`: the zone belongs to this host's link, not to the address.
            address = _valid_ip(fields[1].split("%", 1)[0])
            if address:
                found.append(address)
    return found


def _dns_server() -> str:
    """The first nameserver of this host's resolver configuration, or ''."""
    nameservers = _nameservers("/etc/resolv.conf")
    # systemd-resolved's stub (127.0.0.53) says nothing about the network; its upstream list does.
    if nameservers[:1] == ["127.0.0.53"]:
        nameservers = _nameservers("/run/systemd/resolve/resolv.conf") or nameservers
    return nameservers[0] if nameservers else ""


def _fetch(url: str, deadline: float) -> bytes:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise TimeoutError(url)
    # Looked up on the module at call time so tests can patch urllib.request.urlopen.
    with urllib.request.urlopen(url, timeout=remaining) as resp:
        return resp.read(_MAX_RESPONSE_BYTES)


def _valid_ip(text: str) -> str:
    try:
        return str(ipaddress.ip_address(text.strip()))
    except ValueError:
        return ""  # e.g. a captive portal's HTML page


def _public_lookup(deadline: float) -> dict:
    """Public IP, ISP and location from web services; missing parts are ''."""
    result = {"ip_public": "", "isp": "", "city": "", "region": "", "country": ""}
    try:
        data = json.loads(_fetch(_IPINFO_URL, deadline))
        if isinstance(data, dict):
            org = str(data.get("org") or "")
            result.update(
                ip_public=_valid_ip(str(data.get("ip") or "")),
                isp=org.split(" ", 1)[1] if org.startswith("AS") and " " in org else org,  # drop 'AS123 '
                city=str(data.get("city") or ""),
                region=str(data.get("region") or ""),
                country=str(data.get("country") or ""),
            )
    except Exception:
        pass  # any failure of an optional web lookup just means "unknown"
    if not result["ip_public"]:
        try:
            result["ip_public"] = _valid_ip(_fetch(_IPIFY_URL, deadline).decode("ascii", "replace"))
        except Exception:  # noqa: BLE001
            pass
    return result


#: The lookup options used when no Django settings can be read.
DEFAULT_PUBLIC_LOOKUPS = True
DEFAULT_TIMEOUT = 2.0


def _lookup_options() -> tuple[bool, float]:
    """(public lookups on?, timeout) from MACHINE_PUBLIC_IP_LOOKUP / MACHINE_DETECT_TIMEOUT."""
    # Imported here rather than at the top: this module stays importable without Django (hook
    # subprocesses use it bare); the settings are read only when a caller leaves the options to them.
    try:
        from django.core.exceptions import ImproperlyConfigured

        from machine.conf import machine_settings
    except ImportError:
        return DEFAULT_PUBLIC_LOOKUPS, DEFAULT_TIMEOUT
    try:
        return bool(machine_settings.public_ip_lookup), float(machine_settings.DETECT_TIMEOUT)
    except ImproperlyConfigured:  # Django without settings: the documented defaults
        return DEFAULT_PUBLIC_LOOKUPS, DEFAULT_TIMEOUT


def get_host_network(public_lookups: bool | None = None, timeout: float | None = None) -> dict:
    """Return the default interface's facts plus (optionally) public IP/ISP/geo, within `timeout` s.

    Called without arguments (as the models do), the lookup switch and the timeout come from the
    MACHINE_PUBLIC_IP_LOOKUP and MACHINE_DETECT_TIMEOUT settings; an argument overrides its setting.

    Fallbacks: mac_address NULL_MAC ('00:00:00:00:00:00'); ip_local the interface's IPv4, else the
    routed source address, else FALLBACK_IP_LOCAL ('127.0.0.1'); dns_server the first resolver
    nameserver, else FALLBACK_DNS_SERVER ('127.0.0.1'); iface ''; and ip_public, isp, city, region,
    country '' when public lookups are off, a lookup fails, or the deadline passes. '' is stable
    while a host stays offline, and never passes off a private address as a public one.
    """
    configured_lookups, configured_timeout = _lookup_options()
    public_lookups = configured_lookups if public_lookups is None else public_lookups
    timeout = configured_timeout if timeout is None else timeout
    deadline = time.monotonic() + max(timeout, 0.0)
    results: queue.Queue = queue.Queue(maxsize=1)
    if public_lookups:
        # A daemon thread, not an executor: getaddrinfo() ignores socket timeouts, and a hung
        # non-daemon worker would block both this call's return and interpreter exit.
        threading.Thread(
            target=lambda: results.put(_public_lookup(deadline)), name="detect-public-ip", daemon=True
        ).start()

    iface = _default_iface()
    info = {
        "mac_address": _iface_mac(iface),
        "ip_public": "",
        "ip_local": _iface_addr(iface, socket.AF_INET) if iface else "",
        "dns_server": _dns_server() or FALLBACK_DNS_SERVER,
        "hostname": socket.gethostname(),
        "iface": iface,
        "isp": "",
        "city": "",
        "region": "",
        "country": "",
    }
    info["ip_local"] = info["ip_local"] or _route_source_ip() or FALLBACK_IP_LOCAL
    if public_lookups:
        try:
            info.update(results.get(timeout=max(0.0, deadline - time.monotonic())))
        except queue.Empty:
            pass  # the thread finishes (or hangs) on its own; its late result is discarded
    return info


def _safe(fn, default):
    try:
        return fn()
    except (OSError, RuntimeError, AttributeError, psutil.Error):
        return default


def get_host_stats(path: str = "/") -> dict:
    """Return JSON-serialisable CPU/memory/swap/disk(path)/uptime/process stats; unknowns are 0."""
    mem = _safe(psutil.virtual_memory, None)
    swap = _safe(psutil.swap_memory, None)
    disk = _safe(lambda: psutil.disk_usage(path), None)
    boot_time = _safe(psutil.boot_time, 0.0)
    return {
        "cpu_count": _safe(psutil.cpu_count, None) or 0,
        # Non-blocking: busy % since the previous call in this process (first call: since psutil import).
        "cpu_percent": float(_safe(lambda: psutil.cpu_percent(interval=None), 0.0)),
        "load_avg": [round(x, 2) for x in _safe(psutil.getloadavg, (0.0, 0.0, 0.0))],  # 1/5/15 min
        "mem_total": int(mem.total) if mem else 0,
        "mem_available": int(mem.available) if mem else 0,
        "mem_percent": float(mem.percent) if mem else 0.0,
        "swap_total": int(swap.total) if swap else 0,
        "swap_used": int(swap.used) if swap else 0,
        "swap_percent": float(swap.percent) if swap else 0.0,
        "disk_path": path,
        "disk_total": int(disk.total) if disk else 0,
        "disk_free": int(disk.free) if disk else 0,
        "disk_percent": float(disk.percent) if disk else 0.0,
        "boot_time": float(boot_time),  # unix timestamp
        "uptime_seconds": round(max(0.0, time.time() - boot_time), 1) if boot_time else 0.0,
        "num_processes": len(_safe(psutil.pids, [])),
    }
