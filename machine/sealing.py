"""Secrets reach the child and nothing else: the sealed column of a Process row.

A row built in memory keeps its real `cmd` and `env` (so code that builds a row and launches it in
the same process just works), but the database only ever stores them masked (`machine.redaction`).
When the real values hold a secret, the row also carries `sealed`: the real argv and env encrypted
with Fernet (`cryptography`) under a key derived from the project's SECRET_KEY (HKDF-SHA256 with a
fixed purpose string; SECRET_KEY_FALLBACKS still decrypt, so the key can be rotated).

What `sealed` holds follows the row's status (an invariant every write keeps):

- QUEUED: the launch material, `{"argv": [...], "env": {...}}`, re-sealed on every save from the
  row's real values (`SealedField.pre_save`);
- RUNNING: at most the values to mask, `{"mask": [...]}` (the secret values the child can see: the
  caller's, and those it inherited from the launching process), so any process that reads the live
  logs or closes the row can mask them by value while a child writes its log files itself;
  `wipe_sealed(process, keep_mask_values=False)` drops even that (for a launcher that masks the
  output as it is written, see redaction.Scrubber);
- EXITED: nothing (NULL): every close path clears it.

At launch, `unseal_for_launch(process)` gives the argv and env overlay the child must get, or
refuses (SealedSecretError) when a masked value cannot be restored (another SECRET_KEY, already
wiped): a child never silently runs with the mask or with the worker's own value instead.
"""

from __future__ import annotations

import base64
import functools
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from django.conf import settings
from django.db import models
from django.utils.encoding import force_bytes

from machine.choices import ProcessStatus
from machine.redaction import MASK, is_secret_key, mask_cmd, mask_env, secret_values

__all__ = [
    "SealedField",
    "SealedSecretError",
    "env_report",
    "mask_values",
    "seal",
    "unseal",
    "unseal_for_launch",
    "wipe_sealed",
]

#: HKDF `info`: a key derived for this purpose is useless for any other use of SECRET_KEY.
PURPOSE = b"django-machine: sealed secrets of Process rows, v1"
SALT = b"django-machine"


class SealedSecretError(ValueError):
    """A secret of the row cannot be restored for its launch (or a token cannot be decrypted)."""


@functools.lru_cache(maxsize=8)
def _fernet_for(keys: tuple[str, ...]) -> MultiFernet:
    fernets = []
    for key in keys:
        raw = HKDF(algorithm=hashes.SHA256(), length=32, salt=SALT, info=PURPOSE).derive(force_bytes(key))
        fernets.append(Fernet(base64.urlsafe_b64encode(raw)))
    return MultiFernet(fernets)


def _fernet() -> MultiFernet:
    """SECRET_KEY encrypts; SECRET_KEY and then each of SECRET_KEY_FALLBACKS decrypt."""
    keys = (settings.SECRET_KEY, *getattr(settings, "SECRET_KEY_FALLBACKS", ()))
    return _fernet_for(tuple(str(key) for key in keys))


def seal(payload: dict[str, Any]) -> str:
    """The payload as a Fernet token (text)."""
    return _fernet().encrypt(json.dumps(payload, separators=(",", ":")).encode()).decode()


def unseal(token: str) -> dict[str, Any]:
    """The payload of a token; SealedSecretError when no configured key opens it."""
    try:
        data = json.loads(_fernet().decrypt(token.encode()))
    except (InvalidToken, ValueError, TypeError):
        raise SealedSecretError(
            "the sealed secrets cannot be decrypted with SECRET_KEY or SECRET_KEY_FALLBACKS "
            "(sealed under another key, or damaged)"
        ) from None
    if not isinstance(data, dict):
        raise SealedSecretError("the sealed secrets are not a JSON object")
    return data


def _payload(process) -> dict[str, Any] | None:
    """The row's sealed payload, decrypted once per token (cached on the instance)."""
    token = process.sealed
    if not token:
        return None
    cached = process.__dict__.get("_sealed_cache")
    if cached is not None and cached[0] == token:
        return cached[1]
    payload = unseal(token)
    process.__dict__["_sealed_cache"] = (token, payload)
    return payload


