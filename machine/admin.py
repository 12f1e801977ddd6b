"""Admin pages an operator uses every day: machines, their interfaces, binaries and processes.

Rows here are written by the app itself (detection, installs, launches), so nothing can be added
by hand, host facts and OS fingerprints are read-only, and the only edits are a machine's config
(validated through the contract's sanitiser) and a binary's install request. Every action needs
the change permission. Secrets never reach a page: env values and secret-looking command options
are redacted again at display time.
"""

from __future__ import annotations

import dataclasses
import json

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.contrib.admin.utils import unquote
from django.core.exceptions import PermissionDenied, ValidationError
from django.db.models import Count, OuterRef, Q, Subquery
from django.db.models.constants import LOOKUP_SEP
from django.db.models.functions import Coalesce
from django.http import Http404, HttpResponse, HttpResponseRedirect, StreamingHttpResponse
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import formats, timezone
from django.utils.html import format_html, format_html_join
from django.utils.text import Truncator

from hooks.overrides import override_problems
from machine import installer
from machine.admin_helpers import (
    REDACTED,
    TAIL_LINES,
    TAIL_MAX_CHARS,
    config_problems,
    exit_code_kind,
    exit_code_meaning,
    format_duration,
    health_kind,
    health_summary,
    join_tail,
    process_label,
    read_log_window,
    redact_env_for_display,
    redact_nested,
    shell_command,
    stats_pairs,
)
from machine.choices import BinaryStatus, ProcessStatus
from machine.conf import machine_settings
from machine.models import Binary, Machine, NetworkInterface, Process, _sanitize_machine_config
from machine.redaction import mask_text
from workers.admin import QueueStateFilter, StateMachineAdminMixin, badge

#: Related processes listed on one page (newest first); the changelist link shows them all.
PROCESS_TABLE_LIMIT = 50
#: Descendants drawn in a process tree before "and N more" (the changelist filter shows them all).
TREE_LIMIT = 200
#: Bytes of a log shown on one page of the log view.
LOG_WINDOW = 256 * 1024
LOG_STREAMS = ("stdout", "stderr")


def _admin_link(obj, label: str | None = None) -> str:
    """An HTML link to `obj`'s admin change page ('-' for None)."""
    if obj is None:
        return "-"
    url = reverse(f"admin:{obj._meta.app_label}_{obj._meta.model_name}_change", args=[obj.pk])
    return format_html('<a href="{}">{}</a>', url, label if label is not None else str(obj))


def _changelist_link(model, query: str, label: str) -> str:
    url = reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_changelist")
    return format_html('<a href="{}?{}">{}</a>', url, query, label)


def _pre(text: str) -> str:
    return format_html('<pre style="white-space: pre-wrap; max-height: 30em; overflow: auto">{}</pre>', text)


def _json_block(value) -> str:
    return _pre(json.dumps(value, indent=2, sort_keys=True, default=str))


def _holds_secret(value) -> bool:
    """A secret, or the mask a secret was stored as: shown read-only (saving it back would store the mask)."""
    return redact_nested(value)[1] or REDACTED in json.dumps(value, default=str)


def _process_table(processes, empty: str) -> str:
    """A small table of Process rows, each linked by its redacted label (never str(process))."""
    rows = [
        (
            reverse("admin:machine_process_change", args=[p.pk]),
            process_label(p.pk, p.cmd, p.status),
            p.process_type,
            exit_badge(p),
            formats.date_format(timezone.localtime(p.started_at), "DATETIME_FORMAT") if p.started_at else "",
        )
        for p in processes.order_by("-created_at")[:PROCESS_TABLE_LIMIT]
    ]
    if not rows:
        return empty
    return format_html(
        "<table><thead><tr><th>Process</th><th>Type</th><th>Exit code</th><th>Started</th></tr></thead>"
        "<tbody>{}</tbody></table>",
        format_html_join("", '<tr><td><a href="{}">{}</a></td><td>{}</td><td>{}</td><td>{}</td></tr>', rows),
    )


def exit_badge(process) -> str:
    """The exit code as a badge: green 0, red for any other code (3, 6, 127, 143...), "-" while running."""
    code = process.exit_code
    if code is None and process.status != ProcessStatus.EXITED:
        return "-"
    kind = exit_code_kind(code, process.status)
    text = "?" if code is None else str(code)
    return badge(text, kind, title=f"exit code {text}: {exit_code_meaning(code)}")


def health_badge(obj) -> str:
    """Success rate of a row's uses, or "no uses yet" for a row never used (not a misleading 0%)."""
    succeeded, failed = obj.num_uses_succeeded, obj.num_uses_failed
    return badge(health_summary(succeeded, failed), health_kind(succeeded, failed))


