"""The state-machine framework: BaseStateMachine and the ModelWithStateMachine abstract models.

The public names and call shapes are the original's (`archivebox.workers.models`), so a downstream
app declared against the original imports from here with only the prefix changed. Where this module
does better, docs/compatibility.md says how and why.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

from django.apps import apps
from django.core import checks
from django.db import models
from django.utils import timezone
from django.utils.functional import classproperty
from django.utils.module_loading import import_string
from statemachine import State, StateMachine, registry
from statemachine.mixins import MachineMixin

from workers import claims, fencing
from workers.sql import DbNow

logger = logging.getLogger(__name__)

#: The retry_at of a paused row: never due.
RETRY_AT_MAX = datetime(9999, 1, 1, tzinfo=UTC)
#: How long a row in its active state is leased to the worker ticking it, by default.
ACTIVE_STATE_LEASE_SECONDS = 60


class DefaultStatusChoices(models.TextChoices):
    QUEUED = "queued", "Queued"  #: waiting for a worker
    STARTED = "started", "Started"  #: a worker is on it
    PAUSED = "paused", "Paused"  #: held by an operator (never due) until resumed
    SEALED = "sealed", "Sealed"  #: done


#: Templates of the two fields (never attached to a model): StatusField()/RetryAtField() copy them.
default_status_field = models.CharField(
    choices=DefaultStatusChoices.choices,
    max_length=15,
    default=DefaultStatusChoices.QUEUED,
    null=False,
    blank=False,
    db_index=True,
)
default_retry_at_field = models.DateTimeField(default=timezone.now, null=True, blank=True, db_index=True)


def _field_from_template(template: models.Field, marker: str, **kwargs) -> models.Field:
    """A new field of the template's class with its options overlaid by kwargs, marked for the checks."""
    _name, _path, args, options = template.deconstruct()
    field = type(template)(*args, **{**options, **kwargs})
    setattr(field, marker, True)
    return field


def _state_to_str(state: Any) -> str | None:
    if state is None:
        return None
    return str(state.value) if isinstance(state, State) else str(state)


class BaseStateMachine(StateMachine):
    """A StateMachine bound to one model row, stored under `model_attr_name` (e.g. `binary`).

    It subclasses StateMachine, not StateChart: a StateChart turns exceptions raised in callbacks
    into events, so a failed install would be recorded as done.
    """

    model_attr_name: str = "obj"

    def __init__(self, obj, *args, **kwargs):
        setattr(self, self.model_attr_name, obj)
        kwargs.setdefault("state_field", getattr(obj, "state_field_name", "status"))
        super().__init__(obj, *args, **kwargs)

    def __repr__(self) -> str:
        obj = getattr(self, self.model_attr_name, None)
        return f"{type(self).__name__}[{getattr(obj, 'id', None)}]"

    __str__ = __repr__


def resolve_state_machine(name: str | None) -> type[StateMachine]:
    """The StateMachine class for a dotted name, via python-statemachine's registry, else an import."""
    if not name:
        raise NotImplementedError(
            "ActorType must define .state_machine_name that points to a valid StateMachine"
        )
    try:
        return registry.get_machine_cls(name)
    except KeyError:
        pass
    try:
        cls = import_string(name)
    except ImportError as exc:
        raise LookupError(f"cannot import state machine {name!r}: {exc}") from exc
    if not (isinstance(cls, type) and issubclass(cls, StateMachine)):
        raise LookupError(f"{name!r} is not a StateMachine subclass")
    return cls


