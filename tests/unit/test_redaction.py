"""machine.redaction: the one masking rule, every secret form of issue 11, and the streaming Scrubber."""

from __future__ import annotations

import base64
import json
import random
import re
import shlex

import pytest

from machine.redaction import (
    MASK,
    MIN_SECRET_LENGTH,
    Scrubber,
    is_secret_key,
    mask_cmd,
    mask_env,
    mask_nested,
    mask_text,
    secret_values,
)

# (argv, the secret in it, what the masked argv shows): each form of the "Why".
ARGV_FORMS = [
    (
        ["curl", "-u", "alice:pw-curl-u1", "https://h/"],
        "pw-curl-u1",
        ["curl", "-u", f"alice:{MASK}", "https://h/"],
    ),
    (["curl", "--user", "alice:pw-user-2"], "pw-user-2", ["curl", "--user", f"alice:{MASK}"]),
    (["curl", "--user=alice:pw-user-3"], "pw-user-3", ["curl", f"--user=alice:{MASK}"]),
    (["curl", "-ualice:pw-user-4"], "pw-user-4", ["curl", f"-ualice:{MASK}"]),
    (["curl", "--proxy-user", "bob:pw-proxy-5"], "pw-proxy-5", ["curl", "--proxy-user", f"bob:{MASK}"]),
    (
        ["curl", "-H", "Authorization: Bearer tok-bearer-6"],
        "tok-bearer-6",
        ["curl", "-H", f"Authorization: Bearer {MASK}"],
    ),
    (["wget", "--header=Cookie: sid=cookie-val-7"], "cookie-val-7", ["wget", f"--header=Cookie: {MASK}"]),
    (["curl", "-H", "X-Api-Key: key-value-8"], "key-value-8", ["curl", "-H", f"X-Api-Key: {MASK}"]),
    (
        ["git", "clone", "https://carol:pw-url-9@git.example/r.git"],
        "pw-url-9",
        ["git", "clone", f"https://carol:{MASK}@git.example/r.git"],
    ),
    (["wget", "--passwd=pw-wget-10"], "pw-wget-10", ["wget", f"--passwd={MASK}"]),
    (["wget", "--http-password", "pw-http-11"], "pw-http-11", ["wget", "--http-password", MASK]),
    (["tool", "--api-key=key-opt-12"], "key-opt-12", ["tool", f"--api-key={MASK}"]),
    (["env", "GITHUB_TOKEN=ghp-env-13", "gh"], "ghp-env-13", ["env", f"GITHUB_TOKEN={MASK}", "gh"]),
    (["tool", "--password=with spaces 14"], "with spaces 14", ["tool", f"--password={MASK}"]),
    (["http", "--auth", "token-auth-15"], "token-auth-15", ["http", "--auth", MASK]),
    (
        ["curl", "https://ghp_tokenasuser016abcdef@api.example/"],
        "ghp_tokenasuser016abcdef",
        ["curl", f"https://{MASK}@api.example/"],
    ),
]

SHELL_FORMS = [
    ("curl --password=pw-sh-1 https://h", "pw-sh-1", f"curl --password={MASK} https://h"),
    ("curl --token tok-sh-2 https://h", "tok-sh-2", f"curl --token {MASK} https://h"),
    ("curl -u 'me:pw-sh-3' https://h", "pw-sh-3", f"curl -u 'me:{MASK}' https://h"),
    ('curl -H "Authorization: Bearer tok-sh-4" x', "tok-sh-4", f'curl -H "Authorization: Bearer {MASK}" x'),
    ("export API_KEY=key-sh-5; run", "key-sh-5", f"export API_KEY={MASK}; run"),
    ("psql postgres://u:pw-sh-6@db/x", "pw-sh-6", f"psql postgres://u:{MASK}@db/x"),
    (
        """python -c "print({'password': 'pw-sh-7'})\"""",
        "pw-sh-7",
        f"""python -c "print({{'password': '{MASK}'}})\"""",
    ),
]


@pytest.mark.parametrize(("argv", "secret", "shown"), ARGV_FORMS)
def test_every_argv_form_is_masked_and_collected(argv, secret, shown):
    assert mask_cmd(argv) == shown
    assert secret in secret_values(argv)
    assert mask_cmd(shown) == shown  # masking is stable


@pytest.mark.parametrize(("text", "secret", "shown"), SHELL_FORMS)
def test_forms_inside_a_sh_c_string_are_masked(text, secret, shown):
    argv = ["sh", "-c", text]
    assert mask_cmd(argv) == ["sh", "-c", shown]
    assert secret in secret_values(argv)
    assert mask_text(text) == shown


def test_a_secret_written_literally_in_the_command_is_masked_by_value():
    env = {"GITHUB_TOKEN": "ghp-literal-0001"}
    argv = ["sh", "-c", "curl -d ghp-literal-0001 https://h && echo done"]
    shown = mask_cmd(argv, secret_values(argv, env))
    assert shown == ["sh", "-c", f"curl -d {MASK} https://h && echo done"]


