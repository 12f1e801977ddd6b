"""The files of a Process row: runtime dir, logs, pid and cmd files, tailing, and JSONL records."""

from __future__ import annotations

import hashlib
import os
import re
import shlex
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from hooks.records import records_with_type
from machine import process_utils
from machine.choices import ProcessType
from machine.conf import machine_settings
from machine.redaction import (
    GATE_WORDS,
    MASK,
    Scrubber,
    env_value_text,
    is_secret_key,
    mask_cmd,
    mask_env,
    mask_text,
    secret_forms,
)

_SURROGATE = re.compile("[\ud800-\udfff]")  # (what undecodable bytes become in a str)

#: Script types a hook can be (the suffix of its file name).
HOOK_SCRIPT_SUFFIXES = (".py", ".js", ".sh")


def _masked_chunks(handle, scrubber: Scrubber, chunk_size: int) -> Iterator[bytes]:
    with handle:
        for block in iter(lambda: handle.read(chunk_size), b""):
            masked = scrubber.feed(block)
            if masked:
                yield masked
        rest = scrubber.flush()
        if rest:
            yield rest


def storable_text(data: bytes) -> str:
    """Output bytes as text any database stores: invalid UTF-8 replaced, NUL shown as U+2400."""
    return data.decode("utf-8", errors="replace").replace("\x00", "\u2400")


def readable_argv(argv: list[str]) -> list[str]:
    """A running process's argv as storable text: undecodable bytes shown as \\xNN, NUL as U+2400."""
    return [
        arg.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace").replace("\x00", "\u2400")
        for arg in argv
    ]


def storable_str(text: str) -> str:
    """storable_text() for a str (lone surrogates from undecodable bytes replaced too)."""
    if text.isascii() and "\x00" not in text:
        return text
    return _SURROGATE.sub("\ufffd", text).replace("\x00", "\u2400")


def _may_need_masking(source, secrets: list[str], chunk_size: int = 1024 * 1024) -> bool:
    """False if no rule can change this file: only ASCII, no gate word, no secret value (C scans)."""
    needles = [*GATE_WORDS, *(value.encode("utf-8", "surrogateescape").lower() for value in secrets)]
    needles = [needle for needle in needles if needle]
    overlap = max(len(needle) for needle in needles)
    carry = b""
    source.seek(0)
    for block in iter(lambda: source.read(chunk_size), b""):
        if not block.isascii():
            return True
        window = (carry + block).lower()
        if any(needle in window for needle in needles):
            return True
        carry = block[-overlap:]
    return False


def _mask_file(path: Path, secrets: list[str], chunk_size: int = 256 * 1024) -> None:
    """Mask a log file in place, streaming (bounded memory); rewritten only if masking changed it."""
    scrubber = Scrubber(secrets, max_line=chunk_size)
    scratch = path.with_name(f".{path.name}.masking")
    try:
        with process_utils.open_log(path) as source:
            first = source.read(chunk_size)
            if len(first) < chunk_size:  # the usual small log: in memory, written only if changed
                masked = scrubber.feed(first) + scrubber.flush()
                if masked != first:
                    path.write_bytes(masked)
                return
            if not _may_need_masking(source, secrets):
                return  # e.g. 16 MB of ordinary output: one scan instead of a rewrite
            source.seek(len(first))
            before, after = hashlib.blake2b(first), hashlib.blake2b()
            with open(scratch, "wb") as out:
                block = first
                while block:
                    masked = scrubber.feed(block)
                    after.update(masked)
                    out.write(masked)
                    block = source.read(chunk_size)
                    before.update(block)
                rest = scrubber.flush()
                after.update(rest)
                out.write(rest)
        if before.digest() != after.digest():
            os.replace(scratch, path)
    except OSError:  # missing (never launched here), or the pwd is gone
        pass
    finally:
        scratch.unlink(missing_ok=True)


