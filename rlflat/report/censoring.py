"""Right-censored robustness and sharpness columns: runs that never collapsed inside the evaluated range.

A collapse log-factor is NaN for a run whose return never fell below the threshold inside the evaluated range,
and a return-halving sigma is NaN for a run that kept half its return up to the largest probed sigma. Those are
the *most* robust (or flattest) runs; dropping them compares only the runs that did collapse and flatters the
less robust algorithm. They are right-censored at the range bound: the true value is at least the bound.

For every statistic the report sets a censored value to the *common* bound of its task (the smallest bound of
any run there) and also censors observed values at or above that bound, so every censored run ties at the top
of the ranking ("administrative censoring" at a common point). Rank correlations and P(improvement) then count
ties correctly, and the median is the Kaplan-Meier median. Bounds come from the evaluator's keys
(``collapsed_within_range``, ``max_log_factor``, ``collapse_log_factor_min`` + ``censored``) when the runs
table has them, else from the run's ``robustness.parquet`` factor range and ``probe.json`` sigma grid.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from rlflat.report.probe_data import sigma_bound

PARAM_COLLAPSE = re.compile(r"^robustness\.parameters\.(?P<p>[^.]+)\.collapse_log_factor$")
MIN_COLLAPSE = "robustness.collapse_log_factor_min"
CRITICAL_SIGMA = "probe.return_halving_sigma"


@dataclass(frozen=True)
class Censored:
    """Per-run values (censored ones at the common bound of their task) and never-collapsed flags."""

    values: pd.Series
    censored: pd.Series


def _bool(series: pd.Series) -> pd.Series:
    return series.map(lambda v: bool(v) if isinstance(v, bool | np.bool_) else None)


def _parameter(runs: pd.DataFrame, name: str, bounds: pd.DataFrame) -> tuple[pd.Series, pd.Series] | None:
    """(value or bound, censored) of one parameter's collapse log-factor, per run; None without any bound."""
    prefix = f"robustness.parameters.{name}."
    value = pd.to_numeric(runs[prefix + "collapse_log_factor"], errors="coerce")
    if prefix + "max_log_factor" in runs:
        bound = pd.to_numeric(runs[prefix + "max_log_factor"], errors="coerce")
    else:
        lookup = bounds[bounds["family"] == name].set_index("run_id")["max_log_factor"]
        bound = runs["run_id"].astype(str).map(lookup).astype(float)
    if prefix + "collapsed_within_range" in runs:
        within = _bool(runs[prefix + "collapsed_within_range"])
        censored = (within == False) | (within.isna() & value.isna())  # noqa: E712 (object dtype)
    else:
        censored = value.isna()
    censored = censored & bound.notna()
    if not censored.any() and value.isna().all():
        return None
    return value.where(~censored, bound), censored.astype(bool)


def _minimum(
    runs: pd.DataFrame, per_param: Mapping[str, tuple[pd.Series, pd.Series]]
) -> tuple[pd.Series, pd.Series] | None:
    """The evaluator's censored minimum over parameters, or the same rule applied to the per-parameter columns."""
    if MIN_COLLAPSE in runs and "robustness.censored" in runs:
        value = pd.to_numeric(runs[MIN_COLLAPSE], errors="coerce")
        return value, (_bool(runs["robustness.censored"]) == True).astype(bool)  # noqa: E712
    if not per_param:
        return None
    values = pd.concat({p: v for p, (v, _) in per_param.items()}, axis=1)
    flags = pd.concat({p: c for p, (_, c) in per_param.items()}, axis=1)
    minimum = values.min(axis=1, skipna=True)
    observed_at_min = ((values.eq(minimum, axis=0)) & ~flags).any(axis=1)
    return minimum, (~observed_at_min & minimum.notna()).astype(bool)


def _return_halving_sigma(
    runs: pd.DataFrame, probes: Mapping[str, Mapping[str, Any]]
) -> tuple[pd.Series, pd.Series] | None:
    if CRITICAL_SIGMA not in runs:
        return None
    value = pd.to_numeric(runs[CRITICAL_SIGMA], errors="coerce")
    bound = runs["run_id"].astype(str).map(lambda r: sigma_bound(probes.get(r, {}))).astype(float)
    censored = value.isna() & bound.notna()
    if not censored.any():
        return None
    return value.where(~censored, bound), censored.astype(bool)


def _common_bound(value: pd.Series, censored: pd.Series, tasks: pd.Series) -> Censored:
    """Censor every task at its smallest bound, so all censored runs of a task tie at one value."""
    out_v, out_c = value.copy(), censored.copy()
    for _, idx in tasks.groupby(tasks, sort=False).groups.items():
        if not censored.loc[idx].any():
            continue
        common = float(value.loc[idx][censored.loc[idx]].min())
        above = censored.loc[idx] | (value.loc[idx] >= common)
        out_c.loc[idx] = above
        out_v.loc[idx] = value.loc[idx].where(~above, common)
    return Censored(out_v.astype(float), out_c.astype(bool))


def censor_runs(
    runs: pd.DataFrame, bounds: pd.DataFrame, probes: Mapping[str, Mapping[str, Any]]
) -> tuple[pd.DataFrame, dict[str, pd.Series]]:
    """``runs`` with censored columns filled at their task's common bound (and ``MIN_COLLAPSE`` derived when
    absent), plus column -> never-collapsed flags. ``bounds`` is :func:`robustness_data.log_factor_bounds`."""
    out = runs.copy()
    flags: dict[str, pd.Series] = {}
    per_param = {}
    for column in runs.columns:
        match = PARAM_COLLAPSE.match(str(column))
        if match and (found := _parameter(runs, match["p"], bounds)) is not None:
            per_param[match["p"]] = found
    found_all = {f"robustness.parameters.{p}.collapse_log_factor": v for p, v in per_param.items()}
    if (minimum := _minimum(runs, per_param)) is not None:
        found_all[MIN_COLLAPSE] = minimum
    if (sigma := _return_halving_sigma(runs, probes)) is not None:
        found_all[CRITICAL_SIGMA] = sigma
    tasks = runs["task"].astype(str)
    for column, (value, censored) in found_all.items():
        result = _common_bound(value, censored, tasks)
        out[column] = result.values
        flags[column] = result.censored
    return out, flags


def never_collapsed(runs: pd.DataFrame, flags: pd.Series, algo_col: str = "algo") -> pd.DataFrame:
    """Per (task, algorithm): runs, how many never collapsed, and that fraction."""
    frame = pd.DataFrame({"task": runs["task"], "algo": runs[algo_col], "censored": flags.astype(bool)})
    table = frame.groupby(["task", "algo"], sort=True)["censored"].agg(["size", "sum"]).reset_index()
    table.columns = ["task", "algo", "runs", "never collapsed"]
    table["fraction never collapsed"] = table["never collapsed"] / table["runs"]
    return table
