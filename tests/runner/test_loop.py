"""workers.loop.EventLoop: readers, timers, wake() from a signal handler and from another thread."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from workers.loop import EventLoop


@pytest.fixture
def loop():
    loop = EventLoop()
    yield loop
    loop.close()


def test_run_once_returns_after_the_timeout_when_nothing_happens(loop):
    began = time.monotonic()
    loop.run_once(0.2)
    assert 0.18 <= time.monotonic() - began < 1.0
    assert not loop.woken


def test_a_readable_fd_runs_its_callback_at_once(loop):
    r, w = os.pipe()
    seen = []
    loop.add_reader(r, lambda: seen.append(os.read(r, 10)))
    os.write(w, b"x")
    began = time.monotonic()
    loop.run_once(5)
    assert seen == [b"x"] and time.monotonic() - began < 0.5
    assert loop.remove_reader(r) and not loop.remove_reader(r)
    os.write(w, b"y")
    loop.run_once(0.05)
    assert seen == [b"x"]  # removed: not called again
    os.close(r)
    os.close(w)


def test_timers_run_in_order_and_a_cancelled_one_never(loop):
    seen = []
    now = time.monotonic()
    loop.call_at(now + 0.10, lambda: seen.append("b"))
    loop.call_at(now + 0.05, lambda: seen.append("a"))
    cancelled = loop.call_later(0.07, lambda: seen.append("never"))
    loop.cancel(cancelled)
    deadline = now + 2
    while len(seen) < 2 and time.monotonic() < deadline:
        loop.run_once(1.0)  # the timers shorten the wait
    assert seen == ["a", "b"]
    assert time.monotonic() - now < 0.6


def test_wake_from_another_thread_ends_a_long_wait(loop):
    threading.Timer(0.1, loop.wake).start()
    began = time.monotonic()
    loop.run_once(10)
    assert loop.woken and time.monotonic() - began < 2


def test_wake_from_a_signal_handler_ends_a_long_wait(loop):
    previous = signal.signal(signal.SIGUSR2, lambda signum, frame: loop.wake())
    try:
        threading.Timer(0.1, lambda: os.kill(os.getpid(), signal.SIGUSR2)).start()
        began = time.monotonic()
        loop.run_once(10)
        assert loop.woken and time.monotonic() - began < 2
    finally:
        signal.signal(signal.SIGUSR2, previous)


def test_many_wakes_coalesce_and_never_block(loop):
    for _ in range(100_000):
        loop.wake()
    loop.run_once(0)
    assert loop.woken
    loop.run_once(0.01)
    assert not loop.woken
