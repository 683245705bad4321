"""Load a finished study for the report: the runs table plus each run's curves, robustness rows and probe arrays.

A study directory (``results/<study>/``) holds ``runs.parquet`` (one row per run, flat dotted columns) and one
directory per run. Everything here is read-only and tolerant: the sweep, probe and evaluator own their formats,
so columns are discovered by prefix (``probe.`` measures, ``robustness.`` metrics) and any per-run file may be
missing; a figure whose data is absent is skipped by the report, never an error. Only a study that cannot be
reported at all (no directory, no runs table, fewer than two successful runs) raises :class:`RlflatError`.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import numpy as np
import numpy.typing as npt
import pandas as pd

from rlflat.errors import RlflatError

T = TypeVar("T")
RUNS_FILE = "runs.parquet"
TRAIN_FILE = "train.csv"
ROBUSTNESS_FILE = "robustness.parquet"
PROBE_NPZ = "probe.npz"
STATUS_OK = "ok"
COLLAPSE_THRESHOLD = 0.5
"""Normalised return below which a run counts as collapsed (drawn as the dashed line of the curves)."""

MEASURE_PREFIX = "probe."
METRIC_PREFIXES = ("robustness.",)
# Bookkeeping numbers under probe./robustness. that are not sharpness measures or robustness metrics.
_NOT_A_MEASURE = re.compile(
    r"(stderr|std_err|n_params|n_hvp|hvps|seconds|n_probes|n_samples|episodes|\.seed$|config\.|loss_value|^probe\.loss$)"
)
_NOT_A_METRIC = re.compile(
    r"(episodes|n_settings|seconds|\.seed$|config\.|ci_low|ci_high|normalization|worst_setting|_std$|within_range"
    r"|deterministic|nominal_return|collapse_frac$|collapse_(low|high)$)"
)
# Columns that identify a run rather than configure it: never factors of the granulated Kendall coefficient.
_ID_COLUMNS = {"seed", "run_id", "status", "study", "task", "run_dir"}
_RUN_DIR_COLUMNS = ("run_dir", "path", "dir")

# Columns of robustness.parquet that are bookkeeping, not a perturbed quantity.
ROBUSTNESS_STAT_COLUMNS = frozenset(
    {
        "family",
        "factor",
        "episodes",
        "return_mean",
        "return_std",
        "return_ci_low",
        "return_ci_high",
        "normalized_return",
        "collapsed",
        "action_noise",
        "obs_noise",
    }
)
NOMINAL_FAMILY, RANDOM_FAMILY = "nominal", "random"
NOISE_FAMILIES = ("action_noise", "obs_noise")


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


# ----------------------------------------------------------------------------- column discovery


def _numeric_with_data(runs: pd.DataFrame, columns: Iterable[str], min_finite: int) -> list[str]:
    keep = []
    for column in columns:
        values = pd.to_numeric(runs[column], errors="coerce") if runs[column].dtype != bool else None
        if values is None or (runs[column].dtype == object and values.isna().all()):
            continue
        if int(np.isfinite(values.to_numpy(dtype=np.float64, na_value=np.nan)).sum()) >= min_finite:
            keep.append(column)
    return keep


def measure_columns(runs: pd.DataFrame, min_finite: int = 2) -> list[str]:
    """Sharpness measures: numeric ``probe.*`` columns with data, bookkeeping (stderr, counts) left out."""
    names = [c for c in runs.columns if str(c).startswith(MEASURE_PREFIX) and not _NOT_A_MEASURE.search(str(c))]
    return _numeric_with_data(runs, names, min_finite)


def metric_columns(runs: pd.DataFrame, min_finite: int = 2) -> list[str]:
    """Robustness metrics: numeric ``robustness.*`` columns with data, bookkeeping left out."""
    names = [c for c in runs.columns if str(c).startswith(METRIC_PREFIXES) and not _NOT_A_METRIC.search(str(c))]
    return _numeric_with_data(runs, names, min_finite)


def first_present(columns: Sequence[str], preferred: Sequence[str]) -> str | None:
    """The first of ``preferred`` (exact name, or a dotted prefix of one) found in ``columns``."""
    for want in preferred:
        for column in columns:
            if column == want or column.startswith(want + "."):
                return column
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
    """Every run's ``train.csv`` stacked, with run identity columns; empty when none exist."""
    frames = [f for f in _run_frames(study, TRAIN_FILE) if {"timesteps", "episode_return"} <= set(f.columns)]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def load_robustness(study: Study) -> pd.DataFrame:
    """Every run's ``robustness.parquet`` stacked, with run identity columns; empty when none exist."""
    frames = [f for f in _run_frames(study, ROBUSTNESS_FILE) if {"family", "normalized_return"} <= set(f.columns)]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def perturbed_columns(robust: pd.DataFrame) -> list[str]:
    """The per-parameter columns of a robustness table (absolute values), bookkeeping excluded."""
    identity = {"run_id", "algo", "task", "seed", "study"}
    return [
        str(c)
        for c in robust.columns
        if c not in ROBUSTNESS_STAT_COLUMNS and c not in identity and pd.api.types.is_numeric_dtype(robust[c])
    ]


