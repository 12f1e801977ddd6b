"""A downstream archiver declared the way the original's `crawls` and `core` apps declare theirs.

Crawl, Snapshot and ArchiveResult use the original's bases, Meta inheritance, StatusField/RetryAtField,
StatusChoices, state_machine_name, active_state, and state machines whose enter callbacks persist
through `update_and_requeue`; only the import prefixes differ from code written for the original.
An ArchiveResult runs its plugin as a machine.Process that the runner launches and reaps.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from django.conf import settings
from django.db import models
from django.utils import timezone
from statemachine import State, registry
from uuid6 import uuid7

from base_models.models import (
    AutoDateTimeField,
    ModelWithConfig,
    ModelWithHealthStats,
    ModelWithNotes,
    ModelWithOutputDir,
    get_or_create_system_user_pk,
)
from machine.conf import machine_settings
from machine.models import Process
from workers.models import BaseStateMachine, ModelWithStateMachine

#: How soon a started row looks at its children again.
POLL = timedelta(seconds=0.2)
#: An exit code that asks for a retry (EX_TEMPFAIL), and how many attempts a result gets.
EXIT_TEMPFAIL = 75
MAX_ATTEMPTS = 2


class Crawl(ModelWithOutputDir, ModelWithConfig, ModelWithHealthStats, ModelWithStateMachine):
    id = models.UUIDField(primary_key=True, default=uuid7, editable=False, unique=True)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, default=get_or_create_system_user_pk, null=False
    )
    modified_at = models.DateTimeField(auto_now=True)

    urls = models.TextField(blank=False, null=False, help_text="Newline-separated URLs to archive")
    label = models.CharField(max_length=64, blank=True, null=False, default="")
    notes = models.TextField(blank=True, null=False, default="")
    config = models.JSONField(default=dict, null=True, blank=True)

    status = ModelWithStateMachine.StatusField(
        choices=ModelWithStateMachine.StatusChoices, default=ModelWithStateMachine.StatusChoices.QUEUED
    )
    retry_at = ModelWithStateMachine.RetryAtField(default=timezone.now)

    state_machine_name = "tests.archiver.models.CrawlMachine"
    retry_at_field_name = "retry_at"
    state_field_name = "status"
    StatusChoices = ModelWithStateMachine.StatusChoices
    active_state = StatusChoices.STARTED

    sm: CrawlMachine

    class Meta(
        ModelWithOutputDir.Meta, ModelWithConfig.Meta, ModelWithHealthStats.Meta, ModelWithStateMachine.Meta
    ):
        app_label = "archiver"
        verbose_name = "Crawl"
        verbose_name_plural = "Crawls"

    @property
    def output_dir(self) -> Path:
        return machine_settings.data_dir / "users" / "system" / self.output_dir_str

    def get_urls_list(self) -> list[str]:
        lines = (line.strip() for line in (self.urls or "").splitlines())
        return [line for line in lines if line and not line.startswith("#")]

    def run(self) -> Snapshot | None:
        """Queue one Snapshot per URL (once each); the first one, or None when there is none."""
        first = None
        for url in self.get_urls_list():
            snapshot, _created = Snapshot.objects.get_or_create(crawl=self, url=url)
            first = first or snapshot
        return first

    def is_finished(self) -> bool:
        snapshots = self.snapshot_set.all()
        return snapshots.exists() and not snapshots.exclude(status=Snapshot.StatusChoices.SEALED).exists()

    def cleanup(self) -> None:
        """Nothing runs in the background for a crawl here; a real archiver stops its browser."""


class CrawlMachine(BaseStateMachine):
    model_attr_name = "crawl"

    queued = State(value=Crawl.StatusChoices.QUEUED, initial=True)
    started = State(value=Crawl.StatusChoices.STARTED)
    sealed = State(value=Crawl.StatusChoices.SEALED, final=True)

    tick = (
        queued.to.itself(unless="can_start")
        | queued.to(started, cond="can_start")
        | started.to.itself(unless="is_finished")
        | started.to(sealed, cond="is_finished")
    )
    seal = started.to(sealed)

    def can_start(self) -> bool:
        return bool(self.crawl.get_urls_list())

    def is_finished(self) -> bool:
        return self.crawl.is_finished()

    @started.enter
    def enter_started(self):
        self.crawl.run()
        self.crawl.update_and_requeue(retry_at=timezone.now() + POLL, status=Crawl.StatusChoices.STARTED)

    @sealed.enter
    def enter_sealed(self):
        self.crawl.cleanup()
        self.crawl.update_and_requeue(retry_at=None, status=Crawl.StatusChoices.SEALED)


class Snapshot(
    ModelWithOutputDir, ModelWithConfig, ModelWithNotes, ModelWithHealthStats, ModelWithStateMachine
):
    id = models.UUIDField(primary_key=True, default=uuid7, editable=False, unique=True)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    modified_at = models.DateTimeField(auto_now=True)

    url = models.URLField(max_length=2000, db_index=True)
    bookmarked_at = AutoDateTimeField(default=None, null=False, editable=True, db_index=True)
    crawl = models.ForeignKey(Crawl, on_delete=models.CASCADE, null=False, related_name="snapshot_set")
    title = models.CharField(max_length=512, null=True, blank=True, db_index=True)
    config = models.JSONField(default=dict, null=False, blank=False, editable=True)

    retry_at = ModelWithStateMachine.RetryAtField(default=timezone.now)
    status = ModelWithStateMachine.StatusField(
        choices=ModelWithStateMachine.StatusChoices, default=ModelWithStateMachine.StatusChoices.QUEUED
    )

    state_machine_name = "tests.archiver.models.SnapshotMachine"
    state_field_name = "status"
    retry_at_field_name = "retry_at"
    StatusChoices = ModelWithStateMachine.StatusChoices
    active_state = StatusChoices.STARTED

    class Meta(
        ModelWithOutputDir.Meta,
        ModelWithConfig.Meta,
        ModelWithNotes.Meta,
        ModelWithHealthStats.Meta,
        ModelWithStateMachine.Meta,
    ):
        app_label = "archiver"
        verbose_name = "Snapshot"
        verbose_name_plural = "Snapshots"
        constraints = [models.UniqueConstraint(fields=["url", "crawl"], name="archiver_unique_url_per_crawl")]

    @property
    def created_by(self):
        """A snapshot belongs to whoever created its crawl (it has no owner column of its own)."""
        return self.crawl.created_by

    @property
    def output_dir(self) -> Path:
        return self.crawl.output_dir / "snapshots" / str(self.id)

    def create_pending_archiveresults(self) -> list[ArchiveResult]:
        """One queued ArchiveResult per plugin the crawl's config lists (once each)."""
        results = []
        for spec in (self.crawl.config or {}).get("PLUGINS", []):
            result, _created = ArchiveResult.objects.get_or_create(
                snapshot=self, plugin=spec["plugin"], defaults={"cmd": spec["cmd"]}
            )
            results.append(result)
        return results

    def is_finished_processing(self) -> bool:
        finals = ArchiveResult.FINAL_STATES
        return not self.archiveresult_set.exclude(status__in=finals).exists()


