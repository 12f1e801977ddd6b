"""Binary rows without running providers: JSON in/out, the cache, requeue, lib/bin links."""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

import pytest
from django.utils import timezone

import machine.models as mm
from machine.binaries import RETRY_DELAY, claim_lease_seconds
from machine.models import Binary, Machine

pytestmark = pytest.mark.django_db


def test_from_json_request_creates_a_queued_row_due_now_with_overrides_unchanged():
    overrides = {"pip": {"install_args": ["cowsay==6.1"]}, "min_version": "6"}
    binary = Binary.from_json({"name": "cowsay", "binproviders": "pip, npm", "overrides": overrides})
    binary.refresh_from_db()
    assert binary.status == "queued"
    assert binary.retry_at <= timezone.now()
    assert binary.binproviders == "pip,npm"
    assert binary.overrides == overrides
    assert binary.machine == Machine.current()
    assert binary in Binary.get_queue()


def test_from_json_installed_record_with_binproviders_creates_an_installed_row():
    record = {
        "name": "git",
        "binproviders": "env",
        "abspath": "/usr/bin/git",
        "version": "2.39.5",
        "sha256": "ab",
    }
    binary = Binary.from_json(record)
    binary.refresh_from_db()
    assert (binary.status, binary.retry_at, binary.abspath, binary.version, binary.binproviders) == (
        "installed",
        None,
        "/usr/bin/git",
        "2.39.5",
        "env",
    )
    assert binary.is_valid
    assert binary not in Binary.get_queue()


def test_from_json_hook_output_fills_the_queued_request_row():
    request = Binary.from_json({"name": "wget", "binproviders": "env"})
    out = Binary.from_json(
        {
            "type": "Binary",
            "name": "wget",
            "abspath": "/usr/bin/wget",
            "version": "1.21",
            "binprovider": "apt",
        }
    )
    assert out.pk == request.pk
    request.refresh_from_db()
    assert (request.status, request.binprovider, request.abspath) == ("installed", "apt", "/usr/bin/wget")
    assert Binary.objects.count() == 1


@pytest.mark.parametrize("name", ["..", ".", "x\\y", "nul\0", "/", ""])
def test_from_json_refuses_names_that_are_not_one_file_name_and_overlong_paths(name):
    assert Binary.from_json({"name": "ok", "abspath": "/x" * 200, "version": "1"}) is None
    assert Binary.from_json({"name": name, "binproviders": "env"}) is None
    assert Binary.from_json({"name": name, "abspath": "/bin/sh", "version": "1"}) is None
    with pytest.raises(ValueError, match="invalid binary name"):
        Binary.objects.get_from_db_or_cache(name)
    assert Binary.objects.count() == 0


@pytest.mark.parametrize(
    ("name", "canonical"),
    [("../../etc", "etc"), ("a/b", "b"), ("/tmp/old-lib/pip/venv/bin/trafilatura", "trafilatura")],
)
def test_from_json_reduces_a_path_like_name_to_its_file_name(name, canonical):
    assert Binary.from_json({"name": name, "binproviders": "env"}).name == canonical
    with pytest.raises(ValueError, match="invalid binary name"):
        Binary.objects.get_from_db_or_cache(name)  # the manager takes names as they are
    assert list(Binary.objects.values_list("name", flat=True)) == [canonical]


@pytest.mark.parametrize(
    "record", [{}, {"name": ""}, {"binproviders": "env"}, {"name": "x"}, "not a dict", None]
)
def test_from_json_without_a_usable_request_returns_none_and_writes_nothing(record):
    assert Binary.from_json(record) is None
    assert Binary.objects.count() == 0


def test_repeated_request_reuses_the_row_and_an_installed_row_is_queued_again():
    first = Binary.from_json({"name": "git", "binproviders": "env"})
    again = Binary.from_json({"name": "git", "binproviders": "env"})
    assert again.pk == first.pk
    Binary.from_json({"name": "git", "abspath": "/usr/bin/git", "version": "2.39"})
    # A request for an installed binary queues it again, due now, keeping its facts until a run.
    same = Binary.from_json({"name": "git", "binproviders": "env"})
    assert (same.pk, same.status, same.abspath, same.version) == (first.pk, "queued", "/usr/bin/git", "2.39")
    assert same.retry_at <= timezone.now()
    changed = Binary.from_json({"name": "git", "binproviders": "env,apt"})
    assert (changed.pk, changed.status, changed.binproviders) == (first.pk, "queued", "env,apt")
    assert Binary.objects.count() == 1


