"""Two worker processes ticking the same queued Binary run its install exactly once."""

from __future__ import annotations

import subprocess
import sys

import pytest

from machine.models import Binary

from .conftest import ROOT, calls

BINARY_OK = '{"type": "Binary", "name": "tool", "abspath": "/bin/sh", "version": "1.0.0", "sha256": ""}'


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("round_", range(3))
def test_two_workers_install_a_binary_exactly_once(
    round_, data_dir, lib_dir, hook_dir, make_hook, tmp_path, subprocess_env
):
    marker = tmp_path / "installs"
    # A slow provider: the install is still running when the second worker looks at the row.
    make_hook(
        "slowpkg",
        "on_BinaryRequest__05_slowpkg.sh",
        f"#!/bin/sh\necho \"$$\" >> \"{marker}\"\nsleep 1\nprintf '%s\\n' '{BINARY_OK}'\n",
    )
    binary = Binary.from_json({"name": "tool", "binproviders": "slowpkg"})
    go = tmp_path / "go"
    workers = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.binary.tick_worker",
                str(binary.pk),
                str(go),
                str(hook_dir),
                str(lib_dir),
                str(data_dir),
            ],
            cwd=ROOT,
            env=subprocess_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    try:
        go.touch()
        outputs = [w.communicate(timeout=120) for w in workers]
    finally:
        for w in workers:
            if w.poll() is None:
                w.kill()
                w.wait()
    assert [w.returncode for w in workers] == [0, 0], [err for _out, err in outputs]
    assert sorted(out.strip() for out, _err in outputs) == ["lost", "ticked"]
    assert len(calls(marker)) == 1
    binary.refresh_from_db()
    assert binary.status == "installed" and binary.binprovider == "slowpkg"
    assert binary.num_uses_succeeded == 1 and binary.num_uses_failed == 0
    assert binary.hook_processes().count() == 1
