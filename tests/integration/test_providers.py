"""The built-in provider hooks, run as real subprocesses that really install.

pip and npm install into temporary LIB_DIRs (network: PyPI and the npm registry). apt installs
system-wide, so that one test only runs when HOOKS_TEST_APT_INSTALL=1.
"""

import hashlib
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest

from hooks import discover_hooks, parse_jsonl
from hooks.discovery import build_hook_argv, plugin_name_for
from hooks.provider_hook import resolve_binary

#: Wall-clock seconds per hook run, printed at the end of the module (see _report_timings).
TIMINGS: list[tuple[str, float]] = []

HEX64 = re.compile(r"\A[0-9a-f]{64}\Z")
ALL = "env,apt,brew,pip,npm"


@dataclass
class HookRun:
    returncode: int
    stdout: str
    stderr: str
    elapsed: float
    records: list[dict] = field(default_factory=list)

    @property
    def record(self) -> dict:
        assert self.returncode == 0, self.stderr
        assert len(self.records) == 1 and self.stdout.count("\n") == 1, self.stdout
        return self.records[0]

    @property
    def reason(self) -> str:
        """The last stderr line: the one-line reason of a failure."""
        return self.stderr.strip().splitlines()[-1]


def hook_for(provider: str) -> Path:
    (path,) = [p for p in discover_hooks("BinaryRequest") if plugin_name_for(p) == provider]
    return path


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ABXPKG_") and k != "LIB_DIR"}
    env.update(extra)
    return env


def run_hook(provider: str, lib_dir: Path, cwd: Path, label: str = "", **kwargs) -> HookRun:
    """Run one provider hook the way the caller will: argv list, cwd = output dir, LIB_DIR set."""
    kwargs.setdefault("binary_id", "0190d2a4-0000-7000-8000-000000000001")
    kwargs.setdefault("machine_id", "0190d2a4-0000-7000-8000-000000000002")
    kwargs.setdefault("binproviders", ALL)
    cwd.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    proc = subprocess.run(
        build_hook_argv(hook_for(provider), **kwargs),
        cwd=cwd,
        env=clean_env(LIB_DIR=str(lib_dir)),
        capture_output=True,
        text=True,
        timeout=600,
    )
    elapsed = time.monotonic() - started
    TIMINGS.append((label or f"{provider} {kwargs.get('name')}", elapsed))
    assert "Traceback" not in proc.stderr, proc.stderr
    return HookRun(proc.returncode, proc.stdout, proc.stderr, elapsed, parse_jsonl(proc.stdout))


