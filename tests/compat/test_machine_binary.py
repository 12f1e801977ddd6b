"""machine.models.Binary, the binary helpers and hooks.is_background_hook against the original (issue 9).

Each test states the original's behaviour; where ours deliberately differs, the docstring names the
row of docs/compatibility.md ("## machine.models") that says why, and the test asserts ours.
"""

from __future__ import annotations

import inspect
import os
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from django.db import transaction
from django.utils import timezone

import machine.models as mm
from hooks import is_background_hook
from machine.models import Binary, Machine, _canonical_binary_name, _get_process_binary_env_keys
from tests.compat.machine_helpers import lib_dir

pytestmark = pytest.mark.django_db

__all__ = ["lib_dir"]  # fixture


# -- 15. from_json ---------------------------------------------------------------------------------


def test_from_json_updates_the_one_row_per_machine_and_name(lib_dir, django_capture_on_commit_callbacks):
    """Original: Binary.from_json (a staticmethod) keys every case on (machine, name):
    1. abspath, version and binproviders -> installed (binproviders set), linked after commit;
    2. "binproviders" in the record, or overrides without abspath -> queued, due now (an installed
       row is queued again and keeps its abspath/version);
    3. abspath and version -> installed (binproviders untouched), linked after commit;
    else None. The name is canonicalised (a path gives its file name); overrides are kept only when
    they are a dict.
    """
    assert isinstance(inspect.getattr_static(Binary, "from_json"), staticmethod)
    request = Binary.from_json({"name": "/opt/venv/bin/python3", "binproviders": "env", "overrides": ["x"]})
    assert (request.name, request.status, request.overrides) == ("python3", "queued", {})
    python = os.path.realpath(sys.executable)
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        installed = Binary.from_json({"name": "python3", "abspath": python, "version": "3.11"})
    assert len(callbacks) == 1 and (lib_dir / "bin" / "python3").resolve() == Path(python)
    assert (installed.pk, installed.status, installed.binproviders, installed.retry_at) == (
        request.pk, "installed", "env", None,
    )  # fmt: skip
    moved = Binary.from_json({"name": "python3", "abspath": "/usr/bin/python3", "version": "3.12",
                              "binproviders": "env,apt"})  # fmt: skip
    assert (moved.pk, moved.abspath, moved.version, moved.binproviders) == (
        request.pk, "/usr/bin/python3", "3.12", "env,apt",
    )  # fmt: skip
    again = Binary.from_json({"name": "python3", "binproviders": "env"})
    assert (again.pk, again.status, again.abspath, again.version) == (
        request.pk,
        "queued",
        "/usr/bin/python3",
        "3.12",
    )
    assert again.retry_at <= timezone.now()
    overrides_only = Binary.from_json({"name": "python3", "overrides": {"env": {"x": 1}}})
    assert (overrides_only.binproviders, overrides_only.overrides) == ("env", {"env": {"x": 1}})
    assert Binary.from_json({"name": "python3"}) is None
    assert Binary.objects.count() == 1


def test_from_json_picks_the_newest_of_several_rows_and_keeps_the_key_unique():
    """Original: update_or_create on (machine, name) (several rows of one name raise there).

    Ours: the newest row is updated; an older row that already holds exactly the incoming facts is
    merged into it (its hook history moved), so the 5-column unique key holds.
    """
    machine = Machine.current()
    old = Binary.objects.create(machine=machine, name="git", abspath="/usr/bin/git", version="2.39")
    newest = Binary.objects.create(machine=machine, name="git", abspath="/opt/git", version="2.40")
    Binary.objects.filter(pk=old.pk).update(modified_at=timezone.now() - timedelta(hours=1))
    row = Binary.from_json({"name": "git", "abspath": "/usr/bin/git", "version": "2.39"})
    assert row.pk == newest.pk and row.abspath == "/usr/bin/git"
    assert list(Binary.objects.values_list("pk", flat=True)) == [newest.pk]


