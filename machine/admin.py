"""Admin pages an operator uses every day: machines, their interfaces, binaries and processes.

Rows here are written by the app itself (detection, installs, launches), so nothing can be added
by hand, host facts and OS fingerprints are read-only, and the only edits are a machine's config
(validated through the contract's sanitiser) and a binary's install request. Every action needs
the change permission. Secrets never reach a page: env values and secret-looking command options
are redacted again at display time.
"""

from __future__ import annotations

import json

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.contrib.admin.utils import unquote
from django.core.exceptions import PermissionDenied, ValidationError
from django.db.models import Count, Q
from django.urls import reverse
from django.utils import formats, timezone
from django.utils.html import format_html, format_html_join
from django.utils.text import Truncator

from hooks.overrides import override_problems
from machine.admin_helpers import (
    REDACTED,
    TAIL_LINES,
    config_problems,
    format_duration,
    join_tail,
    process_label,
    redact_env_for_display,
    redact_nested,
    shell_command,
)
from machine.choices import BinaryStatus, ProcessStatus
from machine.conf import machine_settings
from machine.models import Binary, Machine, NetworkInterface, Process, _sanitize_machine_config

#: Related processes listed on one page (newest first); the changelist link shows them all.
PROCESS_TABLE_LIMIT = 50


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
            "" if p.exit_code is None else p.exit_code,
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


def _output_tail(tail, stored: str) -> str:
    """The log file's last lines, else the last lines kept in the row; a page never fails on a bad log."""
    try:
        text = join_tail(tail(lines=TAIL_LINES))
    except OSError as exc:  # e.g. a log another user owns: say so instead of a server error
        text = f"(log file unreadable: {exc.strerror or exc})"
    return text or "\n".join((stored or "").splitlines()[-TAIL_LINES:])


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
    class Meta:
        model = Machine
        fields = ["config"]

    def clean_config(self):
        """Accept only what the contract's sanitiser keeps, and say why anything else is refused."""
        config = self.cleaned_data.get("config")
        problems = config_problems(config)
        if problems:
            raise ValidationError(problems)
        return _sanitize_machine_config(config, lib_dir=machine_settings.lib_dir)


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
class MachineAdmin(admin.ModelAdmin):
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

    @admin.display(description="Health %")
    def health_percent(self, obj):
        return obj.health

    @admin.display(description="Stats")
    def stats_display(self, obj):
        return _json_block(obj.stats or {})

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
class NetworkInterfaceAdmin(admin.ModelAdmin):
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

    @admin.display(description="Health %")
    def health_percent(self, obj):
        return obj.health


# -- Binary --------------------------------------------------------------------------------------


@admin.register(Binary)
class BinaryAdmin(admin.ModelAdmin):
    form = BinaryRequestForm
    list_display = [
        "name",
        "binprovider",
        "version",
        "abspath",
        "short_sha256",
        "status",
        "health_percent",
        "machine_link",
        "retry_at",
        "modified_at",
    ]
    list_filter = ["status", "binprovider", "machine"]
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
        "status",
        "retry_at",
        "health_percent",
        "num_uses_succeeded",
        "num_uses_failed",
        "created_at",
        "modified_at",
        "hook_runs",
    ]
    fieldsets = [
        (None, {"fields": ["name", "machine_link", "status", "retry_at"]}),
        ("Resolved", {"fields": ["binprovider", "abspath", "version", "sha256"]}),
        ("Install request", {"fields": ["binproviders", "overrides"]}),
        ("Health", {"fields": [("health_percent", "num_uses_succeeded", "num_uses_failed")]}),
        ("Hook runs", {"fields": ["hook_runs"]}),
        (None, {"fields": ["id", "created_at", "modified_at"]}),
    ]

    def has_add_permission(self, request):
        return False  # requests arrive as BinaryRequest records from hooks

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

    @admin.display(description="Health %")
    def health_percent(self, obj):
        return obj.health

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


# -- Process -------------------------------------------------------------------------------------


