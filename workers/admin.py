"""Admin help for any ModelWithStateMachine queue (Binary, Process, a downstream app's models).

    from workers.admin import QueueStateFilter, StateMachineAdminMixin

    @admin.register(ArchiveResult)
    class ArchiveResultAdmin(StateMachineAdminMixin, admin.ModelAdmin):
        list_display = ["__str__", "status_badge", "due"]
        list_filter = [QueueStateFilter, "status"]

gives a coloured status badge, `retry_at` as "due 3 minutes ago" / "in 2 minutes", a filter by
queue state (due now / claimed or scheduled / not scheduled / final) and live refresh: the badge and
the schedule of rows that are not final are polled from a small JSON view (`<changelist>/live/`,
view permission required) every few seconds while any of them is still moving.
"""

from __future__ import annotations

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied, ValidationError
from django.http import JsonResponse
from django.urls import NoReverseMatch, path, reverse
from django.utils import timezone
from django.utils.html import format_html
from django.utils.timesince import timesince, timeuntil

from workers.failures import requeue
from workers.models import TickFailure

#: Rows one live request may ask about (a changelist page shows 100 by default).
LIVE_MAX_IDS = 500
#: Final states named like these are shown as failures, like these as successes; others neutral.
FAILED_WORDS = ("fail", "error", "abort", "cancel", "crash", "timeout", "killed")
SUCCEEDED_WORDS = ("succeed", "success", "install", "done", "complete", "ok", "sealed")


def badge(text: str, kind: str, title: str = "") -> str:
    """A coloured label: kind is one of queued, active, ok, failed, neutral, unknown."""
    return format_html('<span class="sm-badge sm-badge-{}" title="{}">{}</span>', kind, title, text)


def state_kind(model, status: str) -> str:
    """How a status looks: final -> ok/failed/neutral, initial -> queued, the active state -> active."""
    if status in model.FINAL_STATES:
        word = str(status).lower()
        if any(w in word for w in FAILED_WORDS):
            return "failed"
        if any(w in word for w in SUCCEEDED_WORDS):
            return "ok"
        return "neutral"
    if status == model.INITIAL_STATE:  # (checked first: a model may name its initial state active)
        return "queued"
    if status == model.ACTIVE_STATE:
        return "active"
    return "neutral"


def due_text(model, obj, now=None) -> str:
    """retry_at in words: "due 3 minutes ago", "in 2 minutes", "not scheduled", or "-" once final."""
    now = now or timezone.now()
    if getattr(obj, model.state_field_name) in model.FINAL_STATES:
        return "-"
    retry_at = getattr(obj, model.retry_at_field_name)
    if retry_at is None:
        return "not scheduled"
    if retry_at <= now:
        return "due now" if (now - retry_at).total_seconds() < 1 else f"due {timesince(retry_at, now)} ago"
    return f"in {timeuntil(retry_at, now)}"


class QueueStateFilter(admin.SimpleListFilter):
    """Rows by where they stand in the queue, computed from status and retry_at."""

    title = "queue"
    parameter_name = "queue"

    def lookups(self, request, model_admin):
        return [
            ("due", "Due now"),
            ("claimed", "Claimed or scheduled"),
            ("unscheduled", "Not scheduled"),
            ("final", "Final"),
        ]

    def queryset(self, request, queryset):
        model = queryset.model
        retry, state, final = model.retry_at_field_name, model.state_field_name, model.FINAL_STATES
        now = timezone.now()
        not_final = queryset.exclude(**{f"{state}__in": final})
        if self.value() == "due":
            return not_final.filter(**{f"{retry}__lte": now})
        if self.value() == "claimed":
            return not_final.filter(**{f"{retry}__gt": now})
        if self.value() == "unscheduled":
            return not_final.filter(**{f"{retry}__isnull": True})
        if self.value() == "final":
            return queryset.filter(**{f"{state}__in": final})
        return queryset


class StateMachineAdminMixin:
    """Status badge, "due" column, queue filter and live refresh for a ModelWithStateMachine admin.

    `live_fields` names display methods whose cells refresh while a row is not final; each has a
    `render_<name>(obj)` returning the cell's HTML, and the display method wraps it with
    `live_cell()`. Add your own the same way.
    """

    live_fields: tuple[str, ...] = ("status_badge", "due")
    #: Seconds between two polls of the live view.
    live_interval: float = 2.0

    class Media:
        css = {"all": ["workers/admin/state_machine.css"]}
        js = ["workers/admin/live.js"]

    # -- display ---------------------------------------------------------------------------------

    def render_status_badge(self, obj) -> str:
        model = type(obj)
        status = getattr(obj, model.state_field_name)
        field = model._meta.get_field(model.state_field_name)
        label = dict(field.flatchoices).get(status, status)
        return badge(str(label), state_kind(model, status))

    def render_due(self, obj) -> str:
        return format_html("{}", due_text(type(obj), obj))

    def is_live(self, obj) -> bool:
        """Whether the row may still change by itself (a worker will tick it)."""
        model = type(obj)
        return getattr(obj, model.state_field_name) not in model.FINAL_STATES

    def live_cell(self, obj, name: str) -> str:
        """The cell HTML of a live field, wrapped so live.js can find and refresh it."""
        opts = self.model._meta
        return format_html(
            '<span class="sm-live" data-live-url="{}" data-live-id="{}" data-live-field="{}" '
            'data-live-active="{}" data-live-interval="{}">{}</span>',
            reverse(f"{self.admin_site.name}:{opts.app_label}_{opts.model_name}_live"),
            obj.pk,
            name,
            "1" if self.is_live(obj) else "0",
            int(self.live_interval * 1000),
            getattr(self, f"render_{name}")(obj),
        )

    @admin.display(description="Status", ordering="status")
    def status_badge(self, obj):
        return self.live_cell(obj, "status_badge")

    @admin.display(description="Due", ordering="retry_at")
    def due(self, obj):
        return self.live_cell(obj, "due")

    # -- the live view ---------------------------------------------------------------------------

    def get_urls(self):
        opts = self.model._meta
        live = path(
            "live/",
            self.admin_site.admin_view(self.live_view),
            name=f"{opts.app_label}_{opts.model_name}_live",
        )
        return [live, *super().get_urls()]

    def live_view(self, request):
        """{"rows": {pk: {"active": bool, "fields": {name: html}}}} for the ids asked for (bounded)."""
        if not self.has_view_or_change_permission(request):
            raise PermissionDenied
        pk_field = self.model._meta.pk
        ids = []
        for raw in request.GET.get("ids", "").split(",")[:LIVE_MAX_IDS]:
            try:
                ids.append(pk_field.to_python(raw.strip()))
            except ValidationError:
                continue  # not an id of this model: nothing to say about it
        rows = {}
        for obj in self.get_queryset(request).filter(pk__in=[i for i in ids if i is not None]):
            fields = {name: str(getattr(self, f"render_{name}")(obj)) for name in self.live_fields}
            rows[str(obj.pk)] = {"active": self.is_live(obj), "fields": fields}
        return JsonResponse({"rows": rows})


# -- failures of ticks ---------------------------------------------------------------------------


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
