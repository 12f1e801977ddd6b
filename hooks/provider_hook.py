"""Shared body of the built-in ``on_BinaryRequest`` provider hooks (env, apt, brew, pip, npm).

Each ``hooks/builtin/<provider>/on_BinaryRequest__NN_<provider>.py`` only calls
``main("<provider>", sys.argv[1:])``. This module imports abxpkg and the standard library, never
Django: it runs inside the hook subprocess, not in the web or worker process.

Command line (unknown ``--options`` are ignored, so the caller may pass more than this)::

    <hook> --name=NAME [--binproviders=env,pip] [--overrides=JSON] [--min-version=X.Y]
           [--timeout=SECONDS] [--binary-id=UUID] [--machine-id=UUID]

- ``--binproviders``: comma list of allowed providers; empty or ``*`` means any.
- ``--overrides``: JSON object keyed by provider name, e.g. ``{"pip": {"install_args": ["cowsay==6.1"]}}``.
  Only this provider's section is read; its allowed keys are in ``OVERRIDE_KEYS``.
- ``--timeout``: the hook's whole budget in seconds (default ``DEFAULT_TIMEOUT``); every command
  abxpkg runs gets it as its own limit too, and a SIGALRM ends the hook when it is spent.

Environment:

- ``LIB_DIR``: the lib folder inside the data dir; pip installs into a venv at
  ``$LIB_DIR/pip/venv``, npm into the prefix ``$LIB_DIR/npm``. When unset or empty it is
  ``./lib`` relative to the working directory (the hook's own output dir), which is almost never
  what a caller wants: pass it.
- ``PATH``: where ``env`` looks for binaries, and where npm/node, brew and apt-get are found.
- ``ABXPKG_POSTINSTALL_SCRIPTS`` / ``ABXPKG_MIN_RELEASE_AGE``: abxpkg's own supply-chain knobs.
  By default pip installs wheels only (``--only-binary :all:``), npm runs ``--ignore-scripts``, and
  both refuse releases younger than 7 days (where the installer supports it).

Behaviour: load first; install only when that fails (env never installs). Exception: an
``install_args``/``packages`` override always runs the installer, since a pin must win over
whatever version is already there. A lookup with overrides bypasses abxpkg's caches and is
removed from them afterwards. pip/npm results must lie inside ``$LIB_DIR/<provider>``; hooks
sharing an install root take turns (a file lock). apt/brew never uninstall anything, not even
abxpkg's rollback after an install whose binary cannot be found.

Result: on success exactly one line on stdout,
``{"type": "Binary", "name", "abspath", "version", "sha256", "binprovider"}``, and exit 0. All other
output goes to stderr; on failure its last line is a one-line reason.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import fcntl
import importlib.util
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
from abxpkg import (
    AptProvider,
    Binary,
    BinaryInstallError,
    BinaryLoadError,
    BinProvider,
    BrewProvider,
    EnvProvider,
    NpmProvider,
    PipProvider,
    SemVer,
)

from hooks.overrides import OverrideError, check_install_args

__all__ = [
    "DEFAULT_TIMEOUT",
    "EXIT_FAILED",
    "EXIT_NOT_ALLOWED",
    "EXIT_OK",
    "EXIT_UNUSABLE",
    "OVERRIDE_KEYS",
    "PROVIDERS",
    "HookError",
    "build_provider",
    "is_allowed",
    "lib_dir_from_env",
    "main",
    "parse_overrides",
    "resolve_binary",
    "unavailable_reason",
]

EXIT_OK = 0  #: found or installed; one ``Binary`` record printed
EXIT_FAILED = 1  #: not found, install failed, min version not met, or timed out
EXIT_UNUSABLE = 2  #: bad arguments/overrides, or this provider is unavailable on this host
EXIT_NOT_ALLOWED = 3  #: this provider is not in ``--binproviders``

#: Seconds the whole hook may take unless ``--timeout`` says otherwise.
DEFAULT_TIMEOUT = 300.0

#: Per-provider override keys we pass on to abxpkg. Others (provider fields such as
#: ``install_root`` or ``euid``, handler names like ``"self.exec"``, a ``version`` given as a
#: command list) would let stored data redirect installs or run commands, so they are refused.
OVERRIDE_KEYS = frozenset({"abspath", "install_args", "packages", "version"})

#: Where Homebrew lives when it is not on PATH (abxpkg looks there too).
BREW_DIRS = ("/home/linuxbrew/.linuxbrew/bin", "/opt/homebrew/bin", "/usr/local/bin")

_BIN_NAME_RE = re.compile(r"\A[A-Za-z0-9_+.@][A-Za-z0-9_+.@-]*\Z")


@dataclass(frozen=True)
class ProviderSpec:
    """What the hook needs to know about one provider."""

    name: str
    can_install: bool  #: False for env: it only finds what is already on PATH
    uses_lib_dir: bool  #: installs under ``LIB_DIR/<name>`` (and is locked there)


PROVIDERS: dict[str, ProviderSpec] = {
    spec.name: spec
    for spec in (
        ProviderSpec("env", can_install=False, uses_lib_dir=False),
        ProviderSpec("apt", can_install=True, uses_lib_dir=False),
        ProviderSpec("brew", can_install=True, uses_lib_dir=False),
        ProviderSpec("pip", can_install=True, uses_lib_dir=True),
        ProviderSpec("npm", can_install=True, uses_lib_dir=True),
    )
}


class HookError(Exception):
    """An expected failure: reported as one line on stderr and an exit code, never a traceback."""

    def __init__(self, exit_code: int, reason: str, detail: str = ""):
        super().__init__(reason)
        self.exit_code = exit_code
        self.reason = reason
        self.detail = detail


class HookTimeout(BaseException):
    """Raised by SIGALRM; a BaseException so abxpkg's ``except Exception`` cannot swallow it."""


