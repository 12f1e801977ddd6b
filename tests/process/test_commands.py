"""The run / ps / kill / cleanup management commands."""

from __future__ import annotations

import io
import json

import pytest
from django.core.management import CommandError, call_command

from machine.choices import ProcessStatus
from machine.models import Process

from .conftest import run_manage, wait_gone

pytestmark = pytest.mark.django_db


@pytest.mark.django_db(transaction=True)
def test_run_streams_output_and_exits_with_the_code(subprocess_env):
    done = run_manage("run", "--", "sh", "-c", "echo out; echo err >&2; exit 3", env=subprocess_env)
    assert done.returncode == 3
    assert done.stdout.splitlines()[0] == "out"
    assert "err" in done.stderr and "exited with code 3" in done.stderr
    row = Process.objects.get(cmd=["sh", "-c", "echo out; echo err >&2; exit 3"])
    assert (row.status, row.exit_code, row.stdout) == (ProcessStatus.EXITED, 3, "out\n")
    assert row.parent is not None and row.parent.process_type == "cli"


@pytest.mark.django_db(transaction=True)
def test_run_timeout_and_missing_program(subprocess_env):
    assert run_manage("run", "--timeout", "1", "--", "sleep", "30", env=subprocess_env).returncode == 137
    missing = run_manage("run", "--", "/no/such/program", env=subprocess_env)
    assert missing.returncode == 127 and "No such file" in missing.stderr


def test_run_refuses_bad_input(workdir):
    with pytest.raises(CommandError, match="nothing to run"):
        call_command("run")
    with pytest.raises(CommandError, match="does not exist"):
        call_command("run", "--cwd", str(workdir / "missing"), "--", "true")
    assert not Process.objects.filter(cmd=["true"]).exists()


def test_ps_lists_running_processes_as_table_and_jsonl(make_process):
    process = make_process(["sleep", "30"])
    process.launch(background=True)
    table = io.StringIO()
    call_command("ps", stdout=table)
    lines = table.getvalue().splitlines()
    assert lines[0].split()[:4] == ["ID", "PID", "TYPE", "STATUS"]
    assert any(str(process.id) in line and "sleep 30" in line for line in lines)
    out = io.StringIO()
    call_command("ps", "--json", stdout=out)
    records = [json.loads(line) for line in out.getvalue().splitlines()]
    assert str(process.id) in {r["id"] for r in records}
    assert all(r["type"] == "Process" and r["status"] == "running" for r in records)


def test_ps_table_redacts_secret_looking_arguments(make_process):
    process = make_process(["sh", "-c", "sleep 30", "--api-token=s3cr3tvalue"])
    process.launch(background=True)
    table = io.StringIO()
    call_command("ps", stdout=table)
    assert str(process.id) in table.getvalue()
    assert "s3cr3tvalue" not in table.getvalue() and "--api-token=********" in table.getvalue()
    process.kill_tree(graceful_timeout=1)


def test_kill_by_id_and_by_pid(make_process):
    first = make_process(["sleep", "30"])
    first.launch(background=True)
    out = io.StringIO()
    call_command("kill", str(first.id), "--grace", "1", stdout=out)
    assert f"Terminated {first.pid}" in out.getvalue()
    wait_gone(first.pid)
    assert Process.objects.get(pk=first.pk).status == ProcessStatus.EXITED
    second = make_process(["sleep", "30"])
    second.launch(background=True)
    call_command("kill", "--pid", str(second.pid), stdout=io.StringIO())
    wait_gone(second.pid)


def test_kill_refuses_what_is_not_provably_ours(make_process, popen):
    stranger = popen(["sleep", "30"])
    with pytest.raises(CommandError, match="refusing"):
        call_command("kill", "--pid", str(stranger.pid))
    gone = make_process(["true"])
    gone.launch()
    Process.objects.filter(pk=gone.pk).update(status=ProcessStatus.RUNNING)
    with pytest.raises(CommandError, match="not provably ours"):
        call_command("kill", str(gone.id))
    with pytest.raises(CommandError, match="no process row"):
        call_command("kill", "not-a-uuid")
    with pytest.raises(CommandError, match="exactly one"):
        call_command("kill")
    assert stranger.poll() is None


def test_cleanup_prints_how_many_rows_it_closed(make_process):
    process = make_process(["true"])
    process.launch()
    Process.objects.filter(pk=process.pk).update(status=ProcessStatus.RUNNING)
    out = io.StringIO()
    call_command("cleanup", stdout=out)
    assert out.getvalue().strip() == "Closed 1 stale process row(s)"


@pytest.mark.django_db(transaction=True)
def test_run_keeps_its_files_out_of_the_working_directory(subprocess_env, tmp_path):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    done = run_manage("run", "--cwd", str(cwd), "--", "pwd", env=subprocess_env)
    assert done.returncode == 0 and done.stdout.strip() == str(cwd)
    assert list(cwd.iterdir()) == []
    row = Process.objects.get(cmd=["pwd"])
    assert row.stdout_file.read_text().strip() == str(cwd) and row.cmd_file.exists()
