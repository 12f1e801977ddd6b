"""The example downstream app (tests/exampleapp) driven by the runner with no change to our packages."""

from __future__ import annotations

import sys

import pytest

from machine.models import Process
from tests.exampleapp.models import ArchiveResult

pytestmark = pytest.mark.django_db(transaction=True)


def test_runner_drives_a_downstream_model_whose_state_machine_queues_processes(start_runner):
    ok = [
        ArchiveResult.objects.create(
            url=f"https://example.com/{i}",
            plugin="title",
            hook_name="on_Snapshot__10_title.py",
            cmd=[sys.executable, "-c", "import sys; print('archived', sys.argv[1])", "{url}"],
        )
        for i in range(4)
    ]
    bad = ArchiveResult.objects.create(
        url="https://example.com/broken",
        plugin="wget",
        cmd=[sys.executable, "-c", "import sys; print('no route', file=sys.stderr); sys.exit(3)"],
    )

    runner = start_runner("--workers=2", "--until-idle", "--poll=0.05")
    assert runner.wait(90) == 0, runner.output()

    for result in ok:
        result.refresh_from_db()
        assert result.status == "succeeded", result
        assert result.output_str == f"archived {result.url}"
        process = result.process
        assert (process.status, process.exit_code) == ("exited", 0)
        assert process.cmd[-1] == result.url and process.url == result.url
        # Process reads the downstream OneToOne link.
        assert process.plugin == "title"
        assert process.hook_name == "on_Snapshot__10_title.py"
        assert process.archiveresult == result
    bad.refresh_from_db()
    assert bad.status == "failed"
    assert (bad.process.exit_code, bad.process.stderr.strip()) == (3, "no route")
    assert bad.process.plugin == "wget"
    # One Process per result: queuing it and moving the result on commit together.
    assert Process.objects.filter(process_type="hook").count() == 5
    # A Process with no downstream link reads as empty.
    orchestrator = Process.objects.get(process_type="orchestrator")
    assert (orchestrator.plugin, orchestrator.hook_name) == ("", "")
