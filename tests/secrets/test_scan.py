"""Issue 11, "Done means": plant every secret form through real launches, then look everywhere.

Secrets go in through a caller's env (flat and nested), the argv (every form of the issue), a `sh -c`
string, the command text itself, the environment a real `runworker` passes on to its children, a
provider hook's index URL, and the children's own output. Then every column of every table of the
machine/workers/admin apps, every file under the test's directories (DATA_DIR, the runner's log),
every admin page a view-only staff user can open (list, detail while running and after, history,
search, the log view and its download), `ps`, `ps --json`, `run`'s output, `str()` and `to_json()`
are searched for each secret value and for the forms a program prints it in.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import sys
from pathlib import Path

import pytest
from django.apps import apps
from django.contrib.auth.models import Permission, User
from django.core.management import call_command
from django.db import connection
from django.test import Client
from django.urls import reverse

from machine.choices import ProcessStatus
from machine.models import Binary, Machine, Process
from machine.redaction import MASK
from tests.runner.conftest import wait_for

S = {
    "caller_token": "ghp_CallerTok3n0001",
    "session": "sess-Value-0002xyz",
    "db_password": "db-Pass-0003xyz",
    "nested": "nested-Pw-0004xyz",
    "mysql": "mysql-Pwd-0005xyz",
    "curl_user": "curl-Pw-0006xyz",
    "bearer": "bearer-Tok-0007xyz",
    "cookie": "cookie-Val-0008xyz",
    "url_pw": "url-Pw-0009xyz",
    "passwd": "wget-Pw-0010xyz",
    "sh_password": "sh-Pass-0011xyz",
    "sh_token": "sh-Tok-0012xyz",
    "inherited_aws": "aws-Inherit-0013xyz",
    "inherited_openai": "sk-Inherit-0014xyz",
    "index_pw": "index-Pw-0015xyz",
    "http_auth": "http-Auth-0016xyz",
    "auth": "auth-Value-0017xyz",
    "credentials": "creds-Value-0018xyz",
    "passphrase": "phrase-Value-0019xyz",
    "inherited_pg": "pg-Inherit-0020xyz",
    "inherited_github": "ghp_WorkerTok3n0021",
}
BASIC = base64.b64encode(f"user:{S['curl_user']}".encode()).decode()
FORBIDDEN = [*S.values(), BASIC]

#: The child: prints every secret it can see (env, inherited env, argv) to stdout and stderr, the
#: Basic-auth header a verbose HTTP client would print, then waits for WAIT_FOR (if set) to appear.
CHILD = """
import base64, hashlib, json, os, pathlib, sys, time
keys = ["GITHUB_TOKEN", "SESSION_ID", "DATABASE_URL", "CONFIG", "MYSQL_PWD", "HTTP_AUTHORIZATION", "AUTH",
        "CREDENTIALS", "PASSPHRASE", "AWS_SECRET_ACCESS_KEY", "OPENAI_API_KEY", "PGPASSWORD"]
for key in keys:
    print(f"{key} is {os.environ.get(key, '')}")
    print(f"{key} is {os.environ.get(key, '')}", file=sys.stderr)
for key in ("GITHUB_TOKEN", "AWS_SECRET_ACCESS_KEY"):  # proof of what it got, without the value
    print("sha256", key, hashlib.sha256(os.environ.get(key, "").encode()).hexdigest())
print("argv", json.dumps(sys.argv[1:]))
print("argv", " ".join(sys.argv[1:]), file=sys.stderr)
if "-u" in sys.argv:  # as a verbose HTTP client prints the -u pair it sends
    print("> Authorization: Basic " + base64.b64encode(sys.argv[sys.argv.index("-u") + 1].encode()).decode())
print(json.dumps({"session": os.environ.get("SESSION_ID", "")}))
print("ready", flush=True)
sys.stderr.flush()
gate = os.environ.get("WAIT_FOR")
deadline = time.time() + 90
while gate and not pathlib.Path(gate).exists() and time.time() < deadline:
    time.sleep(0.05)
