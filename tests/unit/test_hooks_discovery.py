"""hooks.discovery: the file-name grammar, discovery on real folders, argv building."""

import json
import sys
from pathlib import Path

import pytest

from hooks import discover_hooks, is_background_hook
from hooks.discovery import (
    HOOK_FILENAME_RE,
    HookName,
    build_hook_argv,
    builtin_plugin_dir,
    interpreter_for,
    parse_hook_name,
    plugin_name_for,
)


@pytest.mark.parametrize(
    ("filename", "expected"),
    [
        ("on_BinaryRequest__10_env.py", HookName("BinaryRequest", 10, "env", False, False, "py")),
        ("on_Snapshot__50_wget.sh", HookName("Snapshot", 50, "wget", False, False, "sh")),
        ("on_Crawl__00_chrome_launch.daemon.bg.js", HookName("Crawl", 0, "chrome_launch", True, True, "js")),
        ("on_Snapshot__63_media-dl.finite.bg.py", HookName("Snapshot", 63, "media-dl", True, False, "py")),
        ("/some/dir/plugin/on_Snapshot__99_x.py", HookName("Snapshot", 99, "x", False, False, "py")),
    ],
)
def test_parse_hook_name_accepts_the_grammar(filename, expected):
    assert parse_hook_name(filename) == expected


@pytest.mark.parametrize(
    "filename",
    [
        "on_Snapshot__5_wget.py",  # one digit
        "on_Snapshot__100_wget.py",  # three digits
        "on_Snapshot_50_wget.py",  # single underscore
        "on_Snapshot__50_.py",  # no name
        "on_Snapshot__50_wget.rb",  # unknown extension
        "on_Snapshot__50_wget.bg.py",  # bare .bg is not a suffix we know
        "on_Snapshot__50_wget.py.bak",
        "on_Snapshot__50_wget.py~",
        "on___50_wget.py",  # no event
        "on_Snap shot__50_wget.py",
        "Xon_Snapshot__50_wget.py",
        "on_Snapshot__50_wget.py\n",
        ".on_Snapshot__50_wget.py",
        "on_Snapshot__50_wget.PY",
        "",
    ],
)
def test_parse_hook_name_rejects_everything_else(filename):
    assert parse_hook_name(filename) is None
    assert HOOK_FILENAME_RE.match(filename) is None


def test_is_background_hook():
    assert is_background_hook("on_Crawl__00_chrome.daemon.bg.js")
    assert is_background_hook("on_Snapshot__63_media.finite.bg.py")
    assert is_background_hook(Path("/x/y/on_Snapshot__63_media.finite.bg.py"))
    assert not is_background_hook("on_Snapshot__50_wget.py")
    assert not is_background_hook("/x/plugin.bg.d/on_Snapshot__50_wget.py")  # only the file name counts
    # Not a well-formed hook name: the ".bg." marker alone decides.
    assert is_background_hook("weird.bg.py")
    assert not is_background_hook("weird.py")
    # The legacy stem of older hook names, in a well-formed name or not.
    assert is_background_hook("on_Snapshot__21_consolelog__background.js")
    assert is_background_hook("/x/y/on_Crawl__10_chrome_session__background.py")
    assert not is_background_hook("/x/plugin__background/on_Snapshot__50_wget.py")


def _touch(path: Path, text: str = "") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_builtin_plugin_dir_is_inside_the_package():
    import hooks

    assert builtin_plugin_dir() == Path(hooks.__file__).resolve().parent / "builtin"
    assert builtin_plugin_dir().is_dir()


def test_discover_finds_the_builtin_providers_in_order():
    found = discover_hooks("BinaryRequest")
    assert [p.name for p in found] == [
        "on_BinaryRequest__10_env.py",
        "on_BinaryRequest__20_apt.py",
        "on_BinaryRequest__25_brew.py",
        "on_BinaryRequest__30_pip.py",
        "on_BinaryRequest__40_npm.py",
    ]
    assert [plugin_name_for(p) for p in found] == ["env", "apt", "brew", "pip", "npm"]
    assert all(p.is_file() for p in found)


