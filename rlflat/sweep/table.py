"""``runs.parquet``: one row per finished run, rebuilt from the run directories so it never disagrees with them.

Columns are flat: the run's identity (``run_id``, ``algo``, ``task``, ``task_id``, ``seed``), its outcome
(``status``, ``error``, ``failed_stage``, ``log``, ``path``), ``in_study`` (whether the run is one of the study's
runs as ``study.yaml`` now stands: a run dir left from a grid point since removed is kept, but marked False),
``unsolved`` and ``solved_verdict`` (:func:`rlflat.tasks.spec.solved_verdict`, the one rule: unsolved when even
the upper 95% bound of the nominal return is below the task's solved threshold; the report keeps such runs out of
correlations and lists ``borderline`` ones),
every resolved hyperparameter as ``hp.<name>``,
and every scalar of every ``metrics.json`` block as ``<block>.<key>`` with nested dicts joined by dots
(``train.return_mean``, ``probe.hessian.lambda_max``, ``robustness.auc``). Lists and arrays in metrics are left
out (they live in probe.npz / robustness.parquet); lists among hyperparameters are kept as JSON text.

A run directory with no recorded failure and a requested stage missing (a sweep killed between stages) has no
row: it is unfinished, and the next sweep finishes it.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from rlflat.errors import RlflatError
from rlflat.io import read_json, write_atomic
from rlflat.sweep.config import expand_runs, parse_study_config
from rlflat.sweep.pipeline import FAILURE_FILE, read_metrics, remaining_stages
from rlflat.tasks.spec import solved_verdict

RUNS_FILE = "runs.parquet"
STUDY_FILE = "study.yaml"
ID_COLUMNS = (
    "run_id",
    "algo",
    "task",
    "task_id",
    "seed",
    "status",
    "in_study",
    "unsolved",
    "solved_verdict",
    "error",
    "failed_stage",
    "log",
    "path",
    "device",
)
BLOCK_ORDER = ("train", "probe", "robustness")
TIMING_MARKERS = ("seconds", "per_second", "wall", "elapsed", "duration")
"""Column-name fragments of timings: the only values that legitimately differ between two executions."""


def timing_columns(table: pd.DataFrame) -> list[str]:
    """Columns holding wall-clock measurements (excluded when comparing tables from different backends)."""
    return [c for c in table.columns if any(marker in c for marker in TIMING_MARKERS)]


def study_stages(study_dir: Path) -> tuple[str, ...]:
    """The stages the study requested, from its ``study.yaml`` (just ``train`` without one)."""
    path = study_dir / STUDY_FILE
    if not path.exists():
        return ("train",)
    return parse_study_config(path.read_text(), source=str(path)).config.stages


def study_run_ids(study_dir: Path) -> set[str] | None:
    """The run ids of the study as its ``study.yaml`` now expands (None without one)."""
    path = study_dir / STUDY_FILE
    if not path.exists():
        return None
    return {spec.run_id for spec in expand_runs(parse_study_config(path.read_text(), source=str(path)))}


def run_directories(study_dir: Path) -> Iterator[Path]:
    """Published run directories (hidden names are staging areas; ``logs`` holds logs)."""
    for path in sorted(study_dir.iterdir()):
        if path.is_dir() and not path.name.startswith(".") and (path / "config.json").exists():
            yield path


def skip_reason(run_dir: Path, stages: Sequence[str]) -> str | None:
    """Why :func:`run_row` has no row for ``run_dir`` (missing, corrupt, unfinished), or None when it has one.

    The table never drops a run without saying so: the sweep's ``--collect`` and the report print these.
    """
    for name in ("config.json", "metrics.json"):
        path = run_dir / name
        if not path.exists():
            if name == "metrics.json" and (run_dir / FAILURE_FILE).exists():
                continue
            return f"{name} missing"
        try:
            data = read_json(path)
        except (OSError, ValueError):
            return f"{name} corrupt (not valid JSON)"
        if not isinstance(data, dict):
            return f"{name} corrupt (not a JSON object)"
    if run_row(run_dir, stages) is None:
        return f"unfinished (to do: {', '.join(remaining_stages(run_dir, stages))})"
    return None


def skipped_runs(study_dir: Path, stages: Sequence[str] | None = None) -> list[tuple[str, str]]:
    """``(folder, reason)`` of every folder in ``study_dir`` that looks like a run but has no table row."""
    stages = tuple(stages) if stages is not None else study_stages(study_dir)
    skipped = []
    for path in sorted(study_dir.iterdir()):
        if not path.is_dir() or path.name.startswith(".") or path.name == "logs" or path.name == "report":
            continue
        reason = skip_reason(path, stages)
        if reason is not None:
            skipped.append((path.name, reason))
    return skipped


def run_row(run_dir: Path, stages: Sequence[str], study_dir: Path | None = None) -> dict[str, Any] | None:
    """The table row of one run directory, or None while it is unfinished (:func:`skip_reason` says why)."""
    try:
        config = read_json(run_dir / "config.json")
    except (OSError, ValueError):
        return None
    if not isinstance(config, dict):
        return None
    metrics = read_metrics(run_dir) or {}
    failure: dict[str, Any] | None = None
    if (run_dir / FAILURE_FILE).exists():
        try:
            failure = read_json(run_dir / FAILURE_FILE)
        except (OSError, ValueError):
            failure = {"stage": None, "error": "unreadable failure.json"}
    if failure is not None:
        status, error, stage = "failed", failure.get("error"), failure.get("stage")
    elif metrics.get("status") == "failed":
        status, error, stage = "failed", metrics.get("error"), "train"
    elif not remaining_stages(run_dir, stages):
        status, error, stage = "ok", None, None
    else:
        return None
    root = study_dir if study_dir is not None else run_dir.parent
    log = root / "logs" / f"{run_dir.name}.log"
    row: dict[str, Any] = {
        "run_id": config.get("run_id") or _run_id(config),
        "algo": config.get("algo"),
        "task": config.get("task"),
        "task_id": config.get("task_id"),
        "seed": config.get("seed"),
        "status": status,
        "error": error,
        "failed_stage": stage,
        "log": str(log.relative_to(root)) if log.exists() else None,
        "path": run_dir.name,
        "device": config.get("device"),
    }
    # every value the run trained with: SB3/policy defaults (effective_hyperparameters) under the resolved ones
    resolved = {**(config.get("effective_hyperparameters") or {}), **config.get("hyperparameters", {})}
    for key, value in _flatten(resolved, keep_lists=True):
        row[f"hp.{key}"] = value
    for package, version in (config.get("versions") or {}).items():
        row[f"version.{package}"] = version
    for block, content in metrics.items():
        if isinstance(content, Mapping):
            for key, value in _flatten(content, keep_lists=False):
                row[f"{block}.{key}"] = value
    row["solved_verdict"] = _verdict(metrics)
    row["unsolved"] = None if row["solved_verdict"] is None else row["solved_verdict"] == "unsolved"
    return row


def _verdict(metrics: Mapping[str, Any]) -> str | None:
    """:func:`~rlflat.tasks.spec.solved_verdict` of the nominal return: the evaluator's (its nominal row has the
    most episodes), recomputed from its mean, SE and threshold so that metrics written under an older rule get
    this one; else training's final evaluation; None when neither was recorded."""
    robustness, train = metrics.get("robustness"), metrics.get("train")
    if isinstance(robustness, Mapping) and isinstance(robustness.get("solved_threshold"), int | float):
        mean, se = robustness.get("nominal_return"), robustness.get("nominal_return_se")
        if isinstance(mean, int | float):
            se_value = float(se) if isinstance(se, int | float) else None
            return solved_verdict(float(mean), se_value, float(robustness["solved_threshold"]))
    if isinstance(robustness, Mapping) and isinstance(robustness.get("unsolved"), bool):
        return "unsolved" if robustness["unsolved"] else "solved"
    if isinstance(train, Mapping) and isinstance(train.get("solved"), bool):
        return "solved" if train["solved"] else "unsolved"
    return None


