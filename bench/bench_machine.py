"""Machine.current() warm/cold and NetworkInterface.current() offline; prints JSON.

Baseline (same run): the query the original does on every warm call, a lookup of the row by guid.
"""

from __future__ import annotations

import json
import time

from common import per_call, setup_django


def main() -> None:
    vendor = setup_django()
    import machine.models as mm
    from machine.conf import machine_settings
    from machine.models import Machine, NetworkInterface

    machine = Machine.current()

    def cold():
        mm._CURRENT_MACHINE = None
        Machine.current()

    warm_s = per_call(Machine.current, 20000)
    cold_s = per_call(cold, 300)
    baseline_s = per_call(lambda: Machine.objects.get(guid=machine.guid), 2000)

    started = time.perf_counter()
    NetworkInterface.current(refresh=True)
    iface_offline_s = time.perf_counter() - started
    with override_lookup(True):
        started = time.perf_counter()
        NetworkInterface.current(refresh=True)
        iface_with_lookup_s = time.perf_counter() - started

    print(
        json.dumps(
            {
                "benchmark": "machine_current",
                "database": vendor,
                "machine_current_warm_us": round(warm_s * 1e6, 3),
                "machine_current_cold_ms": round(cold_s * 1e3, 3),
                "baseline_query_per_call_ms": round(baseline_s * 1e3, 3),
                "warm_vs_query_ratio": round(warm_s / baseline_s, 4),
                "network_interface_current_lookups_off_s": round(iface_offline_s, 3),
                "network_interface_current_lookups_on_offline_s": round(iface_with_lookup_s, 3),
                "public_ip_lookup_default": bool(machine_settings.PUBLIC_IP_LOOKUP),
            },
            indent=2,
        )
    )


class override_lookup:
    """Turn the public-IP lookup on or off for a block (env var read by machine_settings)."""

    def __init__(self, value: bool):
        self.value = value

    def __enter__(self):
        import os

        self.old = os.environ.get("MACHINE_PUBLIC_IP_LOOKUP")
        os.environ["MACHINE_PUBLIC_IP_LOOKUP"] = "1" if self.value else "0"

    def __exit__(self, *exc):
        import os

        if self.old is None:
            os.environ.pop("MACHINE_PUBLIC_IP_LOOKUP", None)
        else:
            os.environ["MACHINE_PUBLIC_IP_LOOKUP"] = self.old


if __name__ == "__main__":
    main()