def _pairs_table(pairs) -> str:
    if not pairs:
        return "-"
    return format_html(
        '<table class="machine-pairs"><tbody>{}</tbody></table>',
        format_html_join("", "<tr><th>{}</th><td>{}</td></tr>", pairs),
    )


def _output_tail(tail, stored: str) -> str:
    """The log file's last lines, else the last lines kept in the row; a page never fails on a bad log."""
    try:
        text = join_tail(tail(lines=TAIL_LINES))
    except OSError as exc:  # e.g. a log another user owns: say so instead of a server error
        text = f"(log file unreadable: {exc.strerror or exc})"
    text = text or "\n".join((stored or "")[-TAIL_MAX_CHARS:].splitlines()[-TAIL_LINES:])
    if len(text) > TAIL_MAX_CHARS:  # e.g. one 100 MB line: a page shows its end, not all of it
        text = f"[... {len(text) - TAIL_MAX_CHARS} characters not shown ...]" + text[-TAIL_MAX_CHARS:]
    return text


class ListedLookupsOnly:
    """Query-string filters only on the fields the page offers (its list_filter, and `lookup_links`).

    Django allows a lookup on any local field by default (`?stdout__contains=...`, `?env__...`):
    each such request is an oracle that lets a view-only user recover a stored value one character
    at a time. Here only the filters the page itself offers are accepted.
    """

    #: First segments of the lookups the app's own links use (`binary__id__exact=...`).
    lookup_links: tuple[str, ...] = ()

    def lookup_allowed(self, lookup, value, request=None):
        offered = set(self.lookup_links)
        for item in self.get_list_filter(request) if request is not None else self.list_filter:
            if isinstance(item, str):
                offered.add(item.split(LOOKUP_SEP, 1)[0])
            elif isinstance(item, (list, tuple)):
                offered.add(str(item[0]).split(LOOKUP_SEP, 1)[0])
            else:
                offered.add(getattr(item, "parameter_name", ""))
        if lookup.split(LOOKUP_SEP, 1)[0] not in offered:
            return False
        return super().lookup_allowed(lookup, value, request)


class ReadOnlyInlineMixin:
    extra = 0
    can_delete = False
    show_change_link = True

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False


# -- Machine -------------------------------------------------------------------------------------


class MachineConfigForm(forms.ModelForm):
    """The config, shown with its secrets masked; a value left masked keeps the stored one."""

    class Meta:
        model = Machine
        fields = ["config"]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.instance is not None and isinstance(self.instance.config, dict):
            self.initial["config"] = redact_nested(self.instance.config)[0]

    def clean_config(self):
        """Accept only what the contract's sanitiser keeps, and say why anything else is refused."""
        config = _keep_masked(self.cleaned_data.get("config"), self.instance.config)
        problems = config_problems(config)
        if problems:
            raise ValidationError(problems)
        return _sanitize_machine_config(config, lib_dir=machine_settings.lib_dir)


def _keep_masked(new, old):
    """`new` with every value still equal to the mask replaced by the stored value at the same place."""
    if isinstance(new, dict) and isinstance(old, dict):
        return {key: old[key] if value == REDACTED and key in old else _keep_masked(value, old.get(key))
                for key, value in new.items()}  # fmt: skip
    return new


class BinaryRequestForm(forms.ModelForm):
    class Meta:
        model = Binary
        fields = ["binproviders", "overrides"]

    def clean_overrides(self):
        """Only what the providers' allow-list accepts (hooks.overrides): refused here, before any run."""
        overrides = self.cleaned_data.get("overrides")
        problems = override_problems(overrides)
        if problems:
            raise ValidationError(problems)
        return overrides


class NetworkInterfaceInline(ReadOnlyInlineMixin, admin.TabularInline):
    model = NetworkInterface
    fields = ["iface", "ip_local", "ip_public", "mac_address", "dns_server", "isp", "country", "modified_at"]
    readonly_fields = fields
    ordering = ["-modified_at"]


