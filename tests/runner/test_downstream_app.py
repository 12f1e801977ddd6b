"""A downstream archiver declared as the original's apps are (tests/archiver), driven by `runworker`.

Crawl -> Snapshots -> ArchiveResults -> machine.Process rows: every row reaches its final state with
no change to our packages, and each result records its process's true exit code.
"""

from __future__ import annotations

import sys

import pytest
from django.core import checks

from machine.models import Process
from tests.archiver.models import ArchiveResult, Crawl, Snapshot

pytestmark = pytest.mark.django_db(transaction=True)

URLS = ["https://example.com/1", "https://example.com/2"]


def plugin(name: str, code: str) -> dict:
    return {"plugin": name, "cmd": [sys.executable, "-c", code, "{url}"]}


def test_the_archiver_passes_its_checks():
    errors = [e for e in checks.run_checks() if e.obj in (Crawl, Snapshot, ArchiveResult)]
    assert errors == []


def test_runworker_drives_crawls_snapshots_and_results_to_their_final_states(start_runner, data_dir):
    crawl = Crawl.objects.create(
        urls="\n".join(URLS),
        config={
            "PLUGINS": [
                plugin("title", "import sys; print('archived', sys.argv[1])"),
                plugin("wget", "import sys; print('no route', file=sys.stderr); sys.exit(3)"),
                # Exits 75 (try again later) on its first attempt, then succeeds.
                plugin(
                    "flaky",
                    "import os, sys; p = os.path.join(os.getcwd(), 'tried');"
                    "first = not os.path.exists(p); open(p, 'w').close();"
                    "print('second try' if not first else 'first try'); sys.exit(75 if first else 0)",
                ),
            ]
        },
    )

    runner = start_runner("--workers=2", "--until-idle", "--poll=0.05")
    assert runner.wait(120) == 0, runner.output()

    crawl.refresh_from_db()
    assert (crawl.status, crawl.retry_at) == ("sealed", None)
    snapshots = list(crawl.snapshot_set.order_by("url"))
    assert [s.url for s in snapshots] == URLS
    assert all((s.status, s.retry_at) == ("sealed", None) for s in snapshots)
    for snapshot in snapshots:
        results = {r.plugin: r for r in snapshot.archiveresult_set.all()}
        assert {name: r.status for name, r in results.items()} == {
            "title": "succeeded", "wget": "failed", "flaky": "succeeded"
        }  # fmt: skip
        title, wget, flaky = results["title"], results["wget"], results["flaky"]
        assert title.output_str == f"archived {snapshot.url}"
        assert (title.process.status, title.process.exit_code) == ("exited", 0)
        assert (wget.process.exit_code, wget.process.stderr.strip()) == (3, "no route")
        assert (flaky.attempts, flaky.process.exit_code, flaky.output_str) == (2, 0, "second try")
        # The Process reads the downstream OneToOne link, as the original's does.
        assert (title.process.plugin, title.process.archiveresult) == ("title", title)
        assert title.process.pwd == str(title.output_dir) and title.output_dir.is_dir()
        assert snapshot.num_uses_succeeded == 2 and snapshot.num_uses_failed == 1
    crawl.refresh_from_db()
    assert (crawl.num_uses_succeeded, crawl.num_uses_failed) == (4, 2)
    # One Process per attempt: 3 plugins x 2 URLs, plus the flaky plugin's retries.
    assert Process.objects.filter(process_type="hook").count() == 8
    orchestrator = Process.objects.get(process_type="orchestrator")
    assert (orchestrator.plugin, orchestrator.hook_name) == ("", "")