def _contains_mask(value: Any) -> bool:
    if isinstance(value, str):
        return MASK in value
    if isinstance(value, Mapping):
        return any(_contains_mask(item) for item in value.values())
    if isinstance(value, list | tuple):
        return any(_contains_mask(item) for item in value)
    return False


def _resolve(process) -> tuple[list[str], dict[str, Any], list[str], str]:
    """(argv, env, unresolved, why): the row's real values, masked ones restored from the seal.

    An in-memory value that still holds the mask is the stored form of a sealed one and is
    replaced by it; any other value is the caller's (possibly changed since it was loaded). What
    holds the mask and cannot be restored is listed in `unresolved`, and `why` says why.
    """
    argv = [str(arg) for arg in (process.cmd or [])]
    env = dict(process.env or {})
    if not _contains_mask(argv) and not _contains_mask(env):
        return argv, env, [], ""
    why = "there is no sealed value (already wiped by an earlier launch, or never sealed)"
    try:
        payload = _payload(process) or {}
    except SealedSecretError:
        payload = {}
        why = "it was sealed under another key (it opens with neither SECRET_KEY nor SECRET_KEY_FALLBACKS)"
    sealed_argv = payload.get("argv") if isinstance(payload.get("argv"), list) else None
    sealed_env = payload.get("env") if isinstance(payload.get("env"), dict) else {}
    unresolved: list[str] = []
    if _contains_mask(argv):
        same_shape = sealed_argv is not None and len(sealed_argv) == len(argv)
        if same_shape and all(MASK in a or a == s for a, s in zip(argv, sealed_argv, strict=True)):
            argv = [str(arg) for arg in sealed_argv]
        else:
            unresolved.append("the command (cmd)")
    for key, value in env.items():
        if _contains_mask(value):
            if key in sealed_env:
                env[key] = sealed_env[key]
            else:
                unresolved.append(f"env {key}")
    return argv, env, unresolved, why


def unseal_for_launch(process) -> tuple[list[str], dict[str, Any]]:
    """(argv, env_overlay) exactly as the caller gave them, for the child and nothing else.

    Call it right before spawning; then `wipe_sealed(process)`. Raises SealedSecretError (a
    ValueError: the launch is refused and the row ends with the reason) when a masked value cannot
    be restored: the child would otherwise run with the mask, or with this worker's own value.
    """
    argv, env, unresolved, why = _resolve(process)
    if unresolved:
        raise SealedSecretError(
            f"the caller's secret value of {', '.join(unresolved)} cannot be restored: {why}; refusing "
            "to launch with the mask, or with this process's own value instead"
        )
    process.__dict__["_launch_material"] = (argv, env)
    process.__dict__["_launch_mask_values"] = sorted(
        {*secret_values(argv, env), *environ_secret_values()}, key=lambda value: (-len(value), value)
    )
    return argv, env


def _has_secrets(argv: Sequence[str], env: Mapping[str, Any]) -> bool:
    values = secret_values(argv, env, None)
    return mask_cmd(argv, values) != list(argv) or mask_env(env, values) != dict(env)


def _mask_payload(process) -> dict[str, Any] | None:
    """{"mask": [...]}: what a launch made here gave the child (its own secrets and the secret values
    it inherited from this process), else the row's own; None when there is nothing to mask."""
    values = process.__dict__.get("_launch_mask_values")
    if values is None:
        argv, env, unresolved, _why = _resolve(process)
        if unresolved:
            return None
        values = secret_values(argv, env, None)
    return {"mask": list(values)} if values else None


def wipe_sealed(process, *, keep_mask_values: bool = True, save: bool = True) -> None:
    """After the spawn: drop the launch material from the row (one UPDATE; the instance follows).

    With `keep_mask_values` the row keeps, sealed, only the secret values the child can see (no
    argv, no env), so whoever reads its live logs or closes it can mask them (needed while children
    write their log files themselves); without, the column becomes NULL. `save=False` only sets the
    instance (for a caller that saves the row next). The instance keeps its real values in memory.
    """
    payload = _mask_payload(process) if keep_mask_values else None
    token = seal(payload) if payload else None
    unchanged = token is None and process.sealed is None
    if token is not None:
        process.__dict__["_sealed_cache"] = (token, payload)
    process.sealed = token
    if save and not unchanged and process.pk is not None and not process._state.adding:
        type(process)._default_manager.filter(pk=process.pk).update(sealed=token)


