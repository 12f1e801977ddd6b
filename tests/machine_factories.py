"""Rows the tests need for hosts other than this one."""

from __future__ import annotations

#: The host facts a Machine row requires (as in the original); detection fills them for this host.
HOST_FACTS = (
    "hostname",
    "hw_manufacturer",
    "hw_product",
    "hw_uuid",
    "os_arch",
    "os_family",
    "os_platform",
    "os_release",
    "os_kernel",
)


def make_machine(guid: str, **facts):
    """Another host's Machine row: hostname = guid, the other facts '' unless given."""
    from machine.models import Machine

    values = {name: "" for name in HOST_FACTS}
    values["hostname"] = guid[:63]
    values.update(facts)
    return Machine.objects.create(guid=guid, **values)