def sha256_of(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def processes_mentioning(text: str) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline", "cwd"]):
        info = " ".join(proc.info["cmdline"] or []) + " " + (proc.info["cwd"] or "")
        if text in info:
            found.append(proc)
    return found


@pytest.fixture(scope="module", autouse=True)
def _report_timings(request):
    yield
    plugins = request.config.pluginmanager
    reporter, capture = plugins.get_plugin("terminalreporter"), plugins.get_plugin("capturemanager")
    if reporter is None or capture is None or not TIMINGS:
        return
    with capture.global_and_fixture_disabled():
        reporter.write_line("\nprovider hook runs (wall clock):")
        for label, seconds in TIMINGS:
            reporter.write_line(f"  {seconds:7.2f}s  {label}")


@pytest.fixture
def work(tmp_path):
    """(lib_dir, output_dir) for one test; the lib dir is not created in advance."""
    return tmp_path / "lib", tmp_path / "out"


# --- env -------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["python3", "git", "sh"])
def test_env_resolves_what_is_on_path(name, work):
    lib_dir, out = work
    record = run_hook("env", lib_dir, out, name=name).record
    expected = shutil.which(name, path=os.environ["PATH"])
    assert expected, f"{name} must be on PATH for this test"
    assert record["type"] == "Binary"
    assert record["name"] == name
    assert record["binprovider"] == "env"
    assert record["abspath"] == expected
    assert os.path.realpath(record["abspath"]) == os.path.realpath(expected)
    assert re.fullmatch(r"\d+\.\d+\.\d+", record["version"])
    assert HEX64.match(record["sha256"]) and record["sha256"] == sha256_of(expected)
    assert not lib_dir.exists()  # env writes nothing


def test_env_versions_match_the_binaries(work):
    lib_dir, out = work
    git = run_hook("env", lib_dir, out, name="git").record
    assert git["version"] in subprocess.run(["git", "--version"], capture_output=True, text=True).stdout
    py = run_hook("env", lib_dir, out, name="python3").record
    reported = subprocess.run(["python3", "--version"], capture_output=True, text=True).stdout
    assert py["version"] in reported


def test_env_sh_without_a_version_flag_gets_its_package_version(work):
    """dash has no --version; the hook falls back to the version of the dpkg package owning it."""
    lib_dir, out = work
    real = Path(os.path.realpath(shutil.which("sh")))
    if real.name != "dash" or not shutil.which("dpkg-query"):
        pytest.skip("needs sh = dash from dpkg")
    record = run_hook("env", lib_dir, out, name="sh").record
    package_version = subprocess.run(
        ["dpkg-query", "-W", "-f=${Version}", "dash"], capture_output=True, text=True
    ).stdout
    assert package_version.split(":")[-1].startswith(record["version"])


# --- failures that must be quick and clean ----------------------------------------------------


def test_min_version_that_cannot_be_met_fails_cleanly(work):
    run = run_hook("env", *work, name="python3", min_version="999.0")
    assert run.returncode == 1
    assert run.stdout == ""
    assert "999.0.0" in run.reason and run.reason.startswith("env: ")


def test_binary_that_exists_nowhere_fails_with_one_line(work):
    run = run_hook("env", *work, name="zz-no-such-binary-anywhere")
    assert run.returncode == 1
    assert run.stdout == ""
    assert run.stderr == "env: zz-no-such-binary-anywhere not found on PATH\n"


@pytest.mark.parametrize("provider", ["env", "apt", "brew", "pip", "npm"])
def test_provider_not_in_binproviders_exits_3_without_doing_anything(provider, work):
    lib_dir, out = work
    others = ",".join(p for p in ALL.split(",") if p != provider)
    run = run_hook(provider, lib_dir, out, name="cowsay", binproviders=others)
    assert run.returncode == 3
    assert run.stdout == ""
    assert run.stderr == f"{provider}: {provider} not in --binproviders={others}\n"
    assert not lib_dir.exists()
    assert run.elapsed < 5


def test_empty_or_star_binproviders_means_any(work):
    assert run_hook("env", *work, name="git", binproviders="").returncode == 0
    assert run_hook("env", *work, name="git", binproviders="*").returncode == 0


@pytest.mark.skipif(bool(shutil.which("brew")), reason="brew is installed here")
def test_brew_unavailable_fails_at_once(work):
    run = run_hook("brew", *work, name="wget")
    assert run.returncode == 2
    assert run.elapsed < 5
    assert run.stderr.count("\n") == 1 and run.stderr.startswith("brew: brew unavailable: ")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ("{not json", "env: --overrides is not valid JSON: "),
        ('["env"]', "env: --overrides must be a JSON object keyed by provider name, got list"),
        ('{"env": {"install_root": "/"}}', "env: unsupported override 'install_root' for env"),
        ('{"env": {"version": ["sh", "-c", "touch /tmp/pwned"]}}', "must be a version string"),
    ],
)
def test_bad_overrides_exit_2_with_a_clear_message(overrides, message, work):
    run = run_hook("env", *work, name="git", overrides=overrides)
    assert run.returncode == 2
    assert run.stdout == ""
    assert run.stderr.count("\n") == 1 and message in run.stderr


def test_missing_name_exits_2(work):
    run = run_hook("env", *work)
    assert (run.returncode, run.stderr) == (2, "env: missing --name\n")


# --- caches ------------------------------------------------------------------------------------


@pytest.fixture
def in_process(monkeypatch):
    """Calling abxpkg in this process: undo what it does to sys.path, pin its installer lookup."""
    monkeypatch.setattr(sys, "path", list(sys.path))  # abxpkg prepends every PATH dir to sys.path
    monkeypatch.setenv("ABXPKG_BINPROVIDERS", "env")


