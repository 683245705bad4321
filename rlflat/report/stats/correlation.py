"""Rank correlations between a sharpness measure and a robustness metric, honest at five to twenty runs.

Point estimates are Spearman's rho or Kendall's tau-b. Intervals are *not* bootstrapped: the reviewer's
simulation showed percentile-bootstrap intervals for rho covering 89% at n = 5, and resamples with a
constant side have no statistic, so any bootstrap has to condition on the lucky ones. Instead:

* CI: Fisher's z = atanh(r) with the variances of Bonett & Wright (2000, "Sample size requirements for
  estimating Pearson, Kendall and Spearman correlations", Psychometrika 65:23-28): (1 + r^2/2) / (n - 3)
  for Spearman and Fieller, Hartley & Pearson's (1957, Biometrika 44:470-481) 0.437 / (n - 4) for Kendall.
  Below ``MIN_N_CI`` runs there is no interval at all ("too few runs"): the estimate and an exact p-value
  are all the data can give.
* p-value: a permutation test (exact enumeration up to ``EXACT_MAX_N`` runs, else ``n_perm`` seeded random
  permutations, p = (1 + hits) / (1 + n_perm)), two-sided on |r|, valid at any n.
* Strata (a task, or a configuration within a task, :mod:`rlflat.report.stats.strata`): the coefficient is
  computed within each stratum and averaged with weights n_s, so neither a task's scale nor an algorithm label
  nor a hyperparameter can create an association.
  The interval adds the strata's Fisher-z degrees of freedom (fixed-effect pooling, Hedges & Olkin 1985),
  which is conservative for few small strata (see :func:`equivalent_n`); the permutation test shuffles
  within strata.

``tests/test_report_stats.py`` simulates the coverage of these intervals.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pandas as pd
from scipy import stats as sps

from rlflat.errors import RlflatError
from rlflat.report.stats._common import (
    POOLED,
    FloatArray,
    SeedLike,
    check_choice,
    check_columns,
    check_confidence,
    check_count,
    holm,
    rng_from,
)
from rlflat.report.stats.strata import MIN_STRATUM_RUNS, configuration_columns, configuration_labels

CORR_METHODS = ("spearman", "kendall")
MIN_N = 3
"""Fewest complete (x, y) pairs in a stratum for which a rank correlation is computed."""
MIN_N_CI = 6
"""Fewest runs (the equivalent n_eq for strata) for which an interval is stated; below it: "too few runs"."""
EXACT_MAX_N = 8
"""Up to this many runs (one stratum) the permutation p-value enumerates all n! orderings."""
R_CLIP = 0.999
"""|r| is clipped here before atanh, so a perfectly monotone sample gets a finite interval, not [1, 1]."""
_KENDALL_VECTOR_MAX_N = 256  # above this the O(n^2) sign matrices cost more than a scipy loop


@dataclass(frozen=True)
class CorrResult:
    """A rank correlation with its Fisher-z CI and permutation p-value; NaN fields come with a ``reason``."""

    method: str
    estimate: float
    ci_low: float
    ci_high: float
    n: int
    p_value: float
    n_strata: int = 1
    p_method: str = ""
    """"exact permutation (n! orderings)" or "permutation (B random, seeded)"."""
    reason: str = ""


def _spearman_rows(x: FloatArray, y: FloatArray) -> FloatArray:
    """Spearman rho (average ranks for ties) of each row pair; NaN where a row is constant."""
    rx = sps.rankdata(x, axis=1)
    ry = sps.rankdata(y, axis=1)
    rx -= rx.mean(axis=1, keepdims=True)
    ry -= ry.mean(axis=1, keepdims=True)
    den = np.sqrt((rx * rx).sum(axis=1) * (ry * ry).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        rho = (rx * ry).sum(axis=1) / den
    rho[den == 0] = np.nan
    return np.clip(rho, -1.0, 1.0)


def _kendall_rows(x: FloatArray, y: FloatArray) -> FloatArray:
    """Kendall tau-b of each row pair; NaN where a row is constant.

    With s_ij = sign(x_i - x_j), tau-b = <s^x, s^y> / (||s^x|| ||s^y||) over all ordered pairs,
    because ||s^x||^2 counts the untied pairs twice. Exact integer arithmetic in chunks; larger n
    loops over scipy's O(n log n) implementation.
    """
    b, n = x.shape
    out = np.full(b, np.nan)
    if n > _KENDALL_VECTOR_MAX_N:
        for i in range(b):
            if np.ptp(x[i]) > 0 and np.ptp(y[i]) > 0:
                out[i] = sps.kendalltau(x[i], y[i]).statistic
        return out
    chunk = max(1, 4_000_000 // (n * n))
    for start in range(0, b, chunk):
        xs, ys = x[start : start + chunk], y[start : start + chunk]
        sx = np.sign(xs[:, :, None] - xs[:, None, :]).astype(np.int8)
        sy = np.sign(ys[:, :, None] - ys[:, None, :]).astype(np.int8)
        num = (sx * sy).sum(axis=(1, 2), dtype=np.int64)
        nx = np.abs(sx).sum(axis=(1, 2), dtype=np.int64)
        ny = np.abs(sy).sum(axis=(1, 2), dtype=np.int64)
        with np.errstate(invalid="ignore", divide="ignore"):
            tau = num / np.sqrt(nx.astype(np.float64) * ny)
        tau[(nx == 0) | (ny == 0)] = np.nan
        out[start : start + chunk] = np.clip(tau, -1.0, 1.0)
    return out


ROW_STATS: dict[str, Callable[[FloatArray, FloatArray], FloatArray]] = {
    "spearman": _spearman_rows,
    "kendall": _kendall_rows,
}


def equivalent_n(method: str, sizes: npt.ArrayLike) -> float:
    """n of the single sample with the Fisher-z variance of the pooled coefficient: offset + sum (n_s - offset).

    offset is 3 (Spearman) or 4 (Kendall): each stratum contributes its own Fisher-z degrees of freedom.
    A simulation (module doc) found this conservative (coverage 0.98-0.99 for 4 strata of 5 runs) where
    matching the null variance of the average was not (0.88 at Kendall tau = 0.6), because the average of
    five-run coefficients is biased toward zero.
    """
    offset = 3.0 if method == "spearman" else 4.0
    ns = np.asarray(sizes, dtype=np.float64)
    return float(ns[0]) if ns.size == 1 else offset + float(np.sum(np.maximum(ns - offset, 0.0)))


def fisher_z_interval(r: float, n: float, method: str, confidence: float = 0.95) -> tuple[float, float]:
    """CI for a rank correlation r of n runs by Fisher's z: Bonett-Wright (Spearman) or Fieller (Kendall) variance."""
    offset = 3.0 if method == "spearman" else 4.0
    if not (math.isfinite(r) and n > offset):
        return math.nan, math.nan
    rc = float(np.clip(r, -R_CLIP, R_CLIP))
    var = (1.0 + rc * rc / 2.0) / (n - offset) if method == "spearman" else 0.437 / (n - offset)
    half = float(sps.norm.ppf(0.5 + confidence / 2.0)) * math.sqrt(var)
    z = math.atanh(rc)
    lo, hi = math.tanh(z - half), math.tanh(z + half)
    return (-1.0 if r <= -1.0 else lo), (1.0 if r >= 1.0 else hi)