def test_masking_never_touches_what_is_not_secret():
    argv = ["wget", "--no-cookies", "--keep-session-cookies", "https://example.com/a?b=c", "-O", "out.html"]
    assert mask_cmd(argv) == argv
    argv = ["ssh", "ssh://git@github.com/x", "sort", "-u", "file", "--password-stdin", "next"]
    assert mask_cmd(argv) == argv
    assert mask_cmd(["python", "-c", "print(1)", 3]) == ["python", "-c", "print(1)", 3]  # non-str kept


@pytest.mark.parametrize(
    "name",
    [
        "API_KEY", "github_token", "AWS_SECRET_ACCESS_KEY", "PGPASSWORD", "SESSION_COOKIE", "SESSION",
        "SESSION_ID", "MYSQL_PWD", "HTTP_AUTHORIZATION", "AUTH", "CREDENTIALS", "PASSPHRASE", "DB_PASS",
        "SENTRY_DSN", "apiKey", "X-Auth-Token", "passwd", "GOOGLE_APPLICATION_CREDENTIALS",
    ],
)  # fmt: skip
def test_secret_key_names(name):
    assert is_secret_key(name)


@pytest.mark.parametrize(
    "name",
    [
        "PATH",
        "HOME",
        "PWD",
        "OLDPWD",
        "GIT_AUTHOR_NAME",
        "XDG_SESSION_TYPE",
        "DBUS_SESSION_BUS_ADDRESS",
        "LANG",
    ],
)
def test_names_that_hold_no_secret(name):
    assert not is_secret_key(name)


def test_env_keys_nested_dicts_and_url_credentials_are_masked():
    env = {
        "SESSION": "s-1", "SESSION_ID": "s-2", "MYSQL_PWD": "p-3", "HTTP_AUTHORIZATION": "Bearer t-4",
        "AUTH": "a-5", "CREDENTIALS": "c-6", "PASSPHRASE": "p-7", "API_TOKEN": "t-8",
        "DATABASE_URL": "postgres://app:db-pw-9@db.example:5432/app",
        "NESTED": {"inner": {"password": "n-10", "host": "h"}, "list": [{"token": "n-11"}, "x"]},
        "PLAIN": "visible", "EMPTY_TOKEN": "", "UNSET_TOKEN": None, "PWD": "/srv",
    }  # fmt: skip
    shown = mask_env(env)
    assert shown == {
        "SESSION": MASK, "SESSION_ID": MASK, "MYSQL_PWD": MASK, "HTTP_AUTHORIZATION": MASK, "AUTH": MASK,
        "CREDENTIALS": MASK, "PASSPHRASE": MASK, "API_TOKEN": MASK,
        "DATABASE_URL": f"postgres://app:{MASK}@db.example:5432/app",
        "NESTED": {"inner": {"password": MASK, "host": "h"}, "list": [{"token": MASK}, "x"]},
        "PLAIN": "visible", "EMPTY_TOKEN": "", "UNSET_TOKEN": None, "PWD": "/srv",
    }  # fmt: skip
    assert env["API_TOKEN"] == "t-8"  # a copy
    assert mask_nested(env) == (shown, True) and mask_nested({"a": ["b"]}) == ({"a": ["b"]}, False)


def test_secret_values_cover_own_env_inherited_env_and_argv_longest_first():
    values = secret_values(
        ["curl", "-u", "me:argv-secret-1", "https://h"],
        {
            "GITHUB_TOKEN": "own-secret-2",
            "DATABASE_URL": "postgres://u:url-secret-3@h/d",
            "N": {"key": "nested-4"},
        },
        {"AWS_SECRET_ACCESS_KEY": "inherited-5", "HOME": "/root", "XDG_SESSION_DESKTOP": "ubuntu"},
    )
    for secret in ("argv-secret-1", "own-secret-2", "url-secret-3", "nested-4", "inherited-5"):
        assert secret in values
    assert "me:argv-secret-1" not in values  # (the password is enough: the user stays readable)
    assert base64.b64encode(b"me:argv-secret-1").decode() in values
    assert "/root" not in values and "ubuntu" not in values
    assert [len(v) for v in values] == sorted((len(v) for v in values), reverse=True)


def test_short_values_are_masked_where_they_stand_but_never_by_value():
    short = "x" * (MIN_SECRET_LENGTH - 1)
    assert secret_values([], {"API_TOKEN": short}) == []
    assert mask_env({"API_TOKEN": short}) == {"API_TOKEN": MASK}
    assert mask_cmd(["tool", f"--token={short}"]) == ["tool", f"--token={MASK}"]
    assert mask_text(f"it says {short}", [short]) == f"it says {short}"


