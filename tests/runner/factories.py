"""Rows for the runner tests."""

from __future__ import annotations

from machine.models import Machine
from tests.exampleapp.models import Task


def make_tasks(
    count: int, work_seconds: float = 0.0, machine: Machine | None = None, prefix: str = "t"
) -> list:
    machine = machine or Machine.current()
    return Task.objects.bulk_create(
        [Task(machine=machine, name=f"{prefix}{i}", work_seconds=work_seconds) for i in range(count)]
    )
