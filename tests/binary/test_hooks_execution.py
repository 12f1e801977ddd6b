"""run_hook() runs real scripts as hook Process rows; dispatch hands records to the models."""

from __future__ import annotations

import json
import sys
import time

import pytest

from machine.hook_runs import dispatch_records, run_hook
from machine.models import Binary, Machine, Process

pytestmark = pytest.mark.django_db


def test_run_hook_runs_a_foreground_hook_as_a_tracked_hook_process(make_hook, tmp_path, data_dir):
    script = make_hook(
        "demo",
        "on_Thing__10_demo.sh",
        'pwd > where.txt\necho "garbage line"\necho "$@" >&2\n'
        'printf \'{"type": "Demo", "seen": "%s"}\\n\' "$GREETING"\n',
    )
    out = tmp_path / "out"
    process = run_hook(
        script, out, config={"GREETING": "hello", "EMPTY": None}, timeout=30, url="https://x/?a=b c"
    )
    process.refresh_from_db()
    assert process.process_type == "hook"
    assert process.status == "exited" and process.exit_code == 0
    assert process.machine == Machine.current()
    assert process.pwd == str(out)
    assert process.cmd[:2] == ["sh", str(script)]
    assert process.cmd[2:] == ["--url=https://x/?a=b c"]  # one argv element, never a shell string
    assert process.stderr.strip() == "--url=https://x/?a=b c"
    assert process.parse_records_from_text(process.stdout) == [{"type": "Demo", "seen": "hello"}]
    # The hook ran in its own working directory.
    assert (out / "where.txt").read_text().strip() == str(out)


def test_run_hook_picks_the_interpreter_by_extension_and_links_the_parent(make_hook, tmp_path):
    script = make_hook("demo", "on_Thing__20_demo.py", "import sys\nprint(sys.executable)\n")
    parent = Process.objects.create(machine=Machine.current(), process_type="worker", cmd=["x"])
    process = run_hook(script, tmp_path / "out", parent=parent, timeout=30)
    assert process.cmd[0] == sys.executable
    assert process.stdout.strip() == sys.executable
    assert process.parent == parent


def test_a_crashing_hook_is_a_failed_run_with_its_stderr_kept(make_hook, tmp_path):
    script = make_hook(
        "demo", "on_Thing__30_crash.py", "raise SystemExit(__import__('boom_no_such_module'))\n"
    )
    process = run_hook(script, tmp_path / "out", timeout=30)
    assert process.exit_code not in (0, None)
    assert "boom_no_such_module" in process.stderr
    assert Process.objects.get(pk=process.pk).stderr == process.stderr


def test_a_hook_printing_garbage_gives_no_records(make_hook, tmp_path):
    script = make_hook(
        "demo", "on_Thing__31_junk.sh", "printf '{not json\\n[1,2]\\n\\377\\376\\n{\"no_type\": 1}\\n'\n"
    )
    process = run_hook(script, tmp_path / "out", timeout=30)
    assert process.exit_code == 0
    assert process.parse_records_from_text(process.stdout) == []
    assert dispatch_records(Process.parse_records_from_text(process.stdout)) == []


def test_a_hook_that_hangs_past_its_timeout_is_killed_and_fails(make_hook, tmp_path):
    script = make_hook("demo", "on_Thing__32_hang.sh", "echo 'about to hang' >&2\nsleep 60 & wait\n")
    started = time.monotonic()
    process = run_hook(script, tmp_path / "out", timeout=1)
    assert time.monotonic() - started < 20
    process.refresh_from_db()
    assert process.exit_code == 137 and process.status == "exited"
    assert "about to hang" in process.stderr
    assert "timed out" in process.stderr


def test_a_background_hook_returns_while_running(make_hook, tmp_path):
    script = make_hook("demo", "on_Thing__40_slow.finite.bg.sh", 'sleep 1\necho \'{"type": "Late"}\'\n')
    started = time.monotonic()
    process = run_hook(script, tmp_path / "out", timeout=30)
    assert time.monotonic() - started < 1
    assert process.status == "running" and process.exit_code is None
    assert process.wait(timeout=10) == 0
    assert process.get_records() == [{"type": "Late"}]


def test_dispatch_sends_records_by_type_and_skips_unknown_or_rejected_ones():
    results = dispatch_records(
        [
            {"type": "Unknown", "name": "x"},
            {"type": "Binary", "name": "jq", "abspath": "/usr/bin/jq", "version": "1.6"},
            {"type": "BinaryRequest", "name": "cowsay", "binproviders": "pip"},
            {
                "type": "Machine",
                "config": {"GIT_BINARY": "git", "WGET_BINARY": "/usr/bin/wget", "EXTRA": "x"},
            },
            {"type": "Binary"},  # no name: rejected quietly
            "not a record",
        ]
    )
    assert [type(r).__name__ for r in results] == ["Binary", "Binary", "Machine"]
    assert Binary.objects.get(name="jq").status == "installed"
    assert Binary.objects.get(name="cowsay").status == "queued"
    # A path outside the lib dir is not kept (Machine.current() would drop it); other keys are.
    assert json.dumps(Machine.current().config) == json.dumps({"GIT_BINARY": "git", "EXTRA": "x"})


def test_binary_cleanup_stops_its_running_background_hooks(make_hook, lib_dir):
    binary = Binary.from_json({"name": "tool", "binproviders": "demo"})
    script = make_hook("demo", "on_BinaryRequest__50_bg.daemon.bg.sh", "sleep 60\n")
    process = run_hook(script, binary.output_dir, timeout=120, name="tool")
    assert process.status == "running"
    # Until the child has exec'd, its command line is still ours and it cannot be proven to be the hook.
    deadline = time.monotonic() + 10
    while not process.is_running and time.monotonic() < deadline:
        time.sleep(0.05)
    assert binary.cleanup() == 1
    process.refresh_from_db()
    assert process.status == "exited" and not process.is_running
    assert binary.cleanup() == 0
