"""One rule for secrets, for everything stored or shown. Pure Python: no Django, no I/O.

A secret is recognised in two ways, and both are applied wherever text is stored or shown (the
`cmd` and `env` columns, cmd.sh, log files, stdout/stderr columns, `to_json`, `ps`, the admin,
`str()`, error messages):

- by its **position**: the value of a secret-looking env key (`is_secret_key`), and in argv or any
  text the value of `--password=X` / `--token X` / `NAME_TOKEN=X`, of `-u user:X` / `--user user:X`
  / `--proxy-user`, of a secret header (`-H "Authorization: Bearer X"`, `--header=Cookie: X`), of a
  quoted key (`{"password": "X"}`) and the password in a URL (`https://user:X@host/`). Positional
  masking needs no length limit: the mask replaces exactly the value;
- by its **value**: every secret the child can see (`secret_values`: its own env, the inherited
  env, the argv secrets found by position) is replaced wherever it appears, in the forms a program
  commonly prints it: as is, percent-encoded, JSON-escaped, and for a `user:password` pair the
  base64 an HTTP `Authorization: Basic` header carries. Values shorter than MIN_SECRET_LENGTH are
  not replaced by value (they would match all over ordinary text); their positions still are.

Masking is only ever applied to what is stored or shown, never to what a child executes: the
callers keep the real argv/env in memory (or sealed) for the launch.
"""

from __future__ import annotations

import base64
import functools
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any
from urllib.parse import quote, unquote

__all__ = [
    "MASK",
    "MIN_SECRET_LENGTH",
    "REDACTED",
    "Scrubber",
    "is_secret_key",
    "mask_cmd",
    "mask_env",
    "mask_nested",
    "mask_text",
    "secret_forms",
    "secret_values",
]

MASK = "********"
#: The older name of MASK (kept: `process_utils.REDACTED` and the admin helpers re-export it).
REDACTED = MASK
#: A secret shorter than this is masked where it stands (its position), never by value elsewhere.
MIN_SECRET_LENGTH = 6

#: A key whose upper-cased name contains one of these holds a secret (`*KEY*`, `GH_TOKEN`, `SESSION_ID`).
SECRET_KEY_PARTS = (
    "KEY",
    "TOKEN",
    "SECRET",
    "PASSWORD",
    "PASSWD",
    "PASSPHRASE",
    "COOKIE",
    "SESSION",
    "CREDENTIAL",
    "AUTHORIZATION",
)
#: ... or has one of these as a whole word (`AUTH`, `MYSQL_PWD`, `DB_PASS`, `SENTRY_DSN`).
SECRET_KEY_WORDS = frozenset({"AUTH", "PWD", "PASS", "PW", "DSN"})
#: Well-known variables that match the rules above and hold no secret (desktop session plumbing;
#: `PWD` alone is the working directory).
NOT_SECRET_KEYS = frozenset(
    {"PWD", "DESKTOP_SESSION", "SESSION_MANAGER", "SSH_AUTH_SOCK", "GPG_AGENT_INFO", "KEYTIMEOUT"}
)
NOT_SECRET_KEY_PREFIXES = ("XDG_", "DBUS_")
#: An option whose *last* word is one of these takes a secret as its next argument (`--password X`).
SECRET_OPTION_LAST_WORDS = frozenset(
    {
        "KEY",
        "APIKEY",
        "TOKEN",
        "SECRET",
        "PASSWORD",
        "PASSWD",
        "PASS",
        "PWD",
        "PASSPHRASE",
        "COOKIE",
        "SESSION",
        "SESSIONID",
        "CREDENTIAL",
        "CREDENTIALS",
        "AUTH",
        "AUTHORIZATION",
    }
)
#: ... unless its first word says it is a switch (`--no-password`, `--ask-password`, `--use-auth`).
SWITCH_FIRST_WORDS = frozenset({"NO", "ASK", "USE", "WITH", "WITHOUT", "PROMPT", "SKIP", "ENABLE", "DISABLE"})
#: Options whose value is `user:password` (curl, wget, httpie and friends).
USER_OPTIONS = ("-u", "-U", "--user", "--proxy-user", "--auth")
#: Options whose value is an HTTP header.
HEADER_OPTIONS = ("-H", "--header", "--proxy-header")
#: Headers that carry credentials whatever their value looks like.
SECRET_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie", "set-cookie"})
#: Authorization schemes kept in front of the mask, so `Authorization: Bearer ********` stays readable.
AUTH_SCHEMES = ("bearer", "basic", "token", "digest", "bot", "negotiate", "ntlm", "aws4-hmac-sha256")
#: A user-only URL (`https://<token>@host`) is taken for a token from this length on.
URL_TOKEN_USER_LENGTH = 16

