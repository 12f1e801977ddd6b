"""The no-op task of django_tasks_drain.py (importable by its workers)."""

from django_tasks import task


@task()
def noop() -> None:
    return None
