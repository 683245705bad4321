"""``python -m rlflat.sweep.resummarize STUDY_OR_RUN...``: recompute ``train.sharpness_path`` from ``train.csv``.

The path scalars (:func:`rlflat.algos.sharpness_tracking.path_summary`) are a function of the tracked rows each
run's ``train.csv`` keeps, so a new scalar (the surrogate's own ratio, the value-dominated flag) reaches finished
runs without retraining, as ``python -m rlflat.evaluate.rescore`` does for robustness scores. Columns a run never
tracked stay absent from its summary. Rebuild ``runs.parquet`` afterwards (``python -m rlflat.sweep --collect``).
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from rlflat.algos.sharpness_tracking import path_summary
from rlflat.errors import RlflatError
from rlflat.io import read_json_object, update_json_block

__all__ = ["resummarize_run"]


def resummarize_run(run_dir: str | Path, write: bool = True) -> dict[str, Any]:
    """The run's path summary from its ``train.csv`` tracked rows (written into ``metrics.json`` when ``write``)."""
    run_dir = Path(run_dir)
    curve = run_dir / "train.csv"
    if not curve.exists():
        raise RlflatError(f"{run_dir}: no train.csv to summarise")
    table = pd.read_csv(curve)
    if "update" not in table:
        raise RlflatError(f"{curve}: no tracked sharpness rows (trained without track_sharpness)")
    tracked = table[table["update"].notna()]
    rows = [{k: float(v) if pd.notna(v) else math.nan for k, v in r.items()} for r in tracked.to_dict("records")]
    summary = path_summary(rows)
    if write:
        train = read_json_object(run_dir / "metrics.json").get("train") or {}
        update_json_block(run_dir / "metrics.json", "train", {**train, "sharpness_path": summary})
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rlflat.sweep.resummarize", description=__doc__.split("\n")[0])
    parser.add_argument("paths", nargs="+", type=Path, help="run directories or study directories")
    args = parser.parse_args(argv)
    try:
        runs = [p for path in args.paths for p in ([path] if (path / "train.csv").exists() else sorted(
            d for d in path.iterdir() if (d / "train.csv").exists()))]  # fmt: skip
        for run in runs:
            summary = resummarize_run(run)
            flag = " VALUE-DOMINATED" if summary.get("value_dominated") else ""
            print(f"{run.name}: late_gd_ratio {summary.get('late_gd_ratio', math.nan):.3g}, late surrogate "
                  f"{summary.get('late_surrogate_gd_ratio', math.nan):.3g}{flag}")  # fmt: skip
    except (RlflatError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