class SnapshotMachine(BaseStateMachine):
    model_attr_name = "snapshot"

    queued = State(value=Snapshot.StatusChoices.QUEUED, initial=True)
    started = State(value=Snapshot.StatusChoices.STARTED)
    sealed = State(value=Snapshot.StatusChoices.SEALED, final=True)

    tick = (
        queued.to.itself(unless="can_start")
        | queued.to(started, cond="can_start")
        | started.to.itself(unless="is_finished")
        | started.to(sealed, cond="is_finished")
    )
    seal = started.to(sealed)

    def can_start(self) -> bool:
        return bool(self.snapshot.url)

    def is_finished(self) -> bool:
        return self.snapshot.is_finished_processing()

    @queued.enter
    def enter_queued(self):
        self.snapshot.update_and_requeue(retry_at=timezone.now(), status=Snapshot.StatusChoices.QUEUED)

    @started.enter
    def enter_started(self):
        self.snapshot.create_pending_archiveresults()
        self.snapshot.update_and_requeue(
            retry_at=timezone.now() + POLL, status=Snapshot.StatusChoices.STARTED
        )

    @sealed.enter
    def enter_sealed(self):
        self.snapshot.update_and_requeue(retry_at=None, status=Snapshot.StatusChoices.SEALED)
        # The last snapshot of a crawl seals it, as the original's does, through the bound event.
        crawl = Crawl.objects.get(pk=self.snapshot.crawl_id)
        if crawl.status == Crawl.StatusChoices.STARTED and crawl.is_finished():
            crawl.seal()


