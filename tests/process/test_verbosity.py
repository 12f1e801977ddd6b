"""-v 0 silences a command's own output (not --json data, not errors); -v 2 adds detail."""

from __future__ import annotations

import json
from io import StringIO

import pytest
from django.core.management import call_command

from machine.models import Binary, Process


def run(*args, **options) -> tuple[str, str]:
    out, err = StringIO(), StringIO()
    call_command(*args, stdout=out, stderr=err, **options)
    return out.getvalue(), err.getvalue()


@pytest.mark.django_db
def test_minus_v_0_silences_every_command_but_json_and_errors(make_process, tmp_path, settings):
    settings.MACHINE_LIB_DIR = tmp_path / "lib"
    sleeper = make_process(["sleep", "30"])
    sleeper.launch(background=True)
    old = make_process(["true"])
    old.launch()

    silent = {
        "machine": run("machine", verbosity=0),
        "install": run("install", "sh", "--binproviders=env", verbosity=0),
        "binaries": run("binaries", verbosity=0),
        "ps": run("ps", verbosity=0),
        "cleanup": run("cleanup", verbosity=0),
        "prune": run("prune", "--days=0", verbosity=0),
        "kill": run("kill", str(sleeper.pk), "--grace=1", verbosity=0),
    }

    assert silent == dict.fromkeys(silent, ("", ""))
    # ... and each did its work.
    assert Binary.objects.get(name="sh").status == "installed"
    sleeper.refresh_from_db()
    assert sleeper.status == "exited"
    assert not Process.objects.filter(pk=old.pk).exists()
    # Data asked for is still printed.
    out, err = run("binaries", "--json", verbosity=0)
    assert json.loads(out)["name"] == "sh" and err == ""


@pytest.mark.django_db
def test_minus_v_1_and_2_print_the_normal_and_the_detailed_table(tmp_path, settings):
    settings.MACHINE_LIB_DIR = tmp_path / "lib"
    run("install", "sh", "--binproviders=env", verbosity=0)
    normal, _ = run("binaries")
    detailed, _ = run("binaries", verbosity=2)
    assert normal.splitlines()[0].split() == ["NAME", "VERSION", "PROVIDER", "STATUS", "ABSPATH"]
    assert detailed.splitlines()[0].split() == [*normal.splitlines()[0].split(), "HEALTH", "SHA256", "ID"]
    assert str(Binary.objects.get(name="sh").id) in detailed
