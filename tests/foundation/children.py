"""Entry points run in child processes by the concurrency tests (python -m tests.foundation.children ...)."""

from __future__ import annotations

import json
import sys


def _setup() -> None:
    import django

    django.setup()


def increment(machine_id: str, times: int) -> None:
    from machine.models import Machine

    machine = Machine.objects.get(pk=machine_id)
    for i in range(times):
        machine.increment_health_stats(success=i % 2 == 0)


def claim_each(ids_file: str, out_file: str) -> None:
    """Try claim_for_worker on every row listed, in order; write the ids this process won."""
    from machine.models import Binary

    ids = json.loads(open(ids_file).read())
    won = []
    for row in Binary.objects.filter(pk__in=ids).order_by("retry_at"):
        if Binary.claim_for_worker(row, lock_seconds=600):
            won.append(str(row.pk))
    with open(out_file, "w") as fh:
        json.dump(won, fh)


def claim_batches(batch: str, out_file: str) -> None:
    """Claim batches until the queue is empty; write the ids this process won."""
    from machine.models import Binary

    won = []
    while rows := Binary.claim_batch(limit=int(batch), lock_seconds=600):
        won.extend(str(row.pk) for row in rows)
    with open(out_file, "w") as fh:
        json.dump(won, fh)


if __name__ == "__main__":
    _setup()
    name, *args = sys.argv[1:]
    {
        "increment": lambda: increment(args[0], int(args[1])),
        "claim_each": lambda: claim_each(*args),
        "claim_batches": lambda: claim_batches(*args),
    }[name]()