def _permutations(n: int, n_perm: int, rng: np.random.Generator) -> tuple[npt.NDArray[np.int64], bool]:
    """All n! orderings when n <= EXACT_MAX_N (exact), else ``n_perm`` seeded random ones."""
    if n <= EXACT_MAX_N:
        return np.array(list(itertools.permutations(range(n))), dtype=np.int64), True
    return rng.permuted(np.tile(np.arange(n, dtype=np.int64), (n_perm, 1)), axis=1), False


def _stratified_estimate(
    method: str, xs: Sequence[FloatArray], ys: Sequence[FloatArray], weights: FloatArray
) -> FloatArray:
    """Weighted mean over strata of the row-wise coefficient; ``xs[s]``/``ys[s]`` are (B, n_s)."""
    total = np.zeros(ys[0].shape[0])
    for x, y, w in zip(xs, ys, weights, strict=True):
        total += w * ROW_STATS[method](np.broadcast_to(x, y.shape), y)
    return total / weights.sum()


def _nan_corr(method: str, n: int, reason: str, n_strata: int = 1) -> CorrResult:
    return CorrResult(method, math.nan, math.nan, math.nan, n, math.nan, n_strata, "", reason)


def rank_correlation(
    x: npt.ArrayLike,
    y: npt.ArrayLike,
    *,
    seed: SeedLike,
    method: str = "spearman",
    strata: npt.ArrayLike | None = None,
    n_perm: int = 9999,
    confidence: float = 0.95,
    min_stratum: int = MIN_N,
) -> CorrResult:
    """Spearman rho or Kendall tau-b of (x, y) with a Fisher-z CI and a permutation p-value (module doc).

    Pairs with a NaN are dropped. With ``strata`` (the task of each run, or task x algorithm for "within
    configuration") the coefficient is the n_s-weighted mean of within-stratum coefficients; strata with
    fewer than ``max(MIN_N, min_stratum)`` pairs or a constant side are left out and counted in ``reason``. Fewer than
    ``MIN_N_CI`` runs (equivalently) give an estimate and p-value but no interval ("too few runs").
    ``seed`` drives only the random permutations (exact enumeration needs none).
    """
    check_choice("correlation method", method, CORR_METHODS)
    check_count("n_perm", n_perm)
    check_confidence(confidence)
    rng = rng_from(seed)
    xa = np.asarray(x, dtype=np.float64).ravel()
    ya = np.asarray(y, dtype=np.float64).ravel()
    labels = np.zeros(xa.size, dtype=np.int64) if strata is None else np.asarray(strata).ravel()
    if not xa.size == ya.size == labels.size:
        raise RlflatError(f"x, y and strata must have equal lengths, got {xa.size}, {ya.size}, {labels.size}")
    keep = np.isfinite(xa) & np.isfinite(ya)
    xa, ya = xa[keep], ya[keep]
    codes = pd.factorize(labels[keep])[0]
    groups = [(xa[codes == s], ya[codes == s]) for s in range(int(codes.max()) + 1 if codes.size else 0)]
    n_all = int(xa.size)
    if strata is None and n_all < MIN_N:
        return _nan_corr(method, n_all, f"n={n_all} complete pairs < {MIN_N}")
    smallest = max(MIN_N, min_stratum)
    usable = [(gx, gy) for gx, gy in groups if gx.size >= smallest and np.ptp(gx) > 0 and np.ptp(gy) > 0]
    dropped = len(groups) - len(usable)
    notes = []
    if dropped and strata is not None:
        notes.append(f"left out {dropped} of {len(groups)} strata (fewer than {smallest} runs or a constant side)")
    if not usable:
        if strata is None:
            return _nan_corr(method, n_all, "x is constant" if np.ptp(xa) == 0 else "y is constant")
        return _nan_corr(method, n_all, "; ".join(notes) or "no stratum with data", 0)  # none entered
    sizes = np.array([gx.size for gx, _ in usable], dtype=np.float64)
    n = int(sizes.sum())
    estimate = float(
        _stratified_estimate(method, [gx[None] for gx, _ in usable], [gy[None] for _, gy in usable], sizes)[0]
    )

    # permutation p-value: shuffle y within each stratum, recompute the same weighted statistic
    single = len(usable) == 1
    if single:
        perm, exact = _permutations(usable[0][0].size, n_perm, rng)
        y_perm = [usable[0][1][perm]]
    else:
        exact = False
        y_perm = [rng.permuted(np.tile(gy, (n_perm, 1)), axis=1) for _, gy in usable]
    null = _stratified_estimate(method, [gx[None] for gx, _ in usable], y_perm, sizes)
    hits = int(np.sum(np.abs(null) >= abs(estimate) - 1e-12))
    p_value = hits / null.size if exact else (1 + hits) / (1 + null.size)
    p_method = f"exact permutation ({null.size} orderings)" if exact else f"permutation ({null.size} random, seeded)"

    n_eq = equivalent_n(method, sizes)
    if n_eq < MIN_N_CI - 1e-9:
        notes.append(f"too few runs (n={n}) for an interval")
        lo = hi = math.nan
    else:
        lo, hi = fisher_z_interval(estimate, n_eq, method, confidence)
    return CorrResult(method, estimate, lo, hi, n, p_value, len(usable), p_method, "; ".join(notes))


