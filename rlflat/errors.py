"""The one error type users see: a bad value, named, with the valid choices."""

from __future__ import annotations

from collections.abc import Iterable


class RlflatError(ValueError):
    """A user-facing error; the CLIs print its message as one line and exit with code 2."""


def bad_choice(what: str, value: object, choices: Iterable[object]) -> RlflatError:
    """Build the standard 'unknown X' error naming the bad value and every valid choice."""
    valid = ", ".join(str(c) for c in choices)
    return RlflatError(f"unknown {what} {value!r}; valid choices: {valid}")
