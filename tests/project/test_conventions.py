"""Django's conventions for commands: -v 0..3, and the project's LOGGING is left alone."""

from __future__ import annotations

import json

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
