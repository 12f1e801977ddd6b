"""`manage.py prune`: old exited rows and the log folders we wrote for them go; nothing else does."""

from __future__ import annotations

import os
import time
from datetime import timedelta
from io import StringIO

import pytest
from django.core.checks import run_checks
from django.core.management import CommandError, call_command
from django.utils import timezone

from machine.models import Process
from tests.archiver.models import ArchiveResult, Crawl, Snapshot

pytestmark = pytest.mark.django_db


def prune(*args) -> str:
    out = StringIO()
    call_command("prune", *args, stdout=out)
    return out.getvalue()


def age(process: Process, days: int) -> None:
    """Make a finished row (and its log folder) look `days` days old."""
    then = timezone.now() - timedelta(days=days)
    Process.objects.filter(pk=process.pk).update(ended_at=then, created_at=then)
    stamp = time.time() - days * 86400
    os.utime(process.runtime_dir, (stamp, stamp))


@pytest.fixture
def history(make_process, workdir, data_dir):
    """Old and recent finished processes, a running one, a referenced one and a stray log folder."""
    (workdir / "result.txt").write_text("the user's file")
    rows = {}
    for name in ("old", "older", "recent", "referenced"):
        rows[name] = make_process(["sh", "-c", f"echo {name} > /dev/stderr; echo {name}"])
        rows[name].launch()
    rows["running"] = make_process(["sleep", "30"])
    rows["running"].launch(background=True)
    age(rows["old"], 40)
    age(rows["older"], 400)
    age(rows["referenced"], 40)
    Process.objects.filter(pk=rows["running"].pk).update(created_at=timezone.now() - timedelta(days=40))
    snapshot = Snapshot.objects.create(
        crawl=Crawl.objects.create(urls="https://example.com"), url="https://example.com"
    )
    ArchiveResult.objects.create(
        snapshot=snapshot, plugin="wget", process=rows["referenced"]
    )  # a downstream link
    stray = data_dir / "processes" / "0190f0a0-0000-7000-8000-000000000001"  # a row deleted elsewhere
    stray.mkdir(parents=True)
    (stray / "stdout.log").write_text("left behind")
    stamp = time.time() - 40 * 86400
    os.utime(stray, (stamp, stamp))
    rows["stray"] = stray
    return rows


def test_dry_run_says_what_would_go_and_deletes_nothing(history):
    before = set(Process.objects.values_list("pk", flat=True))
    out = prune("--dry-run")
    assert out.startswith("Would delete 2 process row(s) and 3 log folder(s)")
    assert "Kept 1 old exited row(s) that other rows refer to" in out
    assert set(Process.objects.values_list("pk", flat=True)) == before
    assert history["old"].runtime_dir.is_dir() and history["stray"].is_dir()


def test_prune_deletes_old_exited_rows_and_their_folders_only(history, workdir):
    out = prune()

    assert out.startswith("Deleted 2 process row(s) and 3 log folder(s)")
    gone = [history["old"], history["older"]]
    assert not Process.objects.filter(pk__in=[p.pk for p in gone]).exists()
    assert not any(p.runtime_dir.exists() for p in gone)
    assert not history["stray"].exists()
    for name in ("recent", "referenced", "running"):  # too new, still referenced, still running
        process = history[name]
        assert Process.objects.filter(pk=process.pk).exists()
        assert process.stdout_file.exists()
    assert (workdir / "result.txt").read_text() == "the user's file"  # a pwd is never touched
    assert prune().startswith("Deleted 0 process row(s) and 0 log folder(s)")


def test_days_come_from_the_setting_and_bad_values_are_clear_errors(history, settings):
    settings.MACHINE_PRUNE_DAYS = 500
    assert prune().startswith("Deleted 0 process row(s)")
    assert prune("--days", "100").startswith("Deleted 1 process row(s)")  # only the 400-day-old one
    with pytest.raises(CommandError, match="must be at least 0"):
        call_command("prune", "--days", "-1")
    settings.MACHINE_PRUNE_DAYS = "thirty"
    with pytest.raises(CommandError, match="MACHINE_PRUNE_DAYS must be a whole number"):
        call_command("prune")
    assert [m.id for m in run_checks() if m.id.startswith("machine.")] == ["machine.E002"]