def test_printed_forms_of_a_secret_are_masked_percent_encoded_json_escaped_basic():
    secret = 'p@ss/w"rd-1'
    values = secret_values(["curl", "-u", f"me:{secret}"])
    text = "\n".join(
        [
            f"raw {secret}",
            "url https://me:p%40ss%2Fw%22rd-1@h",
            f"json {json.dumps({'v': secret})}",
            "basic " + base64.b64encode(f"me:{secret}".encode()).decode(),
        ]
    )
    masked = mask_text(text, values)
    assert "ss/w" not in masked and "p%40ss" not in masked and base64.b64encode(b"me:") not in masked.encode()
    assert masked.count(MASK) >= 4


def test_text_rules_mask_what_a_child_prints():
    text = "> Authorization: Basic ZGVtbzpzZWNyZXQ=\n> Cookie: a=b\nexport DB_PASSWORD='x y'\nX-Auth-Token: abc\nok"
    assert mask_text(text) == (
        f"> Authorization: Basic {MASK}\n> Cookie: {MASK}\nexport DB_PASSWORD={MASK}\nX-Auth-Token: {MASK}\nok"
    )
    # Free text that only looks like a header is left to the value rule.
    assert mask_text("KeyError: 'API_KEY'\nGITHUB_TOKEN: set") == "KeyError: 'API_KEY'\nGITHUB_TOKEN: set"
    assert mask_text(mask_text(text)) == mask_text(text)


def test_masked_command_still_shell_quotes():
    argv = ["curl", "-H", "Authorization: Bearer abcdefgh", "--data", "a b"]
    line = shlex.join(mask_cmd(argv))
    assert shlex.split(line) == mask_cmd(argv) and "abcdefgh" not in line


# -- the streaming scrubber ----------------------------------------------------------------------


def _scrub(secrets, chunks, **options):
    scrubber = Scrubber(secrets, **options)
    return b"".join(scrubber.feed(chunk) for chunk in chunks) + scrubber.flush()


def test_scrubber_catches_a_secret_split_across_chunks():
    secret = "s3cr3t-value-42"
    data = f"before {secret} middle {secret}after".encode()
    expected = f"before {MASK} middle {MASK}after".encode()
    for positions in (False, True):
        for cut in range(1, len(data)):
            assert _scrub([secret], [data[:cut], data[cut:]], positions=positions) == expected
        assert _scrub([secret], [bytes([b]) for b in data], positions=positions) == expected  # byte by byte


def test_scrubber_prefers_the_longest_secret_and_matches_mask_text():
    secrets = ["abcdef", "abcdefghijkl", "zzzzzz"]
    rng = random.Random(11)
    alphabet = "abcdefghijklz \n"
    for _ in range(300):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 200)))
        text += "abcdefghijkl"
        data = text.encode()
        cuts = sorted(rng.sample(range(len(data) + 1), k=min(len(data), rng.randint(0, 8))))
        chunks = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]
        want = re.sub("|".join(re.escape(s) for s in sorted(secrets, key=len, reverse=True)), MASK, text)
        assert _scrub(secrets, chunks, positions=False) == want.encode()


def test_scrubber_holds_back_only_what_could_start_a_secret():
    scrubber = Scrubber(["0123456789"], positions=False)
    assert scrubber.feed(b"a" * 100) == b"a" * 91  # 9 bytes held back
    assert scrubber.feed(b"01234") == b"a" * 5
    assert scrubber.feed(b"56789 tail") == b"aaaa" + MASK.encode()
    assert scrubber.flush() == b" tail"
    assert Scrubber([], positions=False).feed(b"as is") == b"as is"
    assert Scrubber(["ab"], positions=False).feed(b"ab") == b"ab"  # too short to mask by value


def test_scrubber_memory_is_bounded_by_the_longest_secret_and_the_line_limit():
    scrubber = Scrubber(["q" * 40], max_line=10_000)
    out = 0
    for _ in range(1000):  # one endless line
        out += len(scrubber.feed(b"x" * 4096))
        assert len(scrubber._pending) <= 39 and len(scrubber._line) < 10_000 + 4096
    assert out + len(scrubber.flush()) == 4096 * 1000


def test_scrubber_applies_the_positional_rules_to_whole_lines_like_mask_text():
    text = (
        "starting\n> Authorization: Bearer abcdefghijkl\nexport DB_PASSWORD=hunter2\n"
        "GET https://bob:pw-in-url@h/ 200\nknown secret-value-77 here\nno newline at the end --token tail"
    )
    secrets = ["secret-value-77"]
    data = text.encode()
    rng = random.Random(5)
    for _ in range(200):
        cuts = sorted(rng.sample(range(1, len(data)), k=rng.randint(0, 12)))
        chunks = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]
        assert _scrub(secrets, chunks).decode() == mask_text(text, secrets)
    assert b"abcdefghijkl" not in _scrub([], [data]) and b"hunter2" not in _scrub([], [data])
