"""Issue 10: output of any size and any bytes is stored bounded and safely; bad input is refused first."""

from __future__ import annotations

import re
import resource
import subprocess
import sys
import threading
import time

import psutil
import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from machine import process_utils as pu
from machine.choices import ProcessStatus, ProcessType
from machine.conf import machine_settings
from machine.models import Machine, Process
from machine.processes import MAX_TIMEOUT, ProcessInputError
from machine.redaction import _GATE, GATE_WORDS

from .conftest import run_manage

pytestmark = pytest.mark.django_db

MB = 1024 * 1024


def _max_child_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024


# -- cap_log / read_tail / tail: the OS seam ----------------------------------------------------------


def test_cap_log_keeps_head_and_tail_and_says_what_was_cut(tmp_path):
    log = tmp_path / "out.log"
    log.write_bytes(b"HEAD" + b"m" * 10_000 + b"TAIL")
    cut = pu.cap_log(log, 1000)
    data = log.read_bytes()
    assert cut == 10_008 - 1000
    assert data.startswith(b"HEAD") and data.endswith(b"TAIL")
    assert b"[... 9008 bytes cut: the log keeps its first and last 500 bytes" in data
    assert len(data) < 1000 + 200
    # Grown again: cut again, and the count adds up (one notice, not two).
    with open(log, "ab") as f:
        f.write(b"n" * 5000 + b"END")
    pu.cap_log(log, 1000)
    data = log.read_bytes()
    assert data.startswith(b"HEAD") and data.endswith(b"END") and data.count(b"bytes cut") == 1
    assert b"[... 14011 bytes cut" in data
    assert pu.cap_log(log, 1000) == 0  # within the cap (and its notice): nothing to do


def test_cap_log_while_a_child_appends(tmp_path):
    """A writer that never stops (O_APPEND, as a launched child's fd is) keeps a capped, ordered log."""
    log = tmp_path / "busy.log"
    writer = subprocess.Popen(
        [sys.executable, "-c", "import sys\nfor i in range(400000): sys.stdout.write(f'{i:08d}\\n')"],
        stdout=open(log, "ab"),  # noqa: SIM115
    )
    while writer.poll() is None:
        pu.cap_log(log, 64 * 1024)
        time.sleep(0.005)
    pu.cap_log(log, 64 * 1024)
    data = log.read_bytes()
    assert len(data) <= 64 * 1024 + 2 * 4096 + 200  # (the notice block, the tail from a block)
    assert data.startswith(b"00000000\n") and data.endswith(b"00399999\n")
    tail = data.rpartition(b"bytes cut")[2].split(b"\n")[1:-1]
    numbers = [int(line) for line in tail if len(line) == 8]
    assert numbers == sorted(numbers) and numbers[-1] == 399_999


def test_tail_follow_goes_on_after_a_cut(tmp_path):
    log = tmp_path / "cut.log"
    log.write_bytes(b"first line\n" + b"x" * 5000 + b"\n")
    stop = threading.Event()
    got: list[str] = []

    def follow():
        got.extend(pu.tail(log, follow=True, poll_interval=0.01, stop=stop.is_set, from_start=True))

    reader = threading.Thread(target=follow)
    reader.start()
    time.sleep(0.2)
    with open(log, "ab") as f:
        f.write(b"y" * 20_000 + b"\n")
    time.sleep(0.1)
    pu.cap_log(log, 2000)
    time.sleep(0.2)  # (the reader goes on from the end it finds after the cut)
    with open(log, "ab") as f:
        f.write(b"after the cut\n")
    time.sleep(0.2)
    stop.set()
    reader.join(5)
    assert got[0] == "first line"
    assert got[-2:] == ["[... the log was cut while it was being read ...]", "after the cut"]
    assert got.count("first line") == 1  # a cut is not a rewrite: the head is not read again


def test_tail_follow_reads_one_endless_line_in_bounded_pieces(tmp_path):
    log = tmp_path / "line.log"
    log.write_bytes(b"z" * (3 * MB))
    pieces = list(pu.tail(log, follow=True, stop=lambda: True, from_start=True, max_line=MB))
    assert sum(len(piece) for piece in pieces) == 3 * MB
    assert max(len(piece) for piece in pieces) <= MB + 64 * 1024


def test_gate_words_are_the_gate_pattern():
    assert [word.decode() for word in GATE_WORDS] == _GATE.pattern.split("|")


