"""Adversarial tests for issue 10 (bounded output, input refused first, detached descendants)."""

from __future__ import annotations

import os
import sys
import threading
import time

import pytest

from machine import process_utils as pu
from machine.choices import ProcessStatus
from machine.models import Process

pytestmark = pytest.mark.django_db

SECRET = "Zq8LmW3vRt6YpK2nXc9BfH4jDs7GaE5u"


def _py(code: str) -> list[str]:
    return [sys.executable, "-c", code]


@pytest.mark.parametrize("where", ["head", "tail"])
def test_a_cut_never_keeps_part_of_a_secret(make_process, settings, where):
    """The cap cuts at byte offsets: a secret printed across the kept head's end (or the kept
    tail's start) must not survive in part, in the log file or in the row."""
    settings.MACHINE_LOG_MAX_BYTES = 4000
    keep = 2000
    if where == "head":  # the secret starts 10 bytes before the head's end
        code = (
            "import os,sys\n"
            f"sys.stdout.write('a' * {keep - 10} + os.environ['API_TOKEN'] + 'b' * 20000 + '\\n')\n"
        )
    else:  # the tail starts 10 bytes before the secret's end
        code = (
            "import os,sys\n"
            f"s = os.environ['API_TOKEN']\n"
            f"sys.stdout.write('a' * 20000 + s + 'b' * {keep - 11} + '\\n')\n"
        )
    process = make_process(_py(code), env={"API_TOKEN": SECRET})
    process.launch()
    assert process.exit_code == 0
    data = process.stdout_file.read_bytes()
    assert b"bytes cut" in data
    for part in (SECRET[:10], SECRET[-10:]):
        assert part not in data.decode(), f"{part!r} of the secret kept in the log"
        assert part not in process.stdout, f"{part!r} of the secret stored in the row"


def test_a_secret_env_var_of_undecodable_bytes_in_our_environment(make_process, monkeypatch):
    """An inherited secret-looking variable whose value is not UTF-8 (os.environ holds it with
    surrogates) must neither break every launch nor leak: the child prints it raw, it is masked."""
    raw = b"\xff\xfe" + SECRET.encode()
    monkeypatch.setitem(os.environb, b"LEGACY_TOKEN", raw)
    code = "import os,sys\nsys.stdout.buffer.write(os.environb[b'LEGACY_TOKEN'] + b'\\n')"
    process = make_process(_py(code))
    process.launch()
    assert process.exit_code == 0
    assert SECRET not in process.stdout
    assert SECRET.encode() not in process.stdout_file.read_bytes()


@pytest.mark.parametrize(
    "value",
    [{"nested": "a\x00b"}, ["a\x00b"], {"nested": "\udcff"}, {"k\x00": 1}],
    ids=["dict-nul", "list-nul", "dict-surrogate", "key-nul"],
)
def test_nested_env_values_refused_before_anything_exists(make_process, data_dir, value):
    """A structured env value (given to the child as JSON) with NUL or a lone surrogate inside: the
    row must either store it or refuse it before the spawn, never fail after it."""
    from machine.processes import ProcessInputError

    process = make_process(_py("pass"), env={"DATA": value})
    try:
        process.launch()
    except ProcessInputError:
        assert not (data_dir / "processes").exists() or not any((data_dir / "processes").iterdir())
        assert not Process.objects.filter(pk=process.pk).exists()
        return
    process.refresh_from_db()
    assert process.status == ProcessStatus.EXITED and process.exit_code == 0


def test_two_cap_log_calls_at_once_keep_the_tail(tmp_path):
    """Two watchers cap the same log at the same moment (run's stdout and stderr threads both cap
    both logs; any process polling a running row caps it too): the kept tail must survive. One
    call truncated the file under the other, which then cut it down to the head and its notice."""
    log = tmp_path / "x.log"
    body = b"".join(b"%08d\n" % i for i in range(400_000))  # 3.6 MB
    lost = []
    for trial in range(30):
        log.write_bytes(body)
        barrier = threading.Barrier(2)

        def cap(barrier=barrier):
            barrier.wait()
            pu.cap_log(log, 2 * 1024 * 1024)

        threads = [threading.Thread(target=cap) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        data = log.read_bytes()
        if not (data.startswith(b"00000000\n") and data.endswith(b"00399999\n") and len(data) > 2_000_000):
            lost.append((trial, len(data)))
    assert not lost, f"tail lost in {len(lost)} of 30 concurrent caps: {lost[:3]}"


def test_cap_log_loses_no_write_of_a_busy_child(tmp_path):
    """A child appending (O_APPEND) while its log is cut: every write it makes after the cut is kept.

    Before: cap_log moved the tail down and then ftruncate()d at the end of what it moved; a write
    the child made between cap_log's last size check and the truncate was cut off with the rest
    (about half of 200 cuts lost one 450-byte write). Now the cut is one
    fallocate(FALLOC_FL_COLLAPSE_RANGE), taken under the inode lock the appends take too.
    """
    import re
    import subprocess

    log = tmp_path / "busy.log"
    code = (
        "import os\ni = 0\nwhile i < 2000000:\n"
        "    os.write(1, b''.join(b'%08d\\n' % j for j in range(i, i + 50)))\n    i += 50\n"
    )
    with open(log, "ab") as out:
        writer = subprocess.Popen(_py(code), stdout=out)
    cuts, gaps = 0, []
    try:
        while writer.poll() is None and cuts < 200:
            if pu.cap_log(log, 64 * 1024):
                cuts += 1
                tail = log.read_bytes().rpartition(b"bytes cut")[2].split(b"\n")[2:-1]
                numbers = [int(line) for line in tail if re.fullmatch(rb"\d{8}", line)]
                gaps += [(a, b) for a, b in zip(numbers, numbers[1:], strict=False) if b != a + 1]
    finally:
        writer.kill()
        writer.wait()
    assert cuts > 20
    assert not gaps, f"{len(gaps)} writes lost in {cuts} cuts, e.g. {gaps[:3]}"


def test_a_child_replacing_its_log_with_a_fifo_does_not_hang_the_close(make_process):
    """A hostile child swaps its stdout.log for a FIFO: closing its row must not block forever
    (opening a FIFO for reading waits for a writer that never comes)."""
    script = 'log=$(readlink /proc/$$/fd/1); rm -f "$log"; mkfifo "$log"; exit 3'
    process = make_process(["sh", "-c", script])
    finished, hung = threading.Event(), threading.Event()

    def watchdog():  # after 15 s, be the FIFO's writer so the blocked open() returns
        if not finished.wait(15):
            hung.set()
            while not finished.is_set():
                try:
                    fd = os.open(process.stdout_file, os.O_WRONLY | os.O_NONBLOCK)
                    os.close(fd)
                except OSError:
                    pass
                time.sleep(0.01)

    guard = threading.Thread(target=watchdog, daemon=True)
    guard.start()
    try:
        process.launch()
    finally:
        finished.set()
        guard.join(5)
    assert not hung.is_set(), "closing the row blocked on the FIFO"
    assert process.exit_code == 3