@admin.register(Machine)
class MachineAdmin(ListedLookupsOnly, admin.ModelAdmin):
    form = MachineConfigForm
    list_display = [
        "hostname",
        "short_guid",
        "os_platform",
        "os_arch",
        "hw_in_docker",
        "hw_in_vm",
        "health_percent",
        "binaries_count",
        "running_processes_count",
        "modified_at",
    ]
    list_filter = ["os_family", "hw_in_docker", "hw_in_vm"]

    class Media:
        css = {"all": ["workers/admin/state_machine.css", "machine/admin/machine.css"]}

    search_fields = ["hostname", "guid", "hw_uuid", "os_platform"]
    ordering = ["-modified_at"]
    inlines = [NetworkInterfaceInline]
    readonly_fields = [
        "id",
        "guid",
        "hostname",
        "created_at",
        "modified_at",
        "hw_in_docker",
        "hw_in_vm",
        "hw_manufacturer",
        "hw_product",
        "hw_uuid",
        "os_arch",
        "os_family",
        "os_platform",
        "os_release",
        "os_kernel",
        "stats_display",
        "health_percent",
        "num_uses_succeeded",
        "num_uses_failed",
        "binaries_count",
        "running_processes_count",
    ]
    fieldsets = [
        (None, {"fields": ["hostname", "guid", "id", "created_at", "modified_at"]}),
        (
            "Host facts",
            {
                "fields": [
                    ("os_platform", "os_family", "os_arch"),
                    ("os_release", "os_kernel"),
                    ("hw_manufacturer", "hw_product", "hw_uuid"),
                    ("hw_in_docker", "hw_in_vm"),
                    "stats_display",
                ]
            },
        ),
        ("Health", {"fields": [("health_percent", "num_uses_succeeded", "num_uses_failed")]}),
        ("Work", {"fields": [("binaries_count", "running_processes_count")]}),
        (
            "Config",
            {
                "fields": ["config"],
                "description": "Per-machine overrides such as WGET_BINARY. A *_BINARY value must be a "
                "command name or a path that exists inside the lib dir; other keys are kept as given.",
            },
        ),
    ]

    def has_add_permission(self, request):
        return False  # rows come from Machine.current() on each host

    def has_delete_permission(self, request, obj=None):
        return False  # the cascade would take the host's process history with it

    def get_queryset(self, request):
        return (
            super()
            .get_queryset(request)
            .annotate(
                _binaries=Count("binary", distinct=True),
                _running=Count(
                    "process_set", filter=Q(process_set__status=ProcessStatus.RUNNING), distinct=True
                ),
            )
        )

    @admin.display(description="GUID")
    def short_guid(self, obj):
        return obj.guid[:12]

    @admin.display(description="Health")
    def health_percent(self, obj):
        return health_badge(obj)

    @admin.display(description="Host stats")
    def stats_display(self, obj):
        return _pairs_table(stats_pairs(obj.stats))

    @admin.display(description="Binaries", ordering="_binaries")
    def binaries_count(self, obj):
        return _changelist_link(Binary, f"machine__id__exact={obj.pk}", str(obj._binaries))

    @admin.display(description="Running processes", ordering="_running")
    def running_processes_count(self, obj):
        return _changelist_link(
            Process, f"machine__id__exact={obj.pk}&status__exact={ProcessStatus.RUNNING}", str(obj._running)
        )


# -- NetworkInterface ----------------------------------------------------------------------------


@admin.register(NetworkInterface)
class NetworkInterfaceAdmin(ListedLookupsOnly, admin.ModelAdmin):
    list_display = [
        "iface",
        "ip_local",
        "ip_public",
        "mac_address",
        "dns_server",
        "isp",
        "city",
        "country",
        "machine_link",
        "health_percent",
        "modified_at",
    ]
    list_filter = ["machine", "isp", "country"]

    class Media:
        css = {"all": ["workers/admin/state_machine.css"]}  # the health badge

    search_fields = ["iface", "ip_local", "ip_public", "mac_address", "hostname", "isp", "city", "country"]
    list_select_related = ["machine"]
    ordering = ["-modified_at"]
    #: The fingerprint (unique together) never changes: a new fingerprint is a new row.
    readonly_fields = [
        "id",
        "machine_link",
        "mac_address",
        "ip_public",
        "ip_local",
        "dns_server",
        "created_at",
        "modified_at",
        "health_percent",
        "num_uses_succeeded",
        "num_uses_failed",
    ]
    fieldsets = [
        ("Fingerprint", {"fields": ["machine_link", "mac_address", "ip_local", "ip_public", "dns_server"]}),
        ("Details", {"fields": ["hostname", "iface", "isp", "city", "region", "country"]}),
        ("Health", {"fields": [("health_percent", "num_uses_succeeded", "num_uses_failed")]}),
        (None, {"fields": ["id", "created_at", "modified_at"]}),
    ]

    def has_add_permission(self, request):
        return False  # rows come from NetworkInterface.current()

    @admin.display(description="Machine", ordering="machine__hostname")
    def machine_link(self, obj):
        return _admin_link(obj.machine)

    @admin.display(description="Health")
    def health_percent(self, obj):
        return health_badge(obj)


# -- Binary --------------------------------------------------------------------------------------