def test_env_override_does_not_leak_into_a_later_plain_load(tmp_path, in_process):
    plain = resolve_binary("env", "git", lib_dir=tmp_path)
    overridden = resolve_binary("env", "git", lib_dir=tmp_path, overrides={"version": "9.9.9"})
    assert overridden["version"] == "9.9.9"
    assert resolve_binary("env", "git", lib_dir=tmp_path) == plain
    assert plain["version"] != "9.9.9"


# --- pip ---------------------------------------------------------------------------------------


def venv_version(lib_dir: Path, dist: str) -> str:
    python = lib_dir / "pip" / "venv" / "bin" / "python"
    code = f"import importlib.metadata as m; print(m.version({dist!r}))"
    return subprocess.run([python, "-c", code], capture_output=True, text=True, check=True).stdout.strip()


def semver3(version: str) -> str:
    """ "6.1" -> "6.1.0", as abxpkg reports versions."""
    return ".".join((version.split(".") + ["0", "0"])[:3])


def assert_app_env_untouched():
    with pytest.raises(importlib.metadata.PackageNotFoundError):
        importlib.metadata.version("cowsay")
    assert not (Path(sys.executable).parent / "cowsay").exists()


@pytest.fixture(scope="module")
def pip_lib(tmp_path_factory):
    """cowsay installed by the pip hook into a fresh LIB_DIR (creates the venv: the slow part)."""
    root = tmp_path_factory.mktemp("pip")
    run = run_hook("pip", root / "lib", root / "out", label="pip install cowsay (new venv)", name="cowsay")
    return root / "lib", run


def test_pip_installs_into_lib_dir(pip_lib):
    lib_dir, run = pip_lib
    record = run.record
    abspath = Path(record["abspath"])
    assert abspath == lib_dir / "pip" / "venv" / "bin" / "cowsay"
    assert record["binprovider"] == "pip" and record["name"] == "cowsay"
    assert record["version"] == semver3(venv_version(lib_dir, "cowsay"))
    assert HEX64.match(record["sha256"]) and record["sha256"] == sha256_of(abspath)
    said = subprocess.run([abspath, "--text", "moo-from-test"], capture_output=True, text=True)
    assert said.returncode == 0 and "moo-from-test" in said.stdout
    assert_app_env_untouched()


def test_pip_second_run_is_a_quick_load(pip_lib, tmp_path):
    lib_dir, first = pip_lib
    again = run_hook("pip", lib_dir, tmp_path / "out", label="pip load cowsay (installed)", name="cowsay")
    assert again.record == first.record
    assert again.elapsed < 10


def test_pip_override_does_not_leak_into_later_loads(pip_lib, tmp_path, in_process):
    lib_dir, first = pip_lib
    overridden = resolve_binary("pip", "cowsay", lib_dir=lib_dir, overrides={"version": "1.2.3"})
    assert overridden["version"] == "1.2.3"
    assert resolve_binary("pip", "cowsay", lib_dir=lib_dir) == first.record
    assert "1.2.3" not in (lib_dir / "pip" / "derived.env").read_text()  # abxpkg's on-disk cache
    assert run_hook("pip", lib_dir, tmp_path / "out", name="cowsay").record == first.record


def test_pip_failed_install_is_one_clean_line(pip_lib, tmp_path):
    lib_dir, _ = pip_lib
    run = run_hook(
        "pip",
        lib_dir,
        tmp_path / "out",
        name="cowsay",
        overrides={"pip": {"install_args": ["cowsay==0.0.0.1"]}},
    )
    assert run.returncode == 1
    assert run.stdout == ""
    assert run.reason.startswith("pip: install failed: ")


