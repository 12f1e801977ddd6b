from django.apps import AppConfig


class ExampleAppConfig(AppConfig):
    """A tiny downstream "archiver" built on workers.models and machine.models, as a real one would be."""

    name = "tests.exampleapp"
    label = "exampleapp"
    verbose_name = "Example archiver"
    default_auto_field = "django.db.models.BigAutoField"
