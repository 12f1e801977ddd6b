"""`manage.py install` and `manage.py binaries`."""

from __future__ import annotations

import json
import shutil
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command

from machine.models import Binary

pytestmark = pytest.mark.django_db


def run(*args) -> tuple[str, str]:
    out, err = StringIO(), StringIO()
    call_command(*args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def test_install_finds_binaries_and_prints_a_table(lib_dir):
    out, err = run("install", "git", "sh", "--binproviders", "env")
    lines = out.strip().splitlines()
    assert lines[0].split() == ["NAME", "VERSION", "PROVIDER", "STATUS", "ABSPATH"]
    rows = {line.split()[0]: line.split() for line in lines[1:]}
    assert set(rows) == {"git", "sh"}
    for name, row in rows.items():
        binary = Binary.objects.get(name=name)
        assert row == [name, binary.version, "env", "installed", binary.abspath]
        assert Path(binary.abspath).resolve() == Path(shutil.which(name)).resolve()
    assert "installing git" in err and "ok" in err


def test_install_json_prints_only_jsonl_records(lib_dir):
    out, _err = run("install", "git", "--binproviders", "env", "--json")
    records = [json.loads(line) for line in out.strip().splitlines()]
    assert [(r["type"], r["name"], r["binprovider"]) for r in records] == [("Binary", "git", "env")]


def test_install_of_an_impossible_binary_fails_and_leaves_it_queued(lib_dir):
    with pytest.raises(CommandError, match="no-such-binary-zz9") as exc:
        run("install", "git", "no-such-binary-zz9", "--binproviders", "env")
    assert exc.value.returncode == 1
    assert Binary.objects.get(name="git").status == "installed"
    failed = Binary.objects.get(name="no-such-binary-zz9")
    assert failed.status == "queued" and failed.num_uses_failed == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--binproviders", "env,nosuch"], "unknown provider"),
        (["--overrides", "{not json"], "not valid JSON"),
        (["--overrides", "[1, 2]"], "must be a JSON object"),
        (["--overrides", '{"pip": "install_args"}'], "must be a JSON object"),
        (["--overrides", '{"nosuch": {}}'], "provider names"),
    ],
)
def test_bad_requests_are_rejected_and_nothing_is_queued(lib_dir, args, message):
    with pytest.raises(CommandError, match=message) as exc:
        run("install", "git", "cowsay", *args)
    assert exc.value.returncode == 2
    assert Binary.objects.count() == 0


def test_install_passes_overrides_as_data(lib_dir, make_hook, tmp_path):
    seen = tmp_path / "argv"
    make_hook(
        "echoer",
        "on_BinaryRequest__05_echoer.py",
        "import sys, pathlib\n"
        f"pathlib.Path({str(seen)!r}).write_text('\\n'.join(sys.argv[1:]))\n"
        'print(\'{"type": "Binary", "name": "tool", "abspath": "/bin/sh", "version": "1.0.0"}\')\n',
    )
    hostile = {"echoer": {"install_args": ["x; touch /tmp/pwned-by-override", "$(id)"]}}
    out, _err = run(
        "install", "tool", "--binproviders", "echoer", "--overrides", json.dumps(hostile), "--json"
    )
    assert json.loads(out)["binprovider"] == "echoer"
    argv = seen.read_text().splitlines()
    assert f"--overrides={json.dumps(hostile, separators=(',', ':'))}" in argv
    assert not Path("/tmp/pwned-by-override").exists()
    assert Binary.objects.get(name="tool").overrides == hostile


def test_binaries_lists_the_known_binaries_of_this_machine(lib_dir):
    run("install", "git", "--binproviders", "env")
    Binary.from_json({"name": "later", "binproviders": "pip"})
    out, _err = run("binaries")
    names = [line.split()[0] for line in out.strip().splitlines()[1:]]
    assert names == ["git", "later"]
    out, _err = run("binaries", "--json")
    types = {json.loads(line)["name"]: json.loads(line)["type"] for line in out.strip().splitlines()}
    assert types == {"git": "Binary", "later": "BinaryRequest"}