def _run_id(config: Mapping[str, Any]) -> str:
    from rlflat.train import run_id

    return run_id(config)


def _flatten(data: Mapping[str, Any], keep_lists: bool, prefix: str = "") -> Iterator[tuple[str, Any]]:
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            yield from _flatten(value, keep_lists, f"{name}.")
        elif isinstance(value, list | tuple):
            if keep_lists:
                yield name, json.dumps(value)
        elif value is None or isinstance(value, str | bool | int | float):
            yield name, value


def build_table(
    study_dir: str | Path, stages: Sequence[str] | None = None, study_ids: Collection[str] | None = None
) -> pd.DataFrame:
    """The runs table of ``study_dir`` (not written), sorted by task, algo, seed, run id.

    ``in_study`` is True for the run ids in ``study_ids`` (default: the expansion of ``study.yaml``; every run
    when there is none).
    """
    study_dir = Path(study_dir)
    if not study_dir.is_dir():
        raise RlflatError(f"study directory {study_dir} does not exist")
    stages = tuple(stages) if stages is not None else study_stages(study_dir)
    ids = set(study_ids) if study_ids is not None else study_run_ids(study_dir)
    rows = [row for path in run_directories(study_dir) if (row := run_row(path, stages, study_dir)) is not None]
    for row in rows:
        row["in_study"] = ids is None or row["run_id"] in ids
    table = pd.DataFrame(rows)
    if table.empty:
        return pd.DataFrame(columns=list(ID_COLUMNS))
    table = table[_column_order(list(table.columns))]
    table = _harmonize(table)
    return table.sort_values(["task", "algo", "seed", "run_id"], kind="stable").reset_index(drop=True)


def _column_order(columns: Sequence[str]) -> list[str]:
    present = set(columns)
    ordered = [c for c in ID_COLUMNS if c in present]
    ordered += sorted(c for c in present if c.startswith("hp."))
    for block in BLOCK_ORDER:
        ordered += sorted(c for c in present if c.startswith(f"{block}."))
    rest = sorted(present - set(ordered))
    return ordered + rest


def _harmonize(table: pd.DataFrame) -> pd.DataFrame:
    """One type per column, as Parquet needs: ints and floats mix as floats, anything else mixed as text."""
    for column in table.columns:
        values = [v for v in table[column] if v is not None and not (isinstance(v, float) and pd.isna(v))]
        kinds = {type(v) for v in values}
        if len(kinds) <= 1 or kinds <= {int, float}:
            continue
        table[column] = [None if v is None or (isinstance(v, float) and pd.isna(v)) else str(v) for v in table[column]]
    return table


def collect(
    study_dir: str | Path, stages: Sequence[str] | None = None, study_ids: Collection[str] | None = None
) -> pd.DataFrame:
    """Rebuild ``<study_dir>/runs.parquet`` from the run directories (atomically) and return the table."""
    study_dir = Path(study_dir)
    table = build_table(study_dir, stages, study_ids)
    write_atomic(study_dir / RUNS_FILE, lambda path: table.to_parquet(path, index=False))
    return table


def read_table(study_dir: str | Path) -> pd.DataFrame:
    """``runs.parquet`` of a study, as written by :func:`collect`."""
    path = Path(study_dir) / RUNS_FILE
    if not path.exists():
        raise RlflatError(f"{path} does not exist; run the sweep or 'python -m rlflat.sweep --collect {study_dir}'")
    return pd.read_parquet(path)
