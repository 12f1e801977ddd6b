"""workers.models as the original declares it; each test states the original's behaviour.

Crawl, Snapshot and ArchiveResult (tests/archiver) are declared the way the original's apps declare
theirs, with only the import prefix changed.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.core import checks
from django.db import models
from django.test.utils import isolate_apps
from django.utils import timezone
from statemachine import State

from tests.archiver.models import ArchiveResult, Crawl, CrawlMachine, Snapshot
from workers.models import (
    RETRY_AT_MAX,
    BaseModelWithStateMachine,
    BaseStateMachine,
    DefaultStatusChoices,
    ModelWithStateMachine,
)


def make_crawl(**fields) -> Crawl:
    return Crawl.objects.create(urls=fields.pop("urls", "https://example.com/a"), **fields)


def test_default_status_choices_and_the_base_declares_status_and_retry_at():
    """Original: DefaultStatusChoices queued/started/paused/sealed; ModelWithStateMachine.StatusChoices is it;
    the abstract base declares `status` (StatusField: max_length 15, default queued, indexed) and `retry_at`
    (RetryAtField: nullable, indexed, default now), and active_state STARTED."""
    assert DefaultStatusChoices.choices == [
        ("queued", "Queued"), ("started", "Started"), ("paused", "Paused"), ("sealed", "Sealed")
    ]  # fmt: skip
    assert ModelWithStateMachine.StatusChoices is DefaultStatusChoices
    assert ModelWithStateMachine.active_state == DefaultStatusChoices.STARTED
    fields = {f.name: f for f in ModelWithStateMachine._meta.fields}
    status, retry_at = fields["status"], fields["retry_at"]
    assert isinstance(status, models.CharField) and status._is_state_field
    assert (status.max_length, status.default, status.db_index, status.null, status.blank) == (
        15, "queued", True, False, False
    )  # fmt: skip
    assert status.choices == DefaultStatusChoices.choices
    assert isinstance(retry_at, models.DateTimeField) and retry_at._is_retry_at_field
    assert (retry_at.null, retry_at.blank, retry_at.db_index, retry_at.default) == (
        True,
        True,
        True,
        timezone.now,
    )
    assert (ModelWithStateMachine.state_field_name, ModelWithStateMachine.retry_at_field_name) == (
        "status", "retry_at"
    )  # fmt: skip
    assert ModelWithStateMachine.state_machine_attr == "sm"


def test_status_and_retry_at_field_factories_are_classmethods_with_markers():
    """Original: StatusField(**kw)/RetryAtField(**kw) are classmethods copying the default field and
    marking it (_is_state_field / _is_retry_at_field); keyword arguments override the defaults."""
    assert isinstance(ModelWithStateMachine.__dict__.get("StatusField"), classmethod) or isinstance(
        BaseModelWithStateMachine.__dict__["StatusField"], classmethod
    )
    status = ModelWithStateMachine.StatusField(choices=[("a", "A")], default="a", max_length=16)
    assert (status.choices, status.default, status.max_length, status.db_index) == (
        [("a", "A")],
        "a",
        16,
        True,
    )
    assert status._is_state_field is True
    retry_at = Crawl.RetryAtField(help_text="when")
    assert retry_at._is_retry_at_field is True and retry_at.help_text == "when" and retry_at.null
    assert ModelWithStateMachine.StatusField() is not ModelWithStateMachine.StatusField()


def test_meta_is_usable_as_a_base_as_the_originals_is():
    """Original: downstream Meta classes subclass the bases' Metas,
    `class Meta(ModelWithOutputDir.Meta, ..., ModelWithStateMachine.Meta)`, and are concrete."""
    for model in (Crawl, Snapshot, ArchiveResult):
        assert not model._meta.abstract
        assert model._meta.app_label == "archiver"
        assert {"status", "retry_at"} <= {f.name for f in model._meta.fields}
    assert ModelWithStateMachine._meta.abstract and BaseModelWithStateMachine._meta.abstract


def test_state_constants_are_plain_strings():
    """Original: INITIAL_STATE and ACTIVE_STATE are str, FINAL_STATES and FINAL_OR_ACTIVE_STATES lists of str."""
    assert (Crawl.INITIAL_STATE, Crawl.ACTIVE_STATE, Crawl.FINAL_STATES) == ("queued", "started", ["sealed"])
    assert Crawl.FINAL_OR_ACTIVE_STATES == ["sealed", "started"]
    assert ArchiveResult.FINAL_STATES == ["succeeded", "failed", "skipped"]
    for value in (
        Crawl.INITIAL_STATE,
        Crawl.ACTIVE_STATE,
        *Crawl.FINAL_STATES,
        *ArchiveResult.FINAL_OR_ACTIVE_STATES,
    ):
        assert type(value) is str
    assert type(Crawl.FINAL_STATES) is list and type(Crawl.FINAL_OR_ACTIVE_STATES) is list
    assert Crawl.StateMachineClass is CrawlMachine
    assert BaseModelWithStateMachine._state_to_str(CrawlMachine.sealed) == "sealed"


def test_state_machine_class_needs_a_name():
    """Original: StateMachineClass raises NotImplementedError when state_machine_name is not set."""

    class Unnamed:
        state_machine_name = None

    with pytest.raises(NotImplementedError, match="must define .state_machine_name"):
        BaseModelWithStateMachine.__dict__["StateMachineClass"].__get__(None, Unnamed)


def test_extend_choices_builds_a_new_status_choices():
    """Original: extend_choices(base) decorates a TextChoices with extra members and returns a new
    TextChoices named StatusChoices: the base's members first, an extra label replacing a base one."""

    @ModelWithStateMachine.extend_choices(DefaultStatusChoices)
    class Extra(models.TextChoices):
        BACKOFF = "backoff", "Backing off"
        SEALED = "sealed", "Done"

    assert Extra.__name__ == "StatusChoices"
    assert Extra.choices == [
        ("queued", "Queued"), ("started", "Started"), ("paused", "Paused"), ("sealed", "Done"),
        ("backoff", "Backing off"),
    ]  # fmt: skip
    with pytest.raises(AssertionError):
        ModelWithStateMachine.extend_choices(dict)


