from django.apps import AppConfig


class MachineConfig(AppConfig):
    name = "machine"
    verbose_name = "Machine"
    default_auto_field = "django.db.models.BigAutoField"
