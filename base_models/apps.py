from django.apps import AppConfig


class BaseModelsConfig(AppConfig):
    name = "base_models"
    verbose_name = "Base models"