class _StderrHandler(logging.Handler):
    """abxpkg's warnings, on whatever ``sys.stderr`` is when they are emitted."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stderr.write(self.format(record) + "\n")
        except Exception:
            self.handleError(record)


class _ArgumentParser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse would print usage and exit 2 itself
        raise HookError(EXIT_UNUSABLE, f"bad arguments: {message}")


def _one_line(text: object, limit: int = 500) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _parse_version(value: str, what: str) -> SemVer:
    """A SemVer from ``value`` ("2" is read as "2.0"), or HookError(2)."""
    text = str(value).strip()
    candidates = (text, f"{text}.0") if text.isdigit() else (text,)
    for candidate in candidates:
        try:
            parsed = SemVer.parse(candidate)
        except Exception:
            parsed = None
        if parsed is not None:
            return parsed
    raise HookError(EXIT_UNUSABLE, f"{what} is not a version: {text!r}")


def lib_dir_from_env(environ: dict[str, str] | None = None) -> Path:
    """``$LIB_DIR`` as an absolute path; ``./lib`` under the working directory when unset."""
    environ = os.environ if environ is None else environ
    return Path(environ.get("LIB_DIR", "").strip() or "lib").expanduser().absolute()


def is_allowed(provider_name: str, binproviders: str | None) -> bool:
    """Whether ``--binproviders`` (comma list; empty or ``*`` = any) lets this provider run."""
    names = {part.strip() for part in (binproviders or "").split(",") if part.strip()}
    return not names or "*" in names or provider_name in names


def parse_overrides(raw: str | None, provider_name: str) -> dict:
    """This provider's section of the ``--overrides`` JSON, validated; HookError(2) if unusable."""
    raw = (raw or "").strip()
    if not raw:
        return {}
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError) as err:
        raise HookError(EXIT_UNUSABLE, f"--overrides is not valid JSON: {_one_line(err, 200)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise HookError(
            EXIT_UNUSABLE,
            f"--overrides must be a JSON object keyed by provider name, got {type(data).__name__}",
        )
    section = data.get(provider_name)
    if section is None:
        return {}
    if not isinstance(section, dict):
        raise HookError(
            EXIT_UNUSABLE,
            f"--overrides[{provider_name!r}] must be a JSON object, got {type(section).__name__}",
        )
    clean: dict = {}
    for key, value in section.items():
        where = f"--overrides[{provider_name!r}][{key!r}]"
        if key not in OVERRIDE_KEYS:
            raise HookError(
                EXIT_UNUSABLE,
                f"unsupported override {key!r} for {provider_name} (allowed: {', '.join(sorted(OVERRIDE_KEYS))})",
            )
        if key in ("install_args", "packages"):
            if (
                not isinstance(value, list)
                or not value
                or not all(isinstance(arg, str) and arg.strip() and "\0" not in arg for arg in value)
            ):
                raise HookError(EXIT_UNUSABLE, f"{where} must be a non-empty list of strings")
            try:
                check_install_args(provider_name, value, key)
            except OverrideError as err:
                raise HookError(EXIT_UNUSABLE, str(err)) from None
            clean[key] = [str(arg) for arg in value]
        elif key == "version":
            if not isinstance(value, str) or not value.strip():
                raise HookError(EXIT_UNUSABLE, f"{where} must be a version string")
            clean[key] = str(_parse_version(value, where))
        elif key == "abspath":
            if not isinstance(value, str) or not value.startswith("/") or "\0" in value:
                raise HookError(EXIT_UNUSABLE, f"{where} must be an absolute path")
            clean[key] = value
    return clean


