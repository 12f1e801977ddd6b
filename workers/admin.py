"""Admin: the rows whose ticks keep failing (workers.TickFailure), with the action that re-queues them."""

from __future__ import annotations

from django.contrib import admin, messages
from django.urls import NoReverseMatch, reverse
from django.utils.html import format_html

from workers.failures import requeue
from workers.models import TickFailure


class ParkedFilter(admin.SimpleListFilter):
    title = "state"
    parameter_name = "state"

    def lookups(self, request, model_admin):
        return [("parked", "Parked (needs an operator)"), ("backing_off", "Backing off (retries by itself)")]

    def queryset(self, request, queryset):
        if self.value() == "parked":
            return queryset.filter(parked_at__isnull=False)
        if self.value() == "backing_off":
            return queryset.filter(parked_at__isnull=True)
        return queryset


@admin.register(TickFailure)
class TickFailureAdmin(admin.ModelAdmin):
    """Read-only records written by the runner; the one change an operator makes is to re-queue."""

    list_display = ("row_link", "attempts", "state", "error", "last_failed_at", "worker")
    list_filter = (ParkedFilter, "model")
    search_fields = ("object_id", "error")
    ordering = ("-last_failed_at",)
    actions = ["requeue_rows"]
    readonly_fields = (
        "model", "object_id", "row_link", "attempts", "state", "error", "traceback_block",
        "first_failed_at", "last_failed_at", "retry_at", "parked_at", "worker",
    )  # fmt: skip
    fields = readonly_fields

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        # The action needs the change permission; the form itself has nothing to save.
        return super().has_change_permission(request, obj) if obj is None else False

    @admin.display(description="row", ordering="object_id")
    def row_link(self, obj: TickFailure) -> str:
        model = obj.queue_model()
        label = f"{obj.model} {obj.object_id}"
        if model is None:
            return label
        try:
            url = reverse(
                f"admin:{model._meta.app_label}_{model._meta.model_name}_change", args=[obj.object_id]
            )
        except NoReverseMatch:
            return label
        return format_html('<a href="{}">{}</a>', url, label)

    @admin.display(description="state", ordering="parked_at")
    def state(self, obj: TickFailure) -> str:
        if obj.is_parked:
            return "parked"
        return f"retries at {obj.retry_at:%Y-%m-%d %H:%M:%S}" if obj.retry_at else "backing off"

    @admin.display(description="traceback")
    def traceback_block(self, obj: TickFailure) -> str:
        return format_html(
            '<pre style="white-space: pre-wrap; max-height: 30em; overflow: auto">{}</pre>', obj.traceback
        )

    @admin.action(
        description="Re-queue the selected rows (due now; their failures are forgotten)",
        permissions=["change"],
    )
    def requeue_rows(self, request, queryset):
        count = requeue(queryset)
        skipped = queryset.count()
        self.message_user(request, f"Re-queued {count} row(s).", messages.SUCCESS)
        if skipped:
            self.message_user(
                request, f"{skipped} row(s) are held by a worker right now; left to it.", messages.WARNING
            )
