"""The example app's admin: its queue model reuses workers.admin, as a downstream app would."""

from django.contrib import admin

from workers.admin import QueueStateFilter, StateMachineAdminMixin

from .models import Task


@admin.register(Task)
class TaskAdmin(StateMachineAdminMixin, admin.ModelAdmin):
    list_display = ["id", "name", "status_badge", "due", "attempts"]
    list_filter = [QueueStateFilter, "status"]