def nominal_values(task: str) -> dict[str, float]:
    """Nominal dynamics of ``task`` from its spec; empty for a task without a shipped spec."""
    try:
        from rlflat.tasks.spec import load_task

        return dict(load_task(task).nominal)
    except Exception:  # unknown or foreign task: the grid falls back to the nominal row's values
        return {}


def parameter_description(task: str, name: str) -> str:
    """The spec's description of a dynamics parameter (e.g. ``half the pole length (m)``), or ``''``."""
    try:
        from rlflat.tasks.spec import load_task

        return load_task(task).parameters[name].description or ""
    except Exception:
        return ""


def load_probe_arrays(path: Path) -> dict[str, npt.NDArray[np.float64]]:
    """Float arrays of one ``probe.npz`` (empty dict when missing or unreadable)."""
    if not path.exists():
        return {}
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: np.asarray(data[k], dtype=np.float64) for k in data.files if data[k].dtype.kind in "fiub"}
    except Exception:
        return {}


def probe_arrays(study: Study) -> dict[str, dict[str, npt.NDArray[np.float64]]]:
    """``run_id`` -> that run's probe arrays, for runs that have any."""
    out = {}
    for run_id in study.runs["run_id"].astype(str):
        directory = study.run_dirs.get(run_id)
        if directory is not None:
            arrays = load_probe_arrays(directory / PROBE_NPZ)
            if arrays:
                out[run_id] = arrays
    return out


def find_array(arrays: dict[str, npt.NDArray[np.float64]], *patterns: str, ndim: int | None = None) -> str | None:
    """First key matching any regex in ``patterns`` (in order), optionally of a given ``ndim``."""
    for pattern in patterns:
        regex = re.compile(pattern)
        for key in sorted(arrays):
            if regex.search(key) and (ndim is None or arrays[key].ndim == ndim):
                return key
    return None


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


# ----------------------------------------------------------------------------- robustness tables -> tidy plots


def _unit(description: str) -> str:
    found = re.findall(r"\(([^()]*)\)\s*$", description)
    return found[-1] if found else ""


def factor_label(task: str, name: str, nominal: float | None) -> str:
    """``length factor (1 = 0.5 m)``: the axis of a one-parameter sweep, with the nominal's unit."""
    unit = _unit(parameter_description(task, name))
    if nominal is None or not math.isfinite(nominal):
        return f"{name} factor (× nominal)"
    return f"{name} factor (1 = {nominal:g}{' ' + unit if unit else ''})"


