"""How the management commands talk to people: one place for verbosity, tables, progress and logging.

On a terminal, `rich` draws tables and live progress; otherwise (a pipe, a file, a test's StringIO)
the same calls print plain, aligned text and one line per change, so logs stay greppable. Verbosity
follows Django's `-v`: 0 prints nothing but errors (and data asked for with `--json`), 1 the normal
output, 2 and 3 more detail and DEBUG logging. No ORM here.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TextIO

from django.conf import settings
from rich.console import Console as RichConsole
from rich.live import Live
from rich.table import Table
from rich.text import Text

#: The loggers of this project's apps.
APP_LOGGERS = ("workers", "machine", "hooks")
LOG_FORMAT = "%(asctime)s [%(process)d] %(levelname)s %(name)s: %(message)s"


def _cell(value: Any) -> str:
    return "-" if value is None or value == "" else str(value)


def plain_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """Left-aligned columns separated by two spaces, a header line first, no trailing blanks."""
    cells = [list(headers), *([_cell(v) for v in row] for row in rows)]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells
    )


def plain_pairs(pairs: Iterable[tuple[str, Any]]) -> str:
    """`key  value` lines with the keys aligned."""
    pairs = list(pairs)
    width = max((len(key) for key, _ in pairs), default=0)
    return "\n".join(f"{key.ljust(width)}  {_cell(value)}" for key, value in pairs)


class Console:
    """A command's view of its output stream (the raw stream, not Django's OutputWrapper)."""

    def __init__(
        self, stream: TextIO, verbosity: int = 1, *, no_color: bool = False, force_color: bool = False
    ):
        self.stream = stream
        self.verbosity = verbosity
        self.rich = RichConsole(
            file=stream,
            no_color=no_color,
            force_terminal=True if force_color else None,
            highlight=False,
            soft_wrap=False,
        )

    @classmethod
    def for_command(cls, command, stream: str = "stdout", verbosity: int = 1, **options) -> Console:
        """The console on a BaseCommand's stdout or stderr, honouring --no-color / --force-color."""
        wrapper = getattr(command, stream)
        return cls(
            wrapper._out,
            verbosity,
            no_color=bool(options.get("no_color")),
            force_color=bool(options.get("force_color")),
        )

    @property
    def is_terminal(self) -> bool:
        return self.rich.is_terminal

    # -- text ----------------------------------------------------------------------------------

    def line(self, text: str = "", *, level: int = 1, style: str | None = None) -> None:
        """Print one line when the verbosity is at least `level`."""
        if self.verbosity < level:
            return
        if self.is_terminal:
            self.rich.print(Text(text, style=style or ""))
        else:
            self.stream.write(text + "\n")
            self.stream.flush()

    def heading(self, text: str, *, level: int = 1) -> None:
        self.line(text, level=level, style="bold")

    # -- tables --------------------------------------------------------------------------------

    def table(
        self,
        headers: Sequence[str],
        rows: Iterable[Sequence[Any]],
        *,
        title: str | None = None,
        level: int = 1,
    ) -> None:
        """A table: rich's on a terminal, aligned plain text otherwise."""
        if self.verbosity < level:
            return
        rows = list(rows)
        if self.is_terminal:
            table = Table(*headers, title=title, title_justify="left", header_style="bold")
            for row in rows:
                table.add_row(*(_cell(v) for v in row))
            self.rich.print(table)
            return
        if title:
            self.line(title, level=level)
        self.line(plain_table(headers, rows), level=level)

    def pairs(self, pairs: Iterable[tuple[str, Any]], *, title: str | None = None, level: int = 1) -> None:
        """Key/value lines: a two-column grid on a terminal."""
        if self.verbosity < level:
            return
        pairs = list(pairs)
        if self.is_terminal:
            grid = Table.grid(padding=(0, 2))
            grid.add_column(style="bold")
            grid.add_column()
            for key, value in pairs:
                grid.add_row(key, _cell(value))
            if title:
                self.heading(title, level=level)
            self.rich.print(grid)
            return
        if title:
            self.line(title, level=level)
        self.line(plain_pairs(pairs), level=level)

    # -- progress --------------------------------------------------------------------------------

    @contextmanager
    def status(self, label: str, *, level: int = 1) -> Iterator[None]:
        """A spinner with `label` while the block runs (a terminal), else one `... label` line."""
        if self.verbosity < level:
            yield
            return
        if self.is_terminal:
            with self.rich.status(label):
                yield
            return
        self.line(f"... {label}", level=level)
        yield

    def live(self, render: Callable[[], str], *, interval: float = 0.5, level: int = 1) -> LiveLine:
        """A line redrawn in place on a terminal; elsewhere printed again whenever it changes."""
        return LiveLine(self, render, interval=interval, enabled=self.verbosity >= level)


class LiveLine:
    """Call it as often as you like: it renders at most every `interval` seconds; `final=True` ends it."""

    def __init__(self, console: Console, render: Callable[[], str], *, interval: float, enabled: bool):
        self.console = console
        self.render = render
        self.interval = interval
        self.enabled = enabled
        self._last_text = ""
        self._last_time = 0.0
        self._live: Live | None = None
        self._lock = threading.Lock()

    def __call__(self, final: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        with self._lock:
            if not final and now - self._last_time < self.interval:
                return
            self._last_time = now
            text = self.render()
            if self.console.is_terminal:
                if self._live is None:
                    self._live = Live(
                        Text(text),
                        console=self.console.rich,
                        auto_refresh=False,
                        redirect_stdout=False,
                        redirect_stderr=False,
                    )
                    self._live.start()
                self._live.update(Text(text), refresh=True)
                if final:
                    self._live.stop()
                    self._live = None
            elif text != self._last_text:
                self.console.stream.write(text + "\n")
                self.console.stream.flush()
            self._last_text = text


# -- logging ---------------------------------------------------------------------------------------


class _AppHandler(logging.StreamHandler):
    """The handler the commands add; recognised (and replaced) on the next call, never the project's."""


def level_for(verbosity: int) -> int:
    return {0: logging.WARNING, 1: logging.INFO}.get(verbosity, logging.DEBUG)


def project_configures(name: str) -> bool:
    """True when the project's LOGGING names this logger, or it (or an ancestor) has a handler of theirs."""
    configured = getattr(settings, "LOGGING", None) or {}
    if name in (configured.get("loggers") or {}):
        return True
    logger: logging.Logger | None = logging.getLogger(name)
    while logger is not None:
        if any(not isinstance(handler, _AppHandler) for handler in logger.handlers):
            return True
        if not logger.propagate:
            break
        logger = logger.parent
    return False


def configure_logging(verbosity: int, stream: TextIO) -> list[str]:
    """Log the app loggers to `stream` at the `-v` level, except those the project configured itself.

    Returns the names configured here. A project's LOGGING (its handlers, levels, propagation) is
    never replaced: Django applied it at start-up and it stays the operator's choice.
    """
    configured = []
    for name in APP_LOGGERS:
        if project_configures(name):
            continue
        logger = logging.getLogger(name)
        for handler in [h for h in logger.handlers if isinstance(h, _AppHandler)]:
            logger.removeHandler(handler)
        handler = _AppHandler(stream)
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
        logger.addHandler(handler)
        logger.setLevel(level_for(verbosity))
        logger.propagate = False
        configured.append(name)
    return configured
