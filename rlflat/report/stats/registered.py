"""The two tests a confirmatory study registers: one-sided, stratified, permutation-based, valid at any n.

* :func:`stratified_rank_test`: does a sharpness measure go with robustness *within configurations*? The statistic
  is the n_s-weighted mean of within-stratum Spearman coefficients (as :func:`rlflat.report.stats.correlation.
  rank_correlation` computes it); strata with fewer than ``min_stratum`` runs or a constant side are listed and left
  out (issue 20: a 3-run stratum gets weight and adds no degrees of freedom). The p-value shuffles the metric within
  each stratum; one-sided in the registered direction, p = (1 + hits) / (1 + B) (Phipson & Smyth 2010). The
  interval is Fisher-z with the strata's added degrees of freedom (Bonett & Wright 2000; Hedges & Olkin 1985).
* :func:`matched_difference_test`: does a treatment (SAM) raise a metric over its control (plain) at matched
  hyperparameters? Within each matching cell the difference of means; cells weighted by n_t n_c / (n_t + n_c)
  (the inverse of a difference's variance at equal spread), labels shuffled within cells; a normal interval with
  each cell's own variances (Welch-style).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
import pandas as pd
from scipy import stats as sps

from rlflat.errors import RlflatError
from rlflat.report.stats._common import FloatArray, SeedLike, check_choice, check_confidence, check_count, rng_from
from rlflat.report.stats.correlation import ROW_STATS, equivalent_n, fisher_z_interval

ALTERNATIVES = ("less", "greater")


@dataclass(frozen=True)
class RegisteredResult:
    """A registered test's outcome; ``n`` counts the runs that entered, ``left_out`` names what did not and why."""

    estimate: float
    ci_low: float
    ci_high: float
    p_value: float
    n: int
    n_strata: int
    alternative: str
    left_out: list[str] = field(default_factory=list)
    n_treatment: int = 0
    n_control: int = 0


def _one_sided_p(null: FloatArray, observed: float, alternative: str) -> float:
    tol = 1e-12
    hits = np.sum(null <= observed + tol) if alternative == "less" else np.sum(null >= observed - tol)
    return float((1 + int(hits)) / (1 + null.size))


def _groups(labels: npt.ArrayLike, keep: npt.NDArray[np.bool_]) -> tuple[list[str], list[npt.NDArray[np.int64]]]:
    names = pd.Series(np.asarray(labels, dtype=object)[keep]).astype(str).to_numpy()
    order = np.flatnonzero(keep)
    uniq = sorted(set(names))
    return uniq, [order[names == u] for u in uniq]


def stratified_rank_test(
    x: npt.ArrayLike,
    y: npt.ArrayLike,
    strata: npt.ArrayLike,
    *,
    alternative: str,
    seed: SeedLike,
    n_perm: int = 9999,
    min_stratum: int = 4,
    confidence: float = 0.95,
) -> RegisteredResult:
    """One-sided stratified Spearman permutation test of (x, y) within ``strata`` (module doc); NaN pairs dropped."""
    check_choice("alternative", alternative, ALTERNATIVES)
    check_count("n_perm", n_perm)
    check_confidence(confidence)
    rng = rng_from(seed)
    xa, ya = np.asarray(x, dtype=np.float64).ravel(), np.asarray(y, dtype=np.float64).ravel()
    labels = np.asarray(strata, dtype=object).ravel()
    if not xa.size == ya.size == labels.size:
        raise RlflatError(f"x, y and strata must have equal lengths, got {xa.size}, {ya.size}, {labels.size}")
    names, index = _groups(labels, np.isfinite(xa) & np.isfinite(ya))
    used, left_out = [], []
    for name, idx in zip(names, index, strict=True):
        if idx.size < min_stratum:
            left_out.append(f"{name}: {idx.size} runs < {min_stratum}")
        elif np.ptp(xa[idx]) == 0 or np.ptp(ya[idx]) == 0:
            left_out.append(f"{name}: a constant side")
        else:
            used.append(idx)
    if not used:
        return RegisteredResult(math.nan, math.nan, math.nan, math.nan, 0, 0, alternative, left_out)
    sizes = np.array([idx.size for idx in used], dtype=np.float64)
    stat = ROW_STATS["spearman"]
    estimate = float(sum(w * stat(xa[i][None], ya[i][None])[0] for w, i in zip(sizes, used, strict=True)) / sizes.sum())
    null = np.zeros(n_perm)
    for w, idx in zip(sizes, used, strict=True):
        shuffled = rng.permuted(np.tile(ya[idx], (n_perm, 1)), axis=1)
        null += w * stat(np.broadcast_to(xa[idx], shuffled.shape), shuffled)
    null /= sizes.sum()
    lo, hi = fisher_z_interval(estimate, equivalent_n("spearman", sizes), "spearman", confidence)
    p = _one_sided_p(null, estimate, alternative)
    return RegisteredResult(estimate, lo, hi, p, int(sizes.sum()), len(used), alternative, left_out)


