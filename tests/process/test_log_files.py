"""Each Process row writes its own log files, whatever its working directory."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.django_db


def test_two_live_processes_sharing_a_pwd_each_store_only_their_own_output(make_process, workdir):
    first = make_process(["sh", "-c", "echo AAA; sleep 0.5; echo AAA"])
    second = make_process(["sh", "-c", "echo BBB; sleep 0.5; echo BBB"])
    first.launch(background=True)
    second.launch(background=True)
    assert first.is_running and second.is_running  # both alive at once, same pwd

    assert (first.wait(10), second.wait(10)) == (0, 0)

    first.refresh_from_db()
    second.refresh_from_db()
    assert (first.stdout, second.stdout) == ("AAA\nAAA\n", "BBB\nBBB\n")
    assert first.stdout_file.read_text() == "AAA\nAAA\n"
    assert second.stdout_file.read_text() == "BBB\nBBB\n"
    assert list(workdir.iterdir()) == []  # the working directory holds none of our files


def test_a_relaunched_pwd_keeps_the_earlier_rows_log(make_process, workdir):
    earlier = make_process(["echo", "first run"])
    earlier.launch()
    later = make_process(["echo", "second run"])
    later.launch()
    assert earlier.tail_stdout() and list(earlier.tail_stdout()) == ["first run"]
    assert list(later.tail_stdout()) == ["second run"]
