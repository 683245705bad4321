"""``python -m rlflat.report STUDY [STUDY ...] [--out DIR]``: write a study's report (md, html, figures, tables).

One study writes ``<study>/report/``; several studies are merged into one runs table and need ``--out``.
Settings come from the first study's ``study.yaml`` ``report:`` block; ``--seed`` and ``--n-boot`` override it.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from rlflat.cli import ArgumentParser, run_cli


def _int_at_least(low: int, high: int = 2**32 - 1) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"expected an integer in [{low}, {high}], got {value}")
        return value

    return parse


def _parser() -> ArgumentParser:
    parser = ArgumentParser(prog="python -m rlflat.report", description=__doc__)
    parser.add_argument("studies", nargs="+", help="study directories (each holding runs.parquet)")
    parser.add_argument("--out", default=None, help="report directory (default: <study>/report for one study)")
    parser.add_argument(
        "--seed", type=_int_at_least(0), default=None, help="seed of every resampling (default: report.seed, 0)"
    )
    parser.add_argument(
        "--n-boot",
        type=_int_at_least(1, 100_000),
        default=None,
        help="bootstrap resamples of the descriptive intervals (default: report.n_boot, 2000)",
    )
    parser.add_argument("--strict", action="store_true",
                        help="refuse (exit 2, nothing written) when any run or per-run file would be skipped")  # fmt: skip
    parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Build the report and print where it is; user errors become one line and exit code 2 via run_cli."""
    args = _parser().parse_args(argv)
    from rlflat.report.render import build_report  # heavy (matplotlib); after argument checks

    out = build_report(
        args.studies, args.out, seed=args.seed, n_boot=args.n_boot, strict=args.strict, progress=not args.no_progress
    )
    print(out / "report.md")
    print(out / "report.html")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