CORR_COLUMNS = [
    "task",
    "measure",
    "metric",
    "method",
    "scope",
    "estimate",
    "ci_low",
    "ci_high",
    "n",
    "n_strata",
    "p_value",
    "p_holm",
    "n_tests",
    "reason",
]
ACROSS, WITHIN_ALGO = "across runs", "within configuration"
"""``scope`` of a correlation row: all runs of the task(s), or only the variation inside each configuration
(algorithm x every varying hyperparameter: :mod:`rlflat.report.stats.strata`)."""


def correlation_table(
    runs: pd.DataFrame,
    measures: Sequence[str],
    metrics: Sequence[str],
    *,
    seed: SeedLike,
    task_col: str = "task",
    algo_col: str | None = "algo",
    methods: Sequence[str] = CORR_METHODS,
    pooled: bool = True,
    n_perm: int = 9999,
    confidence: float = 0.95,
    configuration: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Tidy table of rank correlations for every (measure, metric, method), per task and pooled over tasks.

    Two scopes per row key: ``ACROSS`` (every run of the task; pooled rows stratify by task, so each
    task's scale drops out) and, with ``algo_col`` and several algorithms or configurations, ``WITHIN_ALGO``
    (stratified by task x configuration, :mod:`rlflat.report.stats.strata`: the algorithm and the
    ``configuration`` columns, by default every hyperparameter varying inside an algorithm; strata of fewer than
    ``MIN_STRATUM_RUNS`` complete runs are left out: does the measure track the metric among seeds of one
    configuration, or is the across-run association only the algorithm label or a hyperparameter?). ``p_holm`` is the Holm-adjusted p-value within
    each (task, method, scope) family of ``n_tests`` measure x metric tests. Each row draws from its
    own child generator spawned from ``seed`` in row order. Columns: ``CORR_COLUMNS``.
    """
    for m in methods:
        check_choice("correlation method", m, CORR_METHODS)
    check_columns(runs, [task_col, *measures, *metrics, *([algo_col] if algo_col else [])])
    rng = rng_from(seed)
    tasks = sorted(runs[task_col].dropna().unique(), key=str)
    scopes: list[tuple[object, pd.DataFrame]] = [(t, runs[runs[task_col] == t]) for t in tasks]
    if pooled and len(tasks) > 1:
        scopes.append((POOLED, runs[runs[task_col].notna()]))
    config = list(configuration_columns(runs, algo_col) if configuration is None and algo_col else configuration or [])
    within = bool(algo_col) and (runs[algo_col].nunique() > 1 or bool(config))
    keys = [
        (task, df, measure, metric, method, scope)
        for task, df in scopes
        for method in methods
        for scope in ([ACROSS, WITHIN_ALGO] if within else [ACROSS])
        for measure in measures
        for metric in metrics
    ]
    children = rng.spawn(len(keys))
    rows = []
    for (task, df, measure, metric, method, scope), child in zip(keys, children, strict=True):
        x = pd.to_numeric(df[measure], errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
        y = pd.to_numeric(df[metric], errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
        strata: npt.NDArray[np.str_] | None = None
        smallest = MIN_N
        if task == POOLED:
            strata = df[task_col].astype(str).to_numpy()
        if scope == WITHIN_ALGO:
            assert algo_col is not None
            strata = configuration_labels(df, config, algo_col=algo_col, task_col=task_col).to_numpy()
            smallest = MIN_STRATUM_RUNS
        res = rank_correlation(
            x, y, seed=child, method=method, strata=strata, n_perm=n_perm, confidence=confidence, min_stratum=smallest
        )
        rows.append(
            {
                "task": task,
                "measure": measure,
                "metric": metric,
                "method": method,
                "scope": scope,
                "estimate": res.estimate,
                "ci_low": res.ci_low,
                "ci_high": res.ci_high,
                "n": res.n,
                "n_strata": res.n_strata,
                "p_value": res.p_value,
                "reason": res.reason,
            }
        )
    table = pd.DataFrame(rows, columns=[c for c in CORR_COLUMNS if c not in ("p_holm", "n_tests")] + [])
    table["p_holm"] = np.nan
    table["n_tests"] = 0
    if len(table):
        family = table["task"].astype(str) + "|" + table["method"] + "|" + table["scope"]
        for _, idx in table.groupby(family, sort=False).groups.items():
            p = table.loc[idx, "p_value"].to_numpy(dtype=np.float64)
            table.loc[idx, "p_holm"] = holm(p)
            table.loc[idx, "n_tests"] = int(np.isfinite(p).sum())
    return table[CORR_COLUMNS]