class ArchiveResult(
    ModelWithOutputDir, ModelWithConfig, ModelWithNotes, ModelWithHealthStats, ModelWithStateMachine
):
    class StatusChoices(models.TextChoices):
        QUEUED = "queued", "Queued"
        STARTED = "started", "Started"
        BACKOFF = "backoff", "Waiting to retry"
        SUCCEEDED = "succeeded", "Succeeded"
        FAILED = "failed", "Failed"
        SKIPPED = "skipped", "Skipped"

    id = models.UUIDField(primary_key=True, default=uuid7, editable=False, unique=True)
    snapshot = models.ForeignKey(Snapshot, on_delete=models.CASCADE, related_name="archiveresult_set")
    plugin = models.CharField(max_length=32, null=False, blank=False, db_index=True)
    hook_name = models.CharField(max_length=255, blank=True, default="")
    cmd = models.JSONField(default=list, null=False, blank=True)
    process = models.OneToOneField(
        Process, on_delete=models.SET_NULL, null=True, blank=True, related_name="archiveresult"
    )
    attempts = models.PositiveIntegerField(default=0)
    start_ts = models.DateTimeField(default=None, null=True, blank=True)
    end_ts = models.DateTimeField(default=None, null=True, blank=True)
    output_str = models.TextField(blank=True, default="")

    status = ModelWithStateMachine.StatusField(choices=StatusChoices.choices, default=StatusChoices.QUEUED)
    retry_at = ModelWithStateMachine.RetryAtField(default=timezone.now)

    state_machine_name = "tests.archiver.models.ArchiveResultMachine"
    retry_at_field_name = "retry_at"
    state_field_name = "status"
    active_state = StatusChoices.STARTED

    class Meta(
        ModelWithOutputDir.Meta,
        ModelWithConfig.Meta,
        ModelWithNotes.Meta,
        ModelWithHealthStats.Meta,
        ModelWithStateMachine.Meta,
    ):
        app_label = "archiver"
        verbose_name = "Archive Result"
        verbose_name_plural = "Archive Results"

    @property
    def output_dir(self) -> Path:
        return self.snapshot.output_dir / self.plugin

    def command(self) -> list[str]:
        return [str(arg).replace("{url}", self.snapshot.url) for arg in self.cmd]

    def current_process(self) -> Process | None:
        return Process.objects.filter(pk=self.process_id).first() if self.process_id else None

    def cascade_health_update(self, success: bool) -> None:
        self.increment_health_stats(success)
        self.snapshot.increment_health_stats(success)
        self.snapshot.crawl.increment_health_stats(success)


