"""Before dns_server becomes an IP address column (0004): every stored value must be one.

A migration of its own: on PostgreSQL, rows written in a transaction leave deferred foreign-key
checks pending, and the same transaction may then not ALTER the table.
"""

import ipaddress

from django.db import migrations

#: What detection records when no resolver names a DNS server (machine.detect.FALLBACK_DNS_SERVER).
FALLBACK_DNS_SERVER = "127.0.0.1"


def _valid_ip(text):
    try:
        return str(ipaddress.ip_address((text or "").split("%", 1)[0].strip()))
    except ValueError:
        return ""


def dns_servers_to_ip_addresses(apps, schema_editor):
    """dns_server becomes an IP address column: '' (none found) and non-addresses become 127.0.0.1.

    A row that then has the same fingerprint as another row of its machine is merged into it (its
    processes point at the other row), so the unique fingerprint holds.
    """
    NetworkInterface = apps.get_model("machine", "NetworkInterface")
    Process = apps.get_model("machine", "Process")
    for row in NetworkInterface.objects.order_by("created_at"):
        value = _valid_ip(row.dns_server) or FALLBACK_DNS_SERVER
        if value == row.dns_server:
            continue
        twin = (
            NetworkInterface.objects.filter(
                machine_id=row.machine_id,
                ip_public=row.ip_public,
                ip_local=row.ip_local,
                mac_address=row.mac_address,
                dns_server=value,
            )
            .exclude(pk=row.pk)
            .first()
        )
        if twin is not None:
            Process.objects.filter(iface_id=row.pk).update(iface_id=twin.pk)
            row.delete()
        else:
            NetworkInterface.objects.filter(pk=row.pk).update(dns_server=value)



class Migration(migrations.Migration):
    dependencies = [
        ("machine", "0002_compat_status_length"),
    ]

    operations = [
        migrations.RunPython(dns_servers_to_ip_addresses, migrations.RunPython.noop),
    ]
