"""Load a finished study for the report: the runs table, each run's directory, learning curves and robustness rows.

A study directory (``results/<study>/``) holds ``runs.parquet`` (one row per run, flat dotted columns), its
``study.yaml`` and one directory per run. Everything here is read-only and tolerant: the sweep, probe and
evaluator own their formats, and any per-run file may be missing; a figure whose data is absent is skipped by
the report, never an error. Only a study that cannot be reported at all (no directory, no runs table, fewer
than two successful runs) raises :class:`RlflatError`. Probe arrays live in :mod:`rlflat.report.probe_data`,
robustness tables in :mod:`rlflat.report.robustness_data`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import numpy as np
import pandas as pd

from rlflat.errors import RlflatError

T = TypeVar("T")
RUNS_FILE = "runs.parquet"
LEGACY_COLUMNS: dict[str, str] = {
    "probe.critical_sigma": "probe.return_halving_sigma",
    "probe.critical_sigma_raw": "probe.return_halving_sigma_raw",
}
"""Columns of tables collected before a measure got its honest name (issue 9), read under the new name."""
TRAIN_FILE = "train.csv"
ROBUSTNESS_FILE = "robustness.parquet"
STUDY_FILE = "study.yaml"
STATUS_OK = "ok"

# Columns that identify a run rather than configure it: never factors of the granulated Kendall coefficient.
_ID_COLUMNS = {"seed", "run_id", "status", "study", "task", "run_dir"}
_RUN_DIR_COLUMNS = ("run_dir", "path", "dir")


@dataclass
class Study:
    """One or more study directories merged into one runs table (``study`` column names the source)."""

    dirs: list[Path]
    runs: pd.DataFrame
    """Successful runs only (``status == ok``, or no status column), index reset."""
    failed: pd.DataFrame
    """Runs excluded because their status was not ok (``run_id``, ``algo``, ``task``, ``status``)."""
    run_dirs: dict[str, Path] = field(default_factory=dict)
    """``run_id`` -> its directory, for runs whose directory exists."""

    @property
    def algos(self) -> list[str]:
        return sorted(self.runs["algo"].dropna().astype(str).unique()) if "algo" in self.runs else []

    @property
    def tasks(self) -> list[str]:
        return sorted(self.runs["task"].dropna().astype(str).unique()) if "task" in self.runs else []

    @property
    def name(self) -> str:
        return " + ".join(d.name for d in self.dirs)


def _read_runs_table(directory: Path) -> pd.DataFrame:
    """``runs.parquet`` of one study, with a message that names the problem instead of a traceback."""
    if not directory.exists():
        raise RlflatError(f"study directory {str(directory)!r} does not exist")
    if not directory.is_dir():
        raise RlflatError(f"{str(directory)!r} is not a directory; give a study directory holding {RUNS_FILE}")
    path = directory / RUNS_FILE
    if not path.exists():
        what = "is empty" if not any(directory.iterdir()) else f"has no {RUNS_FILE}"
        raise RlflatError(f"study directory {str(directory)!r} {what}; run the sweep first (it writes {RUNS_FILE})")
    try:
        table = pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises several types for a corrupt or truncated file
        raise RlflatError(f"cannot read {path}: {exc}") from None
    table = table.rename(columns={old: new for old, new in LEGACY_COLUMNS.items() if new not in table.columns})
    for column in ("algo", "task"):
        if column not in table.columns:
            raise RlflatError(f"{path} has no {column!r} column; columns: {', '.join(map(str, table.columns))}")
    return table


def _resolve_run_dir(study_dir: Path, row: pd.Series) -> Path | None:
    """A run's directory: an explicit path column when the sweep wrote one, else ``<study>/<run_id>``."""
    for column in _RUN_DIR_COLUMNS:
        value = row.get(column)
        if isinstance(value, str) and value:
            path = Path(value)
            for candidate in (path, study_dir / path, study_dir / path.name):
                if candidate.is_dir():
                    return candidate
    run_id = row.get("run_id")
    if isinstance(run_id, str) and (study_dir / run_id).is_dir():
        return study_dir / run_id
    return None