class BaseModelWithStateMachine(MachineMixin, models.Model):
    """A row driven by a state machine: a status field, a retry_at schedule and an atomic claim.

    `obj.sm` is created on first use (not in __init__ as MachineMixin does), so loading thousands of
    rows does not build thousands of state machines. With `bind_events_as_methods` (the default) the
    machine's events are also methods of the row: `crawl.tick()` is `crawl.sm.tick()`.
    """

    StatusChoices: type[models.TextChoices]
    state_machine_name: str | None = None
    state_field_name: str = "status"
    retry_at_field_name: str = "retry_at"
    state_machine_attr: str = "sm"
    bind_events_as_methods: bool = True
    #: Accepted for declarations written for the original; this app never warns on save().
    warn_on_save_outside_runner: bool = True
    #: The state a worker is busy in (a state value); None means "the first neither initial nor final".
    active_state: Any = None

    class Meta:
        # No app_label (the original's says "workers"): a subclass that inherits this Meta without
        # naming its app would otherwise be filed under the workers app.
        abstract = True

    def __init__(self, *args, **kwargs):
        # Skip MachineMixin.__init__ (it builds the machine eagerly); see the class docstring.
        models.Model.__init__(self, *args, **kwargs)

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        attr = cls.__dict__.get("state_machine_attr")
        if attr and attr != "sm" and not hasattr(cls, attr):
            setattr(cls, attr, property(BaseModelWithStateMachine._get_state_machine))

    def _get_state_machine(self) -> StateMachine:
        cache = self.__dict__.get("_state_machine")
        if cache is None:
            cache = self.StateMachineClass(self, state_field=self.state_field_name)
            self.__dict__["_state_machine"] = cache
        return cache

    sm = property(_get_state_machine)

    def __getattr__(self, name: str):
        # Only reached for names the row does not have: an event of its machine becomes a method.
        if name.startswith("_") or not type(self).bind_events_as_methods:
            raise AttributeError(name)
        if name not in type(self)._event_names():
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        return getattr(self._get_state_machine(), name)

    @classmethod
    def _event_names(cls) -> frozenset[str]:
        names = cls.__dict__.get("_state_machine_event_names")
        if names is None:
            try:
                names = frozenset(str(event) for event in cls.StateMachineClass._events)
            except Exception:  # misconfigured: the system checks say why
                return frozenset()
            cls._state_machine_event_names = names
        return names

    # -- the machine and its states -------------------------------------------------------------

    @classproperty
    def StateMachineClass(cls) -> type[StateMachine]:
        """The StateMachine class named by `state_machine_name` (python-statemachine's registry)."""
        return resolve_state_machine(cls.state_machine_name)

    @classmethod
    def get_state_machine_class(cls) -> type[StateMachine]:
        return cls.StateMachineClass

    @staticmethod
    def _state_to_str(state: Any) -> str | None:
        """A State's value, or a TextChoices member/str, as a plain str."""
        return _state_to_str(state)

    @classproperty
    def INITIAL_STATE(cls) -> str:
        initial = cls.StateMachineClass.initial_state
        if initial is None:
            raise ValueError("StateMachineClass.initial_state must not be None")
        return _state_to_str(initial)

    @classproperty
    def FINAL_STATES(cls) -> list[str]:
        return [_state_to_str(state) for state in cls.StateMachineClass.final_states]

    @classproperty
    def ACTIVE_STATE(cls) -> str | None:
        if cls.active_state is not None:
            return _state_to_str(cls.active_state)
        for state in cls.StateMachineClass.states:
            if not state.initial and not state.final:
                return _state_to_str(state)
        return None

    @classproperty
    def FINAL_OR_ACTIVE_STATES(cls) -> list[str]:
        active = cls.ACTIVE_STATE
        return [*cls.FINAL_STATES, *([active] if active is not None else [])]

    @property
    def RETRY_AT(self) -> datetime | None:
        return getattr(self, self.retry_at_field_name)

    @RETRY_AT.setter
    def RETRY_AT(self, value: datetime | None) -> None:
        setattr(self, self.retry_at_field_name, value)

    @property
    def STATE(self) -> str:
        return getattr(self, self.state_field_name)

    @STATE.setter
    def STATE(self, value: str) -> None:
        setattr(self, self.state_field_name, value)

    @property
    def is_paused(self) -> bool:
        paused = getattr(getattr(self, "StatusChoices", None), "PAUSED", None)
        return paused is not None and self.STATE == paused

    def bump_retry_at(self, seconds: int = 10) -> None:
        """Schedule the next look `seconds` from now (in memory; the caller saves)."""
        self.RETRY_AT = timezone.now() + timedelta(seconds=seconds)

    # -- field factories -------------------------------------------------------------------------

    @classmethod
    def StatusField(cls, **kwargs) -> models.CharField:
        """The indexed status CharField (queued/started/paused/sealed unless `choices` is given)."""
        return _field_from_template(default_status_field, "_is_state_field", **kwargs)

    @classmethod
    def RetryAtField(cls, **kwargs) -> models.DateTimeField:
        """The nullable, indexed retry_at DateTimeField, due now by default."""
        return _field_from_template(default_retry_at_field, "_is_retry_at_field", **kwargs)

    @classmethod
    def extend_choices(cls, base_choices: type[models.TextChoices]):
        """Decorator: a new `StatusChoices` TextChoices with the base's members, then the decorated ones."""
        assert isinstance(base_choices, type) and issubclass(base_choices, models.TextChoices), (
            "base_choices must be a TextChoices class"
        )

        def wrapper(extra_choices: type[models.TextChoices]) -> type[models.TextChoices]:
            labels = dict(base_choices.choices)
            labels.update(dict(extra_choices.choices))
            members = [(value.upper(), (value, label)) for value, label in labels.items()]
            return models.TextChoices("StatusChoices", members)

        return wrapper

    # -- queue, claims and writes ----------------------------------------------------------------

    @classmethod
    def status_counts(
        cls, queryset: models.QuerySet | None = None, statuses: Iterable[str] | None = None
    ) -> dict[str, int]:
        """How many rows are in each status (all of StatusChoices unless `statuses` is given)."""
        queryset = cls._default_manager.all() if queryset is None else queryset
        wanted = list(statuses or getattr(cls, "StatusChoices", DefaultStatusChoices).values)
        field = cls.state_field_name
        counts = dict.fromkeys(wanted, 0)
        rows = queryset.filter(**{f"{field}__in": wanted}).values_list(field).annotate(n=models.Count("pk"))
        for status, count in rows.order_by():
            counts[status] = count
        return counts

    @classmethod
    def get_queue(cls) -> models.QuerySet:
        """Rows due now (retry_at <= now) and not in a final state, oldest schedule first."""
        return (
            cls._default_manager.filter(**{f"{cls.retry_at_field_name}__lte": DbNow()})
            .exclude(**{f"{cls.state_field_name}__in": cls.FINAL_STATES})
            .order_by(cls.retry_at_field_name)
        )

    @classmethod
    def _has_modified_at(cls) -> bool:
        return any(f.name == "modified_at" for f in cls._meta.concrete_fields)

    @classmethod
    def claim_filter(cls) -> models.Q | None:
        """Rows of this model that the runner in this process may claim (None: all of them).

        The runner knows queue models only through this and `runner_attach()`. Override it to bind
        rows to a host, a tenant or a worker pool (machine.Binary/Process: rows of this machine).
        """
        return None

    def runner_wake_fd(self) -> int | None:
        """A new file descriptor that becomes readable when this row, kept by the worker that ticked
        it, should be ticked again at once (the worker closes it); None: tick it when due."""
        return None

    @classmethod
    def runner_attach(cls, loop) -> None:
        """Called once in each worker process after it starts, with the worker's event loop
        (workers.loop.EventLoop): a model may add readers (e.g. child pidfds) or timers to it."""

    @classmethod
    def runner_recover(cls, pk, guard: dict) -> bool:
        """Called by the orchestrator when a worker died while ticking row `pk` (`guard`: the filter
        that matches the row while the dead worker's claim still holds it). A model whose tick can be
        cut off half done (machine.Process: between a spawn and its record) puts the row right here;
        True if it did, and the row then needs no retry: no failure is counted for it."""
        return False

    @classmethod
    def claim_for_worker(cls, obj: BaseModelWithStateMachine, lock_seconds: int = 60) -> bool:
        """Atomically move a due row's retry_at `lock_seconds` ahead; True only for the one winner.

        One conditional UPDATE (retry_at still what `obj` saw, and due by the database's clock); the
        winner's `obj` gets the new retry_at (and modified_at) in memory, as in the original.
        """
        expected = getattr(obj, cls.retry_at_field_name)
        if expected is None:
            return False
        token = claims.claim_one(cls, obj.pk, expected_retry_at=expected, lease=lock_seconds)
        if token is None:
            return False
        setattr(obj, cls.retry_at_field_name, token)
        if cls._has_modified_at():
            obj.modified_at = (
                cls._default_manager.filter(pk=obj.pk).values_list("modified_at", flat=True).first()
            )
        return True

    @classmethod
    def claim_batch(cls, limit: int = 10, lock_seconds: int = 60, filters: models.Q | None = None) -> list:
        """Claim up to `limit` due rows in one statement and return them (already claimed).

        Each row's retry_at is the claim's token: the database's now + lock_seconds, the same for
        the whole batch.
        """
        return claims.claim_due_instances(cls, lease=lock_seconds, limit=limit, extra_where=filters)

    @classmethod
    def renew_claim(cls, pks: list, claimed_until, lock_seconds: int = 60) -> tuple[list, object]:
        """Push the claim `claimed_until` (its token) on `pks` to the database's now + `lock_seconds`.

        Returns (renewed pks, new token). A row missing from the result is no longer ours: its claim
        expired and another worker took it, or a tick already rescheduled it.
        """
        return claims.move_claims(cls, list(pks), token=claimed_until, lease=lock_seconds)

    @classmethod
    def release_claim(cls, pks: list, claimed_until) -> list:
        """Hand claimed rows back to the queue (due now), if the claim is still ours; return their pks."""
        released, _token = claims.move_claims(cls, list(pks), token=claimed_until, lease=None)
        return released

    def claim_processing_lock(self, lock_seconds: int = 60) -> bool:
        """Claim this row for the calling worker; False for a final row or one with no retry_at."""
        if self.STATE in self.FINAL_STATES or self.RETRY_AT is None:
            return False
        return type(self).claim_for_worker(self, lock_seconds=lock_seconds)

    def tick_claimed(self, lock_seconds: int = 60) -> bool:
        """Claim this row, run exactly one tick, reload the row; False (and no tick) if another worker won."""
        if not self.claim_processing_lock(lock_seconds=lock_seconds):
            return False
        getattr(self, self.state_machine_attr).tick()
        self.refresh_from_db()
        return True

    def safe_update(
        self,
        update_fields: dict[str, Any],
        *,
        refresh: bool = True,
        extra_filter: dict[str, Any] | None = None,
    ) -> bool:
        """One UPDATE of this row (plus modified_at), only where `extra_filter` still matches; True if written.

        With `refresh` the instance is reloaded from the database afterwards, written or not, so it
        shows what the row really holds.
        """
        values = dict(update_fields)
        if self._has_modified_at():
            values.setdefault("modified_at", timezone.now())
        queryset = type(self)._default_manager.filter(pk=self.pk)
        if extra_filter:
            queryset = queryset.filter(**extra_filter)
        updated = queryset.update(**values)
        if updated != 1 and extra_filter:
            logger.info(
                "%s row %s: guard %r did not match; %s not written",
                type(self).__name__,
                self.pk,
                extra_filter,
                sorted(values),
            )
        if refresh:
            try:
                self.refresh_from_db()
            except type(self).DoesNotExist:
                pass
        elif updated == 1:
            for name, value in values.items():
                setattr(self, name, value)
        return updated == 1

    def update_and_requeue(self, *, refresh: bool = True, **kwargs) -> bool:
        """Write `kwargs`, guarded by the retry_at this instance last saw (an optimistic lock).

        True when the row was written. With `refresh` (the default) the instance is reloaded either
        way; without it, a successful write is applied to the instance.
        """
        if fencing.claim_for(self) is not None:
            return self._fenced_update_and_requeue(kwargs, refresh)
        current = self.RETRY_AT
        guard = {self.retry_at_field_name: current}  # None compares as IS NULL
        return self.safe_update(dict(kwargs), refresh=refresh, extra_filter=guard)

    def _fenced_update_and_requeue(self, kwargs: dict[str, Any], refresh: bool) -> bool:
        """In this row's tick: the write is fenced by the claim (ClaimLost if it was taken over), and
        a new retry_at takes effect when the tick returns (workers.fencing)."""
        values = dict(kwargs)
        if self._has_modified_at():
            values.setdefault("modified_at", timezone.now())
        fencing.fenced_update(self, **values)
        if refresh:
            asked = self.RETRY_AT
            self.refresh_from_db()
            self.RETRY_AT = asked  # the schedule the tick asked for, not the claim it still holds
        return True

    def pause(self, *, save: bool = True) -> bool:
        """Hold the row (status PAUSED, never due); False without a PAUSED status or when final/paused."""
        paused = getattr(getattr(self, "StatusChoices", None), "PAUSED", None)
        if paused is None or self.STATE in self.FINAL_STATES or self.is_paused:
            return False
        if not save:
            self.STATE, self.RETRY_AT = paused, RETRY_AT_MAX
            return True
        self.sm.pause_requested()
        self.refresh_from_db()
        return self.is_paused

    def resume(self, *, when: datetime | None = None, save: bool = True) -> bool:
        """Release a paused row (QUEUED, due `when` or now); False unless it is paused."""
        choices = getattr(self, "StatusChoices", None)
        paused = getattr(choices, "PAUSED", None)
        if paused is None or not self.is_paused:
            return False
        if not save:
            self.STATE, self.RETRY_AT = choices.QUEUED, when or timezone.now()
            return True
        if when is None:
            self.sm.resume_requested()
            self.refresh_from_db()
            return self.STATE == choices.QUEUED
        self.STATE, self.RETRY_AT = choices.QUEUED, when
        return self.safe_update(
            {self.state_field_name: choices.QUEUED, self.retry_at_field_name: when},
            extra_filter={self.state_field_name: paused},
        )

    # -- system checks ---------------------------------------------------------------------------

    @classmethod
    def check(cls, **kwargs):
        errors = super().check(**kwargs)
        if not cls._meta.abstract:
            errors.extend(_check_state_machine_model(cls))
        return errors