def unavailable_reason(provider_name: str, lib_dir: Path) -> str | None:
    """Why this provider cannot work on this host (checked before abxpkg is asked), or None."""
    if provider_name == "env":
        return None
    if provider_name == "apt":
        if not shutil.which("apt-get") or not shutil.which("dpkg"):
            return "apt-get/dpkg not found on PATH"
        if os.geteuid() != 0:
            return f"apt needs root, running as uid {os.geteuid()}"
        return None
    if provider_name == "brew":
        if shutil.which("brew") or shutil.which("brew", path=os.pathsep.join(BREW_DIRS)):
            return None
        return "brew not found on PATH or in " + ", ".join(BREW_DIRS)
    if provider_name == "pip":
        venv_python = lib_dir / "pip" / "venv" / "bin" / "python"
        if venv_python.is_file() and os.access(venv_python, os.X_OK):
            return None
        missing = [mod for mod in ("venv", "ensurepip") if importlib.util.find_spec(mod) is None]
        if missing:
            return f"cannot create a venv: {sys.executable} lacks {' and '.join(missing)}"
        return None
    if provider_name == "npm":
        missing = [tool for tool in ("npm", "node") if not shutil.which(tool)]
        return f"{' and '.join(missing)} not found on PATH" if missing else None
    return f"unknown provider {provider_name!r}"


def _package_version(abspath: str | Path) -> str | None:
    """The version of the dpkg package that owns ``abspath`` (e.g. dash for /usr/bin/sh), or None."""
    if not shutil.which("dpkg-query"):
        return None
    given = str(abspath)
    real = os.path.realpath(given)
    # On merged-/usr systems dpkg still records /bin/x, while the realpath is /usr/bin/x.
    candidates = dict.fromkeys(
        [given, real, *(p.removeprefix("/usr") for p in (given, real) if p.startswith("/usr/"))]
    )
    for candidate in candidates:
        try:
            owner = subprocess.run(
                ["dpkg-query", "-S", candidate], capture_output=True, text=True, timeout=10
            )
        except (OSError, subprocess.SubprocessError):
            return None
        for line in owner.stdout.splitlines():
            if owner.returncode != 0 or line.startswith("diversion ") or ": " not in line:
                continue
            package = line.split(": ", 1)[0].split(",", 1)[0].strip()
            try:
                query = subprocess.run(
                    ["dpkg-query", "-W", "-f=${Version}", package],
                    capture_output=True,
                    text=True,
                    timeout=10,
                )
            except (OSError, subprocess.SubprocessError):
                return None
            version = query.stdout.strip().split(":", 1)[-1]  # drop a Debian epoch ("1:2.3-4")
            if query.returncode == 0 and version:
                return version
    return None


