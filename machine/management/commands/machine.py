"""`manage.py machine`: register this host and show its Machine and NetworkInterface rows."""

from __future__ import annotations

import json

from django.core.management.base import BaseCommand

from machine.models import Machine, NetworkInterface
from workers.console import Console


class Command(BaseCommand):
    help = "Register this host (Machine + NetworkInterface) and print them (-v 0: register only)."

    def add_arguments(self, parser):
        parser.add_argument(
            "--json", action="store_true", help="Print JSONL records only (default: %(default)r)"
        )
        parser.add_argument(
            "--refresh",
            action="store_true",
            help="Re-detect the network interface now (default: %(default)r)",
        )

    def handle(self, *, verbosity, json: bool = False, refresh: bool = False, **options):
        machine = Machine.current()
        interface = NetworkInterface.current(refresh=refresh)
        if json:
            for record in (machine.to_json(), interface.to_json()):
                self.stdout.write(_dumps(record))
            return
        console = Console.for_command(self, "stdout", verbosity, **options)
        console.pairs(_machine_rows(machine), title="Machine")
        console.line()
        console.pairs(_interface_rows(interface), title="Network interface")
        if machine.stats:
            console.line(level=2)
            console.pairs(sorted(machine.stats.items()), title="Host stats", level=2)


def _dumps(record: dict) -> str:
    return json.dumps(record, sort_keys=False, default=str)


def _machine_rows(machine: Machine) -> list[tuple[str, object]]:
    stats = machine.stats or {}
    return [
        ("id", machine.id),
        ("guid", machine.guid),
        ("hostname", machine.hostname),
        ("os", f"{machine.os_release} ({machine.os_family} {machine.os_arch})"),
        ("kernel", machine.os_kernel),
        ("in docker / vm", f"{machine.hw_in_docker} / {machine.hw_in_vm}"),
        ("hardware", " ".join(filter(None, [machine.hw_manufacturer, machine.hw_product])) or "-"),
        ("cpus / load", f"{stats.get('cpu_count', '?')} / {stats.get('load_avg', '?')}"),
        ("memory", f"{stats.get('mem_percent', '?')}% used of {_gib(stats.get('mem_total'))}"),
        ("disk", f"{stats.get('disk_percent', '?')}% used of {_gib(stats.get('disk_total'))}"),
        ("health", f"{machine.health}% ({machine.num_uses_succeeded} ok / {machine.num_uses_failed} failed)"),
        ("config", _dumps(machine.config) if machine.config else "{}"),
    ]


def _interface_rows(interface: NetworkInterface) -> list[tuple[str, object]]:
    place = ", ".join(filter(None, [interface.city, interface.region, interface.country]))
    return [
        ("id", interface.id),
        ("iface", interface.iface or "-"),
        ("mac address", interface.mac_address),
        ("local ip", interface.ip_local),
        ("public ip", interface.ip_public or "unknown (lookup off or unreachable)"),
        ("dns server", interface.dns_server or "-"),
        ("isp", interface.isp or "-"),
        ("location", place or "-"),
    ]


def _gib(value) -> str:
    try:
        return f"{int(value) / 1024**3:.1f} GiB"
    except (TypeError, ValueError):
        return "?"