def _check_state_machine_model(cls) -> list[checks.CheckMessage]:
    """Our checks (workers.E001-E004) and the original's (workers.E011-E019) for one concrete model."""
    name = cls.__name__
    errors: list[checks.CheckMessage] = []

    def error(check_id: str, msg: str, hint: str) -> None:
        errors.append(checks.Error(msg, hint=hint, obj=cls, id=check_id))

    fields = {f.name: f for f in cls._meta.get_fields()}
    state_field = fields.get(cls.state_field_name)
    retry_field = fields.get(cls.retry_at_field_name)
    status_choices = getattr(cls, "StatusChoices", None)
    if state_field is None:
        error(
            "workers.E001",
            f"state_field_name {cls.state_field_name!r} is not a field of {name}.",
            "Add `status = ModelWithStateMachine.StatusField(choices=..., default=...)`.",
        )
    if retry_field is None:
        error(
            "workers.E002",
            f"retry_at_field_name {cls.retry_at_field_name!r} is not a field of {name}.",
            "Add `retry_at = ModelWithStateMachine.RetryAtField()`.",
        )
    if state_field is not None and getattr(state_field, "_is_state_field", False):
        if status_choices is not None and list(state_field.choices or []) != list(status_choices.choices):
            error(
                "workers.E011",
                f"{name}.{state_field.name} must have choices set to {name}.StatusChoices.choices",
                f"{name}.{state_field.name}.choices = {state_field.choices!r}",
            )
    else:
        error(
            "workers.E012",
            f"{name}.state_field_name must be defined and point to a StatusField()",
            f"{name}.state_field_name = {cls.state_field_name!r} but {name}.{cls.state_field_name!r} "
            "was not found or does not refer to StatusField",
        )
    if retry_field is None or not getattr(retry_field, "_is_retry_at_field", False):
        error(
            "workers.E013",
            f"{name}.retry_at_field_name must be defined and point to a RetryAtField()",
            f"{name}.retry_at_field_name = {cls.retry_at_field_name!r} but {name}."
            f"{cls.retry_at_field_name!r} was not found or does not refer to RetryAtField",
        )
    id_field = fields.get("id")
    if id_field is None or not getattr(id_field, "primary_key", False):
        error(
            "workers.E014",
            f"{name} must have an id field that is a primary key",
            f"{name}.id field missing or not configured as primary key",
        )
    if not isinstance(cls.state_machine_name, str):
        error(
            "workers.E015",
            f"{name}.state_machine_name must be a dotted-import path to a StateMachine class",
            f"{name}.state_machine_name = {cls.state_machine_name!r}",
        )
    try:
        machine_cls = cls.StateMachineClass
    except Exception as exc:
        error(
            "workers.E003",
            f"{name}.state_machine_name does not name a state machine: {exc}",
            "Set state_machine_name to the dotted path of a StateMachine subclass.",
        )
        error(
            "workers.E016",
            f"{name}.state_machine_name must point to a valid StateMachine class, but got "
            f"{type(exc).__name__} {exc} when trying to access {name}.StateMachineClass",
            f"{name}.state_machine_name = {cls.state_machine_name!r}",
        )
        return errors  # (the original went on and crashed reading the states of no machine)
    if state_field is not None:
        choices = {str(value) for value, _label in (state_field.flatchoices or [])}
        missing = [s.value for s in machine_cls.states if str(s.value) not in choices]
        if missing:
            error(
                "workers.E004",
                f"States {missing} of {machine_cls.__name__} are not choices of {name}.{cls.state_field_name}.",
                "Use the same values for the state machine states and the field choices.",
            )
    if status_choices is not None:
        values = set(status_choices.values)
        if cls.INITIAL_STATE not in values:
            error(
                "workers.E017",
                f"{name}.StateMachineClass.initial_state must be present within {name}.StatusChoices",
                f"{name}.StateMachineClass.initial_state = {machine_cls.initial_state!r}",
            )
        if cls.ACTIVE_STATE is not None and cls.ACTIVE_STATE not in values:
            error(
                "workers.E018",
                f"{name}.active_state must be set to a valid State present within {name}.StatusChoices",
                f"{name}.active_state = {cls.active_state!r}",
            )
        if any(state not in values for state in cls.FINAL_STATES):
            error(
                "workers.E019",
                f"{name}.StateMachineClass.final_states must all be present within {name}.StatusChoices",
                f"{name}.StateMachineClass.final_states = {machine_cls.final_states!r}",
            )
    return errors