class BinaryInstallForm(forms.Form):
    """An install request, checked like `manage.py install` checks it; queued by Binary.from_json()."""

    name = forms.CharField(
        max_length=Binary._meta.get_field("name").max_length,
        help_text="The program's name as it is found on PATH, e.g. wget or yt-dlp.",
    )
    binproviders = forms.MultipleChoiceField(
        label="Providers",
        required=False,
        widget=forms.CheckboxSelectMultiple,
        help_text="Tried in their hook order; tick none to allow any provider.",
    )
    overrides = forms.CharField(
        required=False,
        widget=forms.Textarea(attrs={"rows": 3, "cols": 60}),
        help_text='Optional JSON keyed by provider, e.g. {"pip": {"install_args": ["yt-dlp==2024.8.6"]}}',
    )

    def __init__(self, *args, providers: list[str], **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["binproviders"].choices = [(name, name) for name in providers]

    def clean(self):
        cleaned = super().clean()
        if self.errors:
            return cleaned
        try:
            cleaned["request"] = installer.build_request(
                [cleaned["name"]],
                ",".join(cleaned.get("binproviders") or []) or "*",
                cleaned.get("overrides"),
            )
        except installer.InstallRequestError as exc:
            raise ValidationError(str(exc)) from None
        return cleaned


@admin.register(Binary)
class BinaryAdmin(ListedLookupsOnly, StateMachineAdminMixin, admin.ModelAdmin):
    form = BinaryRequestForm
    list_display = [
        "name",
        "binprovider",
        "version",
        "abspath",
        "short_sha256",
        "status_badge",
        "health_percent",
        "machine_link",
        "due",
        "modified_at",
    ]
    list_filter = ["status", QueueStateFilter, "binprovider", "machine"]
    search_fields = ["name", "abspath", "version", "sha256", "binproviders", "binprovider"]
    list_select_related = ["machine"]
    ordering = ["name", "-modified_at"]
    actions = ["retry_install"]
    readonly_fields = [
        "id",
        "machine_link",
        "name",
        "binprovider",
        "abspath",
        "version",
        "sha256",
        "status_badge",
        "due",
        "health_percent",
        "num_uses_succeeded",
        "num_uses_failed",
        "created_at",
        "modified_at",
        "hook_runs",
    ]
    fieldsets = [
        (None, {"fields": ["name", "machine_link", ("status_badge", "due")]}),
        ("Resolved", {"fields": ["binprovider", "abspath", "version", "sha256"]}),
        ("Install request", {"fields": ["binproviders", "overrides"]}),
        ("Health", {"fields": [("health_percent", "num_uses_succeeded", "num_uses_failed")]}),
        ("Hook runs", {"fields": ["hook_runs"]}),
        (None, {"fields": ["id", "created_at", "modified_at"]}),
    ]

    def add_view(self, request, form_url="", extra_context=None):
        """ "Install a binary": a request form (not the model form); a valid one queues a Binary row."""
        if not self.has_add_permission(request):
            raise PermissionDenied
        providers = installer.known_providers()
        form = BinaryInstallForm(request.POST or None, providers=providers)
        if request.method == "POST" and form.is_valid():
            binary = installer.queue(form.cleaned_data["request"])[0]
            self.log_addition(request, binary, [{"added": {"name": binary.name}}])
            self.message_user(request, _queued_message(binary), messages.SUCCESS)
            return HttpResponseRedirect(reverse("admin:machine_binary_change", args=[binary.pk]))
        context = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "title": "Install a binary",
            "form": form,
            "machine": Machine.current(),
            "media": self.media + form.media,
            **(extra_context or {}),
        }
        return TemplateResponse(request, "admin/machine/binary/install_form.html", context)

    def get_fieldsets(self, request, obj=None):
        """Overrides holding a secret-looking key are shown redacted and read-only, never in a textarea."""
        fieldsets = super().get_fieldsets(request, obj)
        if obj is None or not _holds_secret(obj.overrides):
            return fieldsets
        swap = {"overrides": "overrides_redacted"}
        return [
            (name, {**opts, "fields": [swap.get(f, f) for f in opts["fields"]]}) for name, opts in fieldsets
        ]

    def get_readonly_fields(self, request, obj=None):
        fields = list(super().get_readonly_fields(request, obj))
        if obj is not None and _holds_secret(obj.overrides):
            fields.append("overrides_redacted")
        return fields

    @admin.display(description="Overrides (secrets redacted; read-only here)")
    def overrides_redacted(self, obj):
        return _json_block(redact_nested(obj.overrides)[0])

    @admin.display(description="Machine", ordering="machine__hostname")
    def machine_link(self, obj):
        return _admin_link(obj.machine)

    @admin.display(description="sha256")
    def short_sha256(self, obj):
        return obj.sha256[:12]

    @admin.display(description="Health")
    def health_percent(self, obj):
        return health_badge(obj)

    @admin.display(description="Hook runs")
    def hook_runs(self, obj):
        """Every Process of this binary's installs: linked by FK, or run inside its output_dir."""
        output_dir = str(obj.output_dir)
        runs = Process.objects.filter(
            Q(binary=obj) | Q(pk__in=obj.hook_processes().values("pk")) | Q(pwd__startswith=output_dir + "/")
        )
        return format_html(
            "{}<p>{}</p>",
            _process_table(runs, empty="No hook runs recorded."),
            _changelist_link(Process, f"binary__id__exact={obj.pk}", "All processes linked to this binary"),
        )

    @admin.action(description="Re-queue selected binaries (retry install)", permissions=["change"])
    def retry_install(self, request, queryset):
        """Queued rows become due now (unless a worker holds them); installed rows are queued again."""
        requeued, busy = [], []
        for binary in queryset:
            if binary.status == BinaryStatus.QUEUED:
                done = binary.retry_now()  # never breaks the lease of a worker installing it now
            else:
                done = binary.update_and_requeue(status=BinaryStatus.QUEUED, retry_at=timezone.now())
            (requeued if done else busy).append(binary.name)
        if requeued:
            self.message_user(
                request, f"Re-queued {len(requeued)} binary(ies) for install: {', '.join(requeued)}."
            )
        if busy:
            self.message_user(
                request,
                f"Not re-queued, a worker is installing them right now: {', '.join(busy)}.",
                messages.WARNING,
            )


