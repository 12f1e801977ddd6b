"""Rows written before the one masking rule: mask their cmd and env as a save now would.

A queued row whose command held a secret keeps it sealed (so it still launches with it); env
values were already stored masked, and a queued row that lost one is refused at launch with the
reason, as any row whose secret cannot be restored.
"""

from django.db import migrations

from machine.redaction import mask_cmd, mask_env, secret_values
from machine.sealing import seal

BATCH = 500


def mask_stored_secrets(apps, schema_editor):
    Process = apps.get_model("machine", "Process")
    ids = list(Process.objects.order_by("pk").values_list("pk", flat=True))
    for start in range(0, len(ids), BATCH):
        # (Read a batch, then write: SQLite gives no isolation between a cursor and writes to its table.)
        batch = Process.objects.filter(pk__in=ids[start : start + BATCH])
        for row in list(batch.only("id", "cmd", "env", "status")):
            _mask_row(Process, row)


def _mask_row(Process, row):
    cmd = row.cmd if isinstance(row.cmd, list) else None
    env = row.env if isinstance(row.env, dict) else None
    argv = [arg for arg in cmd if isinstance(arg, str)] if cmd is not None else []
    secrets = secret_values(argv, env or {})
    changes = {}
    if cmd is not None:
        masked = mask_cmd(cmd, secrets)
        if masked != cmd:
            changes["cmd"] = masked
            if row.status == "queued" and len(argv) == len(cmd):
                changes["sealed"] = seal({"argv": cmd, "env": env or {}})
    if env is not None:
        masked_env = mask_env(env, secrets)
        if masked_env != env:
            changes["env"] = masked_env
    if changes:
        Process.objects.filter(pk=row.pk).update(**changes)


class Migration(migrations.Migration):
    dependencies = [
        ("machine", "0006_process_sealed"),
    ]

    operations = [
        migrations.RunPython(mask_stored_secrets, migrations.RunPython.noop),
    ]
