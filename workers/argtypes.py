"""argparse `type=` validators shared by the management commands."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def int_at_least(minimum: int) -> Callable[[str], int]:
    """A `type=` function accepting integers >= minimum, with a clear message otherwise."""

    def parse(value: str) -> int:
        try:
            number = int(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{value!r} is not an integer") from None
        if number < minimum:
            raise argparse.ArgumentTypeError(f"{value!r} must be at least {minimum}")
        return number

    parse.__name__ = f"int_at_least_{minimum}"
    return parse


non_negative_int = int_at_least(0)


def from_check(check: Callable[[str], T], name: str) -> Callable[[str], T]:
    """A `type=` function from a check that raises ValueError with a message: argparse shows that
    message (a plain ValueError would become its generic "invalid value")."""

    def parse(value: str) -> T:
        try:
            return check(value)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    parse.__name__ = name
    return parse