def _queued_message(binary) -> str:
    if binary.status == BinaryStatus.INSTALLED:
        return f"{binary.name} is already installed here ({binary.version} via {binary.binprovider})."
    if binary.abspath:  # a request for an installed binary queues it again (as the original does)
        return (
            f"Queued {binary.name} to be checked again (installed: {binary.version} via "
            f"{binary.binprovider}). A worker (manage.py runworker) re-runs its providers."
        )
    return (
        f"Queued {binary.name} for install (providers: {binary.binproviders or 'any'}). "
        "A worker (manage.py runworker) installs it; this page shows the outcome."
    )


# -- Process -------------------------------------------------------------------------------------


@admin.register(Process)
class ProcessAdmin(ListedLookupsOnly, StateMachineAdminMixin, admin.ModelAdmin):
    lookup_links = ("binary", "parent")
    list_display = [
        "short_id",
        "command",
        "process_type",
        "status_badge",
        "exit_code_badge",
        "duration",
        "pid",
        "machine_link",
        "binary_link",
        "parent_link",
        "children_count",
        "started_at",
    ]
    list_display_links = ["short_id"]
    list_filter = ["status", QueueStateFilter, "process_type", "machine", "worker_type"]
    #: Only columns that never hold a secret in clear: the masked command, the pid, types, the binary's
    #: name. Never stdout/stderr/env/url: a search is an oracle (a view-only user could recover a value
    #: one character at a time), so is any filter in the query string (see lookup_allowed).
    search_fields = ["=pid", "cmd", "=process_type", "worker_type", "binary__name"]
    list_select_related = ["machine", "binary", "parent"]
    ordering = ["-created_at"]
    actions = ["terminate_processes", "cleanup_stale"]
    live_fields = ("status_badge", "exit_code_badge", "duration")
    fieldsets = [
        (
            None,
            {
                "fields": [
                    "full_command",
                    ("process_type", "worker_type"),
                    ("status_badge", "exit_code_badge", "due"),
                ]
            },
        ),
        ("OS process", {"fields": [("pid", "os_alive"), ("started_at", "ended_at", "duration"), "timeout"]}),
        ("Process tree", {"fields": ["process_tree"]}),
        ("Relations", {"fields": ["machine_link", "binary_link", "iface", "url_display"]}),
        ("Environment", {"fields": ["pwd", "env_display"]}),
        ("Output", {"fields": ["stdout_tail", "stderr_tail"]}),
        (None, {"fields": ["id", "created_at", "modified_at"]}),
    ]
    readonly_fields = [
        "id",
        "full_command",
        "process_type",
        "worker_type",
        "status_badge",
        "exit_code_badge",
        "due",
        "pid",
        "os_alive",
        "started_at",
        "ended_at",
        "duration",
        "timeout",
        "process_tree",
        "machine_link",
        "binary_link",
        "iface",
        "url_display",
        "pwd",
        "env_display",
        "stdout_tail",
        "stderr_tail",
        "created_at",
        "modified_at",
    ]

    def has_add_permission(self, request):
        return False  # rows come from launches and Process.current()

    def has_delete_permission(self, request, obj=None):
        return False  # rows are the history of what ran here; `manage.py prune` removes old ones

    def get_urls(self):
        view = self.admin_site.admin_view
        return [
            path("<path:object_id>/terminate/", view(self.terminate_view), name="machine_process_terminate"),
            path(
                "<path:object_id>/log/<str:stream>/download/",
                view(self.log_download_view),
                name="machine_process_log_download",
            ),
            path("<path:object_id>/log/<str:stream>/", view(self.log_view), name="machine_process_log"),
            *super().get_urls(),
        ]

    def change_view(self, request, object_id, form_url="", extra_context=None):
        """Read-only detail: nothing to save (actions do the changes), titled by the redacted label."""
        if request.method == "POST":
            raise PermissionDenied("Processes are read-only; use the actions on the list page.")
        obj = self.get_object(request, unquote(object_id))
        context = {"show_save": False, "show_save_and_continue": False, "show_delete_link": False}
        if obj is not None:
            context["subtitle"] = process_label(obj.pk, obj.cmd, obj.status)
            context["can_terminate"] = obj.status == ProcessStatus.RUNNING and self.has_change_permission(
                request, obj
            )
        return super().change_view(request, object_id, form_url, {**context, **(extra_context or {})})

    def history_view(self, request, object_id, extra_context=None):
        obj = self.get_object(request, unquote(object_id))
        context = {}
        if obj is not None:
            context["safe_label"] = process_label(obj.pk, obj.cmd, obj.status)
            context["title"] = f"Change history: {context['safe_label']}"
        return super().history_view(request, object_id, {**context, **(extra_context or {})})

    def get_queryset(self, request):
        # The changelist never shows output: a row's stdout/stderr is loaded only where it is shown.
        # (A subquery, not Count() with GROUP BY: grouping would compare every row's whole output.)
        children = (
            Process.objects.filter(parent_id=OuterRef("pk"))
            .order_by()
            .values("parent_id")
            .annotate(n=Count("pk"))
            .values("n")
        )
        queryset = super().get_queryset(request).annotate(_children=Coalesce(Subquery(children), 0))
        return queryset.defer("stdout", "stderr")

    def is_live(self, obj) -> bool:
        return obj.status != ProcessStatus.EXITED

    # -- columns and fields ------------------------------------------------------------------------

    @admin.display(description="Children", ordering="_children")
    def children_count(self, obj):
        if not obj._children:
            return "0"
        return _changelist_link(Process, f"parent__id__exact={obj.pk}", str(obj._children))

    def action_checkbox(self, obj):
        """Django's checkbox, but its aria-label uses the redacted label (str(process) shows raw argv)."""
        attrs = {
            "class": "action-select",
            "aria-label": f"Select this object for an action - {process_label(obj.pk, obj.cmd, obj.status)}",
        }
        return forms.CheckboxInput(attrs, lambda value: False).render(ACTION_CHECKBOX_NAME, str(obj.pk))

    @admin.display(description="ID", ordering="created_at")
    def short_id(self, obj):
        return str(obj.pk)[-12:]

    @admin.display(description="Command")
    def command(self, obj):
        return format_html("<code>{}</code>", Truncator(shell_command(obj.cmd)).chars(200))

    @admin.display(description="Command (shell-quoted, secrets masked)")
    def full_command(self, obj):
        return format_html("<code>{}</code>", shell_command(obj.cmd, obj.mask_values()))

    @admin.display(description="URL")
    def url_display(self, obj):
        return mask_text(obj.url) if obj.url else "-"

    def render_exit_code_badge(self, obj) -> str:
        return exit_badge(obj)

    @admin.display(description="Exit code", ordering="exit_code")
    def exit_code_badge(self, obj):
        return self.live_cell(obj, "exit_code_badge")

    def render_duration(self, obj) -> str:
        text = format_duration(obj.started_at, obj.ended_at, timezone.now())
        if text and obj.ended_at is None and obj.status == ProcessStatus.RUNNING:
            return format_html("{} <small>(running)</small>", text)
        return format_html("{}", text or "-")

    @admin.display(description="Duration")
    def duration(self, obj):
        return self.live_cell(obj, "duration")

    @admin.display(description="Machine", ordering="machine__hostname")
    def machine_link(self, obj):
        return _admin_link(obj.machine, obj.machine.hostname if obj.machine_id else None)

    @admin.display(description="Binary", ordering="binary__name")
    def binary_link(self, obj):
        return _admin_link(obj.binary, obj.binary.name if obj.binary_id else None)

    @admin.display(description="Parent")
    def parent_link(self, obj):
        return _admin_link(obj.parent, str(obj.parent.pk)[-12:] if obj.parent_id else None)

    @admin.display(description="Ancestors and descendants")
    def process_tree(self, obj):
        """From the root down to this process, then everything it started, as nested lists."""
        return render_process_tree(obj)

    @admin.display(description="Still alive (pid and start time verified)")
    def os_alive(self, obj):
        if obj.status != ProcessStatus.RUNNING:
            return "-"
        return "yes" if obj.proc is not None else "no (not running, or PID not provably ours)"

    @admin.display(description="Environment (secrets masked)")
    def env_display(self, obj):
        pairs = redact_env_for_display(obj.env, obj.mask_values())
        if not pairs:
            return "-"
        return format_html(
            "<table><tbody>{}</tbody></table>",
            format_html_join("", "<tr><th><code>{}</code></th><td><code>{}</code></td></tr>", pairs),
        )

    @admin.display(description=f"stdout (last {TAIL_LINES} lines)")
    def stdout_tail(self, obj):
        text = mask_text(_output_tail(obj.tail_stdout, obj.stdout), obj.mask_values())
        return format_html("{}{}", _pre(text), _log_links(obj, "stdout"))

    @admin.display(description=f"stderr (last {TAIL_LINES} lines)")
    def stderr_tail(self, obj):
        text = mask_text(_output_tail(obj.tail_stderr, obj.stderr), obj.mask_values())
        return format_html("{}{}", _pre(text), _log_links(obj, "stderr"))

    # -- the full log ------------------------------------------------------------------------------

    def _viewable(self, request, object_id, *, change: bool = False):
        """The process of a custom view, or 404; PermissionDenied without view (or `change`) permission."""
        obj = self.get_object(request, unquote(object_id))
        if obj is None:
            raise Http404("No such process.")
        allowed = self.has_change_permission if change else self.has_view_or_change_permission
        if not allowed(request, obj):
            raise PermissionDenied
        return obj

    def log_view(self, request, object_id, stream):
        """A bounded window of a log file (`?start=<byte>`; default: its end), with paging and download."""
        if stream not in LOG_STREAMS:
            raise Http404("No such log.")
        obj = self._viewable(request, object_id)
        path = obj._stream_file(stream)
        try:
            start = int(request.GET["start"]) if request.GET.get("start") else None
        except ValueError:
            start = None
        secrets = obj.mask_values()  # a running child writes its log itself: mask what is shown
        try:
            window = read_log_window(path, start, LOG_WINDOW)
            window = dataclasses.replace(window, text=mask_text(window.text, secrets))
            source = "file"
        except FileNotFoundError:
            window, source = None, "row"
        except OSError as exc:
            window, source = None, f"unreadable: {exc.strerror or exc}"
        context = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "original": obj,
            "title": f"{stream} of {process_label(obj.pk, obj.cmd, obj.status)}",
            "subtitle": process_label(obj.pk, obj.cmd, obj.status),
            "stream": stream,
            "window": window,
            "source": source,
            "stored": mask_text(_stored_window(getattr(obj, stream) or "", LOG_WINDOW), secrets)
            if window is None
            else "",
            "earlier": max(0, window.start - LOG_WINDOW) if window and window.has_earlier else None,
            "later": window.end if window and window.has_later else None,
            "at_end": window is None or not window.has_later,
            "path": path,
            "live": obj.status == ProcessStatus.RUNNING,
        }
        return TemplateResponse(request, "admin/machine/process/log.html", context)

    def log_download_view(self, request, object_id, stream):
        """The whole log, masked, streamed from the file (never read into memory); the stored copy if no file."""
        if stream not in LOG_STREAMS:
            raise Http404("No such log.")
        obj = self._viewable(request, object_id)
        filename = f"process-{obj.pk}-{stream}.log"
        try:
            chunks = obj.masked_log(stream)  # opens the file now; closed when the response is
        except FileNotFoundError:
            text = mask_text(getattr(obj, stream) or "", obj.mask_values())
            response = HttpResponse(text, content_type="text/plain; charset=utf-8")
            response["Content-Disposition"] = f'attachment; filename="{filename}"'
            return response
        except OSError as exc:
            raise Http404(f"The log file cannot be read: {exc.strerror or exc}") from None
        response = StreamingHttpResponse(chunks, content_type="text/plain")
        response["Content-Disposition"] = f'attachment; filename="{filename}"'
        return response

    # -- terminate, with a confirmation first --------------------------------------------------------

    def _terminate(self, request, processes) -> None:
        """Signal only rows whose PID is provably ours (pid + start time + command match this host)."""
        terminated, refused = [], []
        here = Machine.current()
        for process in processes:
            label = f"{str(process.pk)[-12:]} (pid {process.pid})"
            if process.machine_id != here.pk:
                refused.append(
                    f"{label}: belongs to machine {process.machine.hostname}; terminate it on that host"
                )
            elif process.status != ProcessStatus.RUNNING or process.pid is None:
                refused.append(f"{label}: not running")
            elif process.proc is None:
                refused.append(f"{label}: PID is not provably ours (gone, or reused by another process)")
            elif process.terminate():
                terminated.append(label)
            else:
                refused.append(f"{label}: exited or could not be signalled")
        if terminated:
            self.message_user(request, f"Terminated {len(terminated)} process(es): {', '.join(terminated)}.")
        if refused:
            self.message_user(
                request,
                f"Refused to signal {len(refused)} process(es): {'; '.join(refused)}.",
                messages.ERROR,
            )

    def _confirmation(self, request, processes, *, action: str | None):
        """The page that asks before anything is signalled (like Django's delete confirmation)."""
        rows = [
            {
                "process": p,
                "label": process_label(p.pk, p.cmd, p.status),
                "url": reverse("admin:machine_process_change", args=[p.pk]),
                "running": p.status == ProcessStatus.RUNNING,
                "ours": p.status == ProcessStatus.RUNNING and p.proc is not None,
                "children": len(p.get_children_pids()) if p.status == ProcessStatus.RUNNING else 0,
            }
            for p in processes
        ]
        context = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "title": "Terminate processes?",
            "rows": rows,
            "action": action,
            "action_checkbox_name": ACTION_CHECKBOX_NAME,
            "any_running": any(r["ours"] for r in rows),
        }
        return TemplateResponse(request, "admin/machine/process/terminate_confirmation.html", context)

    @admin.action(description="Terminate selected processes (SIGTERM, then SIGKILL)…", permissions=["change"])
    def terminate_processes(self, request, queryset):
        """Asks first; once confirmed (post=yes), terminates the provably-ours running rows."""
        processes = list(queryset.select_related("machine"))
        if request.POST.get("post") == "yes":
            self._terminate(request, processes)
            return None
        return self._confirmation(request, processes, action="terminate_processes")

    def terminate_view(self, request, object_id):
        """The detail page's "Terminate" button: confirmation on GET, terminate on a confirmed POST."""
        obj = self._viewable(request, object_id, change=True)
        if request.method == "POST" and request.POST.get("post") == "yes":
            self._terminate(request, [obj])
            return HttpResponseRedirect(reverse("admin:machine_process_change", args=[obj.pk]))
        return self._confirmation(request, [obj], action=None)

    @admin.action(description="Clean up stale running rows (of this machine)", permissions=["change"])
    def cleanup_stale(self, request, queryset):
        """Close this machine's stale RUNNING rows; another machine's rows can only be judged on that host."""
        here = Machine.current()
        others = sorted(
            set(queryset.exclude(machine=here).values_list("machine__hostname", flat=True)), key=str
        )
        if queryset.filter(machine=here).exists():
            cleaned = Process.cleanup_stale_running(machine=here)
            self.message_user(
                request, f"Marked {cleaned} stale running process row(s) of this machine exited."
            )
        if others:
            self.message_user(
                request,
                f"Refused to judge rows of other machines ({', '.join(others)}): their processes can only be "
                "checked on their own hosts (run `manage.py cleanup` there).",
                messages.ERROR,
            )