def test_from_json_keeps_our_input_validation_and_claim_safety():
    """Original: any name and abspath are written (a long abspath fails at the database); a request
    re-queues the row, due now, whoever holds it.

    Ours (row "Binary.from_json()"): a name that is not one file name, or an abspath the column cannot
    hold, gives None and writes nothing; a request for a row a worker holds leaves its claim.
    """
    assert Binary.from_json({"name": "..", "binproviders": "env"}) is None
    assert Binary.from_json({"name": "ok", "abspath": "/x" * 200, "version": "1"}) is None
    assert Binary.objects.count() == 0
    row = Binary.from_json({"name": "jq", "binproviders": "env"})
    assert Binary.claim_for_worker(row)
    held_until = Binary.objects.get(pk=row.pk).retry_at
    again = Binary.from_json({"name": "jq", "binproviders": "env,apt"})
    assert again.binproviders == "env,apt" and again.retry_at == held_until > timezone.now()


# -- 16.-18. _allowed_binproviders, active_state, get_from_db_or_cache ------------------------------


def test_allowed_binproviders_only_exactly_star_means_any():
    """Original: "" or exactly "*" -> None (any provider); otherwise the set of the comma items, so
    "apt,*" is {"apt", "*"}."""
    cases = {
        "": None,
        "*": None,
        " * ": None,
        "apt": {"apt"},
        "apt,*": {"apt", "*"},
        " pip, ,npm": {"pip", "npm"},
    }
    assert {value: Binary(binproviders=value)._allowed_binproviders() for value in cases} == cases


def test_binary_active_state_is_queued():
    """Original: Binary.active_state = StatusChoices.QUEUED (a binary installs while queued). (Already
    so on main before this issue's machine half; kept.)"""
    assert Binary.active_state == Binary.ACTIVE_STATE == "queued"


def test_get_from_db_or_cache_serves_a_fresh_cached_row_whatever_the_arguments(django_assert_num_queries):
    """Original: a cached row of that name younger than BINARY_RECHECK_INTERVAL is returned even when
    the other arguments differ; else update_or_create on the exact tuple.

    Ours (row "BinaryManager.get_from_db_or_cache()"): the cached row is also checked to still exist, one
    primary-key query, so a deleted row is never handed out.
    """
    first = Binary.objects.get_from_db_or_cache("git", abspath="/usr/bin/git", version="2.39")
    with django_assert_num_queries(1):
        assert (
            Binary.objects.get_from_db_or_cache("git", abspath="/other/git", version="9", sha256="x") is first
        )
    assert Binary.objects.count() == 1
    mm._CURRENT_BINARIES["git"].modified_at = timezone.now() - timedelta(
        seconds=mm.BINARY_RECHECK_INTERVAL + 1
    )
    other = Binary.objects.get_from_db_or_cache("git", abspath="/other/git", version="9")
    assert other.pk != first.pk and (other.abspath, other.version) == ("/other/git", "9")


# -- 19.-20. cleanup(), symlink_to_lib_bin() ---------------------------------------------------------


def test_cleanup_removes_pid_files_under_the_output_dir(data_dir):
    """Original: Binary.cleanup() deletes every **/*.pid under output_dir (if it exists)."""
    binary = Binary.objects.create(machine=Machine.current(), name="tool")
    nested = binary.output_dir / ".hooks" / "on_BinaryRequest__10_env.py"
    nested.mkdir(parents=True)
    for path in (binary.output_dir / "process.pid", nested / "process.pid"):
        path.write_text("123\n")
    (nested / "stdout.log").write_text("kept")
    binary.cleanup()
    assert sorted(p.name for p in binary.output_dir.rglob("*") if p.is_file()) == ["stdout.log"]
    Binary.objects.create(machine=Machine.current(), name="nothing-on-disk").cleanup()


def test_symlink_to_lib_bin_naming_and_after_commit(tmp_path):
    """Original: the link is named after the canonical binary name (the target's file name when that
    is empty) and points at the abspath resolved; a correct existing link is returned; an app bundle
    executable (X.app/Contents/MacOS/...) is returned itself, unlinked. symlink_to_lib_bin_after_commit
    links once the outer transaction commits (re-reading the row).

    Ours (row "Binary.symlink_to_lib_bin()"): a real file in the way is never replaced.
    """
    bin_dir = tmp_path / "bin"
    real = tmp_path / "real" / "python3.11"
    real.parent.mkdir()
    real.write_text("#!/bin/sh\n")
    alias = tmp_path / "alias-python"
    alias.symlink_to(real)
    link = Binary(name="/venv/bin/python", abspath=str(alias)).symlink_to_lib_bin(bin_dir)
    assert link == bin_dir / "python" and os.readlink(link) == str(real)
    assert Binary(name="python", abspath=str(alias)).symlink_to_lib_bin(bin_dir) == link
    assert Binary(name="", abspath=str(alias)).symlink_to_lib_bin(bin_dir) == bin_dir / "python3.11"
    app = tmp_path / "Chromium.app" / "Contents" / "MacOS" / "Chromium"
    app.parent.mkdir(parents=True)
    app.write_text("")
    assert Binary(name="chromium", abspath=str(app)).symlink_to_lib_bin(bin_dir) == app
    assert not (bin_dir / "chromium").exists()
    (bin_dir / "busy").write_text("a real file")
    assert Binary(name="busy", abspath=str(real)).symlink_to_lib_bin(bin_dir) is None
    assert (bin_dir / "busy").read_text() == "a real file"