@pytest.mark.django_db
def test_retry_at_and_state_accessors_and_bump_retry_at_are_in_memory():
    """Original: RETRY_AT/STATE read and write the named fields; bump_retry_at(seconds=10) sets
    retry_at = now + seconds in memory only."""
    crawl = make_crawl()
    assert (crawl.STATE, crawl.RETRY_AT) == (crawl.status, crawl.retry_at)
    crawl.STATE = "started"
    assert crawl.status == "started"
    before = timezone.now()
    crawl.bump_retry_at()
    assert before + timedelta(seconds=9) < crawl.RETRY_AT <= timezone.now() + timedelta(seconds=10)
    assert Crawl.objects.get(pk=crawl.pk).status == "queued"  # nothing saved


@pytest.mark.django_db
def test_events_are_bound_as_instance_methods():
    """Original (MachineMixin era, bind_events_as_methods): `crawl.tick()` and `crawl.seal()` fire the
    machine's events, as `crawl.sm.tick()` does; the row's own attributes win over event names."""
    crawl = make_crawl(urls="https://example.com/1\nhttps://example.com/2")
    crawl.tick()  # queued -> started: the enter callback queues one Snapshot per URL
    crawl.refresh_from_db()
    assert crawl.status == "started"
    assert sorted(crawl.snapshot_set.values_list("url", flat=True)) == [
        "https://example.com/1", "https://example.com/2"
    ]  # fmt: skip
    crawl.seal()
    assert Crawl.objects.get(pk=crawl.pk).status == "sealed"
    assert crawl.sm.current_state_value == "sealed"
    with pytest.raises(AttributeError):
        crawl.not_an_event  # noqa: B018
    from machine.models import Process

    assert Process.kill is not None and "kill" in Process.StateMachineClass._events  # the model's kill() wins
    assert Process(cmd=["true"]).kill.__func__ is Process.kill


@pytest.mark.django_db
def test_base_state_machine_stores_the_row_and_reprs():
    """Original: BaseStateMachine(obj) stores obj under model_attr_name and passes it as the model;
    repr/str 'ClassName[<id>]'. Ours reads the row's state_field_name by default (see the table)."""
    crawl = make_crawl()
    Crawl.objects.filter(pk=crawl.pk).update(status="sealed")
    crawl.refresh_from_db()
    machine = CrawlMachine(crawl)
    assert machine.crawl is crawl and machine.model is crawl
    assert repr(machine) == str(machine) == f"CrawlMachine[{crawl.id}]"
    assert machine.current_state_value == "sealed"  # the row's real status
    explicit = CrawlMachine(make_crawl(urls="https://b.example"), state_field="status")
    assert explicit.current_state_value == "queued"


@pytest.mark.django_db
def test_update_and_requeue_is_guarded_by_retry_at_and_refreshes_the_instance():
    """Original: update_and_requeue(**kw) writes kw plus modified_at only where retry_at is still the
    instance's; it reloads the instance whether or not it wrote, and returns True only when it wrote."""
    crawl = make_crawl()
    stale = Crawl.objects.get(pk=crawl.pk)
    later = timezone.now() + timedelta(minutes=5)
    before = crawl.modified_at
    assert crawl.update_and_requeue(retry_at=later, label="first") is True
    assert (crawl.retry_at, crawl.label) == (later, "first") and crawl.modified_at > before
    stale.label = "unsaved"
    assert stale.update_and_requeue(label="second") is False
    assert (stale.label, stale.retry_at) == ("first", later)  # reloaded from the row
    assert Crawl.objects.get(pk=crawl.pk).label == "first"
    # refresh=False: a successful write is applied to the instance, no reload.
    assert crawl.update_and_requeue(refresh=False, label="third") is True and crawl.label == "third"


