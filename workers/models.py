"""The state-machine framework: BaseStateMachine and the ModelWithStateMachine abstract model."""

from __future__ import annotations

from datetime import timedelta

from django.core import checks
from django.db import models
from django.utils import timezone
from django.utils.functional import classproperty
from django.utils.module_loading import import_string
from statemachine import StateMachine, registry
from statemachine.mixins import MachineMixin

from workers.claims import claim_due_rows, claim_one


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
        raise LookupError("state_machine_name is not set")
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


class ModelWithStateMachine(MachineMixin, models.Model):
    """A row driven by a state machine: a status field, a retry_at schedule and an atomic claim.

    `obj.sm` is created on first use (not in __init__ as MachineMixin does), so loading thousands of
    rows does not build thousands of state machines.
    """

    state_field_name: str = "status"
    retry_at_field_name: str = "retry_at"
    state_machine_name: str | None = None
    state_machine_attr: str = "sm"
    #: Value of the state a worker is busy in; None means "the first state neither initial nor final".
    active_state: str | None = None

    class Meta:
        abstract = True

    @staticmethod
    def StatusField(**kwargs) -> models.CharField:
        """The indexed status CharField (pass `choices` and `default`)."""
        kwargs.setdefault("max_length", 15)
        kwargs.setdefault("db_index", True)
        kwargs.setdefault("blank", False)
        return models.CharField(**kwargs)

    @staticmethod
    def RetryAtField(**kwargs) -> models.DateTimeField:
        """The nullable, indexed retry_at DateTimeField, due now by default."""
        kwargs.setdefault("null", True)
        kwargs.setdefault("blank", True)
        kwargs.setdefault("db_index", True)
        kwargs.setdefault("default", timezone.now)
        return models.DateTimeField(**kwargs)

    def __init__(self, *args, **kwargs):
        # Skip MachineMixin.__init__ (it builds the machine eagerly); see the class docstring.
        models.Model.__init__(self, *args, **kwargs)

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        attr = cls.__dict__.get("state_machine_attr")
        if attr and attr != "sm" and not hasattr(cls, attr):
            setattr(cls, attr, property(ModelWithStateMachine._get_state_machine))

    def _get_state_machine(self) -> StateMachine:
        cache = self.__dict__.get("_state_machine")
        if cache is None:
            cache = self.get_state_machine_class()(self)
            self.__dict__["_state_machine"] = cache
        return cache

    sm = property(_get_state_machine)

    # -- state facts -------------------------------------------------------------------------

    @classmethod
    def get_state_machine_class(cls) -> type[StateMachine]:
        return resolve_state_machine(cls.state_machine_name)

    @classproperty
    def INITIAL_STATE(cls) -> str:
        return cls.get_state_machine_class().initial_state.value

    @classproperty
    def FINAL_STATES(cls) -> list[str]:
        return [state.value for state in cls.get_state_machine_class().final_states]

    @classproperty
    def ACTIVE_STATE(cls) -> str | None:
        if cls.active_state:
            return cls.active_state
        for state in cls.get_state_machine_class().states:
            if not state.initial and not state.final:
                return state.value
        return None

    @classproperty
    def FINAL_OR_ACTIVE_STATES(cls) -> list[str]:
        active = cls.ACTIVE_STATE
        return [*cls.FINAL_STATES, *([active] if active else [])]

    # -- queue and claim ---------------------------------------------------------------------

    @classmethod
    def get_queue(cls) -> models.QuerySet:
        """Rows due now (retry_at <= now) and not in a final state, oldest schedule first."""
        return (
            cls._default_manager.filter(**{f"{cls.retry_at_field_name}__lte": timezone.now()})
            .exclude(**{f"{cls.state_field_name}__in": cls.FINAL_STATES})
            .order_by(cls.retry_at_field_name)
        )

    @classmethod
    def claim_for_worker(cls, obj: ModelWithStateMachine, lock_seconds: int = 60) -> bool:
        """Atomically move a due row's retry_at `lock_seconds` ahead; True only for the one winner."""
        now = timezone.now()
        until = now + timedelta(seconds=lock_seconds)
        won = claim_one(
            cls,
            obj.pk,
            state_field=cls.state_field_name,
            retry_field=cls.retry_at_field_name,
            final_states=cls.FINAL_STATES,
            expected_retry_at=getattr(obj, cls.retry_at_field_name),
            now=now,
            until=until,
        )
        if won:
            setattr(obj, cls.retry_at_field_name, until)
        return won

    @classmethod
    def claim_batch(cls, limit: int = 10, lock_seconds: int = 60, filters: models.Q | None = None) -> list:
        """Claim up to `limit` due rows in one statement and return them (already claimed)."""
        now = timezone.now()
        pks = claim_due_rows(
            cls,
            state_field=cls.state_field_name,
            retry_field=cls.retry_at_field_name,
            final_states=cls.FINAL_STATES,
            now=now,
            until=now + timedelta(seconds=lock_seconds),
            limit=limit,
            extra_where=filters,
        )
        if not pks:
            return []
        # Every claimed row now has the same retry_at; pk order (UUIDv7: creation order) is stable.
        return list(cls._default_manager.filter(pk__in=pks).order_by("pk"))

    def claim_processing_lock(self, lock_seconds: int = 60) -> bool:
        """Claim this row for the calling worker."""
        return type(self).claim_for_worker(self, lock_seconds=lock_seconds)

    def tick_claimed(self, lock_seconds: int = 60) -> bool:
        """Claim this row, then run exactly one `sm.tick()`; False (and no tick) if another worker won."""
        if not self.claim_processing_lock(lock_seconds=lock_seconds):
            return False
        getattr(self, self.state_machine_attr).tick()
        return True

    def update_and_requeue(self, **fields) -> bool:
        """Write `fields`, guarded by the retry_at this instance last saw (an optimistic lock)."""
        cls = type(self)
        expected = getattr(self, self.retry_at_field_name)
        guard = (
            {f"{self.retry_at_field_name}__isnull": True}
            if expected is None
            else {self.retry_at_field_name: expected}
        )
        values = dict(fields)
        if any(f.name == "modified_at" for f in self._meta.concrete_fields):
            values.setdefault("modified_at", timezone.now())
        updated = cls._default_manager.filter(pk=self.pk, **guard).update(**values)
        if updated != 1:
            return False
        for name, value in values.items():
            setattr(self, name, value)
        return True

    # -- system checks -----------------------------------------------------------------------

    @classmethod
    def check(cls, **kwargs):
        errors = super().check(**kwargs)
        if not cls._meta.abstract:
            errors.extend(cls._check_state_machine_config())
        return errors

    @classmethod
    def _check_state_machine_config(cls) -> list[checks.CheckMessage]:
        errors: list[checks.CheckMessage] = []
        field_names = {f.name for f in cls._meta.get_fields()}
        state_field = None
        if cls.state_field_name not in field_names:
            errors.append(
                checks.Error(
                    f"state_field_name {cls.state_field_name!r} is not a field of {cls.__name__}.",
                    hint="Add `status = ModelWithStateMachine.StatusField(choices=..., default=...)`.",
                    obj=cls,
                    id="workers.E001",
                )
            )
        else:
            state_field = cls._meta.get_field(cls.state_field_name)
        if cls.retry_at_field_name not in field_names:
            errors.append(
                checks.Error(
                    f"retry_at_field_name {cls.retry_at_field_name!r} is not a field of {cls.__name__}.",
                    hint="Add `retry_at = ModelWithStateMachine.RetryAtField()`.",
                    obj=cls,
                    id="workers.E002",
                )
            )
        try:
            machine_cls = cls.get_state_machine_class()
        except LookupError as exc:
            errors.append(
                checks.Error(
                    f"{cls.__name__}.state_machine_name does not name a state machine: {exc}",
                    hint="Set state_machine_name to the dotted path of a StateMachine subclass.",
                    obj=cls,
                    id="workers.E003",
                )
            )
            return errors
        if state_field is not None:
            choices = {str(value) for value, _label in (state_field.flatchoices or [])}
            missing = [s.value for s in machine_cls.states if str(s.value) not in choices]
            if missing:
                errors.append(
                    checks.Error(
                        f"States {missing} of {machine_cls.__name__} are not choices of "
                        f"{cls.__name__}.{cls.state_field_name}.",
                        hint="Use the same values for the state machine states and the field choices.",
                        obj=cls,
                        id="workers.E004",
                    )
                )
        return errors