class ModelWithStateMachine(BaseModelWithStateMachine):
    """The base a queue model declares: default status/retry_at fields and choices, as in the original.

    A subclass redeclares `status` (its own StatusChoices) and usually `retry_at`, and names its
    machine: `state_machine_name = "myapp.models.CrawlMachine"`.
    """

    StatusChoices = DefaultStatusChoices
    status = _field_from_template(default_status_field, "_is_state_field")
    retry_at = _field_from_template(default_retry_at_field, "_is_retry_at_field")

    state_field_name = "status"
    retry_at_field_name = "retry_at"
    state_machine_attr = "sm"
    active_state = DefaultStatusChoices.STARTED

    class Meta(BaseModelWithStateMachine.Meta):
        abstract = True


class TickFailure(models.Model):
    """The failed ticks of one queue row since it last ticked cleanly (deleted by its next clean tick).

    A row that keeps failing is backed off exponentially and, after `WORKERS_MAX_ATTEMPTS`, parked:
    its retry_at is set to never (RETRY_AT_MAX) until an operator re-queues it (admin action,
    `manage.py requeue`). A tick that killed its worker process counts as a failure too.
    """

    #: The queue row: its model ("app_label.ModelName") and primary key (as text).
    model = models.CharField(max_length=100)
    object_id = models.CharField(max_length=64)
    attempts = models.PositiveIntegerField(default=0)
    #: The last error on one line ("ValueError: bad input"); its traceback below.
    error = models.CharField(max_length=500, blank=True, default="")
    traceback = models.TextField(blank=True, default="")
    first_failed_at = models.DateTimeField()
    last_failed_at = models.DateTimeField()
    #: When the row is due again (by the database's clock); None while parked.
    retry_at = models.DateTimeField(null=True, blank=True)
    parked_at = models.DateTimeField(null=True, blank=True)
    #: host:pid of the worker whose tick failed last.
    worker = models.CharField(max_length=128, blank=True, default="")

    class Meta:
        verbose_name = "tick failure"
        constraints = [
            models.UniqueConstraint(fields=["model", "object_id"], name="workers_one_failure_per_row")
        ]
        indexes = [models.Index(fields=["parked_at"])]
        ordering = ["-last_failed_at"]

    def __str__(self) -> str:
        state = (
            "parked"
            if self.parked_at
            else f"retry at {self.retry_at:%Y-%m-%d %H:%M:%S}"
            if self.retry_at
            else ""
        )
        return f"{self.model} {self.object_id}: {self.attempts} failed attempt(s), {state}"

    @property
    def is_parked(self) -> bool:
        return self.parked_at is not None

    def queue_model(self) -> type[models.Model] | None:
        """The model of the failing row, or None when it is no longer installed."""
        try:
            return apps.get_model(self.model)
        except (LookupError, ValueError):
            return None
