"""Shared CLI plumbing: user errors become one line on stderr and exit code 2, never a traceback."""

from __future__ import annotations

import argparse
import re
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from rlflat.errors import RlflatError


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so the same clean-up runs (staging folders removed, nothing half-written)."""


def _terminate(signum: int, frame: object) -> None:
    raise Terminated


def run_cli(main: Callable[[Sequence[str] | None], int], argv: Sequence[str] | None = None) -> int:
    """Run ``main``; turn an :class:`RlflatError` into ``error: <message>`` and exit status 2.

    SIGTERM (``kill``, a batch scheduler's stop) is handled like SIGINT: the exception unwinds every ``finally``
    and context manager, so staging folders are removed; exit status 143 (130 for Ctrl-C), as a shell reports.
    """
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        return main(argv)
    except RlflatError as exc:
        lines = (line.strip() for line in str(exc).splitlines())  # a library's multi-line text inside a message
        print(f"error: {' '.join(line for line in lines if line)}", file=sys.stderr)
        return 2
    except MemoryError:  # a backstop: every size is estimated before allocating (rlflat.memory)
        print("error: out of memory: the inputs ask for more than this machine has; use smaller sizes", file=sys.stderr)
        return 2
    except RecursionError:  # a backstop: JSON and YAML inputs are checked for depth before parsing
        print("error: an input is nested too deeply to read; fix or remove it", file=sys.stderr)
        return 2
    except Terminated:
        print("terminated", file=sys.stderr)
        return 128 + signal.SIGTERM
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def set_torch_threads(threads: int) -> None:
    """One torch thread by default: measured faster for small policies, and robust to a busy machine."""
    import torch

    if threads < 1:
        raise RlflatError(f"--threads must be >= 1, got {threads}")
    torch.set_num_threads(threads)


def add_loading_flags(parser: argparse.ArgumentParser) -> None:
    """``--trust`` and ``--vecnormalize``: how a model file and its normalisation statistics are read."""
    parser.add_argument(
        "--trust",
        action="store_true",
        help="load the zip (and a --vecnormalize pickle) with SB3's full loader, which unpickles them and can run "
        "code in them; only for files you trust (default: rebuild the policy from readable fields, unpickle nothing)",
    )
    parser.add_argument(
        "--vecnormalize",
        metavar="PATH",
        help="normalisation statistics to apply: an rlflat normalization.json, or SB3's vecnormalize.pkl with "
        "--trust (default: a run dir's own normalization.json; files beside a bare zip are never applied)",
    )


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a usage error is an :class:`RlflatError`: one line, exit 2, like every other bad input.

    Descriptions may be a module docstring's first line: its reST markup (````code````, ``:mod:`name```) is
    shown as plain text in ``--help``.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        if kwargs.get("description"):
            kwargs["description"] = plain_text(kwargs["description"])
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        raise RlflatError(f"{self.prog}: {message}")


def plain_text(text: str) -> str:
    """reST inline markup as plain text: ``:role:`x``` -> ``x``, double backquotes dropped."""
    return re.sub(r":[a-z]+:`~?([^`]+)`", r"\1", text).replace("``", "")
