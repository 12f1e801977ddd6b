"""The pure display helpers behind the admin pages."""

from __future__ import annotations

import shlex
from datetime import UTC, datetime, timedelta

from machine.admin_helpers import (
    REDACTED,
    config_problems,
    format_duration,
    join_tail,
    redact_cmd,
    redact_env_for_display,
    redact_nested,
    shell_command,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def test_env_values_of_secret_looking_keys_are_redacted():
    env = {
        "api_key": "a",
        "GH-TOKEN": "b",
        "MY_SECRET": "c",
        "PGPASSWORD": "d",
        "SessionCookie": "e",
        "HOME": "/root",
    }
    shown = dict(redact_env_for_display(env))
    assert shown == {
        "api_key": REDACTED,
        "GH-TOKEN": REDACTED,
        "MY_SECRET": REDACTED,
        "PGPASSWORD": REDACTED,
        "SessionCookie": REDACTED,
        "HOME": "/root",
    }
    assert redact_env_for_display({"EMPTY_TOKEN": ""}) == [("EMPTY_TOKEN", "")]
    assert redact_env_for_display(["not", "a", "dict"]) == []


def test_command_is_shell_quoted_with_secret_options_redacted():
    cmd = ["curl", "--api-key=k1", "--password", "p1", "GITHUB_TOKEN=t1", "-o", "my file.txt", "--token"]
    assert redact_cmd(cmd) == [
        "curl",
        f"--api-key={REDACTED}",
        "--password",
        REDACTED,
        f"GITHUB_TOKEN={REDACTED}",
        "-o",
        "my file.txt",
        "--token",
    ]
    line = shell_command(cmd)
    assert shlex.split(line) == redact_cmd(cmd)
    assert "k1" not in line and "p1" not in line and "t1" not in line
    assert shell_command([]) == ""
    assert shell_command("echo hi") == "'echo hi'"


def test_duration_counts_to_now_for_a_running_process():
    assert format_duration(None, None, T0) == ""
    assert format_duration(T0, T0 + timedelta(seconds=5), T0) == "5s"
    assert format_duration(T0, T0 + timedelta(milliseconds=250), T0) == "0.25s"
    assert format_duration(T0, None, T0 + timedelta(minutes=2, seconds=3)) == "2m 03s"
    assert format_duration(T0, T0 + timedelta(hours=1, seconds=62), T0) == "1h 01m 02s"
    assert format_duration(T0 + timedelta(seconds=5), T0, T0) == ""  # clock went backwards


def test_tail_results_join_into_one_block():
    assert join_tail(None) == ""
    assert join_tail("a\nb") == "a\nb"
    assert join_tail(iter(["a", "b"])) == "a\nb"


def test_config_problems_explain_what_the_sanitiser_drops(tmp_path, settings):
    settings.MACHINE_LIB_DIR = tmp_path
    assert config_problems({"WGET_BINARY": str(tmp_path), "CURL_BINARY": "curl", "FOO": "1"}) == []
    assert config_problems({"WGET_BINARY": str(tmp_path / "missing")})[0].startswith(
        "WGET_BINARY: the value is blank"
    )
    assert f"outside the lib dir ({tmp_path})" in config_problems({"SH_BINARY": "/bin/sh"})[0]
    assert config_problems("nope") == ['The config must be a JSON object, e.g. {"WGET_BINARY": "wget"}.']


def test_nested_values_of_secret_looking_keys_are_redacted():
    value = {
        "pip": {"env": {"API_KEY": "k", "HOME": "/h"}, "args": [{"token": "t"}, "x"]},
        "apt": {"secret": ""},
    }
    assert redact_nested(value) == (
        {
            "pip": {"env": {"API_KEY": REDACTED, "HOME": "/h"}, "args": [{"token": REDACTED}, "x"]},
            "apt": {"secret": ""},
        },
        True,
    )
    assert redact_nested({"pip": {"packages": ["a"]}}) == ({"pip": {"packages": ["a"]}}, False)