def load_study(study_dirs: Sequence[str | Path]) -> Study:
    """Read and merge the runs tables of ``study_dirs``; drop failed runs; require two successful runs.

    Runs keep their own ``run_id``; when two studies share one (same content hash), the later is
    suffixed with its study name so per-run files stay distinct.
    """
    if not study_dirs:
        raise RlflatError("give at least one study directory (e.g. results/cartpole_sam)")
    dirs = [Path(d) for d in study_dirs]
    frames: list[pd.DataFrame] = []
    run_dirs: dict[str, Path] = {}
    for directory in dirs:
        table = _read_runs_table(directory).copy()
        table["study"] = directory.name
        if "run_id" not in table.columns:
            table["run_id"] = [f"{directory.name}-{i}" for i in range(len(table))]
        table["run_id"] = table["run_id"].astype(str)
        taken = set().union(*(set(f["run_id"]) for f in frames)) if frames else set()
        table["run_id"] = [r if r not in taken else f"{r}@{directory.name}" for r in table["run_id"]]
        for _, row in table.iterrows():
            found = _resolve_run_dir(directory, row)
            if found is not None:
                run_dirs[str(row["run_id"])] = found
        frames.append(table)
    runs = pd.concat(frames, ignore_index=True, sort=False) if len(frames) > 1 else frames[0]
    if "status" in runs.columns:
        ok = runs["status"].fillna("").astype(str) == STATUS_OK
    else:
        ok = pd.Series(True, index=runs.index)
    failed_cols = [c for c in ("run_id", "algo", "task", "seed", "status") if c in runs.columns]
    failed = runs.loc[~ok, failed_cols].reset_index(drop=True)
    good = runs.loc[ok].reset_index(drop=True)
    where = ", ".join(map(str, dirs))
    if len(runs) == 0:
        raise RlflatError(f"{where}: {RUNS_FILE} holds no runs; nothing to report")
    if len(good) < 2:
        raise RlflatError(
            f"{where}: {len(good)} successful run(s) of {len(runs)} ({len(failed)} failed); "
            "a report compares runs and needs at least 2"
        )
    return Study(dirs=dirs, runs=good, failed=failed, run_dirs=run_dirs)


PROBE_NPZ = "probe.npz"
_RUN_FILES = ((TRAIN_FILE, "train."), (ROBUSTNESS_FILE, "robustness."), (PROBE_NPZ, "probe."))
"""Per-run files the report reads, and the runs-table column prefix that says the run should have one."""


def skipped_runs(study: Study) -> list[tuple[str, str]]:
    """``(run, reason)`` for everything the report leaves out: run folders without a table row (missing or
    corrupt config/metrics, unfinished) and, for each successful run, a missing folder or a per-run file
    (train.csv, robustness.parquet, probe.npz) that is missing or unreadable. Figures skip these runs; the
    report names every one (``--strict`` refuses to report at all)."""
    from rlflat.sweep.table import skipped_runs as unlisted

    skipped: list[tuple[str, str]] = []
    in_table = {path.resolve() for path in study.run_dirs.values()}
    for directory in study.dirs:
        try:
            found = unlisted(directory)
            skipped += [(f"{directory.name}/{n}", why) for n, why in found if (directory / n).resolve() not in in_table]
        except RlflatError as exc:  # a corrupt study.yaml: its stages are unknown
            skipped.append((directory.name, f"run folders not checked: {exc}"))
    for row in study.runs.to_dict("records"):
        run_id = str(row["run_id"])
        shown = f"{row.get('study', '')}/{row.get('path') or run_id}"
        run_dir = study.run_dirs.get(run_id)
        if run_dir is None:
            skipped.append((shown, "run folder missing"))
            continue
        for name, prefix in _RUN_FILES:
            expected = any(str(c).startswith(prefix) and _present(v) for c, v in row.items())
            reason = _file_problem(run_dir / name) if expected else None
            if reason is not None:
                skipped.append((shown, f"{name} {reason}"))
    return skipped


def _present(value: object) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value))


def _file_problem(path: Path) -> str | None:
    """``missing`` / ``corrupt (...)`` for a per-run file, None when it reads (cheaply: metadata only)."""
    if not path.exists():
        return "missing"
    try:
        if path.suffix == ".csv":
            columns = set(pd.read_csv(path, nrows=1).columns)
            if not {"timesteps", "episode_return"} <= columns:
                return "corrupt (no timesteps/episode_return columns)"
        elif path.suffix == ".parquet":
            import pyarrow.parquet as pq

            if not {"family", "normalized_return"} <= set(pq.read_schema(path).names):
                return "corrupt (no family/normalized_return columns)"
        else:
            with np.load(path, allow_pickle=False) as data:
                _ = data.files
    except Exception as exc:  # pyarrow, zipfile and pandas raise many types for a damaged file
        return f"corrupt ({type(exc).__name__})"
    return None


