"""Runners of two Machines (host identity overridden by MACHINE_GUID) sharing one PostgreSQL database."""

from __future__ import annotations

import pytest
from django.db import connection

from machine.models import Binary, Machine, Process
from tests.exampleapp.models import Effect, Task
from tests.machine_factories import make_machine
from tests.runner.factories import make_tasks

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def _postgresql_only():
    if connection.vendor != "postgresql":
        pytest.skip("several hosts share PostgreSQL; SQLite is single-host")


def test_each_runner_works_only_on_the_rows_of_its_own_machine(start_runner, tmp_path):
    hosts = {guid: make_machine(guid) for guid in ("host-a", "host-b")}
    for guid, machine in hosts.items():
        make_tasks(40, work_seconds=0.01, machine=machine, prefix=guid)
        Binary.objects.create(machine=machine, name="sh", binproviders="env")
        for i in range(3):
            pwd = tmp_path / guid / str(i)  # a process's log files live in its pwd
            pwd.mkdir(parents=True)
            Process.objects.create(
                machine=machine, cmd=["sh", "-c", 'echo "$MACHINE_GUID"'], pwd=str(pwd), timeout=30
            )

    runners = {
        guid: start_runner("--workers=2", "--until-idle", "--poll=0.05", env={"MACHINE_GUID": guid})
        for guid in hosts
    }
    for runner in runners.values():
        assert runner.wait(90) == 0, runner.output()

    assert Machine.objects.filter(guid__in=hosts).count() == 2  # no runner invented a third machine
    for guid, machine in hosts.items():
        own_rows = Process.objects.filter(machine=machine)
        orchestrator = own_rows.get(process_type="orchestrator")
        assert orchestrator.pid == runners[guid].pid
        worker_pids = set(own_rows.filter(process_type="worker").values_list("pid", flat=True))
        assert len(worker_pids) == 2
        # Every task of this machine was done once, by a worker of this machine's runner.
        tasks = Task.objects.filter(machine=machine)
        assert set(tasks.values_list("status", flat=True)) == {"done"}
        assert set(tasks.values_list("attempts", flat=True)) == {1}
        assert set(Effect.objects.filter(task__machine=machine).values_list("pid", flat=True)) <= worker_pids
        # Every queued process of this machine was launched by this machine's runner.
        launched = own_rows.exclude(process_type__in=["orchestrator", "worker", "hook"])
        assert launched.count() == 3
        for process in launched:
            assert (process.status, process.exit_code, process.stdout.strip()) == ("exited", 0, guid)
        # This machine's binary was installed by this machine's runner: its provider hook ran here.
        binary = Binary.objects.get(machine=machine, name="sh")
        assert (binary.status, binary.binprovider) == ("installed", "env")
        hooks = list(binary.hook_processes())
        assert hooks and {hook.machine_id for hook in hooks} == {machine.pk}