"""

CALLER_ENV = {
    "GITHUB_TOKEN": S["caller_token"],
    "SESSION_ID": S["session"],
    "DATABASE_URL": f"postgres://app:{S['db_password']}@db.internal:5432/app",
    "CONFIG": {"auth": {"password": S["nested"]}, "region": "eu"},
    "MYSQL_PWD": S["mysql"],
    "HTTP_AUTHORIZATION": f"Bearer {S['http_auth']}",
    "AUTH": S["auth"],
    "CREDENTIALS": S["credentials"],
    "PASSPHRASE": S["passphrase"],
    "AWS_SECRET_ACCESS_KEY": None,  # inherited from the worker, on purpose
    "OPENAI_API_KEY": None,
    "PLAIN": "visible",
}
#: The worker's own environment: inherited by its children, and its GITHUB_TOKEN never replaces the caller's.
INHERITED = {
    "AWS_SECRET_ACCESS_KEY": S["inherited_aws"],
    "OPENAI_API_KEY": S["inherited_openai"],
    "PGPASSWORD": S["inherited_pg"],
    "GITHUB_TOKEN": S["inherited_github"],
}
ARGV_FORMS = [
    "-u", f"user:{S['curl_user']}",
    "-H", f"Authorization: Bearer {S['bearer']}",
    f"--header=Cookie: sid={S['cookie']}",
    f"https://bob:{S['url_pw']}@example.invalid/",
    f"--passwd={S['passwd']}",
]  # fmt: skip


def child_argv(*extra: str) -> list[str]:
    return [sys.executable, "-c", CHILD, *ARGV_FORMS, *extra]


def shell_argv() -> list[str]:
    # A `sh -c` string with --password=/--token inside, and a secret written literally in it.
    script = (
        f"echo pushing with {S['caller_token']}; "
        f'"{sys.executable}" -c "$CHILD" --password={S["sh_password"]} --token {S["sh_token"]}'
    )
    return ["sh", "-c", script]


def leaks(text: str) -> list[str]:
    return [secret for secret in FORBIDDEN if secret in text]


def dump_tables() -> str:
    """Every column of every row of every table of the machine, workers and admin apps (raw SQL)."""
    models = [
        *apps.get_app_config("machine").get_models(),
        *apps.get_app_config("workers").get_models(),
        apps.get_model("admin", "LogEntry"),
    ]
    out = []
    with connection.cursor() as cursor:
        for model in models:
            if model._meta.abstract or model._meta.proxy:
                continue
            cursor.execute(f"SELECT * FROM {connection.ops.quote_name(model._meta.db_table)}")
            out.extend(repr(row) for row in cursor.fetchall())
    return "\n".join(out)


def read_all_files(root: Path) -> dict[Path, str]:
    found = {}
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink():
            found[path] = path.read_bytes().decode("utf-8", "replace")
    return found


@pytest.fixture
def viewer(db):
    """A staff user who may only view the machine models (the issue's attacker)."""
    user = User.objects.create_user("viewer", password="x", is_staff=True)
    user.user_permissions.set(
        Permission.objects.filter(content_type__app_label="machine", codename__startswith="view_")
    )
    client = Client()
    client.force_login(user)
    return client


def admin_pages(client: Client, process: Process) -> dict[str, str]:
    """Every page of one process the viewer can open, by URL."""
    urls = [
        reverse("admin:machine_process_change", args=[process.pk]),
        reverse("admin:machine_process_history", args=[process.pk]),
        reverse("admin:machine_process_log", args=[process.pk, "stdout"]),
        reverse("admin:machine_process_log", args=[process.pk, "stderr"]),
    ]
    pages = {}
    for url in urls:
        response = client.get(url)
        assert response.status_code == 200, url
        pages[url] = response.content.decode()
    for stream in ("stdout", "stderr"):
        url = reverse("admin:machine_process_log_download", args=[process.pk, stream])
        response = client.get(url)
        assert response.status_code == 200, url
        body = b"".join(response.streaming_content) if response.streaming else response.content
        pages[url] = body.decode("utf-8", "replace")
    return pages


@pytest.mark.django_db(transaction=True)
def test_no_planted_secret_is_stored_or_shown_anywhere(
    tmp_path, data_dir, start_runner, viewer, monkeypatch, make_hook, lib_dir, settings
):
    machine = Machine.current()
    work = tmp_path / "work"
    work.mkdir()
    gate = tmp_path / "gate"
    shown: dict[str, str] = {}  # everything shown to a user, by where

    def queue(name: str, cmd: list[str], **env) -> Process:
        pwd = work / name
        pwd.mkdir()
        return Process.objects.create(
            machine=machine, pwd=str(pwd), cmd=cmd, env={**CALLER_ENV, **env}, status=ProcessStatus.QUEUED
        )

    # 1. Queued rows run by a real runner whose own environment holds inherited secrets.
    finished = queue("argv-forms", child_argv())
    shell = queue("sh-c", shell_argv(), CHILD=CHILD)
    running = queue("running", child_argv(), WAIT_FOR=str(gate))
    runner = start_runner("--workers=1", "--until-idle", "--poll=0.05", env=INHERITED)

    # 2. While `running` runs (it printed everything and waits), look at it as the viewer would.
    stdout_log = running.stdout_file
    wait_for(lambda: stdout_log.exists() and "ready" in stdout_log.read_text(), 60, "the child to print")
    running.refresh_from_db()
    assert running.status == ProcessStatus.RUNNING
    shown.update({f"running {url}": page for url, page in admin_pages(viewer, running).items()})
    ps_out, ps_json = io.StringIO(), io.StringIO()
    call_command("ps", stdout=ps_out)
    call_command("ps", "--json", stdout=ps_json)
    shown["ps while running"] = ps_out.getvalue()
    shown["ps --json while running"] = ps_json.getvalue()
    gate.touch()
    assert runner.wait(120) == 0, runner.output()

    # 3. A launch in this process (this process's environment holds the inherited secrets).
    for key, value in INHERITED.items():
        monkeypatch.setenv(key, value)
    local = Process(machine=machine, pwd=str(work / "local"), cmd=child_argv(), env=dict(CALLER_ENV))
    Path(local.pwd).mkdir()
    local.launch()
    shown["str(local)"] = str(local)
    shown["local.to_json()"] = json.dumps(local.to_json())

    # 4. `manage.py run`, whose output goes to the caller's terminal.
    run_out, run_err = io.StringIO(), io.StringIO()
    call_command("run", "--", *child_argv(), stdout=run_out, stderr=run_err)
    shown["run stdout"], shown["run stderr"] = run_out.getvalue(), run_err.getvalue()

    # 5. A provider hook given a private index with a credential (the setting is the only way in).
    settings.MACHINE_PIP_INDEX_URL = f"https://deploy:{S['index_pw']}@pypi.internal.example/simple"
    make_hook(
        "fakepip", "on_BinaryRequest__30_fakepip.sh", '#!/bin/sh\necho "index $PIP_INDEX_URL" >&2\nexit 1\n'
    )
    binary = Binary.from_json({"name": "cowsay", "binproviders": "fakepip"})
    binary.tick_claimed()

    # Every row ran, and every child saw the real values.
    for row in (finished, shell, running, local):
        row.refresh_from_db()
        assert (row.status, row.exit_code) == (ProcessStatus.EXITED, 0), row.stderr
        assert row.sealed is None
    for row in (finished, running, local):  # the caller's token, and the inherited secret, reached the child
        for key, value in (
            ("GITHUB_TOKEN", S["caller_token"]),
            ("AWS_SECRET_ACCESS_KEY", S["inherited_aws"]),
        ):
            assert f"sha256 {key} {hashlib.sha256(value.encode()).hexdigest()}" in row.stdout, (row, key)
        assert f"GITHUB_TOKEN is {MASK}" in row.stdout and f"AWS_SECRET_ACCESS_KEY is {MASK}" in row.stderr
    assert "[machine] env GITHUB_TOKEN: the caller's value" in finished.stderr

    # 6. The viewer's pages after the fact, and their search.
    changelist = reverse("admin:machine_process_changelist")
    shown["changelist"] = viewer.get(changelist).content.decode()
    for row in (finished, shell, running, local, *binary.hook_processes()):
        shown.update({f"{row.pk} {url}": page for url, page in admin_pages(viewer, row).items()})
    shown["binary page"] = viewer.get(
        reverse("admin:machine_binary_change", args=[binary.pk])
    ).content.decode()
    for secret in FORBIDDEN:
        for probe in (secret, secret[:-1], secret[:8]):
            response = viewer.get(changelist, {"q": probe})
            assert response.context["cl"].result_count == 0, probe
    for probe in ("--passwd=", f"--passwd={S['passwd'][:3]}", f"user:{S['curl_user'][:3]}"):
        expected = 0 if probe != "--passwd=" else 1  # the search works, but never on a secret's value
        assert (viewer.get(changelist, {"q": probe}).context["cl"].result_count >= 1) == bool(expected), probe
    for lookup in (
        "stdout__contains",
        "env__icontains",
        "cmd__icontains",
        "sealed__startswith",
        "url__contains",
    ):
        assert viewer.get(changelist, {lookup: "x"}).status_code in (302, 400), lookup  # no oracle
    out = io.StringIO()
    call_command("ps", "--json", stdout=out)
    shown["ps --json"] = out.getvalue()

    # Nothing, anywhere.
    for where, text in shown.items():
        assert not leaks(text), (where, leaks(text))
    table_dump = dump_tables()
    assert not leaks(table_dump), leaks(table_dump)
    for path, text in read_all_files(tmp_path).items():
        assert not leaks(text), (path, leaks(text))
    assert 'export GITHUB_TOKEN="${GITHUB_TOKEN:?' in finished.cmd_file.read_text()