@pytest.mark.django_db(transaction=True)
def test_symlink_to_lib_bin_after_commit_waits_for_the_outer_commit(tmp_path):
    """Original: inside atomic() the link does not exist yet; after the commit it does."""
    real = tmp_path / "tool"
    real.write_text("")
    binary = Binary.objects.create(machine=Machine.current(), name="tool", abspath=str(real), version="1")
    with transaction.atomic():
        assert binary.symlink_to_lib_bin_after_commit(tmp_path / "bin") is None
        assert not (tmp_path / "bin" / "tool").exists()
    assert (tmp_path / "bin" / "tool").resolve() == real.resolve()


# -- 22. _get_process_binary_env_keys ---------------------------------------------------------------


def test_process_binary_env_keys_order(tmp_path):
    """Original: `<PLUGIN>_BINARY`; then the plugin's declared `*_BINARY` keys (its own first, then the
    others alphabetically); then `<BACKEND>_BINARY` when a `search_backend_<backend>` plugin is the
    configured SEARCH_BACKEND_ENGINE; then NODE_BINARY for a .js hook. Only keys whose env value is
    truthy; no duplicates."""
    plugin = tmp_path / "chrome"
    plugin.mkdir()
    (plugin / "config.json").write_text(
        '{"properties": {"ZZ_BINARY": {}, "CHROME_BINARY": {}, "AA_BINARY": {}, "CHROME_TIMEOUT": {}}}'
    )
    hook = str(plugin / "on_Snapshot__10_chrome.JS")
    env = {"CHROME_BINARY": "chromium", "ZZ_BINARY": "z", "AA_BINARY": "a", "NODE_BINARY": "node"}
    assert _get_process_binary_env_keys("chrome", hook, env) == [
        "CHROME_BINARY",
        "AA_BINARY",
        "ZZ_BINARY",
        "NODE_BINARY",
    ]
    assert _get_process_binary_env_keys(" chrome ", hook, {**env, "AA_BINARY": "", "ZZ_BINARY": 0}) == [
        "CHROME_BINARY", "NODE_BINARY",
    ]  # fmt: skip
    search = {"SEARCH_BACKEND_ENGINE": "ripgrep", "RIPGREP_BINARY": "rg", "SONIC_BINARY": "sonic"}
    assert _get_process_binary_env_keys("search_backend_ripgrep", "/p/on_x.py", search) == ["RIPGREP_BINARY"]
    assert _get_process_binary_env_keys("search_backend_sonic", "/p/on_x.py", search) == []
    assert _get_process_binary_env_keys("", "", None) == []


def test_canonical_binary_name():
    """Original: _canonical_binary_name(name): stripped; a path-like name (/ or \\ or a leading ~) gives
    its file name after ~ expansion; None gives ''."""
    assert [_canonical_binary_name(n) for n in (None, " wget ", "/x/venv/bin/trafilatura", "~/bin/yt-dlp")] == [
        "", "wget", "trafilatura", "yt-dlp",
    ]  # fmt: skip


# -- 24. hooks.is_background_hook --------------------------------------------------------------------


def test_is_background_hook_accepts_the_legacy_stem():
    """Original: True when ".bg." or "__background" occurs in the name.

    Ours (row "hooks.is_background_hook()"): only the file name is looked at.
    """
    assert is_background_hook("on_Snapshot__21_consolelog__background.js")
    assert is_background_hook("on_Crawl__10_chrome.daemon.bg.js")
    assert not is_background_hook("on_Snapshot__50_wget.py")
    assert not is_background_hook("/plugins/x__background/on_Snapshot__50_wget.py")
