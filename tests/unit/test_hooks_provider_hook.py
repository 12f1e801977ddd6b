"""hooks.provider_hook: argument, override and availability checks (no installs here)."""

import os
import sys
from pathlib import Path

import pytest

from hooks import provider_hook
from hooks.provider_hook import (
    EXIT_NOT_ALLOWED,
    EXIT_UNUSABLE,
    HookError,
    is_allowed,
    lib_dir_from_env,
    main,
    parse_overrides,
    unavailable_reason,
)


@pytest.mark.parametrize(
    ("binproviders", "allowed"),
    [
        ("", True),
        (None, True),
        ("*", True),
        ("env,*", True),
        ("pip", True),
        ("env, pip ,npm", True),
        ("env,npm", False),
        ("pipx", False),
        (" , ", True),  # nothing named: any
    ],
)
def test_is_allowed(binproviders, allowed):
    assert is_allowed("pip", binproviders) is allowed


def test_lib_dir_from_env(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert lib_dir_from_env({}) == tmp_path / "lib"
    assert lib_dir_from_env({"LIB_DIR": "  "}) == tmp_path / "lib"
    assert lib_dir_from_env({"LIB_DIR": "/data/lib"}) == Path("/data/lib")
    assert lib_dir_from_env({"LIB_DIR": "rel/lib"}) == tmp_path / "rel" / "lib"


def test_parse_overrides_takes_only_this_providers_section():
    raw = '{"pip": {"install_args": ["cowsay==6.1"]}, "npm": {"whatever": {"x": 1}}}'
    assert parse_overrides(raw, "pip") == {"install_args": ["cowsay==6.1"]}
    assert parse_overrides(raw, "env") == {}
    assert parse_overrides("", "pip") == {}
    assert parse_overrides("null", "pip") == {}
    assert parse_overrides('{"pip": null}', "pip") == {}


def test_parse_overrides_normalizes_versions():
    assert parse_overrides('{"env": {"version": "2"}}', "env") == {"version": "2.0.0"}
    assert parse_overrides('{"env": {"version": "1.2.3", "abspath": "/usr/bin/x"}}', "env") == {
        "version": "1.2.3",
        "abspath": "/usr/bin/x",
    }


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("{bad", "not valid JSON"),
        ("[1]", "must be a JSON object"),
        ('"pip"', "must be a JSON object"),
        ('{"pip": ["x"]}', "must be a JSON object"),
        ('{"pip": {"install_root": "/"}}', "unsupported override 'install_root'"),
        ('{"pip": {"euid": 0}}', "unsupported override 'euid'"),
        ('{"pip": {"install": "self.exec"}}', "unsupported override 'install'"),
        ('{"pip": {"version": ["rm", "-rf", "/"]}}', "must be a version string"),
        ('{"pip": {"version": "self.default_version_handler"}}', "is not a version"),
        ('{"pip": {"abspath": "self.exec"}}', "must be an absolute path"),
        ('{"pip": {"abspath": "relative/x"}}', "must be an absolute path"),
        ('{"pip": {"install_args": "cowsay"}}', "non-empty list of strings"),
        ('{"pip": {"install_args": []}}', "non-empty list of strings"),
        ('{"pip": {"packages": ["ok", 3]}}', "non-empty list of strings"),
        ("[" * 100_000, "not valid JSON"),
    ],
)
def test_parse_overrides_refuses_what_could_redirect_or_run_things(raw, message):
    with pytest.raises(HookError) as info:
        parse_overrides(raw, "pip")
    assert info.value.exit_code == EXIT_UNUSABLE
    assert message in info.value.reason
    assert "\n" not in info.value.reason


