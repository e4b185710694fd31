"""argparse types for the benchmarks' flags: a bad value is a one-line usage error naming the
flag, with exit code 2, before Ray or any model starts (not a traceback minutes in)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Callable, Iterable


def _int_at_least(text: str, minimum: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, not {text!r}") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"expected a number >= {minimum}, not {value}")
    return value


def positive_int(text: str) -> int:
    return _int_at_least(text, 1)


def non_negative_int(text: str) -> int:
    return _int_at_least(text, 0)


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, not {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, not {text}")
    return value


def _comma_parts(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def positive_ints(text: str) -> list[int]:
    """Comma-separated numbers >= 1, e.g. '1,4,16'."""
    values = [positive_int(part) for part in _comma_parts(text)]
    if not values:
        raise argparse.ArgumentTypeError("expected comma-separated numbers, e.g. 1,4,16")
    return values


def choices_of(allowed: Iterable, convert: Callable = str, allow_empty: bool = False
               ) -> Callable[[str], list]:
    """A type for comma-separated values among ``allowed`` (after ``convert``), in the order
    given, each once; ``allow_empty``: '' is the empty list."""
    allowed = list(allowed)

    def parse(text: str) -> list:
        parts = _comma_parts(text)
        if not parts and not allow_empty:
            raise argparse.ArgumentTypeError(
                f"expected some of {', '.join(map(str, allowed))}")
        values = []
        for part in parts:
            try:
                value = convert(part)
            except ValueError:
                value = None
            if value not in allowed:
                raise argparse.ArgumentTypeError(
                    f"unknown value {part!r}; choose from {', '.join(map(str, allowed))}")
            if value not in values:
                values.append(value)
        return values
    return parse


def existing_path(text: str) -> str:
    if not Path(text).exists():
        raise argparse.ArgumentTypeError(f"{text!r} does not exist")
    return text