class ArchiveResultMachine(BaseStateMachine):
    model_attr_name = "archiveresult"

    queued = State(value=ArchiveResult.StatusChoices.QUEUED, initial=True)
    started = State(value=ArchiveResult.StatusChoices.STARTED)
    backoff = State(value=ArchiveResult.StatusChoices.BACKOFF)
    succeeded = State(value=ArchiveResult.StatusChoices.SUCCEEDED, final=True)
    failed = State(value=ArchiveResult.StatusChoices.FAILED, final=True)
    skipped = State(value=ArchiveResult.StatusChoices.SKIPPED, final=True)

    tick = (
        queued.to.itself(unless="can_start")
        | queued.to(started, cond="can_start")
        | started.to.itself(unless="is_finished")
        | started.to(succeeded, cond="is_succeeded")
        | started.to(backoff, cond="is_backoff")
        | started.to(skipped, cond="is_skipped")
        | started.to(failed, cond="is_failed")
        | backoff.to.itself(unless="can_start")
        | backoff.to(started, cond="can_start")
    )

    def _exit_code(self) -> int | None:
        process = self.archiveresult.current_process()
        if process is None or process.status != Process.StatusChoices.EXITED:
            return None
        return process.exit_code

    def can_start(self) -> bool:
        return bool(self.archiveresult.snapshot.url and self.archiveresult.cmd)

    def is_finished(self) -> bool:
        return self._exit_code() is not None

    def is_succeeded(self) -> bool:
        return self._exit_code() == 0

    def is_backoff(self) -> bool:
        return self._exit_code() == EXIT_TEMPFAIL and self.archiveresult.attempts < MAX_ATTEMPTS

    def is_skipped(self) -> bool:
        return not self.archiveresult.cmd

    def is_failed(self) -> bool:
        return self._exit_code() not in (None, 0)

    @queued.enter
    def enter_queued(self):
        self.archiveresult.update_and_requeue(retry_at=timezone.now(), start_ts=None)

    @started.enter
    def enter_started(self, source):
        result = self.archiveresult
        process = result.current_process()
        # A new attempt only when coming from queued/backoff: on a started -> started poll the
        # process may have exited since is_finished() looked, and that exit is the next tick's news.
        if source.id != "started" and (process is None or process.status == Process.StatusChoices.EXITED):
            # A new attempt: its own Process, queued for a worker to launch.
            result.output_dir.mkdir(parents=True, exist_ok=True)
            process = Process.objects.create_for_archiveresult(
                result,
                cmd=result.command(),
                pwd=str(result.output_dir),
                process_type=Process.TypeChoices.HOOK,
                timeout=60,
                url=result.snapshot.url,
            )
            result.update_and_requeue(
                retry_at=timezone.now() + POLL,
                status=ArchiveResult.StatusChoices.STARTED,
                start_ts=timezone.now(),
                process=process,
                attempts=result.attempts + 1,
            )
        else:
            result.update_and_requeue(retry_at=timezone.now() + POLL)

    @backoff.enter
    def enter_backoff(self):
        self.archiveresult.update_and_requeue(
            retry_at=timezone.now() + POLL, status=ArchiveResult.StatusChoices.BACKOFF, end_ts=None
        )

    def _finish(self, status: str, success: bool | None) -> None:
        result = self.archiveresult
        process = result.current_process()
        output = (process.stdout or "").strip()[:1000] if process else ""
        result.update_and_requeue(retry_at=None, status=status, end_ts=timezone.now(), output_str=output)
        if success is not None:
            result.cascade_health_update(success)

    @succeeded.enter
    def enter_succeeded(self):
        self._finish(ArchiveResult.StatusChoices.SUCCEEDED, True)

    @failed.enter
    def enter_failed(self):
        self._finish(ArchiveResult.StatusChoices.FAILED, False)

    @skipped.enter
    def enter_skipped(self):
        self._finish(ArchiveResult.StatusChoices.SKIPPED, None)

    def after_transition(self, event, source, target):
        # Bump the parent so the snapshot looks at its results again (the original's pattern).
        self.archiveresult.snapshot.update_and_requeue()


registry.register(CrawlMachine)
registry.register(SnapshotMachine)
registry.register(ArchiveResultMachine)