_WORD_SPLIT = re.compile(r"[^A-Z0-9]+")


@functools.lru_cache(maxsize=4096)
def is_secret_key(name: object) -> bool:
    """True when a variable, option, header or JSON key name looks like it holds a secret."""
    upper = str(name).upper().replace("-", "_").strip("_")
    if upper in NOT_SECRET_KEYS or upper.startswith(NOT_SECRET_KEY_PREFIXES):
        return False
    if any(part in upper for part in SECRET_KEY_PARTS):
        return True
    words = {word for word in _WORD_SPLIT.split(upper) if word}
    return bool(words & SECRET_KEY_WORDS)


def _is_secret_header(name: str) -> bool:
    """`Authorization`, `Cookie`, `X-Api-Key`: an HTTP header that carries a secret.

    Only header-shaped names (one of the credential headers, or dashed words), so that free text
    such as `KeyError: ...` or `GITHUB_TOKEN: set` is left to the value rule.
    """
    lower = name.lower()
    return lower in SECRET_HEADERS or ("-" in name and "_" not in name and is_secret_key(name))


@functools.lru_cache(maxsize=4096)
def _option_takes_secret(option: str) -> bool:
    """`--password`, `--api-key`, `-token`: an option whose next argument is a secret."""
    if not option.startswith("-") or option.startswith("---") or "=" in option:
        return False
    words = [word for word in _WORD_SPLIT.split(option.lstrip("-").upper()) if word]
    if not words or words[0] in SWITCH_FIRST_WORDS:
        return False
    return words[-1] in SECRET_OPTION_LAST_WORDS and is_secret_key(option.lstrip("-"))


# -- positional rules (text) ----------------------------------------------------------------------

