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
    assert (Binary.INITIAL_STATE, Binary.FINAL_STATES, Binary.ACTIVE_STATE) == ("queued", ["installed"], None)
    assert Binary.FINAL_OR_ACTIVE_STATES == ["installed"]
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
        state_machine_name = "tests.foundation.test_state_machines.TwoStepMachine"

        class Meta:
            app_label = "workers"

    class UnknownMachine(ModelWithStateMachine):
        status = ModelWithStateMachine.StatusField(choices=[("waiting", "w")], default="waiting")
        retry_at = ModelWithStateMachine.RetryAtField()
        state_machine_name = "tests.foundation.nowhere.Missing"

        class Meta:
            app_label = "workers"

    class WrongChoices(ModelWithStateMachine):
        status = ModelWithStateMachine.StatusField(
            choices=[("waiting", "w"), ("busy", "b")], default="waiting"
        )
        retry_at = ModelWithStateMachine.RetryAtField()
        state_machine_name = "tests.foundation.test_state_machines.TwoStepMachine"

        class Meta:
            app_label = "workers"

    class Fine(ModelWithStateMachine):
        status = ModelWithStateMachine.StatusField(
            choices=[("waiting", "w"), ("busy", "b"), ("done", "d")], default="waiting"
        )
        retry_at = ModelWithStateMachine.RetryAtField()
        state_machine_name = "tests.foundation.test_state_machines.TwoStepMachine"

        class Meta:
            app_label = "workers"

    def ids(model):
        return sorted(e.id for e in model.check() if e.id.startswith("workers."))

    assert ids(NoFields) == ["workers.E001", "workers.E002"]
    assert ids(UnknownMachine) == ["workers.E003"]
    assert ids(WrongChoices) == ["workers.E004"]
    assert "done" in next(e.msg for e in WrongChoices.check() if e.id == "workers.E004")
    assert ids(Fine) == []
    assert Fine.ACTIVE_STATE == "busy"


def test_field_factories():
    status = ModelWithStateMachine.StatusField(choices=[("a", "a")], default="a")
    retry_at = ModelWithStateMachine.RetryAtField()
    assert isinstance(status, models.CharField) and status.db_index
    assert isinstance(retry_at, models.DateTimeField) and retry_at.null and retry_at.db_index
    assert retry_at.has_default()