def _env_version_handler(provider: BinProvider, bin_name: str, abspath=None, **context):
    """abxpkg's usual ``--version`` probe; for binaries that have none (dash as ``sh``), the
    version of the package that owns the file."""
    try:
        version = provider.default_version_handler(bin_name, abspath=abspath, **context)
    except Exception:
        version = None
    if version:
        return version
    path = abspath or provider.get_abspath(bin_name, quiet=True)
    return _package_version(path) if path else None


def _never_uninstall() -> str:
    """Uninstall handler for system package managers: a hook never removes host packages."""
    return "rollback skipped: hooks never uninstall system packages"


def build_provider(provider_name: str, lib_dir: Path, *, timeout: float = DEFAULT_TIMEOUT) -> BinProvider:
    """The abxpkg provider for ``provider_name``: pip/npm rooted in ``lib_dir``, the rest system-wide."""
    limits = {"install_timeout": max(1, int(timeout))}
    if provider_name == "env":
        # install_root=None: no derived.env cache and no symlinks written anywhere. An explicit PATH,
        # because abxpkg's default also puts the running interpreter's bin dir first.
        handlers = copy.deepcopy(EnvProvider.model_fields["overrides"].default)
        handlers["*"]["version"] = _env_version_handler
        return EnvProvider(
            install_root=None,
            bin_dir=None,
            PATH=os.environ.get("PATH", ""),
            overrides=handlers,
            **limits,
        )
    if provider_name in ("apt", "brew"):
        provider = (AptProvider if provider_name == "apt" else BrewProvider)(**limits)
        # abxpkg "rolls back" an install whose binary it then cannot find by uninstalling the
        # packages: with packages=["git"] and a wrong name, that would remove the host's git.
        provider.overrides["*"] = {**provider.overrides["*"], "uninstall": _never_uninstall}
        return provider
    if provider_name == "pip":
        return PipProvider(install_root=lib_dir / "pip", **limits)
    if provider_name == "npm":
        return NpmProvider(install_root=lib_dir / "npm", **limits)
    raise ValueError(f"unknown provider {provider_name!r}")


def _is_executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def _discard_broken_venv(pip_root: Path) -> None:
    """Remove ``<pip_root>/venv`` if it is half-built (a hook killed while creating it).

    abxpkg skips creating the venv when its python exists, and when the venv's pip is missing it
    falls back to the first pip on PATH, which is the interpreter running this hook: the install
    (and the rollback uninstall after it) would then hit the application's own environment.
    """
    venv = pip_root / "venv"
    if not (venv.exists() or venv.is_symlink()):
        return
    if _is_executable(venv / "bin" / "python") and _is_executable(venv / "bin" / "pip"):
        return
    print(f"pip: removing half-built venv {venv}", file=sys.stderr)
    if venv.is_symlink() or not venv.is_dir():
        venv.unlink()
    else:
        shutil.rmtree(venv)


@contextlib.contextmanager
def _install_lock(spec: ProviderSpec, lib_dir: Path) -> Iterator[None]:
    """Serialize hooks sharing one install root (two pips must not build the same venv at once)."""
    if not spec.uses_lib_dir:
        yield
        return
    root = lib_dir / spec.name
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".hook.lock", "w") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)  # bounded by the hook's SIGALRM deadline
        try:
            yield
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)


def _failure(provider_name: str, name: str, err: Exception, action: str) -> HookError:
    """Turn an abxpkg Binary*Error into a HookError: first line as reason, the rest as detail."""
    lines = [
        line
        for detail in getattr(err, "errors", {}).values()
        for line in str(detail).strip().splitlines()
        if line.strip()
    ]
    if not lines:
        where = "on PATH" if provider_name == "env" else f"via {provider_name}"
        return HookError(EXIT_FAILED, f"{name} not found {where}")
    return HookError(EXIT_FAILED, f"{action} failed: {_one_line(lines[0])}", detail="\n".join(lines[1:]))