_URL_CREDENTIALS = re.compile(
    r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)(?P<user>[^\s/?#@:'\"<>]*)(?::(?P<password>[^\s/?#'\"<>]*))?@"
)
_USER_OPTION = re.compile(
    r"(?<![\w-])(?P<opt>--proxy-user|--user|--auth|-u|-U)(?P<sep>=|\s+|)(?P<q>[\"']?)"
    r"(?P<user>[^\s:'\"]*):(?P<password>[^\s'\"]+)"
)
_HEADER = re.compile(r"(?P<name>\b[A-Za-z][A-Za-z0-9_-]*)(?P<sep>[ \t]*:[ \t]*)(?P<value>[^\r\n\"']+)")
_QUOTED_KEY = re.compile(
    r"(?P<kq>[\"'])(?P<name>[\w.-]+)(?P=kq)(?P<sep>\s*[:=]\s*)(?P<vq>[\"'])(?P<value>(?:\\.|(?!(?P=vq))[^\\])*)(?P=vq)"
)
_ASSIGNMENT = re.compile(
    r"(?<![\w.-])(?P<name>-{0,2}[A-Za-z_][\w.-]*)=(?P<value>\"[^\"]*\"|'[^']*'|[^\s\"'&;|,)}\]]*)"
)
_OPTION_VALUE = re.compile(
    r"(?<![\w-])(?P<opt>--?[A-Za-z][\w.-]*)(?P<sep>[ \t]+)(?P<value>\"[^\"]*\"|'[^']*'|[^\s\"'-][^\s\"']*)"
)
#: A positional rule can only match on a line holding one of these (secret names, URLs, user options).
_GATE = re.compile(r"key|token|secret|pass|pw|cookie|session|credential|auth|dsn|://|-u")
_GATE_ANY_CASE = re.compile(_GATE.pattern, re.IGNORECASE)
#: The _GATE words as bytes, for a fast scan of lower-cased ASCII (other text needs the full rules).
GATE_WORDS = tuple(word.encode() for word in _GATE.pattern.split("|"))
_ARG_ASSIGNMENT = re.compile(r"^(?P<name>-{0,2}[A-Za-z_][\w.-]*)=(?P<value>.*)$", re.DOTALL)


class _Found:
    """Collects the secret values the positional rules mask (None: masking only)."""

    def __init__(self, collect: bool):
        self.values: list[str] | None = [] if collect else None

    def add(self, value: str | None) -> None:
        if self.values is not None and value and not _is_masked(value):
            self.values.append(value)

    def add_pair(self, user: str, password: str) -> None:
        """A user:password pair: the password, and the pair as an HTTP Basic header carries it."""
        self.add(password)
        if self.values is not None and user and not _is_masked(password):
            pair = f"{unquote(user)}:{unquote(password)}"
            self.add(base64.b64encode(pair.encode("utf-8", "surrogateescape")).decode())


def _is_masked(value: str) -> bool:
    stripped = value.strip("\"' ")
    return not stripped or set(stripped) <= {"*"}


def _unquoted(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
        return value[1:-1]
    return value


def _masked_header_value(value: str, found: _Found) -> str:
    """`Bearer X` -> `Bearer ********`; anything else -> the mask (trailing blanks kept)."""
    body = value.rstrip()
    trailing = value[len(body) :]
    scheme, _, rest = body.partition(" ")
    if rest.strip() and scheme.lower() in AUTH_SCHEMES:
        found.add(rest.strip())
        if scheme.lower() == "basic":
            _collect_basic(rest.strip(), found)
        return f"{scheme} {MASK}{trailing}"
    found.add(body)
    for part in body.split(";"):  # `Cookie: a=1; b=2`: each value on its own too
        _name, eq, item = part.partition("=")
        if eq:
            found.add(item.strip())
    return MASK + trailing


def _collect_basic(token: str, found: _Found) -> None:
    # The decoded pair of an `Authorization: Basic <base64>` header is a secret too.
    try:
        pair = base64.b64decode(token, validate=True).decode()
    except ValueError:
        return
    user, sep, password = pair.partition(":")
    if sep:
        found.add(password)
        found.add(pair)


def _mask_positions(text: str, found: _Found) -> str:
    """Apply every positional rule to one piece of text."""
    lowered = text.lower()  # (a case-sensitive scan of the lowered text is ~10x faster)
    if len(lowered) != len(text):  # (a few characters change length when lowered)
        lowered, gate = text, _GATE_ANY_CASE
    else:
        gate = _GATE
    if gate.search(lowered) is None:
        return text  # most text: no rule can match, nothing more to do
    return _apply_positions(text, lowered, gate, found)


def _apply_positions(text: str, lowered: str, gate: re.Pattern, found: _Found) -> str:

    def url(match: re.Match) -> str:
        user, password = match["user"], match["password"]
        if password is not None:
            if _is_masked(password):
                return match[0]
            found.add(password)
            if unquote(password) != password:
                found.add(unquote(password))
            found.add_pair(user, password)
            return f"{match['scheme']}{user}:{MASK}@"
        if len(user) >= URL_TOKEN_USER_LENGTH and not _is_masked(user):
            found.add(user)
            return f"{match['scheme']}{MASK}@"
        return match[0]

    def user_option(match: re.Match) -> str:
        if match["opt"].startswith("--") and not match["sep"]:
            return match[0]  # `--username:x` is not `--user name:x`
        if _is_masked(match["password"]):
            return match[0]
        found.add_pair(match["user"], match["password"])
        return f"{match['opt']}{match['sep']}{match['q']}{match['user']}:{MASK}"

    def header(match: re.Match) -> str:
        value = match["value"]
        if not _is_secret_header(match["name"]) or _is_masked(value) or value.startswith(MASK):
            return match[0]
        return f"{match['name']}{match['sep']}{_masked_header_value(value, found)}"

    def quoted_key(match: re.Match) -> str:
        if not is_secret_key(match["name"]) or _is_masked(match["value"]):
            return match[0]
        found.add(match["value"])
        return f"{match['kq']}{match['name']}{match['kq']}{match['sep']}{match['vq']}{MASK}{match['vq']}"

    def assignment(match: re.Match) -> str:
        if not is_secret_key(match["name"].lstrip("-")) or _is_masked(match["value"]):
            return match[0]
        found.add(_unquoted(match["value"]))
        return f"{match['name']}={MASK}"

    def option_value(match: re.Match) -> str:
        if not _option_takes_secret(match["opt"]) or _is_masked(match["value"]):
            return match[0]
        found.add(_unquoted(match["value"]))
        return f"{match['opt']}{match['sep']}{MASK}"

    def apply(line: str) -> str:
        line = _URL_CREDENTIALS.sub(url, line)
        line = _USER_OPTION.sub(user_option, line)
        line = _QUOTED_KEY.sub(quoted_key, line)
        line = _HEADER.sub(header, line)
        line = _ASSIGNMENT.sub(assignment, line)
        return _OPTION_VALUE.sub(option_value, line)

    # The rules only ever fire on a line holding one of the _GATE words: only those lines are
    # looked at (a large log of ordinary output costs one scan, not six).
    pieces, done = [], 0
    for hit in gate.finditer(lowered):
        if hit.start() < done:
            continue
        start = text.rfind("\n", 0, hit.start()) + 1
        end = text.find("\n", hit.end())
        end = len(text) if end < 0 else end
        pieces.append(text[done:start])
        pieces.append(apply(text[start:end]))
        done = end
    if not pieces:
        return text
    pieces.append(text[done:])
    return "".join(pieces)


# -- value rule ----------------------------------------------------------------------------------


def _forms(secret: str) -> Iterable[str]:
    """The forms a printed secret commonly takes: as is, percent-encoded, JSON-escaped."""
    # (A value from undecodable bytes, e.g. an inherited env var, holds lone surrogates: its bytes
    # are what a child prints, so it is encoded back to them, never refused.)
    yield secret
    yield quote(secret.encode("utf-8", "surrogateescape"), safe="")
    yield json.dumps(secret)[1:-1]


def _usable(secrets: Iterable[str]) -> tuple[str, ...]:
    """Secrets (all their forms) long enough to replace by value, longest first, each once."""
    found = {
        form
        for secret in secrets
        if isinstance(secret, str)
        for form in _forms(secret)
        if len(form) >= MIN_SECRET_LENGTH and not _is_masked(form)
    }
    return tuple(sorted(found, key=lambda s: (-len(s), s)))


def secret_forms(secrets: Iterable[str]) -> tuple[str, ...]:
    """Every form (as is, percent-encoded, JSON-escaped) of the secrets long enough to mask by value."""
    return _usable(secrets)


@functools.lru_cache(maxsize=256)
def _value_pattern(secrets: tuple[str, ...]) -> re.Pattern | None:
    usable = _usable(secrets)
    return re.compile("|".join(re.escape(s) for s in usable)) if usable else None


def _mask_values(text: str, secrets: Sequence[str]) -> str:
    if not secrets or not text:
        return text
    pattern = _value_pattern(tuple(secrets))
    return pattern.sub(MASK, text) if pattern is not None else text


# -- the public rule -----------------------------------------------------------------------------


def mask_text(text: str, secrets: Sequence[str] = ()) -> str:
    """`text` with every known secret value and every positional secret replaced by the mask."""
    if not isinstance(text, str) or not text:
        return text
    return _mask_positions(_mask_values(text, secrets), _Found(False))


def _mask_argv(argv: Sequence[Any], secrets: Sequence[str], found: _Found) -> list[Any]:
    shown: list[Any] = []
    next_is: str | None = None
    for raw in argv:
        if not isinstance(raw, str):  # (not a valid argument; kept as it is, e.g. for an error message)
            shown.append(raw)
            next_is = None
            continue
        arg = _mask_values(raw, secrets)
        if next_is == "secret":
            found.add(arg)
            shown.append(MASK if not _is_masked(arg) else arg)
        elif next_is in USER_OPTIONS:
            user, sep, password = arg.partition(":")
            if sep and password and not _is_masked(password):
                found.add_pair(user, password)
                arg = f"{user}:{MASK}"
            elif not sep and _option_takes_secret(next_is) and not _is_masked(arg):
                found.add(arg)  # `--auth <token>`
                arg = MASK
            shown.append(arg)
        elif next_is == "header":
            shown.append(_mask_positions(arg, found))
        else:
            match = _ARG_ASSIGNMENT.match(arg)
            if match and is_secret_key(match["name"].lstrip("-")) and not _is_masked(match["value"]):
                found.add(match["value"])  # the whole rest of the argument, spaces included
                shown.append(f"{match['name']}={MASK}")
            else:
                shown.append(_mask_positions(arg, found))
            next_is = None
            if arg in USER_OPTIONS:
                next_is = arg
            elif arg in HEADER_OPTIONS:
                next_is = "header"
            elif _option_takes_secret(arg):
                next_is = "secret"
            continue
        next_is = None
    return shown


def mask_cmd(argv: object, secrets: Sequence[str] = ()) -> list[Any]:
    """The argv as it may be stored or shown: positional secrets and known secret values masked.

    Never used for what a child executes. A str (or anything but a sequence) is one argument.
    """
    if not isinstance(argv, Sequence) or isinstance(argv, (str, bytes)):
        return [str(argv)] if argv not in (None, "", b"") else []
    return _mask_argv(argv, secrets, _Found(False))


def mask_env(env: Mapping[str, Any], secrets: Sequence[str] = ()) -> dict[str, Any]:
    """A copy of env for storage or display: values of secret-looking keys (at any depth) masked,
    and every other string value masked as text (URL credentials, known secret values)."""
    return _mask_mapping(env, secrets) if isinstance(env, Mapping) else {}


def _mask_mapping(value: Mapping, secrets: Sequence[str]) -> dict:
    return {
        key: MASK if item not in (None, "") and is_secret_key(key) else _mask_value(item, secrets)
        for key, item in value.items()
    }


def _mask_value(value: Any, secrets: Sequence[str]) -> Any:
    if isinstance(value, Mapping):
        return _mask_mapping(value, secrets)
    if isinstance(value, list | tuple):
        return [_mask_value(item, secrets) for item in value]
    if isinstance(value, str):
        return mask_text(value, secrets)
    return value


def mask_nested(value: Any, secrets: Sequence[str] = ()) -> tuple[Any, bool]:
    """`value` (dicts, lists, strings at any depth) masked as mask_env masks, and whether anything was."""
    masked = _mask_value(value, secrets)
    return masked, masked != value


def env_value_text(value: Any) -> str:
    """The launch's one rule for an env value: the string the child sees (None is never passed)."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "True" if value else "False"
    if isinstance(value, int | float):
        return str(value)
    return json.dumps(value, default=str)


def _collect_env(env: Mapping[str, Any] | None, found: _Found) -> None:
    for key, value in (env or {}).items():
        if value is None or value == "":
            continue
        if is_secret_key(key):
            found.add(env_value_text(value))
            _collect_leaves(value, found, secret=True)
        else:
            _collect_leaves(value, found, secret=False)


def _collect_leaves(value: Any, found: _Found, *, secret: bool) -> None:
    if isinstance(value, Mapping):
        for key, item in value.items():
            _collect_leaves(item, found, secret=secret or is_secret_key(key))
    elif isinstance(value, list | tuple):
        for item in value:
            _collect_leaves(item, found, secret=secret)
    elif isinstance(value, str):
        if secret:
            found.add(value)
        else:
            _mask_positions(value, found)
    elif secret and value is not None and not isinstance(value, bool):
        found.add(str(value))


def secret_values(
    argv: Sequence[Any] | None = None,
    env_overlay: Mapping[str, Any] | None = None,
    inherited_env: Mapping[str, Any] | None = None,
) -> list[str]:
    """Every secret value a child launched with this argv and env can see, longest first.

    Its own env's secret values (and URL credentials in any of its values), the same for the
    inherited environment, and the argv secrets in every positional form, each with the forms a
    program prints it in (see the module docstring). Values shorter than MIN_SECRET_LENGTH are left
    out: they cannot be masked by value safely.
    """
    found = _Found(True)
    _collect_env(env_overlay, found)
    _collect_env(inherited_env, found)
    if argv:
        _mask_argv([str(arg) for arg in argv], (), found)
    return list(_usable(found.values or ()))


class Scrubber:
    """Mask secrets in a byte stream, chunk by chunk, in bounded memory.

    `feed(data)` returns what can be passed on now, `flush()` the rest once the stream has ended.
    Known secret values (pass `secret_values()`: it already holds their percent-encoded,
    JSON-escaped and Basic-auth forms) are replaced wherever they appear, longest first, also when a
    secret is split across chunks: the last len(longest secret) - 1 bytes are held back until the
    next chunk shows how they go on.

    With `positions=True` (the default) the positional rules of mask_text() are applied too, to
    whole lines: output is held until its line ends (\n or \r), or until `max_line` bytes are held (a longer
    line is masked in pieces). So the stream comes out as mask_text() would give it, and the memory
    held stays below len(longest secret) + `max_line`.
    """

    def __init__(self, secrets: Iterable[str], *, positions: bool = True, max_line: int = 64 * 1024):
        usable = _usable(secrets)
        encoded = sorted({s.encode("utf-8", "surrogateescape") for s in usable}, key=lambda b: (-len(b), b))
        self._pattern = re.compile(b"|".join(re.escape(s) for s in encoded)) if encoded else None
        self._hold = max((len(s) for s in encoded), default=1) - 1
        self._mask = MASK.encode()
        self._pending = b""
        self._positions = positions
        self._max_line = max(1, max_line)
        self._line = b""

    def feed(self, data: bytes) -> bytes:
        """The masked bytes that are final now (possibly b"")."""
        return self._lines(self._values(bytes(data)), final=False)

    def flush(self) -> bytes:
        """The held-back tail, masked (the stream has ended)."""
        buffer, self._pending = self._pending, b""
        if self._pattern is not None and buffer:
            buffer = self._pattern.sub(self._mask, buffer)
        return self._lines(buffer, final=True)

    def _values(self, data: bytes) -> bytes:
        if self._pattern is None:
            return data
        buffer = self._pending + data
        # A match starting before `safe_end` is complete: the longest secret starting there fits.
        safe_end = len(buffer) - self._hold
        out, position = [], 0
        for match in self._pattern.finditer(buffer):
            if match.start() >= safe_end:
                break
            out.append(buffer[position : match.start()])
            out.append(self._mask)
            position = match.end()
        cut = max(position, safe_end)
        out.append(buffer[position:cut])
        self._pending = buffer[cut:]
        return b"".join(out)

    def _lines(self, data: bytes, *, final: bool) -> bytes:
        if not self._positions:
            return data
        buffer = self._line + data
        # (a carriage return ends a line too: progress bars redraw with \r and must not stall)
        cut = len(buffer) if final else max(buffer.rfind(b"\n"), buffer.rfind(b"\r")) + 1
        if not cut and len(buffer) >= self._max_line:
            cut = len(buffer)  # an endless line: masked in pieces rather than held forever
        self._line = buffer[cut:]
        if not cut:
            return b""
        text = buffer[:cut].decode("utf-8", "surrogateescape")
        return _mask_positions(text, _Found(False)).encode("utf-8", "surrogateescape")


# -- older names (callers from before the one rule) -----------------------------------------------


def redact_env(env: Mapping[str, Any]) -> dict[str, Any]:
    """mask_env() without known values (the older name)."""
    return mask_env(env)


def redact_cmd(cmd: object) -> list[str]:
    """mask_cmd() without known values (the older name)."""
    return mask_cmd(cmd)


def redact_nested(value: Any) -> tuple[Any, bool]:
    """mask_nested() without known values (the older name)."""
    return mask_nested(value)