def _log_links(obj, stream: str) -> str:
    return format_html(
        '<p class="machine-log-nav"><a href="{}">Full {} log</a><a href="{}">Download</a></p>',
        reverse("admin:machine_process_log", args=[obj.pk, stream]),
        stream,
        reverse("admin:machine_process_log_download", args=[obj.pk, stream]),
    )


def _stored_window(text: str, window: int) -> str:
    """The end of the output stored in the row (when there is no log file), at most `window` characters."""
    return text[-window:]


def _tree_node(process) -> str:
    label = process_label(process.pk, process.cmd, process.status)
    return format_html(
        '<a href="{}">{}</a> {} {} <span class="machine-tree-note">{}</span>',
        reverse("admin:machine_process_change", args=[process.pk]),
        label,
        badge(
            process.get_status_display(), "active" if process.status == ProcessStatus.RUNNING else "neutral"
        ),
        exit_badge(process),
        process.process_type,
    )


def render_process_tree(obj) -> str:
    """Nested <ul>: each ancestor from the root, this process (bold), then its descendants (bounded)."""
    descendants = obj.get_descendants()
    shown, hidden = descendants[:TREE_LIMIT], max(0, len(descendants) - TREE_LIMIT)
    children: dict = {}
    for process in shown:
        children.setdefault(process.parent_id, []).append(process)

    def subtree(process) -> str:
        items = format_html_join(
            "", "<li>{}{}</li>", ((_tree_node(c), subtree(c)) for c in children.get(process.pk, []))
        )
        return format_html("<ul>{}</ul>", items) if items else ""

    node = format_html('<li class="machine-tree-self">{}{}</li>', _tree_node(obj), subtree(obj))
    for ancestor in obj.ancestors:  # nearest first: wrap outwards up to the root
        node = format_html("<li>{}<ul>{}</ul></li>", _tree_node(ancestor), node)
    more = ""
    if hidden:
        more = format_html(
            "<p>… and {} more ({})</p>",
            hidden,
            _changelist_link(Process, f"parent__id__exact={obj.pk}", "direct children"),
        )
    return format_html('<ul class="machine-tree">{}</ul>{}', node, more)
