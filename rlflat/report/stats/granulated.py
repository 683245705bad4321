"""Granulated Kendall coefficient (Jiang et al., ICLR 2020, "Fantastic Generalization Measures and Where to
Find Them", Sec. 2.2): does a measure track the metric when one hyperparameter varies at a time?

With ``algo`` as the only factor, psi_algo *is* plain Kendall tau over the 2-4 algorithm configurations: it
says nothing beyond tau and, over four points, nothing at all. Psi is therefore suppressed (NaN with a
``reason``) when fewer than ``MIN_CONFIGS`` configurations or a single factor are available; the report asks
"is it only the algorithm?" with a within-algorithm rank correlation instead
(:func:`rlflat.report.stats.correlation.rank_correlation` with ``strata`` = algorithm).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
import pandas as pd
from scipy import stats as sps

from rlflat.errors import RlflatError
from rlflat.report.stats._common import POOLED, check_columns

PSI_OVERALL = "overall"
"""``factor`` label of the granulated-Kendall row holding Psi, the mean of the per-factor psi_i."""
KENDALL_ALL = "kendall_all"
"""``factor`` label of the granulated-Kendall row holding plain Kendall tau over all configurations."""
MIN_CONFIGS = 4
"""Fewest configurations (seed-averaged factor combinations) for which psi is reported."""


@dataclass(frozen=True)
class GranulatedKendall:
    """Per-factor psi_i, overall Psi (their mean) and plain Kendall tau over all configurations."""

    psi: dict[str, float]
    overall: float
    kendall_all: float
    n_groups: dict[str, int]
    n_groups_used: dict[str, int]
    n_configs: int
    notes: list[str] = field(default_factory=list)


def _tau(a: npt.ArrayLike, b: npt.ArrayLike) -> float:
    """Kendall tau-b, NaN (without scipy's warning) when fewer than two points or a constant side."""
    av, bv = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if av.size < 2 or np.ptp(av) == 0 or np.ptp(bv) == 0:
        return math.nan
    return float(sps.kendalltau(av, bv).statistic)


def granulated_kendall(runs: pd.DataFrame, measure: str, metric: str, factors: Sequence[str]) -> GranulatedKendall:
    """Granulated Kendall coefficient of Jiang et al. (ICLR 2020, Sec. 2.2, eq. 4-5).

    Plain Kendall tau over a whole sweep can be high only because one hyperparameter (say the
    algorithm) moves both the measure and the metric, while the measure says nothing when, e.g.,
    SAM's rho changes. Jiang et al. therefore vary one factor at a time: for factor i, split the
    configurations into groups that agree on every *other* factor, take Kendall tau between measure
    and metric within each group (only factor i varies inside it), and average over groups:
    psi_i = mean_groups tau. Psi = mean_i psi_i. A measure that truly tracks the metric has every
    psi_i > 0.

    ``factors`` are the column names of the hyperparameter axes (e.g. ``["algo", "hp.rho"]``).
    Seeds are normally *not* a factor: rows sharing all factor values (seed replicates) are first
    averaged into one configuration (NaN-skipping mean). NaN factor values (e.g. ``hp.rho`` of a
    non-SAM run) form their own level. We use tau-b (equal to Jiang's tau when there are no ties);
    groups where tau is undefined (one configuration, or a constant measure or metric) are skipped
    and counted in ``n_groups - n_groups_used``; Psi averages the defined psi_i.
    """
    factors = list(factors)
    if not factors:
        raise RlflatError("factors must name at least one hyperparameter column")
    if len(set(factors)) != len(factors) or {measure, metric} & set(factors):
        raise RlflatError(f"factors must be distinct and exclude measure/metric, got {factors!r}")
    check_columns(runs, [*factors, measure, metric])
    data = runs[[*factors, measure, metric]].copy()
    data[measure] = pd.to_numeric(data[measure], errors="coerce")
    data[metric] = pd.to_numeric(data[metric], errors="coerce")
    cfg = data.groupby(factors, dropna=False, sort=True)[[measure, metric]].mean().reset_index()
    cfg = cfg.dropna(subset=[measure, metric])
    psi: dict[str, float] = {}
    n_groups: dict[str, int] = {}
    n_used: dict[str, int] = {}
    notes: list[str] = []
    for f in factors:
        others = [g for g in factors if g != f]
        groups = [g for _, g in cfg.groupby(others, dropna=False)] if others else [cfg]
        taus = np.array([_tau(g[measure], g[metric]) for g in groups], dtype=np.float64)
        ok = taus[np.isfinite(taus)]
        n_groups[f], n_used[f] = len(groups), int(ok.size)
        psi[f] = float(ok.mean()) if ok.size else math.nan
        if not ok.size:
            notes.append(f"psi[{f}] undefined: no group varies {f} with a defined tau")
    defined = [v for v in psi.values() if math.isfinite(v)]
    overall = float(np.mean(defined)) if defined else math.nan
    if len(factors) < 2 or len(cfg) < MIN_CONFIGS:
        why = "only one factor (psi equals plain tau)" if len(factors) < 2 else f"{len(cfg)} configurations"
        notes.insert(0, f"psi suppressed: {why}; needs >= 2 factors and >= {MIN_CONFIGS} configurations")
        psi = dict.fromkeys(psi, math.nan)
        overall = math.nan
    return GranulatedKendall(psi, overall, _tau(cfg[measure], cfg[metric]), n_groups, n_used, len(cfg), notes)


GRANULATED_COLUMNS = [
    "task",
    "measure",
    "metric",
    "factor",
    "psi",
    "n_groups",
    "n_groups_used",
    "n_configs",
    "n_factors",
    "reason",
]


def granulated_kendall_table(
    runs: pd.DataFrame,
    measures: Sequence[str],
    metrics: Sequence[str],
    factors: Sequence[str],
    *,
    task_col: str | None = "task",
) -> pd.DataFrame:
    """Tidy :func:`granulated_kendall` for every (measure, metric), per task (all runs if None).

    One row per factor (``psi`` = psi_i), one with ``factor == PSI_OVERALL`` (Psi) and one with
    ``factor == KENDALL_ALL`` (plain tau over all configurations, for contrast). Columns:
    ``GRANULATED_COLUMNS``; ``task`` is ``POOLED`` when ``task_col`` is None.
    """
    check_columns(runs, [*measures, *metrics, *([task_col] if task_col else [])])
    if task_col:
        scopes = [(t, runs[runs[task_col] == t]) for t in sorted(runs[task_col].dropna().unique(), key=str)]
    else:
        scopes = [(POOLED, runs)]
    rows = []
    for task, df in scopes:
        for measure in measures:
            for metric in metrics:
                g = granulated_kendall(df, measure, metric, factors)
                base = {
                    "task": task,
                    "measure": measure,
                    "metric": metric,
                    "n_configs": g.n_configs,
                    "n_factors": len(factors),
                    "reason": "; ".join(g.notes),
                }
                for f in g.psi:
                    rows.append(
                        base
                        | {
                            "factor": f,
                            "psi": g.psi[f],
                            "n_groups": g.n_groups[f],
                            "n_groups_used": g.n_groups_used[f],
                        }
                    )
                total, used = sum(g.n_groups.values()), sum(g.n_groups_used.values())
                rows.append(base | {"factor": PSI_OVERALL, "psi": g.overall, "n_groups": total, "n_groups_used": used})
                rows.append(base | {"factor": KENDALL_ALL, "psi": g.kendall_all, "n_groups": 1, "n_groups_used": 1})
    return pd.DataFrame(rows, columns=GRANULATED_COLUMNS)