@pytest.mark.django_db
def test_claims_are_single_winner_and_update_the_instance():
    """Original: claim_for_worker(obj, lock_seconds=60) moves a due row's retry_at ahead only if it is still
    what obj saw (one UPDATE), updating obj's retry_at and modified_at; claim_processing_lock is False for
    a final row or a row without retry_at; tick_claimed claims, ticks once and reloads."""
    crawl = make_crawl()
    rival = Crawl.objects.get(pk=crawl.pk)
    assert Crawl.claim_for_worker(crawl, lock_seconds=30) is True
    assert crawl.retry_at > timezone.now() + timedelta(seconds=25)
    assert Crawl.claim_for_worker(rival) is False  # saw the old retry_at
    assert rival.claim_processing_lock() is False
    assert rival.tick_claimed() is False and Crawl.objects.get(pk=crawl.pk).status == "queued"

    fresh = make_crawl(urls="https://t.example")
    assert fresh.tick_claimed(lock_seconds=5) is True
    assert fresh.status == "started" and fresh.snapshot_set.count() == 1  # ticked and reloaded

    sealed = make_crawl(urls="https://s.example")
    Crawl.objects.filter(pk=sealed.pk).update(status="sealed")
    sealed.refresh_from_db()
    assert sealed.claim_processing_lock() is False
    unscheduled = make_crawl(urls="https://u.example")
    unscheduled.retry_at = None
    assert unscheduled.claim_processing_lock() is False


@pytest.mark.django_db
def test_get_queue_and_status_counts():
    """Original: get_queue() is the rows due now, oldest retry_at first; status_counts() counts each status."""
    now = timezone.now()
    old = make_crawl(retry_at=now - timedelta(minutes=2))
    new = make_crawl(urls="https://b.example", retry_at=now - timedelta(minutes=1))
    make_crawl(urls="https://c.example", retry_at=now + timedelta(minutes=1))  # not due
    make_crawl(urls="https://d.example", retry_at=None, status="sealed")
    assert list(Crawl.get_queue()) == [old, new]
    assert Crawl.status_counts() == {"queued": 3, "started": 0, "paused": 0, "sealed": 1}
    assert Crawl.status_counts(statuses=["sealed"]) == {"sealed": 1}


@pytest.mark.django_db
def test_safe_update_pause_and_resume():
    """Original: safe_update writes with an optional guard and reloads; pause()/resume() move a row to
    PAUSED (retry_at never) and back to QUEUED; False where there is nothing to do."""
    crawl = make_crawl()
    assert crawl.safe_update({"label": "x"}, extra_filter={"status": "started"}) is False
    assert crawl.safe_update({"label": "x"}) is True and crawl.label == "x"
    assert crawl.pause(save=False) is True and (crawl.status, crawl.retry_at) == ("paused", RETRY_AT_MAX)
    crawl.save()
    assert crawl.is_paused and crawl.pause(save=False) is False
    when = timezone.now() + timedelta(minutes=1)
    assert crawl.resume(when=when) is True
    assert (crawl.status, crawl.retry_at) == ("queued", when)
    assert crawl.resume() is False  # not paused
    result_choices = ArchiveResult.StatusChoices
    assert not hasattr(result_choices, "PAUSED")
    # A model without a PAUSED status cannot be paused.
    assert ArchiveResult(status="queued").pause(save=False) is False


@isolate_apps("workers")
def test_the_originals_check_ids_beside_ours():
    """Original: workers.E011 (status choices differ from StatusChoices), E012 (no StatusField),
    E013 (no RetryAtField), E014 (no `id` primary key), E015 (state_machine_name not a str),
    E016 (no such machine), E018 (active_state not a status)."""

    class Machine(BaseStateMachine):
        a = State(value="queued", initial=True)
        b = State(value="sealed", final=True)
        tick = a.to(b)

    class WrongChoices(ModelWithStateMachine):
        status = ModelWithStateMachine.StatusField(choices=[("queued", "Q"), ("sealed", "S")])
        state_machine_name = f"{__name__}.WrongChoicesMachine"

        class Meta:
            app_label = "workers"

    class PlainFields(ModelWithStateMachine):
        status = models.CharField(max_length=15, choices=DefaultStatusChoices.choices, default="queued")
        retry_at = models.DateTimeField(null=True)
        code = models.CharField(max_length=5, primary_key=True)
        state_machine_name = 42
        active_state = "busy"

        class Meta:
            app_label = "workers"

    globals()["WrongChoicesMachine"] = Machine
    try:
        wrong = {e.id for e in WrongChoices.check()}
        plain = {e.id for e in PlainFields.check()}
    finally:
        del globals()["WrongChoicesMachine"]
    assert "workers.E011" in wrong
    assert {"workers.E012", "workers.E013", "workers.E014", "workers.E015", "workers.E016"} <= plain
    assert all(isinstance(e, checks.Error) for e in PlainFields.check() if e.id.startswith("workers."))