def test_to_json_is_a_request_until_abspath_and_version_are_known():
    binary = Binary.from_json({"name": "jq", "binproviders": "env", "overrides": {"env": {}}})
    request = binary.to_json()
    assert request["type"] == "BinaryRequest"
    assert (
        request["name"] == "jq" and request["binproviders"] == "env" and request["overrides"] == {"env": {}}
    )
    assert "abspath" not in request
    binary.update_and_requeue(abspath="/usr/bin/jq", version="1.6", sha256="f" * 64, binprovider="env")
    record = binary.to_json()
    assert record["type"] == "Binary"
    assert (record["abspath"], record["version"], record["sha256"]) == ("/usr/bin/jq", "1.6", "f" * 64)
    # A Binary record round-trips into an installed row.
    binary.delete()
    assert Binary.from_json(record).status == "installed"


def test_update_and_requeue_sets_fields_bumps_modified_at_and_saves():
    binary = Binary.from_json({"name": "jq", "binproviders": "env"})
    before = binary.modified_at
    assert binary.update_and_requeue(binproviders="apt", retry_at=None) is True
    binary.refresh_from_db()
    assert binary.binproviders == "apt" and binary.retry_at is None and binary.modified_at > before
    with pytest.raises(ValueError, match="unknown Binary field"):
        binary.update_and_requeue(nonsense=1)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("env", {"env"}),
        ("env, pip,,npm", {"env", "pip", "npm"}),
        ("", None),
        ("*", None),
        (" * ", None),
        ("pip,*", {"pip", "*"}),  # only exactly "*" means any provider
    ],
)
def test_allowed_binproviders(value, expected):
    assert Binary(name="x", binproviders=value)._allowed_binproviders() == expected


def test_output_dir_is_under_the_data_dir(data_dir):
    binary = Binary.from_json({"name": "jq", "binproviders": "env"})
    assert binary.output_dir == data_dir / "machines" / str(binary.machine_id) / "binaries" / "jq" / str(
        binary.id
    )


def test_get_from_db_or_cache_serves_the_fresh_cached_row_until_it_is_deleted():
    first = Binary.objects.get_from_db_or_cache("git", abspath="/usr/bin/git", version="2.39")
    assert first.status == "installed"
    assert mm._CURRENT_BINARIES["git"] is first
    assert Binary.objects.get_from_db_or_cache("git", abspath="/usr/bin/git", version="2.39") is first
    # A fresh cached row is served whatever the other arguments say (the original's rule).
    assert Binary.objects.get_from_db_or_cache("git", abspath="/opt/git", version="9") is first
    Binary.objects.filter(pk=first.pk).delete()
    recreated = Binary.objects.get_from_db_or_cache("git", abspath="/usr/bin/git", version="2.40")
    assert recreated.pk != first.pk and recreated.version == "2.40"
    assert Binary.objects.filter(pk=recreated.pk).exists()
    # An expired cache entry is looked up again (and found, not duplicated).
    Binary.objects.filter(pk=recreated.pk).update(modified_at=timezone.now() - timedelta(hours=1))
    mm._CURRENT_BINARIES["git"].modified_at = timezone.now() - timedelta(hours=1)
    again = Binary.objects.get_from_db_or_cache("git", abspath="/usr/bin/git", version="2.40")
    assert again.pk == recreated.pk and again is not recreated


def test_get_valid_binary_is_the_newest_row_with_an_abspath():
    Binary.from_json({"name": "Git", "binproviders": "env"})
    assert Binary.objects.get_valid_binary("git") is None
    found = Binary.from_json({"name": "Git", "abspath": "/usr/bin/git", "version": "2"})
    assert Binary.objects.get_valid_binary("git") == found


def test_a_claim_on_a_binary_lasts_longer_than_the_install_may_run(settings):
    settings.MACHINE_INSTALL_TIMEOUT = 900
    binary = Binary.from_json({"name": "jq", "binproviders": "env"})
    assert Binary.claim_for_worker(binary, lock_seconds=60)
    assert binary.retry_at >= timezone.now() + timedelta(seconds=900)
    assert claim_lease_seconds(60) == 960 == Binary.claim_seconds
    batch_row = Binary.from_json({"name": "other", "binproviders": "env"})
    assert Binary.claim_batch(limit=5, lock_seconds=60) == [batch_row]
    batch_row.refresh_from_db()
    assert batch_row.retry_at >= timezone.now() + timedelta(seconds=900)
    # The claim does not look like a failure backoff, so an install request cannot reset it.
    binary.refresh_from_db()
    assert not binary.is_backing_off
    assert binary.retry_now() is False
    Binary.from_json({"name": "jq", "binproviders": "env"})
    binary.refresh_from_db()
    assert binary.retry_at >= timezone.now() + timedelta(seconds=900)
    assert not Binary.claim_for_worker(binary)


