from django.apps import AppConfig


class WorkersConfig(AppConfig):
    name = "workers"
    verbose_name = "Workers"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # New queue rows wake the idle workers (PostgreSQL NOTIFY; see workers/notify.py).
        from workers import notify

        notify.connect()
