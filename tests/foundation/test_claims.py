import json
import subprocess
import sys
from collections import Counter
from datetime import timedelta

import pytest
from django.utils import timezone

from machine.models import Binary, Machine
from tests.machine_factories import make_machine

from .conftest import ROOT


def _queue(n: int) -> list[str]:
    machine = Machine.current()
    start = timezone.now() - timedelta(minutes=5)
    rows = [
        Binary(machine=machine, name=f"tool{i}", retry_at=start + timedelta(microseconds=i)) for i in range(n)
    ]
    Binary.objects.bulk_create(rows)
    return [str(row.pk) for row in rows]


@pytest.mark.django_db
def test_claim_for_worker_moves_retry_at_and_only_wins_once():
    (pk,) = _queue(1)
    first = Binary.objects.get(pk=pk)
    second = Binary.objects.get(pk=pk)
    assert Binary.claim_for_worker(first, lock_seconds=60)
    assert first.retry_at > timezone.now() + timedelta(seconds=50)
    assert not Binary.claim_for_worker(second, lock_seconds=60)
    assert not first.claim_processing_lock()  # no longer due
    assert not Binary.get_queue().filter(pk=pk).exists()


@pytest.mark.django_db
def test_final_and_future_rows_are_not_due():
    done, future, due = _queue(3)
    Binary.objects.filter(pk=done).update(status="installed")
    Binary.objects.filter(pk=future).update(retry_at=timezone.now() + timedelta(hours=1))
    assert [str(b.pk) for b in Binary.get_queue()] == [due]
    assert not Binary.claim_for_worker(Binary.objects.get(pk=done))
    assert not Binary.claim_for_worker(Binary.objects.get(pk=future))
    assert [str(b.pk) for b in Binary.claim_batch(limit=10)] == [due]


@pytest.mark.django_db
def test_claim_batch_takes_oldest_first_and_respects_limit_and_filter():
    ids = _queue(5)
    other = make_machine("other-host")
    Binary.objects.create(machine=other, name="elsewhere", retry_at=timezone.now() - timedelta(hours=1))
    from django.db.models import Q

    claimed = Binary.claim_batch(limit=3, filters=Q(machine=Machine.current()))
    assert {str(b.pk) for b in claimed} == set(ids[:3])
    assert all(b.retry_at > timezone.now() for b in claimed)
    assert Binary.claim_batch(limit=0) == []


@pytest.mark.django_db
def test_tick_claimed_runs_one_tick_only_for_the_winner():
    machine = Machine.current()
    row = Binary.objects.create(machine=machine, name="", binproviders="env")  # cannot install: no name
    other = Binary.objects.get(pk=row.pk)
    assert row.tick_claimed()
    assert row.status == "queued"  # queued.to.itself(unless=can_install)
    assert not other.tick_claimed()


@pytest.mark.django_db
def test_update_and_requeue_is_guarded_by_retry_at():
    (pk,) = _queue(1)
    a = Binary.objects.get(pk=pk)
    b = Binary.objects.get(pk=pk)
    later = timezone.now() + timedelta(minutes=5)
    assert Workers.update_and_requeue(a, version="1.0", retry_at=later)
    assert a.version == "1.0" and a.retry_at == later
    # b still holds the retry_at from before a's write: its update must be refused.
    assert not Workers.update_and_requeue(b, version="2.0")
    assert Binary.objects.get(pk=pk).version == "1.0"


class Workers:
    """Calls the base-class (optimistic) update_and_requeue even where a model overrides it."""

    @staticmethod
    def update_and_requeue(obj, **fields):
        from workers.models import ModelWithStateMachine

        return ModelWithStateMachine.update_and_requeue(obj, **fields)


def _run_claimers(mode: str, arg: str, k: int, tmp_path, env) -> list[list[str]]:
    outs = [tmp_path / f"won-{i}.json" for i in range(k)]
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "tests.foundation.children", mode, arg, str(out)],
            cwd=ROOT,
            env=env,
            stderr=subprocess.PIPE,
            text=True,
        )
        for out in outs
    ]
    for proc in procs:
        _out, err = proc.communicate(timeout=180)
        assert proc.returncode == 0, err
        assert "database is locked" not in err
    return [json.loads(out.read_text()) for out in outs]


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("k", [2, 4])
def test_k_processes_claim_each_row_exactly_once(k, tmp_path, subprocess_env):
    ids = _queue(240)
    ids_file = tmp_path / "ids.json"
    ids_file.write_text(json.dumps(ids))
    won = _run_claimers("claim_each", str(ids_file), k, tmp_path, subprocess_env)
    counts = Counter(pk for per_process in won for pk in per_process)
    assert set(counts) == set(ids)
    assert max(counts.values()) == 1


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("k", [2, 4])
def test_k_processes_claiming_batches_claim_each_row_exactly_once(k, tmp_path, subprocess_env):
    ids = _queue(400)
    won = _run_claimers("claim_batches", "7", k, tmp_path, subprocess_env)
    counts = Counter(pk for per_process in won for pk in per_process)
    assert set(counts) == set(ids)
    assert max(counts.values()) == 1
