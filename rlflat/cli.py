"""Shared CLI plumbing: user errors become one line on stderr and exit code 2, never a traceback."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

from rlflat.errors import RlflatError


def run_cli(main: Callable[[Sequence[str] | None], int], argv: Sequence[str] | None = None) -> int:
    """Run ``main``; turn an :class:`RlflatError` into ``error: <message>`` and exit status 2."""
    try:
        return main(argv)
    except RlflatError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


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
    """argparse, but a usage error is an :class:`RlflatError`: one line, exit 2, like every other bad input."""

    def error(self, message: str) -> NoReturn:
        raise RlflatError(f"{self.prog}: {message}")