def test_unavailable_reason(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # nothing on PATH
    assert unavailable_reason("env", tmp_path) is None
    assert "not found" in unavailable_reason("npm", tmp_path)
    assert "apt-get" in unavailable_reason("apt", tmp_path)
    monkeypatch.setattr(provider_hook, "BREW_DIRS", (str(tmp_path / "nope"),))
    assert "brew not found" in unavailable_reason("brew", tmp_path)
    assert unavailable_reason("cargo", tmp_path) == "unknown provider 'cargo'"


def test_apt_needs_root(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("apt-get", "dpkg"):
        (bin_dir / tool).write_text("#!/bin/sh\n")
        (bin_dir / tool).chmod(0o755)
    monkeypatch.setenv("PATH", str(bin_dir))
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert unavailable_reason("apt", tmp_path) == "apt needs root, running as uid 1000"
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    assert unavailable_reason("apt", tmp_path) is None


def test_pip_is_available_with_an_existing_venv_or_the_means_to_make_one(tmp_path, monkeypatch):
    assert unavailable_reason("pip", tmp_path) is None  # this interpreter has venv + ensurepip
    monkeypatch.setattr(provider_hook.importlib.util, "find_spec", lambda name: None)
    assert "lacks venv and ensurepip" in unavailable_reason("pip", tmp_path)
    python = tmp_path / "pip" / "venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text("#!/bin/sh\n")
    python.chmod(0o755)
    assert unavailable_reason("pip", tmp_path) is None


@pytest.mark.parametrize(
    ("argv", "code", "message"),
    [
        ([], EXIT_UNUSABLE, "missing --name"),
        (["--name="], EXIT_UNUSABLE, "missing --name"),
        (["--name=../../bin/sh"], EXIT_UNUSABLE, "invalid binary name"),
        (["--name=-rf"], EXIT_UNUSABLE, "invalid binary name"),
        (["--name=a b"], EXIT_UNUSABLE, "invalid binary name"),
        (["--name=git", "--timeout=abc"], EXIT_UNUSABLE, "bad arguments"),
        (["--name=git", "--timeout=0"], EXIT_UNUSABLE, "--timeout must be > 0"),
        (["--name=git", "--binproviders=pip,npm"], EXIT_NOT_ALLOWED, "env not in --binproviders=pip,npm"),
        (["--name=git", "--overrides={"], EXIT_UNUSABLE, "--overrides is not valid JSON"),
        (["--name=git", "--min-version=banana"], EXIT_UNUSABLE, "--min-version is not a version"),
    ],
)
def test_main_rejects_bad_input_with_one_line(argv, code, message, capsys):
    assert main("env", argv) == code
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1 and err.startswith("env: ")
    assert message in err


def test_main_ignores_unknown_options(capsys, monkeypatch):
    monkeypatch.setattr(sys, "path", list(sys.path))  # abxpkg prepends PATH dirs to sys.path
    monkeypatch.setenv("ABXPKG_BINPROVIDERS", "env")  # main() sets both: restore them afterwards
    monkeypatch.setenv("DEBIAN_FRONTEND", "noninteractive")
    assert main("env", ["--name=sh", "--plugin=env", "--some-future-flag=1", "--flag"]) == 0
    out, _err = capsys.readouterr()
    assert '"name": "sh"' in out


def _executable(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n")
    path.chmod(0o755)
    return path


def test_half_built_pip_venv_is_discarded(tmp_path):
    venv = tmp_path / "pip" / "venv"
    _executable(venv / "bin" / "python")  # pip never got installed: the hook was killed
    provider_hook._discard_broken_venv(tmp_path / "pip")
    assert not venv.exists()


def test_complete_pip_venv_is_kept(tmp_path):
    venv = tmp_path / "pip" / "venv"
    _executable(venv / "bin" / "python")
    _executable(venv / "bin" / "pip")
    provider_hook._discard_broken_venv(tmp_path / "pip")
    assert (venv / "bin" / "pip").exists()
    provider_hook._discard_broken_venv(tmp_path / "nothing-here")  # no venv yet: nothing to do


@pytest.mark.parametrize("provider_name", ["apt", "brew"])
def test_system_package_managers_never_uninstall(provider_name, tmp_path):
    provider = provider_hook.build_provider(provider_name, tmp_path)
    handler = provider._get_handler_for_action(bin_name="git", handler_type="uninstall")
    assert handler is provider_hook._never_uninstall
    assert "never uninstall" in handler()


def test_pip_and_npm_are_rooted_in_lib_dir_and_env_writes_nothing(tmp_path):
    assert provider_hook.build_provider("pip", tmp_path).install_root == tmp_path / "pip"
    assert provider_hook.build_provider("npm", tmp_path).install_root == tmp_path / "npm"
    env = provider_hook.build_provider("env", tmp_path)
    assert env.install_root is None and env.bin_dir is None
