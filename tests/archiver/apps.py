from django.apps import AppConfig


class ArchiverConfig(AppConfig):
    """A downstream archiver declared the way the original's crawls/core apps declare their models."""

    name = "tests.archiver"
    label = "archiver"
    verbose_name = "Archiver (compatibility fixture)"
    default_auto_field = "django.db.models.BigAutoField"
