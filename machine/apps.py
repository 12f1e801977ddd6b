from django.apps import AppConfig


class MachineConfig(AppConfig):
    name = "machine"
    verbose_name = "Machine"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # The runner's processes become Process rows through its lifecycle signals.
        from machine import presence

        presence.connect()
