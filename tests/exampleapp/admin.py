"""The example archiver's admin: its queue models reuse workers.admin, as a downstream app would."""

from django.contrib import admin

from workers.admin import QueueStateFilter, StateMachineAdminMixin

from .models import ArchiveResult, Task


@admin.register(ArchiveResult)
class ArchiveResultAdmin(StateMachineAdminMixin, admin.ModelAdmin):
    list_display = ["id", "plugin", "url", "status_badge", "due"]
    list_filter = [QueueStateFilter, "status", "plugin"]


@admin.register(Task)
class TaskAdmin(StateMachineAdminMixin, admin.ModelAdmin):
    list_display = ["id", "name", "status_badge", "due", "attempts"]
    list_filter = [QueueStateFilter, "status"]
