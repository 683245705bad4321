"""``python -m rlflat.evaluate.rescore STUDY_OR_RUN...``: recompute robustness scores from saved episode returns.

A scoring change (task-level normalisation, the unsolved flag, collapse brackets) needs no new rollouts: each
``robustness.parquet`` keeps every row's per-episode ``returns``. This rewrites the table's ``normalized_return``
and ``collapsed`` columns and the ``robustness`` block of ``metrics.json`` under the chosen normalisation, for a
run directory or every run directory of a study, and leaves everything else as it was. What it cannot add is
what the rollouts never measured: finer grids, declared severities that were not evaluated, the nominal row's
extra episodes or the inert/saturated check (those need ``python -m rlflat.evaluate`` with the model).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from rlflat.errors import RlflatError
from rlflat.evaluate.api import METRICS_FILE, TABLE_FILE, resolve_task
from rlflat.evaluate.metrics import _RESULT_COLUMNS, NORMALIZATIONS, normalization, robustness_block
from rlflat.io import read_json_object, update_dir, write_atomic, write_json

__all__ = ["rescore_run", "reverdict_run"]


def rescore_run(run_dir: str | Path, mode: str = "task", write: bool = True) -> dict[str, Any]:
    """Re-normalise one run's saved robustness table; returns the new ``robustness`` block."""
    run_dir = Path(run_dir)
    table_path, metrics_path = run_dir / TABLE_FILE, run_dir / METRICS_FILE
    if not table_path.exists():
        raise RlflatError(f"{run_dir}: no {TABLE_FILE} to rescore")
    task = resolve_task(run_dir)
    old = read_json_object(metrics_path).get("robustness") or {}
    collapse_frac = float(old.get("collapse_frac", 0.5))
    table = pd.read_parquet(table_path)
    nominal_return = float(table.loc[table["family"] == "nominal", "return_mean"].iloc[0])
    scale = normalization(task, nominal_return, mode)
    table["normalized_return"] = scale.apply(table["return_mean"].to_numpy(dtype=np.float64))
    table["collapsed"] = np.nan_to_num(table["normalized_return"].to_numpy(), nan=np.inf) < collapse_frac
    table.attrs.update(
        task=task.alias,
        episodes=int(table["episodes"].min()),
        seed=old.get("seed"),
        deterministic=old.get("deterministic"),
        return_floor=scale.zero,
        normalization=scale.block(),
        nominal_return=nominal_return,
        collapse_frac=collapse_frac,
        quantity_columns=[c for c in table.columns if c not in _RESULT_COLUMNS],
        severities=[],
    )
    block = robustness_block(table, task, collapse_frac)
    block.update({k: old[k] for k in ("table", "policy") if k in old})
    block["rescored"] = f"python -m rlflat.evaluate.rescore --normalization {mode} (from the saved episode returns)"
    if write:  # both files as one unit (rlflat.io.update_dir)

        def build(folder: Path) -> None:
            write_atomic(folder / TABLE_FILE, lambda tmp: table.to_parquet(tmp, index=False))
            metrics = read_json_object(folder / METRICS_FILE)
            metrics["robustness"] = block
            write_json(folder / METRICS_FILE, metrics)

        update_dir(run_dir, build)
    return block


def reverdict_run(run_dir: str | Path) -> dict[str, Any]:
    """Rewrite only the ``unsolved`` / ``solved_verdict`` keys of a run's robustness block by the current rule
    (:func:`rlflat.tasks.spec.solved_verdict`), from its saved nominal mean and SE; every other key, and the table,
    stay as they were (a full rescore would also re-derive the declared severities, which it cannot)."""
    run_dir = Path(run_dir)
    block = dict(read_json_object(run_dir / METRICS_FILE).get("robustness") or {})
    if "nominal_return" not in block or "solved_threshold" not in block:
        raise RlflatError(f"{run_dir}: no robustness block with a nominal return and threshold to re-verdict")
    task = resolve_task(run_dir)
    verdict = task.verdict(float(block["nominal_return"]), block.get("nominal_return_se"))
    block.update(solved_verdict=verdict, unsolved=verdict == "unsolved")

    def build(folder: Path) -> None:
        metrics = read_json_object(folder / METRICS_FILE)
        metrics["robustness"] = {**metrics["robustness"], "solved_verdict": verdict, "unsolved": verdict == "unsolved"}
        write_json(folder / METRICS_FILE, metrics)

    update_dir(run_dir, build)
    return block


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rlflat.evaluate.rescore", description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="+", help="run directories or study directories (every run dir inside)")
    parser.add_argument("--normalization", choices=NORMALIZATIONS, default="task")
    parser.add_argument("--verdicts-only", action="store_true",
                        help="rewrite only unsolved/solved_verdict by the current rule (nothing else changes)")  # fmt: skip
    args = parser.parse_args(argv)
    try:
        runs: list[Path] = []
        for path in map(Path, args.paths):
            if (path / TABLE_FILE).exists():
                runs.append(path)
            elif path.is_dir():
                runs += sorted(p.parent for p in path.glob(f"*/{TABLE_FILE}"))
            else:
                raise RlflatError(f"{path} is neither a run directory with {TABLE_FILE} nor a study directory")
        if not runs:
            raise RlflatError(f"no {TABLE_FILE} under {', '.join(args.paths)}")
        for run in runs:
            block = reverdict_run(run) if args.verdicts_only else rescore_run(run, args.normalization)
            flag = " UNSOLVED" if block["unsolved"] else ""
            print(f"{run.name}: nominal {block['nominal_return']:.1f}{flag}, auc_mean {block['auc_mean']:.3f}")
    except RlflatError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
