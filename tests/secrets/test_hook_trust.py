"""Issue 11, point 4: a BinaryRequest hook is trusted with its own request only, within its budget.

"Why": a provider hook that printed 100k records took 43 s to dispatch against an 8 s budget and
created 25 "installed" Binary rows pointing at /bin/sh, 20 queued requests, a Machine config key and
a queued Process that `runworker` then executed.
"""

from __future__ import annotations

import itertools
import json
import sys
import time

import pytest

from hooks.records import MAX_REQUEST_RECORDS, iter_records, records_for_request
from machine.models import Binary, Machine, Process

OWN = {"type": "Binary", "name": "tool", "abspath": "/bin/sh", "version": "1.2.3"}


def test_only_the_requested_binary_and_its_config_key_are_kept():
    records = [
        {"type": "Binary", "name": "other", "abspath": "/bin/sh", "version": "1"},
        {"type": "BinaryRequest", "name": "evil", "binproviders": "pip"},
        {"type": "Process", "cmd": ["sh", "-c", "id"]},
        {"type": "Machine", "config": {"SHELL_BINARY": "/bin/sh"}},
        {"type": "Binary", "name": "tool"},  # no abspath: replaced by the better one below
        OWN,
        {"type": "Machine", "config": {"TOOL_BINARY": "/bin/sh", "WGET_BINARY": "/bin/sh"}},
        {"type": "Binary", "name": "tool", "abspath": "/bin/false", "version": "9"},  # a repeat
        {"type": "Snapshot", "url": "https://x"},
    ]
    kept, dropped, cut_short = records_for_request(records, "tool")
    assert kept == [OWN, {"type": "Machine", "config": {"TOOL_BINARY": "/bin/sh"}}]
    assert dropped == 8 and cut_short is False


def test_the_count_and_the_time_are_bounded():
    endless = itertools.repeat({"type": "Binary", "name": "sh", "abspath": "/bin/sh", "version": "1"})
    result = records_for_request(endless, "tool", limit=50)
    assert result.kept == [] and result.dropped == 50 and result.cut_short
    ticks = iter(range(1000))
    result = records_for_request(
        itertools.chain([OWN], endless), "tool", deadline=3, clock=lambda: next(ticks)
    )
    assert result.kept == [OWN] and result.dropped == 2 and result.cut_short


def test_records_are_parsed_lazily():
    text = json.dumps(OWN) + "\n" + "not json\n" * 10 + ("{" * 10 + "\n") * 10
    assert next(iter_records(text)) == OWN
    assert list(iter_records('{"type": "A"}\n{"no": "type"}\n{"type": ""}\n[1]\n{"type": "B"}')) == [
        {"type": "A"},
        {"type": "B"},
    ]


FLOOD = r"""#!/bin/sh
exec {python} - <<'EOF'
import json, sys
out = sys.stdout
own = {{"type": "Binary", "name": "tool", "abspath": "/bin/sh", "version": "1.2.3"}}
if {own_first}:
    out.write(json.dumps(own) + "\n")
for i in range(25):
    out.write(json.dumps({{"type": "Binary", "name": f"fake{{i}}", "abspath": "/bin/sh", "version": "6.6.6"}}) + "\n")
for i in range(20):
    out.write(json.dumps({{"type": "BinaryRequest", "name": f"req{{i}}", "binproviders": "env"}}) + "\n")
out.write(json.dumps({{"type": "Machine", "config": {{"PYTHON_BINARY": "/bin/sh"}}}}) + "\n")
out.write(json.dumps({{"type": "Process", "cmd": ["touch", "{pwned}"], "pwd": "/tmp", "timeout": 5}}) + "\n")
line = json.dumps({{"type": "Binary", "name": "sh", "abspath": "/bin/sh", "version": "1"}}) + "\n"
out.write(line * 100000)
if not {own_first}:
    out.write(json.dumps(own) + "\n")
EOF
"""


@pytest.mark.django_db
@pytest.mark.parametrize("own_first", [True, False], ids=["own-record-first", "own-record-after-the-flood"])
def test_a_hook_printing_100k_records_gets_only_its_own_request(
    lib_dir, make_hook, settings, tmp_path, own_first
):
    settings.MACHINE_INSTALL_TIMEOUT = 8
    pwned = tmp_path / "pwned"
    make_hook(
        "flood",
        "on_BinaryRequest__05_flood.sh",
        FLOOD.format(python=sys.executable, own_first=own_first, pwned=pwned),
    )
    machine = Machine.current()
    config_before = dict(machine.config or {})
    queued_before = Process.objects.queued().count()
    binary = Binary.from_json({"name": "tool", "binproviders": "flood"})

    started = time.monotonic()
    binary.tick_claimed()
    elapsed = time.monotonic() - started

    assert elapsed < 8, elapsed  # the whole run, dispatch included, within the hook's budget
    binary.refresh_from_db()
    # Its own record counts only when the hook put it within the records looked at.
    assert binary.status == ("installed" if own_first else "queued")
    assert set(Binary.objects.values_list("name", flat=True)) == {"tool"}  # no fakes, no requests
    machine.refresh_from_db()
    assert (machine.config or {}) == config_before  # PYTHON_BINARY is not its key
    assert Process.objects.queued().count() == queued_before  # nothing for a worker to run
    assert not any("touch" in (cmd or []) for cmd in Process.objects.values_list("cmd", flat=True))
    assert not pwned.exists()
    hook = binary.hook_processes().get()
    assert f"stopped reading after {MAX_REQUEST_RECORDS} records" in hook.stderr
    assert hook.stderr.count("[machine] on_BinaryRequest__05_flood.sh: dropped") == 1  # one warning line


@pytest.mark.django_db
def test_a_hook_may_set_its_own_binary_config_key(lib_dir, make_hook):
    own = json.dumps(OWN)
    config = json.dumps({"type": "Machine", "config": {"TOOL_BINARY": "tool", "EVIL_BINARY": "evil"}})
    make_hook("cfg", "on_BinaryRequest__05_cfg.sh", f"#!/bin/sh\nprintf '%s\\n' '{own}' '{config}'\n")
    binary = Binary.from_json({"name": "tool", "binproviders": "cfg"})
    binary.tick_claimed()
    binary.refresh_from_db()
    assert binary.status == "installed"
    config = Machine.objects.get(pk=Machine.current().pk).config
    assert config.get("TOOL_BINARY") == "tool" and "EVIL_BINARY" not in config
