from django.apps import AppConfig
from django.db.backends.signals import connection_created

from machine import checks, sqlite


class MachineConfig(AppConfig):
    name = "machine"
    verbose_name = "Machine"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        checks.register()
        connection_created.connect(sqlite.tune_connection, dispatch_uid="machine.sqlite.tune_connection")
        # The runner's processes become Process rows through its lifecycle signals.
        from machine import presence

        presence.connect()