def test_discover_searches_plugin_folders_and_loose_hooks_sorted_by_file_name(tmp_path):
    user_a, user_b = tmp_path / "a", tmp_path / "b"
    want = [
        _touch(user_b / "zeta" / "on_Snapshot__05_first.sh"),
        _touch(user_a / "on_Snapshot__20_loose.py"),  # directly in a searched folder
        _touch(user_a / "alpha" / "on_Snapshot__50_wget.py"),
        _touch(user_b / "beta" / "on_Snapshot__70_media.finite.bg.py"),
        _touch(user_a / "alpha" / "on_Snapshot__90_last.daemon.bg.js"),
    ]
    # Noise that must be skipped:
    _touch(user_a / "alpha" / "on_Crawl__10_other_event.py")
    _touch(user_a / "alpha" / "README.md")
    _touch(user_a / "alpha" / "on_Snapshot__50_wget.py.bak")
    _touch(user_a / "alpha" / "deeper" / "on_Snapshot__01_too_deep.py")  # two levels down
    (user_b / "beta" / "on_Snapshot__60_a_directory.py").mkdir(parents=True)
    (user_b / "broken").mkdir()
    (user_b / "broken" / "on_Snapshot__61_dangling.py").symlink_to(tmp_path / "missing.py")

    found = discover_hooks("Snapshot", dirs=[user_a, user_b, tmp_path / "does-not-exist"])
    assert found == want
    assert plugin_name_for(found[1]) == "a"  # a loose hook belongs to the folder holding it


def test_discover_sorts_by_name_not_by_path(tmp_path):
    late = _touch(tmp_path / "aaa" / "on_Snapshot__90_x.py")
    early = _touch(tmp_path / "zzz" / "on_Snapshot__10_x.py")
    assert discover_hooks("Snapshot", dirs=[tmp_path]) == [early, late]


def test_discover_lists_a_folder_given_twice_once(tmp_path):
    hook = _touch(tmp_path / "p" / "on_Snapshot__10_x.py")
    assert discover_hooks("Snapshot", dirs=[tmp_path, tmp_path]) == [hook]


def test_discover_has_no_side_effects(tmp_path):
    missing = tmp_path / "not" / "there"
    before = sorted(tmp_path.rglob("*"))
    assert discover_hooks("Snapshot", dirs=[missing, tmp_path / "file.txt"]) == []
    assert not missing.exists()
    assert sorted(tmp_path.rglob("*")) == before


def test_discover_with_unknown_event_is_empty(tmp_path):
    _touch(tmp_path / "p" / "on_Snapshot__10_x.py")
    assert discover_hooks("NoSuchEvent", dirs=[tmp_path]) == []


def test_interpreter_for():
    assert interpreter_for("on_X__10_a.py") == [sys.executable]
    assert interpreter_for(Path("/p/on_X__10_a.finite.bg.js")) == ["node"]
    assert interpreter_for("on_X__10_a.sh") == ["sh"]
    with pytest.raises(ValueError):
        interpreter_for("on_X__10_a.rb")


def test_build_hook_argv_encodes_values_as_separate_elements(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    overrides = {"pip": {"install_args": ["cowsay==6.1", "--no-deps"]}}
    argv = build_hook_argv(
        "plugin/on_BinaryRequest__30_pip.py",
        binary_id="b1",
        name="it's a $(name); rm -rf /",
        binproviders="env,pip",
        overrides=overrides,
        extra_list=[1, "two"],
        count=3,
        path=Path("/tmp/x y"),
        dry_run=True,
        skipped_false=False,
        skipped_none=None,
    )
    assert argv[0] == sys.executable
    assert argv[1] == str(tmp_path / "plugin" / "on_BinaryRequest__30_pip.py")  # made absolute
    assert argv[2:] == [
        "--binary-id=b1",
        "--name=it's a $(name); rm -rf /",
        "--binproviders=env,pip",
        '--overrides={"pip":{"install_args":["cowsay==6.1","--no-deps"]}}',
        '--extra-list=[1,"two"]',
        "--count=3",
        "--path=/tmp/x y",
        "--dry-run",
    ]
    assert json.loads(argv[5].split("=", 1)[1]) == overrides


def test_build_hook_argv_js_and_sh(tmp_path):
    assert build_hook_argv(tmp_path / "on_X__10_a.js", url="https://e.x/?a=1&b=2") == [
        "node",
        str(tmp_path / "on_X__10_a.js"),
        "--url=https://e.x/?a=1&b=2",
    ]
    assert build_hook_argv(tmp_path / "on_X__10_a.sh")[:1] == ["sh"]


def test_build_hook_argv_rejects_keys_that_are_not_identifiers(tmp_path):
    with pytest.raises(ValueError):
        build_hook_argv(tmp_path / "on_X__10_a.py", **{"bad key": 1})
    with pytest.raises(ValueError):
        build_hook_argv(tmp_path / "on_X__10_a.py", **{"x=y": 1})
