"""A tiny selector-based event loop for the runner's processes (no asyncio: ticks are synchronous code).

Everything a worker or the orchestrator waits for wakes the same `run_once()` at once: a readable
file descriptor (a PostgreSQL LISTEN socket, a child's pidfd), a timer coming due, or `wake()`,
which signal handlers and other threads call (it writes to an eventfd, or a pipe where there is none).
"""

from __future__ import annotations

import heapq
import itertools
import os
import selectors
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(order=True)
class TimerHandle:
    """A callback due at a time.monotonic() instant; pass it to `cancel()`."""

    when: float
    seq: int
    callback: Callable[[], object] = field(compare=False)
    cancelled: bool = field(default=False, compare=False)


class EventLoop:
    """add_reader/remove_reader, call_at/call_later/cancel, wake, run_once; one thread runs it."""

    def __init__(self) -> None:
        self._selector = selectors.DefaultSelector()
        self._timers: list[TimerHandle] = []
        self._seq = itertools.count()
        self._lock = threading.Lock()  # call_at/cancel may come from other threads
        if hasattr(os, "eventfd"):
            self._wake_r = self._wake_w = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        else:  # pragma: no cover (Linux has eventfd)
            self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._selector.register(self._wake_r, selectors.EVENT_READ, self._drain_wake)
        self.woken = False
        self._owner: int | None = None

    def close(self) -> None:
        self._selector.close()
        os.close(self._wake_r)
        if self._wake_w != self._wake_r:
            os.close(self._wake_w)

    # readers

    def add_reader(self, fd: int, callback: Callable[[], object]) -> None:
        """Call `callback()` whenever `fd` is readable (replacing an earlier callback for it)."""
        try:
            self._selector.modify(fd, selectors.EVENT_READ, callback)
        except KeyError:
            self._selector.register(fd, selectors.EVENT_READ, callback)

    def remove_reader(self, fd: int) -> bool:
        try:
            self._selector.unregister(fd)
        except (KeyError, ValueError):
            return False
        return True

    # timers

    def call_at(self, when: float, callback: Callable[[], object]) -> TimerHandle:
        """Call `callback()` once time.monotonic() reaches `when`."""
        handle = TimerHandle(when, next(self._seq), callback)
        with self._lock:
            heapq.heappush(self._timers, handle)
        if threading.get_ident() != self._owner:
            self.wake()  # the loop's thread may be waiting with a longer timeout
        return handle

    def call_later(self, delay: float, callback: Callable[[], object]) -> TimerHandle:
        return self.call_at(time.monotonic() + delay, callback)

    def cancel(self, handle: TimerHandle | None) -> None:
        if handle is not None:
            handle.cancelled = True

    # waking

    def wake(self) -> None:
        """End the current (or next) wait at once; safe from signal handlers and other threads."""
        try:
            os.write(self._wake_w, (1).to_bytes(8, "little"))
        except (BlockingIOError, OSError):
            pass  # already pending (a full pipe) or closed at exit: either way nothing is lost

    def _drain_wake(self) -> None:
        try:
            while os.read(self._wake_r, 8):
                if self._wake_r == self._wake_w:  # an eventfd reads its whole count at once
                    break
        except (BlockingIOError, OSError):
            pass
        self.woken = True

    def run_once(self, timeout: float | None = None) -> None:
        """Wait until an fd is readable, a timer is due, wake() is called or `timeout` passes; run callbacks."""
        self.woken = False
        self._owner = threading.get_ident()
        with self._lock:
            while self._timers and self._timers[0].cancelled:
                heapq.heappop(self._timers)
            if self._timers:
                until_timer = max(0.0, self._timers[0].when - time.monotonic())
                timeout = until_timer if timeout is None else min(timeout, until_timer)
        events = self._selector.select(None if timeout is None else max(0.0, timeout))
        for key, _mask in events:
            key.data()
        now = time.monotonic()
        due = []
        with self._lock:
            while self._timers and (self._timers[0].cancelled or self._timers[0].when <= now):
                handle = heapq.heappop(self._timers)
                if not handle.cancelled:
                    due.append(handle)
        for handle in due:
            handle.callback()