def resolve_binary(
    provider_name: str,
    name: str,
    *,
    lib_dir: Path,
    overrides: dict | None = None,
    min_version: str | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> dict:
    """Find ``name`` with this provider, installing it if needed; the ``Binary`` record, or HookError.

    ``overrides`` is this provider's validated section (see ``parse_overrides``). A lookup with
    overrides bypasses abxpkg's caches and is dropped from them afterwards, so an overridden
    version or path never leaks into a later plain lookup (abxpkg keeps a ``derived.env`` cache
    file in each install root that outlives the process).
    """
    spec = PROVIDERS[provider_name]
    overrides = dict(overrides or {})
    floor = _parse_version(min_version, "--min-version") if min_version else None
    provider = build_provider(provider_name, lib_dir, timeout=timeout)
    try:
        binary = Binary(
            name=name,
            binproviders=[provider],
            overrides={provider_name: overrides} if overrides else {},
            min_version=floor,
        )
    except ValueError as err:  # pydantic's ValidationError is a ValueError
        raise HookError(EXIT_UNUSABLE, f"abxpkg rejected the request: {_one_line(err, 300)}") from None
    no_cache = bool(overrides)
    # An explicit install_args/packages (a pin, an extra) must be applied even when some other
    # version is already installed, so it skips the load-first shortcut; the installer is idempotent.
    must_install = spec.can_install and bool(overrides.keys() & {"install_args", "packages"})
    loaded = None
    with _install_lock(spec, lib_dir):
        if provider_name == "pip":
            _discard_broken_venv(lib_dir / "pip")
        try:
            if not must_install:
                try:
                    loaded = binary.load(no_cache=no_cache)
                except BinaryLoadError as err:
                    if not spec.can_install:
                        raise _failure(provider_name, name, err, "load") from None
            if loaded is None or not loaded.is_valid:
                try:
                    loaded = binary.install(no_cache=no_cache)
                except BinaryInstallError as err:
                    raise _failure(provider_name, name, err, "install") from None
        finally:
            if overrides:
                provider.invalidate_cache(name)
    if loaded is None or not loaded.loaded_abspath or not loaded.loaded_version:
        raise HookError(EXIT_FAILED, f"{name}: {provider_name} returned no abspath/version")
    root = lib_dir / provider_name
    abspath = Path(loaded.loaded_abspath).absolute()
    if spec.uses_lib_dir and not (
        abspath.is_relative_to(root) or abspath.resolve().is_relative_to(root.resolve())
    ):
        # Defence in depth for the rule above: pip/npm results must come from our own install root.
        raise HookError(EXIT_FAILED, f"{provider_name} resolved {abspath}, outside {root}")
    sha256 = str(loaded.loaded_sha256 or "")
    return {
        "type": "Binary",
        "name": name,
        "abspath": str(loaded.loaded_abspath),
        "version": str(loaded.loaded_version),
        "sha256": "" if sha256 == "unknown" else sha256,  # abxpkg's placeholder for "unreadable"
        "binprovider": provider_name,
    }


def _parse_args(argv: list[str]) -> argparse.Namespace:
    parser = _ArgumentParser(add_help=False, allow_abbrev=False)
    parser.add_argument("--name", default="")
    parser.add_argument("--binproviders", default="")
    parser.add_argument("--overrides", default="")
    parser.add_argument("--min-version", default="")
    parser.add_argument("--timeout", type=float, default=None)
    parser.add_argument("--binary-id", default="")
    parser.add_argument("--machine-id", default="")
    args, _unknown = parser.parse_known_args(argv)
    args.name = args.name.strip()
    if not args.name:
        raise HookError(EXIT_UNUSABLE, "missing --name")
    if not _BIN_NAME_RE.match(args.name) or len(args.name) > 255:
        raise HookError(EXIT_UNUSABLE, f"invalid binary name: {args.name!r}")
    if args.timeout is not None and not args.timeout > 0:
        raise HookError(EXIT_UNUSABLE, f"--timeout must be > 0, got {args.timeout}")
    return args


#: Installer settings read from the environment that would install outside the lib dir.
LOCATION_ENV = {
    "pip": ("PIP_TARGET", "PIP_PREFIX", "PIP_ROOT", "PIP_USER", "PIP_SRC", "PIP_EDITABLE", "PIP_REQUIREMENT",
            "PIP_CONSTRAINT", "PIP_CACHE_DIR"),
    "npm": ("NPM_CONFIG_PREFIX", "NPM_CONFIG_GLOBAL", "NPM_CONFIG_LOCATION", "NPM_CONFIG_USERCONFIG",
            "NPM_CONFIG_GLOBALCONFIG"),
}  # fmt: skip


def _confine_installer_env(provider_name: str) -> None:
    """Drop the installer's location settings inherited from the environment (any case: npm reads
    `npm_config_prefix` too): installs go to the lib dir only. The index/registry is the worker's
    own configuration unless the caller set it explicitly (MACHINE_PIP_INDEX_URL/MACHINE_NPM_REGISTRY)."""
    names = set(LOCATION_ENV.get(provider_name, ()))
    for key in list(os.environ):
        if key.upper() in names:
            del os.environ[key]


def _kill_descendants() -> None:
    """SIGKILL every process this hook started, grandchildren included.

    Runs inside the alarm handler, while the tree is intact: subprocess.run kills only its direct
    child when our exception unwinds it, and a grandchild (ensurepip's pip, npm's scripts) would
    be orphaned and keep writing into the install root. These are our own children, just listed.
    """
    try:
        descendants = psutil.Process().children(recursive=True)
    except psutil.Error:
        return
    for proc in descendants:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(descendants, timeout=5)


def _on_alarm(signum, frame):
    _kill_descendants()
    raise HookTimeout()


def main(provider_name: str, argv: list[str] | None = None) -> int:
    """Run one provider hook; returns the exit code (see the module docstring)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    stdout = sys.stdout
    try:
        args = _parse_args(argv)
        if not is_allowed(provider_name, args.binproviders):
            raise HookError(EXIT_NOT_ALLOWED, f"{provider_name} not in --binproviders={args.binproviders}")
        overrides = parse_overrides(args.overrides, provider_name)
        lib_dir = lib_dir_from_env()
        reason = unavailable_reason(provider_name, lib_dir)
        if reason:
            raise HookError(EXIT_UNUSABLE, f"{provider_name} unavailable: {reason}")
        # Never let abxpkg bootstrap a missing installer (npm, pip, ...) through another package
        # manager: look installers up on PATH only. And no debconf prompts for apt.
        os.environ["ABXPKG_BINPROVIDERS"] = "env"
        _confine_installer_env(provider_name)
        os.environ.setdefault("DEBIAN_FRONTEND", "noninteractive")
        abxpkg_logger = logging.getLogger("abxpkg")
        if not any(isinstance(h, _StderrHandler) for h in abxpkg_logger.handlers):
            abxpkg_logger.addHandler(_StderrHandler(logging.WARNING))

        timeout = args.timeout or DEFAULT_TIMEOUT
        signal.signal(signal.SIGALRM, _on_alarm)
        signal.setitimer(signal.ITIMER_REAL, timeout)
        try:
            # abxpkg must never write to our stdout: it carries the one JSONL record.
            with contextlib.redirect_stdout(sys.stderr):
                record = resolve_binary(
                    provider_name,
                    args.name,
                    lib_dir=lib_dir,
                    overrides=overrides,
                    min_version=args.min_version or None,
                    timeout=timeout,
                )
        except HookTimeout:
            raise HookError(EXIT_FAILED, f"timed out after {timeout:g}s") from None
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
    except HookError as err:
        for line in err.detail.splitlines():
            if line.strip():
                print(f"  {line}", file=sys.stderr)
        print(f"{provider_name}: {err.reason}", file=sys.stderr, flush=True)
        return err.exit_code
    except Exception as err:  # a bug, or an abxpkg failure we did not foresee: keep the trace
        traceback.print_exc(file=sys.stderr)
        print(
            f"{provider_name}: unexpected {type(err).__name__}: {_one_line(err, 300)}",
            file=sys.stderr,
            flush=True,
        )
        return EXIT_FAILED
    stdout.write(json.dumps(record) + "\n")
    stdout.flush()
    return EXIT_OK
