from django.apps import AppConfig


class MachineDemoConfig(AppConfig):
    """The main job (`manage.py quickstart`) and its manifest; add "machine.demo" to INSTALLED_APPS."""

    name = "machine.demo"
    label = "machine_demo"
    verbose_name = "Machine demo (quickstart)"
