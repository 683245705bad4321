"""``python -m rlflat.report STUDY [STUDY ...] [--out DIR]``: write a study's report (md, html, figures, tables).

One study writes ``<study>/report/``; several studies are merged into one runs table and need ``--out``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from rlflat.cli import run_cli
from rlflat.errors import RlflatError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m rlflat.report", description=__doc__)
    parser.add_argument("studies", nargs="+", help="study directories (each holding runs.parquet)")
    parser.add_argument("--out", default=None, help="report directory (default: <study>/report for one study)")
    parser.add_argument("--seed", type=int, default=0, help="seed of every bootstrap (default: 0)")
    parser.add_argument(
        "--n-boot", type=int, default=2000, help="bootstrap resamples of the statistics (default: 2000)"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Build the report and print where it is; user errors become one line and exit code 2 via run_cli."""
    args = _parser().parse_args(argv)
    if args.n_boot < 1:
        raise RlflatError(f"--n-boot must be a positive integer, got {args.n_boot}")
    from rlflat.report.render import build_report  # heavy (matplotlib); after argument checks

    out = build_report(args.studies, args.out, seed=args.seed, n_boot=args.n_boot)
    print(out / "report.md")
    print(out / "report.html")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
