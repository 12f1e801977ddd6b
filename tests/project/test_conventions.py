"""Django's conventions for commands: -v 0..3, and the project's LOGGING is left alone."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys

RUNNER = ("runworker", "--workers=1", "--until-idle", "--models=exampleapp.Task", "--poll=0.05")

#: Added to a startproject settings.py: the project's own handler for the `workers` logger.
PROJECT_LOGGING = """
LOGGING = {{
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {{"project": {{"format": "PROJECT %(name)s %(message)s"}}}},
    "handlers": {{"file": {{"class": "logging.FileHandler", "filename": {path!r}, "formatter": "project"}}}},
    "loggers": {{"workers": {{"handlers": ["file"], "level": "INFO"}}}},
}}
"""


def test_quickstart_and_runworker_at_minus_v_0_print_nothing(new_project, tmp_path):
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps({"binaries": [{"name": "sh"}], "processes": [{"cmd": ["echo", "hi"]}]}))
    settings_py = new_project.path / "proj" / "settings.py"
    settings_py.write_text(settings_py.read_text() + 'INSTALLED_APPS += ["machine.demo"]\n')

    quiet = new_project.manage("quickstart", f"--manifest={manifest}", "-v", "0")
    runner = new_project.manage(*RUNNER, "--progress", "-v", "0")
    chatty = new_project.manage(*RUNNER)

    assert (quiet.stdout, quiet.stderr) == ("", "")
    assert (runner.stdout, runner.stderr) == ("", "")
    assert "runner" in chatty.stderr and "started: 1 worker(s) for exampleapp.Task" in chatty.stderr


def test_runworker_keeps_the_projects_logging_handlers(new_project, tmp_path):
    log = tmp_path / "project.log"
    settings_py = new_project.path / "proj" / "settings.py"
    settings_py.write_text(settings_py.read_text() + PROJECT_LOGGING.format(path=str(log)))

    done = new_project.manage(*RUNNER, "-v", "2")

    # The project's handler got the runner's records in the project's format; none went to stderr.
    lines = log.read_text().splitlines()
    assert any(line.startswith("PROJECT workers.runner runner ") and "started" in line for line in lines)
    assert "started: 1 worker(s)" not in done.stderr


def _on_a_terminal(project, *args: str) -> str:
    """Run `manage.py ARGS` with its stdout on a pseudo-terminal; what it printed."""
    leader, follower = pty.openpty()
    try:
        done = subprocess.run(
            [sys.executable, str(project.manage_py), *args],
            cwd=project.path, env={**project.env, "COLUMNS": "160", "TERM": "xterm"},
            stdout=follower, stderr=subprocess.PIPE, timeout=60,
        )  # fmt: skip
        os.close(follower)
        follower = -1
        assert done.returncode == 0, done.stderr
        chunks = []
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # EIO: the terminal is closed and drained
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks).decode(errors="replace")
    finally:
        os.close(leader)
        if follower >= 0:
            os.close(follower)


def test_tables_are_drawn_by_rich_on_a_terminal_and_plain_in_a_pipe(new_project):
    new_project.manage("install", "sh", "--binproviders=env", "-v", "0")
    piped = new_project.manage("binaries").stdout
    drawn = _on_a_terminal(new_project, "binaries")
    assert piped.splitlines()[0].split() == ["NAME", "VERSION", "PROVIDER", "STATUS", "ABSPATH"]
    assert "┃" not in piped and "\x1b[" not in piped
    assert "┃" in drawn and "NAME" in drawn and "sh" in drawn  # a rich table with box characters