@pytest.fixture(scope="module")
def pip_killed_then_pinned(tmp_path_factory):
    """A pip hook killed by its own --timeout mid-install, then a pinned install in the same LIB_DIR."""
    root = tmp_path_factory.mktemp("pinned")
    lib_dir = root / "lib"
    killed = run_hook("pip", lib_dir, root / "out", label="pip --timeout=1", name="cowsay", timeout=1)
    time.sleep(0.5)
    leftovers = processes_mentioning(str(lib_dir))
    pinned = run_hook(
        "pip",
        lib_dir,
        root / "out",
        label="pip install cowsay==6.0 (after a killed install)",
        name="cowsay",
        overrides={"pip": {"install_args": ["cowsay==6.0"]}},
    )
    return lib_dir, killed, leftovers, pinned


def test_timeout_is_bounded_and_leaves_no_processes(pip_killed_then_pinned):
    _lib_dir, killed, leftovers, _ = pip_killed_then_pinned
    assert killed.returncode == 1
    assert killed.reason == "pip: timed out after 1s"
    assert killed.elapsed < 10
    assert leftovers == []


def test_pip_install_args_pin_is_honoured(pip_killed_then_pinned):
    lib_dir, _, _, pinned = pip_killed_then_pinned
    record = pinned.record
    assert record["version"] == "6.0.0"
    assert venv_version(lib_dir, "cowsay") == "6.0"
    assert Path(record["abspath"]).is_relative_to(lib_dir / "pip")
    assert_app_env_untouched()


# --- npm ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def npm_lib(tmp_path_factory):
    """semver (a tiny package with a bin and no dependencies) installed by the npm hook."""
    if not (shutil.which("npm") and shutil.which("node")):
        pytest.skip("needs node and npm")
    root = tmp_path_factory.mktemp("npm")
    global_before = shutil.which("semver")
    run = run_hook("npm", root / "lib", root / "out", label="npm install semver", name="semver")
    return root / "lib", run, global_before


def test_npm_installs_into_lib_dir(npm_lib):
    lib_dir, run, global_before = npm_lib
    record = run.record
    abspath = Path(record["abspath"])
    assert abspath == lib_dir / "npm" / "node_modules" / ".bin" / "semver"
    assert record["binprovider"] == "npm" and record["name"] == "semver"
    package = json.loads((lib_dir / "npm" / "node_modules" / "semver" / "package.json").read_text())
    assert record["version"] == package["version"]
    assert HEX64.match(record["sha256"]) and record["sha256"] == sha256_of(abspath)
    ran = subprocess.run([abspath, "1.2.3", "-r", ">=1.0.0"], capture_output=True, text=True)
    assert ran.returncode == 0 and ran.stdout.strip() == "1.2.3"
    assert shutil.which("semver") == global_before  # nothing installed globally


def test_npm_second_run_is_a_quick_load(npm_lib, tmp_path):
    lib_dir, first, _ = npm_lib
    again = run_hook("npm", lib_dir, tmp_path / "out", label="npm load semver (installed)", name="semver")
    assert again.record == first.record
    assert again.elapsed < 10


# --- apt ---------------------------------------------------------------------------------------


def test_apt_loads_a_package_that_is_already_installed(work):
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        run = run_hook("apt", *work, name="git")
        assert run.returncode == 2 and run.stderr.startswith("apt: apt unavailable: ")
        return
    record = run_hook("apt", *work, name="git").record
    assert record["binprovider"] == "apt"
    assert os.path.realpath(record["abspath"]) == os.path.realpath(shutil.which("git"))


@pytest.mark.skipif(
    os.environ.get("HOOKS_TEST_APT_INSTALL") != "1",
    reason="changes the host's packages: opt in with HOOKS_TEST_APT_INSTALL=1 (CI does)",
)
def test_apt_installs_for_real(work):
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.skip("needs root and apt-get")
    if shutil.which("tree"):
        pytest.skip("tree is already installed on this host: an install cannot be shown")
    try:
        record = run_hook("apt", *work, label="apt install tree", name="tree").record
        assert record["abspath"] == "/usr/bin/tree"
        assert HEX64.match(record["sha256"])
    finally:  # leave the host as we found it
        subprocess.run(["apt-get", "remove", "-y", "-qq", "tree"], capture_output=True, timeout=120)
