"""A live one-line progress display for long installs (spinner + elapsed time on a terminal)."""

from __future__ import annotations

import itertools
import threading
import time
from typing import TextIO

SPINNER = "|/-\\"


class LiveStatus:
    """Shows `label` with a spinner and elapsed seconds until stopped; plain lines when not a TTY."""

    def __init__(self, stream: TextIO, interval: float = 0.2):
        self.stream = stream
        self.interval = interval
        self.live = bool(getattr(stream, "isatty", lambda: False)())
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, label: str) -> None:
        self.stop()
        self._stop.clear()
        if not self.live:
            self.stream.write(f"... {label}\n")
            self.stream.flush()
            return
        started = time.monotonic()

        def spin() -> None:
            for frame in itertools.cycle(SPINNER):
                self.stream.write(f"\r{frame} {label} {time.monotonic() - started:5.1f}s ")
                self.stream.flush()
                if self._stop.wait(self.interval):
                    return

        self._thread = threading.Thread(target=spin, name="install-progress", daemon=True)
        self._thread.start()

    def stop(self, final: str | None = None) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
            self.stream.write("\r\033[K")
        if final:
            self.stream.write(final + "\n")
        self.stream.flush()