def factor_columns(runs: pd.DataFrame) -> list[str]:
    """The study's varied factors: ``algo`` (when several) and every ``hp.*`` column varied within an algo.

    A hyperparameter that only changes with the algorithm (``hp.update_rule``) or the task
    (``hp.total_timesteps``) is the same factor under another name; granulating over it would
    leave no group in which it varies alone, so only columns varied inside some (task, algo)
    cell count. Seeds are replicates, never a factor.
    """
    factors = ["algo"] if runs["algo"].nunique() > 1 else []
    cells = [c for c in ("task", "algo") if c in runs.columns]
    for column in runs.columns:
        name = str(column)
        if not name.startswith("hp.") or name.split(".", 1)[1] in _ID_COLUMNS:
            continue
        as_text = runs[column].astype(str)  # lists/dicts as text; NaN becomes its own level
        if as_text.groupby([runs[c] for c in cells]).nunique().max() > 1:
            factors.append(name)
    return factors


# ----------------------------------------------------------------------------- per-run files


def _run_frames(
    study: Study, reader: str, columns: Sequence[str] = ("run_id", "algo", "task", "seed")
) -> list[pd.DataFrame]:
    frames = []
    keep = [c for c in columns if c in study.runs.columns]
    for row in study.runs[keep].to_dict("records"):
        directory = study.run_dirs.get(str(row["run_id"]))
        if directory is None:
            continue
        path = directory / reader
        if not path.exists():
            continue
        try:
            frame = pd.read_csv(path) if reader.endswith(".csv") else pd.read_parquet(path)
        except Exception:  # a half-written or foreign file: skip that run, the figure notes how many it used
            continue
        for key, value in row.items():
            frame[key] = value
        frames.append(frame)
    return frames


def load_learning_curves(study: Study) -> pd.DataFrame:
    """Every run's ``train.csv`` episode rows stacked, with run identity columns; empty when none exist.

    A run trained with ``track_sharpness`` also has sharpness rows in ``train.csv`` (no episode return); they
    are left out here (see :func:`load_sharpness_paths`)."""
    frames = [
        f.dropna(subset=["episode_return"])
        for f in _run_frames(study, TRAIN_FILE)
        if {"timesteps", "episode_return"} <= set(f.columns)
    ]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def load_sharpness_paths(study: Study) -> pd.DataFrame:
    """The sharpness rows of every tracked run's ``train.csv`` (``update`` set), with run identity columns and the
    run's ``learning_rate`` setting as ``lr_setting`` (a constant or a schedule's text); empty without any."""
    frames = [
        f.dropna(subset=["update"]) for f in _run_frames(study, TRAIN_FILE) if {"timesteps", "update"} <= set(f.columns)
    ]
    frames = [f for f in frames if not f.empty]
    if not frames:
        return pd.DataFrame()
    paths = pd.concat(frames, ignore_index=True)
    lr = study.runs.get("hp.learning_rate")
    settings = dict(zip(study.runs["run_id"].astype(str), lr.astype(str), strict=True)) if lr is not None else {}
    paths["lr_setting"] = paths["run_id"].astype(str).map(settings).fillna("?")
    return paths


def load_robustness(study: Study) -> pd.DataFrame:
    """Every run's ``robustness.parquet`` stacked, with run identity columns; empty when none exist."""
    frames = [f for f in _run_frames(study, ROBUSTNESS_FILE) if {"family", "normalized_return"} <= set(f.columns)]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def read_json_or_empty(path: Path) -> dict[str, object]:
    """A JSON object from ``path``, or ``{}`` when missing or malformed (reports never fail on one file)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def median_run(runs: pd.DataFrame, metric: str | None, candidates: Iterable[str]) -> dict[str, str]:
    """Per algo, the run (among ``candidates``) whose ``metric`` is the median: a representative, not the best."""
    allowed = set(candidates)
    out = {}
    for algo, group in runs[runs["run_id"].astype(str).isin(allowed)].groupby("algo", sort=True):
        values = pd.to_numeric(group[metric], errors="coerce") if metric and metric in group else None
        if values is None or values.isna().all():
            order = group.sort_values("seed" if "seed" in group else "run_id")
        else:
            order = group.assign(_v=values.fillna(values.median())).sort_values(["_v", "run_id"])
        out[str(algo)] = str(order["run_id"].iloc[(len(order) - 1) // 2])
    return out


def is_finite_number(value: object) -> bool:
    return isinstance(value, int | float | np.number) and math.isfinite(float(value))
