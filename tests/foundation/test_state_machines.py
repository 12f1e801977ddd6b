import pytest
from django.core import checks
from django.db import models
from django.test.utils import isolate_apps
from statemachine import State

from machine.models import Binary, BinaryMachine, Machine, Process, ProcessMachine
from workers.models import BaseStateMachine, ModelWithStateMachine


class TwoStepMachine(BaseStateMachine):
    model_attr_name = "job"

    waiting = State(value="waiting", initial=True)
    busy = State(value="busy")
    done = State(value="done", final=True)

    tick = waiting.to(busy) | busy.to.itself(unless="finished") | busy.to(done, cond="finished")

    def finished(self) -> bool:
        return self.job.steps >= 2

    def on_enter_busy(self) -> None:
        self.job.steps += 1


class FakeJob:
    """A plain object is enough for the state machine (it stores state on `status`)."""

    state_field_name = "status"

    def __init__(self):
        self.id = "job-1"
        self.status = "waiting"
        self.steps = 0


def test_base_state_machine_stores_obj_under_model_attr_name_and_reprs():
    job = FakeJob()
    sm = TwoStepMachine(job)
    assert sm.job is job
    assert repr(sm) == "TwoStepMachine[job-1]" == str(sm)


def test_self_transition_runs_enter_callbacks_again():
    job = FakeJob()
    sm = TwoStepMachine(job)
    sm.tick()  # waiting -> busy (enter: steps=1)
    sm.tick()  # busy -> busy (self-transition re-enters: steps=2)
    assert (job.status, job.steps) == ("busy", 2)
    sm.tick()  # finished -> done
    assert job.status == "done"


def test_exceptions_in_transition_callbacks_propagate_and_keep_the_state():
    class Exploding(BaseStateMachine):
        model_attr_name = "job"
        waiting = State(value="waiting", initial=True)
        done = State(value="done", final=True)
        tick = waiting.to(done, on="explode")

        def explode(self):
            raise RuntimeError("install failed")

    job = FakeJob()
    with pytest.raises(RuntimeError, match="install failed"):
        Exploding(job).tick()
    assert job.status == "waiting"


def test_state_facts_of_the_contract_models():
    # As in the original, a worker installs a Binary while it is queued: queued is its active state.
    assert (Binary.INITIAL_STATE, Binary.FINAL_STATES, Binary.ACTIVE_STATE) == (
        "queued",
        ["installed"],
        "queued",
    )
    assert Binary.FINAL_OR_ACTIVE_STATES == ["installed", "queued"]
    assert (Process.INITIAL_STATE, Process.FINAL_STATES, Process.ACTIVE_STATE) == (
        "queued",
        ["exited"],
        "running",
    )
    assert Process.FINAL_OR_ACTIVE_STATES == ["exited", "running"]
    assert Binary.get_state_machine_class() is BinaryMachine
    assert Process.get_state_machine_class() is ProcessMachine


@pytest.mark.django_db
def test_sm_is_built_lazily_and_follows_the_status_field():
    binary = Binary(machine=Machine.current(), name="sh")
    assert "_state_machine" not in binary.__dict__
    assert binary.sm.binary is binary
    assert binary.sm.current_state_value == "queued"
    binary.status = "installed"
    assert binary.sm.current_state_value == "installed"


def test_contract_models_pass_their_system_checks():
    errors = [e for e in checks.run_checks() if e.id and e.id.startswith("workers.")]
    assert errors == []


@isolate_apps("workers")
def test_broken_models_produce_each_check_error():
    class NoFields(ModelWithStateMachine):
        # Remove the default status/retry_at fields the abstract base declares.
        status = None
        retry_at = None
        state_machine_name = "tests.foundation.test_state_machines.TwoStepMachine"

        class Meta:
            app_label = "workers"

    class UnknownMachine(ModelWithStateMachine):
        StatusChoices = models.TextChoices("StatusChoices", [("WAITING", ("waiting", "w"))])
        status = ModelWithStateMachine.StatusField(choices=StatusChoices.choices, default="waiting")
        retry_at = ModelWithStateMachine.RetryAtField()
        state_machine_name = "tests.foundation.nowhere.Missing"

        class Meta:
            app_label = "workers"

    class WrongChoices(ModelWithStateMachine):
        StatusChoices = models.TextChoices(
            "StatusChoices", [("WAITING", ("waiting", "w")), ("BUSY", ("busy", "b"))]
        )
        status = ModelWithStateMachine.StatusField(choices=StatusChoices.choices, default="waiting")
        retry_at = ModelWithStateMachine.RetryAtField()
        state_machine_name = "tests.foundation.test_state_machines.TwoStepMachine"
        active_state = "busy"

        class Meta:
            app_label = "workers"

    class Fine(ModelWithStateMachine):
        StatusChoices = models.TextChoices(
            "StatusChoices", [("WAITING", ("waiting", "w")), ("BUSY", ("busy", "b")), ("DONE", ("done", "d"))]
        )
        status = ModelWithStateMachine.StatusField(choices=StatusChoices.choices, default="waiting")
        retry_at = ModelWithStateMachine.RetryAtField()
        state_machine_name = "tests.foundation.test_state_machines.TwoStepMachine"
        active_state = None  # derived: the first state neither initial nor final

        class Meta:
            app_label = "workers"

    def ids(model):
        return sorted(e.id for e in model.check() if e.id.startswith("workers."))

    # Ours (E001-E004) and, beside them, the original's ids for the same faults (E011-E019).
    # (NoFields keeps the default StatusChoices, which lack TwoStepMachine's states: E017, E019.)
    assert ids(NoFields) == [
        "workers.E001", "workers.E002", "workers.E012", "workers.E013", "workers.E017", "workers.E019"
    ]  # fmt: skip
    assert ids(UnknownMachine) == ["workers.E003", "workers.E016"]
    assert ids(WrongChoices) == ["workers.E004", "workers.E019"]
    assert "done" in next(e.msg for e in WrongChoices.check() if e.id == "workers.E004")
    assert ids(Fine) == []
    assert Fine.ACTIVE_STATE == "busy"


def test_field_factories():
    status = ModelWithStateMachine.StatusField(choices=[("a", "a")], default="a")
    retry_at = ModelWithStateMachine.RetryAtField()
    assert isinstance(status, models.CharField) and status.db_index
    assert isinstance(retry_at, models.DateTimeField) and retry_at.null and retry_at.db_index
    assert retry_at.has_default()
