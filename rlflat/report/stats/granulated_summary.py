"""Granulated Kendall with uncertainty, per task, pooled over tasks, with a heterogeneity statistic.

:func:`rlflat.report.stats.granulated.granulated_kendall` (Jiang et al. 2020) gives psi_i per factor and Psi. Here:

* a CI per task from a seeded bootstrap over seed replicates *within* each configuration (a configuration's mean
  is an estimate; the configurations themselves are the design, not a sample), percentile interval;
* a pooled estimate with tasks as strata: fixed-effect inverse-variance pooling (Hedges & Olkin 1985) of the
  per-task psi with weights 1 / se^2, on psi's own scale: psi is a mean of Kendall taus over two or three
  configurations and often reaches +-1, where Fisher's z and its delta-method variance se^2 / (1 - psi^2)^2 blow
  up; a bootstrap SE below ``SE_FLOOR`` (every resample gave the same psi) is floored there so the weight stays
  finite;
* heterogeneity across tasks: Cochran's Q = sum w_t (psi_t - psi_pooled)^2 on k - 1 degrees of freedom, its
  chi^2 p-value, and I^2 = max(0, (Q - (k - 1)) / Q) (Higgins & Thompson 2002): the share of the spread across
  tasks beyond what the per-task uncertainty explains.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pandas as pd
from scipy import stats as sps

from rlflat.report.stats._common import POOLED, SeedLike, check_columns, check_confidence, check_count, rng_from
from rlflat.report.stats.correlation import ROW_STATS
from rlflat.report.stats.granulated import PSI_OVERALL, granulated_kendall

__all__ = [
    "SE_FLOOR",
    "SUMMARY_COLUMNS",
    "PooledEstimate",
    "fixed_effect_pool",
    "granulated_bootstrap",
    "granulated_summary",
]

SE_FLOOR = 0.01
"""Smallest SE a task gets in the pooling (a resample distribution without spread would get infinite weight)."""


@dataclass(frozen=True)
class PooledEstimate:
    estimate: float
    ci_low: float
    ci_high: float
    q: float
    q_p: float
    i2: float
    k: int


def fixed_effect_pool(estimates: npt.ArrayLike, ses: npt.ArrayLike, confidence: float = 0.95) -> PooledEstimate:
    """Inverse-variance pooling of per-task estimates (SEs floored at ``SE_FLOOR``), with Cochran's Q and I^2.

    Non-finite estimates or SEs are left out; none usable gives NaNs, one gives the estimate with Q = 0 and no
    heterogeneity p-value. The interval is clipped to [-1, 1] (psi's range).
    """
    check_confidence(confidence)
    r = np.asarray(estimates, dtype=np.float64)
    se = np.asarray(ses, dtype=np.float64)
    ok = np.isfinite(r) & np.isfinite(se)
    if not ok.any():
        return PooledEstimate(math.nan, math.nan, math.nan, math.nan, math.nan, math.nan, 0)
    w = 1.0 / np.maximum(se[ok], SE_FLOOR) ** 2
    est = float(np.sum(w * r[ok]) / np.sum(w))
    half = float(sps.norm.ppf(0.5 + confidence / 2.0)) / math.sqrt(float(np.sum(w)))
    k = int(ok.sum())
    q = float(np.sum(w * (r[ok] - est) ** 2))
    q_p = float(sps.chi2.sf(q, k - 1)) if k > 1 else math.nan
    i2 = max(0.0, (q - (k - 1)) / q) if k > 1 and q > 0 else 0.0
    return PooledEstimate(est, max(-1.0, est - half), min(1.0, est + half), q, q_p, i2, k)


def granulated_bootstrap(
    runs: pd.DataFrame,
    measure: str,
    metric: str,
    factors: Sequence[str],
    *,
    seed: SeedLike,
    n_boot: int = 500,
    confidence: float = 0.95,
) -> pd.DataFrame:
    """psi_i per factor and Psi (``factor`` = ``PSI_OVERALL``) with bootstrap SE and percentile CI.

    The point estimate is :func:`granulated_kendall`'s; each resample redraws the runs of every configuration
    with replacement (seed replicates), recomputes the configuration means and psi. Columns: factor, psi, se,
    ci_low, ci_high, n_configs, reason.
    """
    check_count("n_boot", n_boot)
    check_confidence(confidence)
    factors = list(factors)
    check_columns(runs, [*factors, measure, metric])
    point = granulated_kendall(runs, measure, metric, factors)
    data = runs[[*factors, measure, metric]].copy()
    data[measure] = pd.to_numeric(data[measure], errors="coerce")
    data[metric] = pd.to_numeric(data[metric], errors="coerce")
    data = data.dropna(subset=[measure, metric])
    keys = data[factors].astype(str).agg("\x1f".join, axis=1)
    configs = sorted(keys.unique())
    members = [np.flatnonzero((keys == c).to_numpy()) for c in configs]
    levels = pd.DataFrame([c.split("\x1f") for c in configs], columns=factors)
    groups = {
        f: [g.index.to_numpy() for _, g in levels.groupby([o for o in factors if o != f])] if len(factors) > 1 else
        [levels.index.to_numpy()]
        for f in factors
    }  # fmt: skip
    x, y = data[measure].to_numpy(), data[metric].to_numpy()
    rng = rng_from(seed)
    mx, my = np.empty((n_boot, len(configs))), np.empty((n_boot, len(configs)))
    for c, idx in enumerate(members):  # every configuration's seed replicates redrawn, n_boot times at once
        picks = idx[rng.integers(0, idx.size, (n_boot, idx.size))]
        mx[:, c], my[:, c] = x[picks].mean(axis=1), y[picks].mean(axis=1)
    draws = np.full((n_boot, len(factors) + 1), np.nan)
    kendall = ROW_STATS["kendall"]  # tau-b per row, NaN for a constant side
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows: psi undefined in that resample
        for j, f in enumerate(factors):
            taus = [kendall(mx[:, g], my[:, g]) for g in groups[f] if g.size >= 2]
            if taus:
                draws[:, j] = np.nanmean(np.column_stack(taus), axis=1)
        draws[:, -1] = np.nanmean(draws[:, :-1], axis=1)
    alpha = (1.0 - confidence) / 2.0
    rows = []
    for j, name in enumerate([*factors, PSI_OVERALL]):
        est = point.overall if name == PSI_OVERALL else point.psi[name]
        col = draws[:, j][np.isfinite(draws[:, j])]
        ok = math.isfinite(est) and col.size > 1
        rows.append(
            {
                "factor": name,
                "psi": est,
                "se": float(col.std(ddof=1)) if ok else math.nan,
                "ci_low": float(np.quantile(col, alpha)) if ok else math.nan,
                "ci_high": float(np.quantile(col, 1.0 - alpha)) if ok else math.nan,
                "n_configs": point.n_configs,
                "reason": "; ".join(point.notes),
            }
        )
    return pd.DataFrame(rows)


SUMMARY_COLUMNS = ["task", "measure", "metric", "factor", "psi", "se", "ci_low", "ci_high", "q", "q_p", "i2", "k"]


def granulated_summary(
    runs: pd.DataFrame,
    measures: Sequence[str],
    metric: str,
    factors: Sequence[str],
    *,
    seed: SeedLike,
    n_boot: int = 500,
    task_col: str = "task",
    confidence: float = 0.95,
) -> pd.DataFrame:
    """Per task and measure: psi per factor and Psi with CIs; plus ``task == POOLED`` rows pooled over tasks
    (fixed effect on Fisher's z) with Cochran's Q, its p-value and I^2. Columns: ``SUMMARY_COLUMNS``."""
    check_columns(runs, [task_col])
    rng = rng_from(seed)
    tasks = sorted(runs[task_col].dropna().astype(str).unique())
    rows: list[dict[str, object]] = []
    for measure in measures:
        per_task = []
        for task in tasks:
            table = granulated_bootstrap(
                runs[runs[task_col].astype(str) == task], measure, metric, factors,
                seed=rng, n_boot=n_boot, confidence=confidence,
            )  # fmt: skip
            table.insert(0, "task", task)
            per_task.append(table)
            for r in table.to_dict("records"):
                rows.append({**{str(k): v for k, v in r.items()}, "measure": measure, "metric": metric, "q": math.nan, "q_p": math.nan,
                             "i2": math.nan, "k": 1})  # fmt: skip
        both = pd.concat(per_task, ignore_index=True)
        for factor, part in both.groupby("factor", sort=False):
            pooled = fixed_effect_pool(part["psi"], part["se"], confidence)
            rows.append({"task": POOLED, "measure": measure, "metric": metric, "factor": factor,
                         "psi": pooled.estimate, "se": math.nan, "ci_low": pooled.ci_low, "ci_high": pooled.ci_high,
                         "q": pooled.q, "q_p": pooled.q_p, "i2": pooled.i2, "k": pooled.k})  # fmt: skip
    return pd.DataFrame(rows, columns=SUMMARY_COLUMNS)