def mask_values(process, *, inherited: Mapping[str, Any] | None = None) -> list[str]:
    """Every secret value known for this row, to mask its output by value (longest first).

    From memory (a launch made here), from the seal (queued launch material, or a running row's
    mask values) when this process can open it, from the row's own values, and from `inherited`
    (default: this process's environment, which a child launched here inherits).
    """
    found = set(process.__dict__.get("_launch_mask_values") or ())
    try:
        payload = _payload(process) or {}
    except SealedSecretError:
        payload = {}
    mask = payload.get("mask")
    if isinstance(mask, list):
        found.update(value for value in mask if isinstance(value, str))
    if isinstance(payload.get("argv"), list) or isinstance(payload.get("env"), dict):
        found.update(secret_values(payload.get("argv") or [], payload.get("env") or {}, None))
    found.update(secret_values(process.cmd or [], process.env or {}))
    found.update(environ_secret_values() if inherited is None else secret_values(None, None, inherited))
    return sorted(found, key=lambda value: (-len(value), value))


def environ_secret_values() -> list[str]:
    """secret_values() of this process's environment (worked out once per distinct environment)."""
    # os.environ decodes every entry when iterated; its raw bytes are ~50x cheaper to compare.
    raw = getattr(os.environ, "_data", None)
    items = frozenset(raw.items()) if isinstance(raw, dict) else frozenset(os.environ.items())
    return list(_environ_secret_values(items))


@functools.lru_cache(maxsize=4)
def _environ_secret_values(items: frozenset) -> tuple[str, ...]:
    def text(value) -> str:
        return os.fsdecode(value) if isinstance(value, bytes) else str(value)

    return tuple(secret_values(None, None, {text(key): text(value) for key, value in items}))


def sealed_for_save(process) -> str | None:
    """The `sealed` value a save writes, keeping the invariant in the module docstring."""
    token = process.sealed
    if process.status == ProcessStatus.EXITED:
        return None
    if process.status != ProcessStatus.QUEUED:
        try:
            payload = _payload(process)
        except SealedSecretError:
            return token
        if payload is not None and "mask" not in payload:  # never launch material on a started row
            payload = _mask_payload(process)
            return seal(payload) if payload else None
        return token
    argv, env, unresolved, _why = _resolve(process)
    if unresolved:
        return token  # cannot be read here: what is sealed stays (the launch will say so)
    if not _has_secrets(argv, env):
        return None
    payload = {"argv": argv, "env": env}
    try:
        if _payload(process) == payload:
            return token
    except SealedSecretError:
        pass
    token = seal(payload)
    process.__dict__["_sealed_cache"] = (token, payload)
    return token


class SealedField(models.TextField):
    """The encrypted launch material / mask values of a Process row (see the module docstring).

    Computed on every save; never shown, searched or exported. Deconstructs as a TextField.
    """

    def pre_save(self, model_instance, add):
        value = sealed_for_save(model_instance)
        setattr(model_instance, self.attname, value)
        return value

    def deconstruct(self):
        name, _path, args, kwargs = super().deconstruct()
        return name, "django.db.models.TextField", args, kwargs


def env_report(env_overlay: Mapping[str, Any], inherited: Mapping[str, Any] | None = None) -> list[str]:
    """One line per secret-looking key of the overlay: which value the child gets (never the value)."""
    inherited = os.environ if inherited is None else inherited
    lines = []
    for key in sorted(str(key) for key in env_overlay or {}):
        if not is_secret_key(key):
            continue
        value = env_overlay[key]
        if value is not None:
            got = "the caller's value"
        elif inherited.get(key) not in (None, ""):
            got = "the launching process's own value (the caller asked to inherit it with None)"
        else:
            got = "not set (the caller asked to inherit it with None; the launching process has none)"
        lines.append(f"[machine] env {key}: {got}")
    return lines