class ProcessFilesMixin:
    """Runtime files of a process (mixed into Process through ProcessMixin)."""

    # -- files -------------------------------------------------------------------------------------

    @property
    def hook_script_name(self) -> str | None:
        """For a hook process: the file name of its script (the first argument, options aside, whose
        file name starts with `on_` and ends in .py/.js/.sh); else None."""
        if self.process_type != ProcessType.HOOK or not self.cmd:
            return None
        for arg in self.cmd:
            text = str(arg)
            if text.startswith("-"):
                continue
            name = Path(text).name
            if name.startswith("on_") and Path(name).suffix in HOOK_SCRIPT_SUFFIXES:
                return name
        return None

    @property
    def runtime_dir(self) -> Path:
        """This row's own folder for its logs, pid file and cmd.sh: `<MACHINE_DATA_DIR>/processes/<id>`.

        One folder per row, never `pwd` (the original's choice): two processes sharing a working
        directory would otherwise write the same stdout.log, and `prune` can delete the folder whole
        without ever touching a user's directory. See docs/compatibility.md.
        """
        base = machine_settings.processes_dir
        cached = self.__dict__.get("_runtime_dir")
        if cached is None or cached[0] != (base, self.id):  # (built once per row and setting)
            cached = (base, self.id), base / str(self.id)
            self.__dict__["_runtime_dir"] = cached
        return cached[1]

    def _runtime_file(self, name: str) -> Path:
        return self.runtime_dir / name

    @property
    def stdout_file(self) -> Path:
        return self._runtime_file("stdout.log")

    @property
    def stderr_file(self) -> Path:
        return self._runtime_file("stderr.log")

    @property
    def pid_file(self) -> Path:
        return self._runtime_file("process.pid")

    @property
    def cmd_file(self) -> Path:
        return self._runtime_file("cmd.sh")

    def ensure_log_files(self) -> None:
        """Create the runtime dir and empty stdout/stderr logs."""
        self.runtime_dir.mkdir(parents=True, exist_ok=True)
        for path in (self.stdout_file, self.stderr_file):
            path.touch(exist_ok=True)

    def _write_cmd_file(self, cwd: str) -> None:
        """cmd.sh: a re-runnable script, shlex-quoted, every secret masked.

        A secret env value becomes `export KEY="${KEY:?...}"`: the script runs again once the
        variable is set in the shell that runs it, and says so otherwise. A masked argument stays
        masked: that command has to be completed by hand.
        """
        secrets = self.mask_values()
        shown = mask_env(self.env or {}, secrets)
        lines = ["#!/bin/sh", f"cd {shlex.quote(cwd)} || exit 1"]
        for key, value in (self.env or {}).items():
            if value is None:
                continue
            if is_secret_key(key) and value != "":
                lines.append(f'export {key}="${{{key}:?set {key}: its value is not stored}}"')
            else:
                lines.append(f"export {key}={shlex.quote(env_value_text(shown[key]))}")
        argv = mask_cmd(self.cmd, secrets)
        if argv != [str(arg) for arg in self.cmd]:
            lines.append(f"# secrets in this command are masked ({MASK}): complete them before running it")
        lines.append(f"exec {shlex.join(argv)}")
        text = "\n".join(lines) + "\n"
        path = self.cmd_file
        # Rewriting an unchanged file is not free: on ext4, truncating and rewriting a non-empty file
        # flushes it on close (auto_da_alloc), a few ms per launch when a pwd is reused.
        try:
            if path.stat().st_size == len(text.encode()) and path.read_text() == text:
                return
        except (FileNotFoundError, UnicodeDecodeError):
            pass
        path.write_text(text)

    def _write_pid_file(self) -> None:
        path = self.pid_file
        if self.pid is None:
            return
        path.write_text(f"{self.pid}\n")
        start = self.os_start_time or (self.started_at.timestamp() if self.started_at else None)
        if start is not None:
            os.utime(path, (start, start))

    def _remove_pid_file(self) -> None:
        self.pid_file.unlink(missing_ok=True)

    def _cap_logs(self, secrets: list[str] | None = None) -> None:
        """Keep both log files within MACHINE_LOG_MAX_BYTES (head and tail kept, the cut said).

        A known secret the cut would split keeps no part of it (asked for only when a file is cut).
        """

        def needles() -> list[bytes]:
            values = self.mask_values() if secrets is None else secrets
            return [value.encode("utf-8", "surrogateescape") for value in secret_forms(values)]

        for path in (self.stdout_file, self.stderr_file):
            process_utils.cap_log(path, machine_settings.LOG_MAX_BYTES, needles)

    def _read_logs(self, secrets: list[str] | None = None) -> tuple[str | None, str | None]:
        """The stored form of both logs (None for a missing one): masked, bounded, storable.

        Each log file is masked in place (streaming), then its last OUTPUT_TAIL_BYTES become the
        text, after a line saying how many earlier bytes only the file holds.
        """
        secrets = self.mask_values() if secrets is None else secrets
        texts: list[str | None] = []
        for path in (self.stdout_file, self.stderr_file):
            found = None
            if path is not None:
                _mask_file(path, secrets)
                found = process_utils.read_tail(path, machine_settings.OUTPUT_TAIL_BYTES)
            if found is None:
                texts.append(None)
                continue
            data, earlier = found
            if earlier:
                cut = data.find(b"\n", 0, 4096)  # start at a line if one starts near
                if cut >= 0:
                    data, earlier = data[cut + 1 :], earlier + cut + 1
            text = mask_text(storable_text(data), secrets)
            if earlier:
                text = f"[... {earlier} earlier bytes are only in {path.name} ...]\n{text}"
            texts.append(text)
        return texts[0], texts[1]

    def _stream_file(self, stream: str) -> Path:
        if stream not in ("stdout", "stderr"):
            raise ValueError(f"stream must be 'stdout' or 'stderr', got {stream!r}")
        return self.stdout_file if stream == "stdout" else self.stderr_file

    def tail(self, stream: str = "stdout", lines: int = 50, follow: bool = False) -> Iterator[str]:
        """Last `lines` lines of a log, secrets masked (`follow`: keep yielding until the process is gone)."""
        path = self._stream_file(stream)
        stop = (lambda: not self.is_running) if follow else None
        return self._masked(process_utils.tail(path, lines=lines, follow=follow, stop=stop))

    def _masked(self, lines: Iterator[str]) -> Iterator[str]:
        # A running child may print a secret before the row is closed (and its logs masked).
        secrets = self.mask_values()
        return (mask_text(line, secrets) for line in lines)

    def masked_log(self, stream: str = "stdout", chunk_size: int = 64 * 1024) -> Iterator[bytes]:
        """The whole log file, masked, in chunks of about `chunk_size` (memory stays bounded).

        Known secret values are masked across chunk boundaries, the positional rules line by line
        (redaction.Scrubber). Opens the file at once (FileNotFoundError/OSError here, not later).
        """
        handle = process_utils.open_log(self._stream_file(stream))  # (closed by the generator)
        return _masked_chunks(handle, Scrubber(self.mask_values(), max_line=4 * chunk_size), chunk_size)

    def tail_stdout(self, lines: int = 50, follow: bool = False) -> Iterator[str]:
        return self.tail("stdout", lines, follow)

    def tail_stderr(self, lines: int = 50, follow: bool = False) -> Iterator[str]:
        return self.tail("stderr", lines, follow)

    def pipe(self, stream: str = "stdout", lines: int = 10, follow: bool = True, out=None) -> None:
        """Copy a log's tail (and, with follow, what is appended) to `out` (sys.stdout/sys.stderr)."""
        out = out or (sys.stdout if stream == "stdout" else sys.stderr)
        for line in self.tail(stream, lines, follow):
            out.write(line + "\n")
            out.flush()

    def pipe_stdout(self, lines: int = 10, follow: bool = True) -> None:
        self.pipe("stdout", lines, follow)

    def pipe_stderr(self, lines: int = 10, follow: bool = True) -> None:
        self.pipe("stderr", lines, follow)

    def stream_output(
        self, stdout=None, stderr=None, *, deadline: float | None = None, poll_interval: float = 0.05
    ) -> None:
        """Copy both logs to stdout/stderr as they grow, until the process ends or `deadline` (monotonic)."""
        stdout, stderr = stdout or sys.stdout, stderr or sys.stderr

        next_cap = [0.0]

        def done() -> bool:
            now = time.monotonic()
            if now >= next_cap[0]:  # whoever watches a child keeps its logs within the cap
                next_cap[0] = now + 0.1
                self._cap_logs()
            return not self.is_running or (deadline is not None and now >= deadline)

        def copy(path: Path, out) -> None:
            lines = process_utils.tail(
                path, follow=True, poll_interval=poll_interval, stop=done, from_start=True
            )
            for line in self._masked(lines):
                out.write(line + "\n")
                out.flush()

        err_thread = threading.Thread(target=copy, args=(self.stderr_file, stderr), daemon=True)
        err_thread.start()
        copy(self.stdout_file, stdout)
        err_thread.join()

    @classmethod
    def parse_records_from_text(cls, text: str) -> list[dict]:
        """JSONL records (objects with a `type`) found in text; other lines are ignored."""
        return records_with_type(text or "")

    def get_records(self) -> list[dict]:
        """Records the process printed on stdout (from the DB copy, else the live log file)."""
        return list(self.iter_records())

    def iter_records(self) -> Iterator[dict]:
        """get_records(), lazily: a caller that stops early reads and parses no further line."""
        text = self.stdout
        cut = bool(text) and text.startswith("[... ")  # the row keeps a tail: the file has the rest
        if (not text or cut) and self.stdout_file.exists():
            return self._log_records()
        return iter(self.parse_records_from_text(text))

    def _log_records(self) -> Iterator[dict]:
        with process_utils.open_log(self.stdout_file) as log:  # (within LOG_MAX_BYTES), by line
            for line in log:
                if line.lstrip().startswith(b"{"):
                    yield from self.parse_records_from_text(storable_text(line))