# -- what a closed row stores --------------------------------------------------------------------------


def test_a_gigabyte_of_output_through_launch_is_stored_bounded(make_process, settings):
    settings.MACHINE_LOG_MAX_BYTES = 8 * MB
    settings.MACHINE_OUTPUT_TAIL_BYTES = 64 * 1024
    me = psutil.Process()
    before = me.memory_info().rss
    process = make_process(["head", "-c", str(1024 * MB), "/dev/zero"], timeout=300)
    process.launch()
    grown = (me.memory_info().rss - before) / MB
    process.refresh_from_db()
    assert (process.status, process.exit_code) == (ProcessStatus.EXITED, 0)
    assert len(process.stdout.encode()) <= 3 * 64 * 1024 + 200  # (U+2400 is 3 bytes per NUL)
    assert process.stdout.startswith("[... ") and "earlier bytes are only in stdout.log" in process.stdout
    assert set(process.stdout.splitlines()[-1]) == {"\u2400"}  # NUL bytes stored visibly
    assert process.stdout_file.stat().st_size <= 8 * MB + 2 * 4096 + 200
    assert b"bytes cut: the log keeps its first and last" in process.stdout_file.read_bytes()[: 5 * MB]
    assert grown < 100, f"the parent grew by {grown:.0f} MB"


def test_nul_invalid_utf8_and_a_huge_line_are_stored(make_process, settings):
    settings.MACHINE_OUTPUT_TAIL_BYTES = 1 * MB
    script = (
        "import sys; out = sys.stdout.buffer; out.write(b'a\\x00b\\xff\\xfec\\n'); "
        "out.write(b'L' * 30_000_000); sys.stderr.buffer.write(b'\\x00err\\x80')"
    )
    process = make_process([sys.executable, "-c", script])
    process.launch()
    process.refresh_from_db()
    assert (process.status, process.exit_code) == (ProcessStatus.EXITED, 0)
    assert process.stderr == "\u2400err\ufffd"
    assert process.stdout.endswith("L" * 1000) and len(process.stdout) <= 1 * MB + 200
    assert process.stdout.startswith("[... ")


def test_nul_in_a_short_output_on_this_database(make_process):
    process = make_process(["printf", "a\\000b"])
    process.launch()
    process.refresh_from_db()
    assert (process.status, process.exit_code, process.stdout) == ("exited", 0, "a\u2400b")


def test_stored_output_set_by_a_caller_is_made_storable(make_process):
    process = make_process(["true"], stdout="set \x00 by caller \udcff")
    process.mark_exited(exit_code=0)
    process.refresh_from_db()
    assert process.stdout == "set \u2400 by caller \ufffd"


# -- bad input: refused before any file, row or child exists --------------------------------------


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"cmd": ["echo", "a\x00b"]}, "cmd[1] contains a NUL byte"),
        ({"cmd": ["echo", "caf\udce9"]}, "cmd[1] is not valid UTF-8"),
        ({"cmd": ["echo"], "env": {"A=B": "1"}}, "env keys must be non-empty strings without '='"),
        ({"cmd": ["echo"], "env": {"TOKEN": "x\x00y"}}, "the value of env TOKEN contains a NUL byte"),
        ({"cmd": ["echo"], "timeout": 3_000_000_000}, f"from 0 (no limit) to {MAX_TIMEOUT}"),
        ({"cmd": ["echo"], "timeout": float("nan")}, "timeout must be a number of seconds"),
        ({"cmd": ["echo"], "timeout": -1}, "timeout must be a number of seconds"),
    ],
)
def test_bad_input_is_refused_before_anything_exists(make_process, data_dir, fields, message):
    process = make_process(**fields)
    with pytest.raises(ProcessInputError, match=re.escape(message)):
        process.launch()
    assert process.pk is None or not Process.objects.filter(pk=process.pk).exists()
    assert not (data_dir / "processes").exists() or not any((data_dir / "processes").iterdir())