def _cell_difference(values: FloatArray, treated: npt.NDArray[np.bool_], cells: list[npt.NDArray[np.int64]]) -> float:
    num = den = 0.0
    for idx in cells:
        t, c = values[idx][treated[idx]], values[idx][~treated[idx]]
        w = t.size * c.size / (t.size + c.size)
        num += w * (t.mean() - c.mean())
        den += w
    return num / den


def matched_difference_test(
    values: npt.ArrayLike,
    treated: npt.ArrayLike,
    cells: npt.ArrayLike,
    *,
    alternative: str,
    seed: SeedLike,
    n_perm: int = 9999,
    confidence: float = 0.95,
) -> RegisteredResult:
    """One-sided permutation test of treatment - control within matching ``cells`` (module doc); NaN values dropped.

    Cells without two runs in each arm are listed and left out (no within-cell spread, no comparison).
    """
    check_choice("alternative", alternative, ALTERNATIVES)
    check_count("n_perm", n_perm)
    check_confidence(confidence)
    rng = rng_from(seed)
    va = np.asarray(values, dtype=np.float64).ravel()
    ta = np.asarray(treated, dtype=bool).ravel()
    labels = np.asarray(cells, dtype=object).ravel()
    if not va.size == ta.size == labels.size:
        raise RlflatError(f"values, treated and cells must have equal lengths, got {va.size}, {ta.size}, {labels.size}")
    names, index = _groups(labels, np.isfinite(va))
    used, left_out = [], []
    for name, idx in zip(names, index, strict=True):
        n_t = int(ta[idx].sum())
        if n_t < 2 or idx.size - n_t < 2:
            left_out.append(f"{name}: {n_t} treated, {idx.size - n_t} control (needs >= 2 each)")
        else:
            used.append(idx)
    if not used:
        return RegisteredResult(math.nan, math.nan, math.nan, math.nan, 0, 0, alternative, left_out)
    estimate = _cell_difference(va, ta, used)
    weights = np.array([ta[i].sum() * (~ta[i]).sum() / i.size for i in used])
    var = (
        sum(
            w * w * (va[i][ta[i]].var(ddof=1) / ta[i].sum() + va[i][~ta[i]].var(ddof=1) / (~ta[i]).sum())
            for w, i in zip(weights, used, strict=True)
        )
        / weights.sum() ** 2
    )
    half = float(sps.norm.ppf(0.5 + confidence / 2.0)) * math.sqrt(var)
    null = np.zeros(n_perm)
    num = np.zeros(n_perm)
    for w, idx in zip(weights, used, strict=True):
        labels_perm = rng.permuted(np.tile(ta[idx], (n_perm, 1)), axis=1)
        v = va[idx]
        n_t = ta[idx].sum()
        t_mean = (labels_perm * v).sum(axis=1) / n_t
        c_mean = (~labels_perm * v).sum(axis=1) / (idx.size - n_t)
        num += w * (t_mean - c_mean)
    null = num / weights.sum()
    p = _one_sided_p(null, estimate, alternative)
    n_t_all = int(sum(ta[i].sum() for i in used))
    n_all = int(sum(i.size for i in used))
    return RegisteredResult(
        estimate, estimate - half, estimate + half, p, n_all, len(used), alternative, left_out, n_t_all, n_all - n_t_all
    )