def _nominals(task: str, robust: pd.DataFrame, columns: Sequence[str]) -> dict[str, float]:
    """Nominal value per parameter: the spec first, else the table's nominal row."""
    spec = nominal_values(task)
    nominal_rows = robust[robust["family"] == NOMINAL_FAMILY]
    out = {}
    for column in columns:
        if column in spec:
            out[column] = float(spec[column])
        elif column in nominal_rows and nominal_rows[column].notna().any():
            out[column] = float(nominal_rows[column].dropna().iloc[0])
    return out


def robustness_curves(robust: pd.DataFrame) -> tuple[pd.DataFrame, dict[tuple[str, str], str]]:
    """Tidy one-axis curves (dynamics sweeps on factor, noise families on level) and their x-axis labels."""
    if robust.empty:
        return pd.DataFrame(), {}
    frames, labels = [], {}
    for (task, family), rows in robust.groupby(["task", "family"], sort=False):
        task, family = str(task), str(family)
        if family in (NOMINAL_FAMILY, RANDOM_FAMILY) or ":" in family:
            continue
        if family in NOISE_FAMILIES:
            x = pd.to_numeric(rows[family], errors="coerce") if family in rows else rows.get("factor")
            log = False
            labels[(task, family)] = "action-noise level" if family == "action_noise" else "observation-noise σ"
        else:
            nominal = _nominals(task, robust, [family]).get(family)
            if "factor" in rows and rows["factor"].notna().all():
                x = pd.to_numeric(rows["factor"], errors="coerce")
            elif family in rows and nominal:
                x = pd.to_numeric(rows[family], errors="coerce") / nominal
            else:
                continue
            log = True
            labels[(task, family)] = factor_label(task, family, nominal)
        if x is None:
            continue
        frames.append(
            pd.DataFrame(
                {
                    "task": task,
                    "panel": family,
                    "x": np.asarray(x, dtype=np.float64),
                    "log": log,
                    "algo": rows["algo"].astype(str).to_numpy(),
                    "run_id": rows["run_id"].astype(str).to_numpy(),
                    "normalized_return": pd.to_numeric(rows["normalized_return"], errors="coerce").to_numpy(),
                }
            )
        )
    curves = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    if not curves.empty:
        curves = curves[np.isfinite(curves["x"]) & np.isfinite(curves["normalized_return"])]
        curves = curves[~curves["log"] | (curves["x"] > 0)]
    return curves.reset_index(drop=True), labels


@dataclass(frozen=True)
class DynamicsGrid:
    """One evaluated 2-D grid (``a:b`` family) of one task, tidy: algo, run_id, fx, fy, normalized_return."""

    task: str
    family: str
    data: pd.DataFrame
    x_label: str
    y_label: str


def robustness_grids(robust: pd.DataFrame) -> list[DynamicsGrid]:
    """Every ``a:b`` family as factors of nominal (absolute values when the nominal is unknown)."""
    if robust.empty:
        return []
    out = []
    for (task, family), rows in robust.groupby(["task", "family"], sort=True):
        task, family = str(task), str(family)
        if ":" not in family:
            continue
        a, b = family.split(":", 1)
        if a not in rows or b not in rows:
            continue
        nominal = _nominals(task, robust, [a, b])
        fx = pd.to_numeric(rows[a], errors="coerce") / nominal.get(a, 1.0)
        fy = pd.to_numeric(rows[b], errors="coerce") / nominal.get(b, 1.0)
        data = pd.DataFrame(
            {
                "algo": rows["algo"].astype(str).to_numpy(),
                "run_id": rows["run_id"].astype(str).to_numpy(),
                "fx": fx.round(6).to_numpy(),
                "fy": fy.round(6).to_numpy(),
                "normalized_return": pd.to_numeric(rows["normalized_return"], errors="coerce").to_numpy(),
            }
        ).dropna()
        x_label = factor_label(task, a, nominal.get(a)) if a in nominal else f"{a} (absolute)"
        y_label = factor_label(task, b, nominal.get(b)) if b in nominal else f"{b} (absolute)"
        out.append(DynamicsGrid(task, family, data, x_label, y_label))
    return out