def test_a_failure_after_the_spawn_kills_the_child_and_closes_the_row(make_process, monkeypatch):
    """The running row cannot be written (say the database went away): no child is left behind."""
    process = make_process(["sleep", "300"])
    real_save = Process.save

    def failing_save(self, *args, **kwargs):
        if self.status == ProcessStatus.RUNNING:
            raise RuntimeError("database went away")
        return real_save(self, *args, **kwargs)

    monkeypatch.setattr(Process, "save", failing_save)
    with pytest.raises(RuntimeError, match="database went away"):
        process.launch(background=True)
    monkeypatch.undo()
    assert (
        process.pid
        and not psutil.pid_exists(process.pid)
        or (psutil.Process(process.pid).status() == psutil.STATUS_ZOMBIE)
    )
    row = Process.objects.get(pk=process.pk)
    assert (row.status, row.exit_code) == (ProcessStatus.EXITED, 137)
    assert "launch failed after the spawn: RuntimeError: database went away" in row.stderr


# -- through manage.py run and the admin -------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_run_yes_with_a_timeout_ends_bounded(subprocess_env):
    """`run --timeout 2 -- yes`: before, 52 s, a 14.8 GB log and 13.8 GB RSS, then MemoryError."""
    started = time.monotonic()
    done = run_manage("run", "--timeout", "2", "--", "yes", env=subprocess_env, timeout=60, text=False)
    took = time.monotonic() - started
    assert done.returncode == 137, done.stderr[-2000:]
    assert took < 30, f"run took {took:.1f}s"
    assert _max_child_rss_mb() < 300
    row = Process.objects.get(cmd=["yes"])
    assert (row.status, row.exit_code) == (ProcessStatus.EXITED, 137)
    assert len(row.stdout) <= machine_settings.OUTPUT_TAIL_BYTES + 200
    assert row.stdout_file.stat().st_size <= machine_settings.LOG_MAX_BYTES + 64 * MB
    assert not Process.objects.filter(status=ProcessStatus.RUNNING, cmd=["yes"]).exists()


@pytest.mark.django_db(transaction=True)
def test_run_refuses_a_non_utf8_argument_and_the_admin_still_answers(subprocess_env, admin_client):
    undecodable = b"caf\xe9".decode(errors="surrogateescape")
    done = run_manage("run", "--", "echo", undecodable, env=subprocess_env, text=False)
    assert done.returncode == 1
    assert b"cmd[1] is not valid UTF-8" in done.stderr and b"Traceback" not in done.stderr
    assert not Process.objects.filter(process_type=ProcessType.BINARY).exists()
    cli = Process.objects.get(process_type=ProcessType.CLI)
    assert cli.cmd[-1] == "caf\\xe9"  # the run's own row: the byte shown, not a broken string
    assert admin_client.get("/admin/machine/process/").status_code == 200
    assert admin_client.get(f"/admin/machine/process/{cli.pk}/change/").status_code == 200


@pytest.mark.django_db(transaction=True)
def test_run_refuses_an_out_of_range_timeout_before_spawning(subprocess_env, tmp_path):
    flag = tmp_path / "ran"
    done = run_manage(
        "run", "--timeout", "3000000000", "--", "touch", str(flag), env=subprocess_env, text=False
    )
    assert done.returncode == 1 and b"timeout must be a number of seconds" in done.stderr
    assert b"Traceback" not in done.stderr
    assert not flag.exists()
    assert not Process.objects.filter(process_type=ProcessType.BINARY).exists()


def test_changelist_does_not_load_output(admin_client):
    row = Process.objects.create(
        machine=Machine.current(), cmd=["big"], pwd="/", status="exited", exit_code=0, stdout="x" * (20 * MB)
    )
    with CaptureQueriesContext(connection) as queries:
        response = admin_client.get("/admin/machine/process/")
    assert response.status_code == 200
    selects = [q["sql"] for q in queries.captured_queries if '"machine_process"."stdout"' in q["sql"]]
    assert selects == []
    page = admin_client.get(f"/admin/machine/process/{row.pk}/change/")
    assert page.status_code == 200 and len(page.content) < 1 * MB


def test_records_past_the_stored_tail_are_read_from_the_log(make_process, settings):
    settings.MACHINE_OUTPUT_TAIL_BYTES = 4096
    script = (
        "import json\nprint(json.dumps({'type': 'Snapshot', 'url': 'https://first.example'}))\n"
        "print('x' * 100_000)\nprint(json.dumps({'type': 'Snapshot', 'url': 'https://last.example'}))"
    )
    process = make_process([sys.executable, "-c", script])
    process.launch()
    process.refresh_from_db()
    assert "first.example" not in process.stdout  # (only the tail is stored)
    urls = [record["url"] for record in process.get_records()]
    assert urls == ["https://first.example", "https://last.example"]
