import subprocess
import sys

import pytest

from machine.models import Machine

from .conftest import ROOT


@pytest.mark.django_db
def test_health_is_rounded_success_percentage():
    machine = Machine.current()
    assert machine.health == 0
    for success in (True, True, False):
        machine.increment_health_stats(success)
    assert (machine.num_uses_succeeded, machine.num_uses_failed) == (2, 1)
    assert machine.health == 67
    fresh = Machine.objects.get(pk=machine.pk)
    assert (fresh.num_uses_succeeded, fresh.num_uses_failed) == (2, 1)


@pytest.mark.django_db
def test_increment_does_not_overwrite_concurrent_update_from_a_stale_instance():
    machine = Machine.current()
    stale = Machine.objects.get(pk=machine.pk)
    machine.increment_health_stats(True)
    stale.increment_health_stats(True)
    assert Machine.objects.get(pk=machine.pk).num_uses_succeeded == 2
    assert stale.num_uses_succeeded == 2


@pytest.mark.django_db(transaction=True)
def test_four_processes_times_250_increments_lose_no_update(subprocess_env):
    machine = Machine.current()
    children = [
        subprocess.Popen(
            [sys.executable, "-m", "tests.foundation.children", "increment", str(machine.pk), "250"],
            cwd=ROOT,
            env=subprocess_env,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    for child in children:
        _out, err = child.communicate(timeout=120)
        assert child.returncode == 0, err
        assert "locked" not in err
    machine.refresh_from_db()
    assert machine.num_uses_succeeded + machine.num_uses_failed == 1000
    assert machine.num_uses_succeeded == 500
    assert machine.health == 50
