"""Issue 11, point 1: a caller's secrets survive queueing sealed, reach the child, and nothing else.

"Why": a queued Process with env={"GITHUB_TOKEN": <caller's token>} stored `********`, the worker
launched the child with its *own* GITHUB_TOKEN, and that token then landed unscrubbed in stdout.
"""

from __future__ import annotations

import hashlib
import json
import sys

import pytest
from django.test import override_settings

from machine import sealing
from machine.choices import ProcessStatus
from machine.models import Machine, Process
from machine.redaction import MASK
from machine.sealing import SealedSecretError, unseal_for_launch, wipe_sealed

CALLER_TOKEN = "ghp_caller0123456789abcdef"
WORKER_TOKEN = "ghp_worker9876543210fedcba"
ARGV_SECRET = "argv-password-42"

#: Prints which token it got (as a hash), and the token itself (which must never be stored).
CHILD = (
    "import hashlib, os; t = os.environ.get('GITHUB_TOKEN', ''); "
    "print('sha256', hashlib.sha256(t.encode()).hexdigest()); print('raw', t); "
    "print('inherited', os.environ.get('AWS_SECRET_ACCESS_KEY', ''))"
)


def sha(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def stored(process) -> dict:
    """Every column of the row as the database holds it (read back, not the instance in memory)."""
    return Process.objects.filter(pk=process.pk).values().get()


def queue(tmp_path, **fields) -> Process:
    pwd = tmp_path / "run"
    pwd.mkdir(exist_ok=True)
    fields.setdefault("cmd", [sys.executable, "-c", CHILD, f"--password={ARGV_SECRET}"])
    fields.setdefault("env", {"GITHUB_TOKEN": CALLER_TOKEN, "PLAIN": "visible"})
    return Process.objects.create(
        machine=Machine.current(), pwd=str(pwd), status=ProcessStatus.QUEUED, **fields
    )


@pytest.mark.django_db
def test_a_queued_row_stores_masked_values_and_the_real_ones_sealed(tmp_path):
    process = queue(tmp_path)
    row = stored(process)
    text = json.dumps({k: str(v) for k, v in row.items()})
    assert CALLER_TOKEN not in text and ARGV_SECRET not in text
    assert row["env"] == {"GITHUB_TOKEN": MASK, "PLAIN": "visible"}
    assert row["sealed"]  # ciphertext
    assert process.env["GITHUB_TOKEN"] == CALLER_TOKEN  # the instance keeps the real values in memory

    loaded = Process.objects.get(pk=process.pk)
    assert loaded.env["GITHUB_TOKEN"] == MASK and f"--password={MASK}" in loaded.cmd
    argv, env = unseal_for_launch(loaded)
    assert env == {"GITHUB_TOKEN": CALLER_TOKEN, "PLAIN": "visible"}
    assert argv[-1] == f"--password={ARGV_SECRET}"

    loaded.env["PLAIN"] = "changed"  # a change made to the loaded row wins; the masked value is restored
    loaded.save()
    again = Process.objects.get(pk=process.pk)
    assert unseal_for_launch(again)[1] == {"GITHUB_TOKEN": CALLER_TOKEN, "PLAIN": "changed"}


@pytest.mark.django_db
def test_a_row_without_secrets_seals_nothing(tmp_path):
    process = queue(tmp_path, cmd=["true"], env={"PLAIN": "x"})
    assert process.sealed is None and stored(process)["sealed"] is None


@pytest.mark.django_db
def test_the_key_rotates_through_secret_key_fallbacks_and_an_unknown_key_is_refused(tmp_path, settings):
    process = queue(tmp_path)
    old_key = settings.SECRET_KEY
    with override_settings(SECRET_KEY="a-brand-new-key", SECRET_KEY_FALLBACKS=[old_key]):
        assert unseal_for_launch(Process.objects.get(pk=process.pk))[1]["GITHUB_TOKEN"] == CALLER_TOKEN
    with override_settings(SECRET_KEY="somebody-elses-key", SECRET_KEY_FALLBACKS=[]):
        with pytest.raises(SealedSecretError, match="GITHUB_TOKEN"):
            unseal_for_launch(Process.objects.get(pk=process.pk))


@pytest.mark.django_db
def test_wipe_keeps_only_the_values_to_mask_then_nothing(tmp_path):
    process = queue(tmp_path)
    loaded = Process.objects.get(pk=process.pk)
    unseal_for_launch(loaded)
    wipe_sealed(loaded)
    payload = sealing.unseal(stored(process)["sealed"])
    assert set(payload) == {"mask"} and CALLER_TOKEN in payload["mask"]  # no argv/env any more
    with pytest.raises(SealedSecretError, match="already wiped"):
        unseal_for_launch(Process.objects.get(pk=process.pk))
    wipe_sealed(loaded, keep_mask_values=False)
    assert stored(process)["sealed"] is None and loaded.sealed is None


@pytest.mark.django_db
def test_a_launch_in_the_same_process_uses_the_real_values_and_closes_with_nothing_sealed(
    tmp_path, monkeypatch
):
    monkeypatch.setenv("GITHUB_TOKEN", WORKER_TOKEN)
    process = queue(tmp_path)
    process.launch()
    assert process.exit_code == 0, process.stderr
    assert f"sha256 {sha(CALLER_TOKEN)}" in process.stdout
    assert f"raw {MASK}" in process.stdout
    assert "[machine] env GITHUB_TOKEN: the caller's value" in process.stderr
    row = stored(process)
    assert row["sealed"] is None
    everything = json.dumps({k: str(v) for k, v in row.items()}) + process.stdout_file.read_text()
    everything += process.cmd_file.read_text()
    assert CALLER_TOKEN not in everything and WORKER_TOKEN not in everything and ARGV_SECRET not in everything


@pytest.mark.django_db(transaction=True)
def test_a_worker_launches_a_queued_row_with_the_callers_token_not_its_own(tmp_path, start_runner):
    """The issue's first case, through a real `runworker` whose own environment has a GITHUB_TOKEN."""
    process = queue(tmp_path, env={"GITHUB_TOKEN": CALLER_TOKEN, "AWS_SECRET_ACCESS_KEY": None})
    runner = start_runner(
        "--workers=1",
        "--until-idle",
        "--poll=0.05",
        env={"GITHUB_TOKEN": WORKER_TOKEN, "AWS_SECRET_ACCESS_KEY": "worker-aws-secret-1"},
    )
    assert runner.wait(90) == 0, runner.output()
    process.refresh_from_db()
    assert process.status == ProcessStatus.EXITED and process.exit_code == 0, process.stderr
    assert f"sha256 {sha(CALLER_TOKEN)}" in process.stdout  # the caller's token, not the worker's
    assert f"raw {MASK}" in process.stdout and f"inherited {MASK}" in process.stdout
    assert "[machine] env GITHUB_TOKEN: the caller's value" in process.stderr
    assert "[machine] env AWS_SECRET_ACCESS_KEY: the launching process's own value" in process.stderr
    row = stored(process)
    assert row["sealed"] is None
    everything = json.dumps({k: str(v) for k, v in row.items()})
    everything += (
        process.stdout_file.read_text() + process.stderr_file.read_text() + process.cmd_file.read_text()
    )
    for secret in (CALLER_TOKEN, WORKER_TOKEN, ARGV_SECRET, "worker-aws-secret-1"):
        assert secret not in everything


@pytest.mark.django_db(transaction=True)
def test_a_secret_that_cannot_be_unsealed_refuses_the_launch_with_the_reason(tmp_path, start_runner):
    with override_settings(SECRET_KEY="the-key-of-another-deployment"):
        process = queue(tmp_path)  # sealed under a key the worker does not have
    runner = start_runner("--workers=1", "--until-idle", "--poll=0.05", env={"GITHUB_TOKEN": WORKER_TOKEN})
    assert runner.wait(90) == 0, runner.output()
    process.refresh_from_db()
    assert process.status == ProcessStatus.EXITED and process.exit_code == 126
    assert "cannot launch" in process.stderr and "GITHUB_TOKEN" in process.stderr
    assert process.pid is None and process.stdout == ""  # the child never ran
    assert stored(process)["sealed"] is None


def test_env_report_says_which_value_each_secret_key_gets():
    report = sealing.env_report(
        {"GITHUB_TOKEN": "x", "AWS_SECRET_ACCESS_KEY": None, "NPM_TOKEN": None, "PLAIN": "y"},
        {"AWS_SECRET_ACCESS_KEY": "from-worker"},
    )
    assert report == [
        "[machine] env AWS_SECRET_ACCESS_KEY: the launching process's own value (the caller asked to "
        "inherit it with None)",
        "[machine] env GITHUB_TOKEN: the caller's value",
        "[machine] env NPM_TOKEN: not set (the caller asked to inherit it with None; the launching "
        "process has none)",
    ]
