"""Per-run robustness tables (``robustness.parquet``) as tidy data: one-axis curves, 2-D grids, range bounds."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

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


def log_factor_bounds(robust: pd.DataFrame) -> pd.DataFrame:
    """Per (run_id, parameter): the largest |ln factor| evaluated, as the evaluator's ``max_log_factor``.

    The censoring bound of a collapse log-factor for runs whose runs table predates that key.
    """
    if robust.empty or "factor" not in robust:
        return pd.DataFrame(columns=["run_id", "family", "max_log_factor"])
    rows = robust[pd.to_numeric(robust["factor"], errors="coerce") > 0]
    rows = rows[~rows["family"].isin([NOMINAL_FAMILY, RANDOM_FAMILY, *NOISE_FAMILIES])]
    logs = np.abs(np.log(pd.to_numeric(rows["factor"], errors="coerce").to_numpy(dtype=np.float64)))
    frame = pd.DataFrame(
        {
            "run_id": rows["run_id"].astype(str).to_numpy(),
            "family": rows["family"].astype(str).to_numpy(),
            "max_log_factor": logs,
        }
    )
    return frame.groupby(["run_id", "family"], as_index=False)["max_log_factor"].max()
