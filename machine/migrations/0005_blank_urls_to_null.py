"""Process.url is nullable since 0004: a blank URL is stored as NULL, as the original does."""

from django.db import migrations


def blank_urls_to_null(apps, schema_editor):
    apps.get_model("machine", "Process").objects.filter(url="").update(url=None)


def null_urls_to_blank(apps, schema_editor):
    apps.get_model("machine", "Process").objects.filter(url__isnull=True).update(url="")


class Migration(migrations.Migration):
    dependencies = [
        ("machine", "0004_compat_fields"),
    ]

    operations = [
        migrations.RunPython(blank_urls_to_null, null_urls_to_blank),
    ]