def test_retry_now_makes_a_backing_off_row_due():
    binary = Binary.from_json({"name": "jq", "binproviders": "env"})
    binary._record_failure()
    binary.refresh_from_db()
    assert binary.is_backing_off and binary.retry_at - binary.modified_at == RETRY_DELAY
    assert binary.retry_now() is True
    binary.refresh_from_db()
    assert binary.retry_at <= timezone.now()


# -- lib/bin links ---------------------------------------------------------------------------------


def test_symlink_to_lib_bin_links_the_real_file(tmp_path):
    binary = Binary(name="mygit", abspath="/usr/bin/git")
    link = binary.symlink_to_lib_bin(tmp_path / "bin")
    assert link == tmp_path / "bin" / "mygit"
    assert os.readlink(link) == os.path.realpath("/usr/bin/git")
    # Relinking to another target replaces the link (pointing at the real file behind /bin/sh).
    binary.abspath = "/bin/sh"
    assert binary.symlink_to_lib_bin(tmp_path / "bin") == link
    assert os.readlink(link) == os.path.realpath("/bin/sh")
    # A link that is already right is kept as it is.
    inode = os.lstat(link).st_ino
    assert binary.symlink_to_lib_bin(tmp_path / "bin") == link and os.lstat(link).st_ino == inode


@pytest.mark.parametrize(
    ("name", "link_name"),
    [("../escape", "escape"), ("/tmp/abs-escape", "abs-escape"), ("a/b", "b"), ("", "git")],
)
def test_symlink_to_lib_bin_names_the_link_after_the_canonical_name(tmp_path, name, link_name):
    bin_dir = tmp_path / "lib" / "bin"
    link = Binary(name=name, abspath="/usr/bin/git").symlink_to_lib_bin(bin_dir)
    if not name:
        link_name = Path(os.path.realpath("/usr/bin/git")).name  # no name: the target's file name
    assert link == bin_dir / link_name and link.is_symlink()
    assert [p for p in tmp_path.rglob("*") if p.is_symlink()] == [link]  # never outside the bin dir
    assert not os.path.lexists("/tmp/abs-escape")


@pytest.mark.parametrize("name", ["..", ".", "nul\0name"])
def test_symlink_to_lib_bin_refuses_names_that_are_not_a_file_name(tmp_path, name):
    bin_dir = tmp_path / "lib" / "bin"
    assert Binary(name=name, abspath="/usr/bin/git").symlink_to_lib_bin(bin_dir) is None
    assert not any(p.is_symlink() for p in tmp_path.rglob("*"))


def test_symlink_to_lib_bin_refuses_loops_missing_and_relative_targets(tmp_path):
    bin_dir = tmp_path / "bin"
    loop_a, loop_b = tmp_path / "a", tmp_path / "b"
    loop_a.symlink_to(loop_b)
    loop_b.symlink_to(loop_a)
    for abspath in (str(loop_a), str(tmp_path / "missing"), "usr/bin/git", str(tmp_path)):
        assert Binary(name="tool", abspath=abspath).symlink_to_lib_bin(bin_dir) is None
    assert not (bin_dir / "tool").exists()


def test_symlink_to_lib_bin_never_replaces_a_real_file_or_links_to_itself(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "real").write_text("keep me")
    assert Binary(name="real", abspath="/usr/bin/git").symlink_to_lib_bin(bin_dir) is None
    assert (bin_dir / "real").read_text() == "keep me"
    # A binary found through an earlier link of ours points at the real file, never at the link.
    (bin_dir / "git").symlink_to("/usr/bin/git")
    link = Binary(name="git", abspath=str(bin_dir / "git")).symlink_to_lib_bin(bin_dir)
    assert link == bin_dir / "git" and os.path.realpath(link) == os.path.realpath("/usr/bin/git")
    assert os.readlink(link) != str(link)