@admin.register(Process)
class ProcessAdmin(admin.ModelAdmin):
    list_display = [
        "short_id",
        "command",
        "process_type",
        "status",
        "exit_code",
        "duration",
        "pid",
        "machine_link",
        "binary_link",
        "parent_link",
        "children_count",
        "started_at",
    ]
    list_display_links = ["short_id"]
    list_filter = ["status", "process_type", "machine", "worker_type"]
    search_fields = ["=pid", "cmd", "pwd", "worker_type", "url", "binary__name"]
    list_select_related = ["machine", "binary", "parent"]
    ordering = ["-created_at"]
    actions = ["terminate_processes", "cleanup_stale"]
    fieldsets = [
        (
            None,
            {
                "fields": [
                    "full_command",
                    ("process_type", "worker_type"),
                    ("status", "exit_code", "retry_at"),
                ]
            },
        ),
        ("OS process", {"fields": [("pid", "os_alive"), ("started_at", "ended_at", "duration"), "timeout"]}),
        (
            "Relations",
            {"fields": ["machine_link", "binary_link", "parent_link", "children_links", "iface", "url"]},
        ),
        ("Environment", {"fields": ["pwd", "env_display"]}),
        ("Output", {"fields": ["stdout_tail", "stderr_tail"]}),
        (None, {"fields": ["id", "created_at", "modified_at"]}),
    ]
    readonly_fields = [
        "id",
        "full_command",
        "process_type",
        "worker_type",
        "status",
        "exit_code",
        "retry_at",
        "pid",
        "os_alive",
        "started_at",
        "ended_at",
        "duration",
        "timeout",
        "machine_link",
        "binary_link",
        "parent_link",
        "children_links",
        "iface",
        "url",
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
        return False  # rows are the history of what ran here; cleanup_stale settles stale ones

    def change_view(self, request, object_id, form_url="", extra_context=None):
        """Read-only detail: nothing to save (actions do the changes), titled by the redacted label."""
        if request.method == "POST":
            raise PermissionDenied("Processes are read-only; use the actions on the list page.")
        obj = self.get_object(request, unquote(object_id))
        context = {"show_save": False, "show_save_and_continue": False, "show_delete_link": False}
        if obj is not None:
            context["subtitle"] = process_label(obj.pk, obj.cmd, obj.status)
        return super().change_view(request, object_id, form_url, {**context, **(extra_context or {})})

    def history_view(self, request, object_id, extra_context=None):
        obj = self.get_object(request, unquote(object_id))
        context = {}
        if obj is not None:
            context["safe_label"] = process_label(obj.pk, obj.cmd, obj.status)
            context["title"] = f"Change history: {context['safe_label']}"
        return super().history_view(request, object_id, {**context, **(extra_context or {})})

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(_children=Count("children"))

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

    @admin.display(description="Command (shell-quoted, secrets redacted)")
    def full_command(self, obj):
        return format_html("<code>{}</code>", shell_command(obj.cmd))

    @admin.display(description="Duration")
    def duration(self, obj):
        return format_duration(obj.started_at, obj.ended_at, timezone.now())

    @admin.display(description="Machine", ordering="machine__hostname")
    def machine_link(self, obj):
        return _admin_link(obj.machine, obj.machine.hostname if obj.machine_id else None)

    @admin.display(description="Binary", ordering="binary__name")
    def binary_link(self, obj):
        return _admin_link(obj.binary, obj.binary.name if obj.binary_id else None)

    @admin.display(description="Parent")
    def parent_link(self, obj):
        return _admin_link(obj.parent, str(obj.parent.pk)[-12:] if obj.parent_id else None)

    @admin.display(description="Children")
    def children_links(self, obj):
        return _process_table(obj.children.all(), empty="-")

    @admin.display(description="Still alive (pid and start time verified)")
    def os_alive(self, obj):
        if obj.status != ProcessStatus.RUNNING:
            return "-"
        return "yes" if obj.proc is not None else "no (not running, or PID not provably ours)"

    @admin.display(description="Environment (secrets redacted)")
    def env_display(self, obj):
        pairs = redact_env_for_display(obj.env)
        if not pairs:
            return "-"
        return format_html(
            "<table><tbody>{}</tbody></table>",
            format_html_join("", "<tr><th><code>{}</code></th><td><code>{}</code></td></tr>", pairs),
        )

    @admin.display(description=f"stdout (last {TAIL_LINES} lines)")
    def stdout_tail(self, obj):
        return _pre(_output_tail(obj.tail_stdout, obj.stdout))

    @admin.display(description=f"stderr (last {TAIL_LINES} lines)")
    def stderr_tail(self, obj):
        return _pre(_output_tail(obj.tail_stderr, obj.stderr))

    @admin.action(description="Terminate selected processes (SIGTERM, then SIGKILL)", permissions=["change"])
    def terminate_processes(self, request, queryset):
        """Signal only this machine's rows whose PID is provably ours (pid + start time + command)."""
        terminated, refused = [], []
        here = Machine.current()
        for process in queryset.select_related("machine"):
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
