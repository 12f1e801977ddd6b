"""What a stored install request may pass to a provider: an allow-list per provider. No Django, no abxpkg.

`install_args` and `packages` (a Binary row's `overrides`, an `install --overrides`, a hook record)
end up on the installer's command line. They may name packages and a few harmless switches; nothing
that writes outside LIB_DIR (`--target`, `--prefix`, `-g`, ...), swaps the index or registry
(`--index-url`, `--registry`, ...; set MACHINE_PIP_INDEX_URL / MACHINE_NPM_REGISTRY instead), reads
a local file or path (`-r`, `-e`, `file:`), or turns off the supply-chain defaults (`--only-binary`,
`--ignore-scripts`). apt and brew take package names only; env never installs.

Messages name the option or the position, never the value (which may carry a credential).
Checked by the Django side before anything is queued or run, and again by the hook itself.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

__all__ = ["ARG_KEYS", "OverrideError", "check_install_args", "override_problems"]

#: Override keys whose value is a list of installer arguments.
ARG_KEYS = ("install_args", "packages")


class OverrideError(ValueError):
    """An override that could redirect an install, swap its source, or weaken its defaults."""


_PIP_SPEC = re.compile(
    r"^[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?"  # name
    r"(?:\[[A-Za-z0-9._-]+(?:,[A-Za-z0-9._-]+)*\])?"  # [extras]
    r"(?:(?:~=|===|==|!=|<=|>=|<|>)[A-Za-z0-9.*+!_-]+(?:,(?:~=|===|==|!=|<=|>=|<|>)[A-Za-z0-9.*+!_-]+)*)?$"
)
_NPM_SPEC = re.compile(r"^(?:@[a-z0-9][a-z0-9._~-]*/)?[a-z0-9][a-z0-9._~-]*(?:@[A-Za-z0-9.^~<>=|*+ -]+)?$")
_APT_SPEC = re.compile(r"^[a-z0-9][a-z0-9+.-]+(?:=[A-Za-z0-9.+:~-]+)?$")
_BREW_SPEC = re.compile(r"^[a-z0-9][a-z0-9+._@-]*$")

#: Switches a provider accepts (an `=value` form is listed with its allowed values).
_PIP_SWITCHES = frozenset(
    {
        "-U", "--upgrade", "--no-deps", "--pre", "--force-reinstall", "-I", "--ignore-installed",
        "--no-cache-dir", "--no-compile", "-q", "--quiet", "-v", "--verbose", "--no-warn-script-location",
        "--upgrade-strategy=eager", "--upgrade-strategy=only-if-needed",
    }
)  # fmt: skip
_NPM_SWITCHES = frozenset(
    {
        "--no-audit", "--no-fund", "--legacy-peer-deps", "--prefer-offline", "--prefer-online",
        "--omit=dev", "--omit=optional", "--omit=peer", "--no-optional",
    }
)  # fmt: skip

_OUTSIDE = "it would write outside the lib dir"
_INDEX = "it would swap the package index (set {setting} instead)"
_FILES = "it would read a local file or path"
_DEFAULTS = "it would turn off the supply-chain defaults"
#: Why the dangerous options are refused (anything else not allowed gets a generic reason).
_REASONS: dict[str, dict[str, str]] = {
    "pip": {
        **dict.fromkeys(
            ["-t", "--target", "--prefix", "--root", "--user", "--src", "--home", "-e", "--editable",
             "--cache-dir", "--log", "--report", "--install-option", "--global-option"],
            _OUTSIDE,
        ),
        **dict.fromkeys(
            ["-i", "--index-url", "--extra-index-url", "-f", "--find-links", "--trusted-host", "--no-index",
             "--index", "--proxy", "--cert", "--client-cert"],
            _INDEX.format(setting="MACHINE_PIP_INDEX_URL"),
        ),
        **dict.fromkeys(["-r", "--requirement", "-c", "--constraint", "--config-settings"], _FILES),
        **dict.fromkeys(["--only-binary", "--no-binary", "--uploaded-prior-to", "--no-build-isolation"], _DEFAULTS),
    },
    "npm": {
        **dict.fromkeys(
            ["--prefix", "-g", "--global", "--location", "--cache", "--userconfig", "--globalconfig",
             "--install-links", "-C"],
            _OUTSIDE,
        ),
        **dict.fromkeys(["--registry", "--proxy", "--https-proxy", "--ca", "--cafile"],
                        _INDEX.format(setting="MACHINE_NPM_REGISTRY")),
        **dict.fromkeys(["--ignore-scripts", "--foreground-scripts", "--script-shell", "--min-release-age"],
                        _DEFAULTS),
    },
}  # fmt: skip
_SPECS = {"pip": _PIP_SPEC, "npm": _NPM_SPEC, "apt": _APT_SPEC, "brew": _BREW_SPEC}
_SWITCHES = {"pip": _PIP_SWITCHES, "npm": _NPM_SWITCHES, "apt": frozenset(), "brew": frozenset()}
_SPEC_HELP = {
    "pip": "a package name with optional [extras] and version specifiers (no URL, path or @ reference)",
    "npm": "a package name (optionally @scope/ and @version or range; no git:, file:, URL or path)",
    "apt": "a Debian package name (optionally =version)",
    "brew": "a formula name (no tap/path)",
}


def _option_name(arg: str) -> str:
    if arg.startswith("--"):
        return arg.split("=", 1)[0]
    return arg[:2]  # `-ihttps://...` is `-i https://...`


def check_install_args(provider: str, args: Any, where: str = "install_args") -> None:
    """OverrideError unless every argument is allowed for this provider (unknown providers: any)."""
    if provider not in _SPECS and provider != "env":
        return  # a third-party provider hook checks its own arguments
    if not isinstance(args, list):
        return  # the shape (a non-empty list of strings) is the hook's own check
    if provider == "env":
        if args:
            raise OverrideError(f"{provider}: {where} is not accepted: env finds binaries, it never installs")
        return
    spec, switches = _SPECS[provider], _SWITCHES[provider]
    for position, arg in enumerate(args, start=1):
        if not isinstance(arg, str):
            continue
        if arg.startswith("-"):
            if arg in switches:
                continue
            name = _option_name(arg)
            reason = _REASONS.get(provider, {}).get(name, "it is not one of the allowed options")
            allowed = ", ".join(sorted(switches)) or "none"
            raise OverrideError(
                f"{provider}: {where} option {name!r} (argument {position}) is refused: {reason}; "
                f"allowed options: {allowed}"
            )
        if not spec.match(arg):
            raise OverrideError(
                f"{provider}: {where} argument {position} is refused: it must be {_SPEC_HELP[provider]}"
            )


def override_problems(overrides: Any) -> list[str]:
    """One message per refused `install_args`/`packages` list in an overrides dict ([] when fine)."""
    if not isinstance(overrides, Mapping):
        return []
    problems = []
    for provider, section in overrides.items():
        if not isinstance(section, Mapping):
            continue
        for key in ARG_KEYS:
            try:
                check_install_args(str(provider), section.get(key), key)
            except OverrideError as err:
                problems.append(str(err))
    return problems
