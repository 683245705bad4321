"""Statistics for the report: does sharpness predict collapse, and does SAM buy robustness?

Pure functions over numpy arrays and the runs table (one row per run). Three families:

* rank correlations (Spearman rho, Kendall tau-b) between a sharpness measure and a robustness metric,
  with seeded bootstrap CIs (percentile, or BCa after Efron 1987, "Better Bootstrap Confidence
  Intervals", JASA 82:171), per task and pooled over tasks;
* the granulated Kendall coefficient of Jiang et al. (ICLR 2020, "Fantastic Generalization Measures
  and Where to Find Them", Sec. 2.2), which asks whether a measure tracks the metric when one
  hyperparameter is varied at a time rather than across the whole sweep;
* algorithm comparisons after Agarwal et al. (NeurIPS 2021, "Deep RL at the Edge of the Statistical
  Precipice"): mean / interquartile mean, differences and probability of improvement, each with a
  stratified bootstrap CI (runs resampled within each task), plus a plain-text sentence generator.

The ``rliable`` package is deliberately not used: it pins ``arch<8`` (which pulls statsmodels and
compiled extensions) and ``absl-py``, and wants equal run counts per task; the few estimators we need
are short in numpy/scipy. Every resampling function takes an explicit ``seed`` (int or Generator).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
import pandas as pd
from scipy import stats as sps

from rlflat.errors import RlflatError, bad_choice

SeedLike = int | np.random.Generator
FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

CORR_METHODS = ("spearman", "kendall")
CI_METHODS = ("percentile", "bca")
AGG_STATS = ("mean", "iqm", "median")
POOLED = "pooled"
"""Task label of rows that pool every task (correlations) or aggregate over tasks (comparisons)."""
PSI_OVERALL = "overall"
"""``factor`` label of the granulated-Kendall row holding Psi, the mean of the per-factor psi_i."""
KENDALL_ALL = "kendall_all"
"""``factor`` label of the granulated-Kendall row holding plain Kendall tau over all configurations."""
MIN_N = 3
"""Fewest complete (x, y) pairs for which a rank correlation is reported."""
_KENDALL_VECTOR_MAX_N = 256  # above this the O(n^2) sign matrices cost more than a scipy loop


# ----------------------------------------------------------------------------- validation helpers


def _rng(seed: SeedLike) -> np.random.Generator:
    """Explicit generator from an int or Generator; refuse None so results are always reproducible."""
    if seed is None or isinstance(seed, bool):
        raise RlflatError(f"seed must be an int or numpy Generator, got {seed!r}")
    if not isinstance(seed, int | np.integer | np.random.Generator):
        raise RlflatError(f"seed must be an int or numpy Generator, got {seed!r}")
    return np.random.default_rng(seed)


def _check_choice(what: str, value: object, choices: Sequence[object]) -> None:
    if value not in choices:
        raise bad_choice(what, value, choices)


def _check_boot(n_boot: int, confidence: float) -> None:
    if not isinstance(n_boot, int | np.integer) or n_boot < 1:
        raise RlflatError(f"n_boot must be a positive integer, got {n_boot!r}")
    if not 0.0 < confidence < 1.0:
        raise RlflatError(f"confidence must lie strictly between 0 and 1, got {confidence!r}")


def _check_columns(runs: pd.DataFrame, columns: Sequence[str]) -> None:
    missing = [c for c in columns if c not in runs.columns]
    if missing:
        raise RlflatError(f"unknown column(s) {missing!r}; valid choices: {', '.join(map(str, runs.columns))}")


# ----------------------------------------------------------------------------- rank correlations


@dataclass(frozen=True)
class CorrResult:
    """A rank correlation with its bootstrap CI; NaN fields come with a non-empty ``reason``."""

    method: str
    estimate: float
    ci_low: float
    ci_high: float
    n: int
    p_value: float
    n_degenerate: int = 0
    """Bootstrap resamples whose statistic was undefined (constant x or y); excluded from the CI."""
    reason: str = ""


def _within_strata_ranks(values: FloatArray, codes: IntArray) -> FloatArray:
    """Map each row of ``values`` (B, M) to percentile ranks (r - 1/2) / n_s inside each stratum.

    Rank statistics are invariant to this map within one stratum; across strata it removes the
    task's scale, so pooled correlations compare a run's standing within its own task.
    """
    out = np.empty_like(values, dtype=np.float64)
    for code in np.unique(codes):
        cols = codes == code
        out[:, cols] = (sps.rankdata(values[:, cols], axis=1) - 0.5) / int(cols.sum())
    return out


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
    because ||s^x||^2 counts the untied pairs twice. Exact integer arithmetic, O(B n^2) memory in
    chunks, so only used for small n; larger n loops over scipy's O(n log n) implementation.
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


_ROW_STATS: dict[str, Callable[[FloatArray, FloatArray], FloatArray]] = {
    "spearman": _spearman_rows,
    "kendall": _kendall_rows,
}


def _percentile_ci(reps: FloatArray, alpha: float) -> tuple[float, float]:
    lo, hi = np.quantile(reps, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


def _bca_ci(reps: FloatArray, estimate: float, jack: FloatArray, alpha: float) -> tuple[float, float]:
    """Efron's (1987) bias-corrected and accelerated interval from replicates and jackknife values.

    Ties with the estimate count half (discrete statistics such as tau put mass on it); the bias
    proportion is clipped to [1/2B, 1 - 1/2B] so z0 stays finite.
    """
    b = reps.size
    prop = (np.sum(reps < estimate) + 0.5 * np.sum(reps == estimate)) / b
    z0 = sps.norm.ppf(np.clip(prop, 0.5 / b, 1 - 0.5 / b))
    jack = jack[np.isfinite(jack)]
    d = jack.mean() - jack if jack.size else np.zeros(1)
    den = 6.0 * np.sum(d**2) ** 1.5
    acc = float(np.sum(d**3) / den) if den > 0 else 0.0
    z = sps.norm.ppf([alpha / 2, 1 - alpha / 2])
    q = sps.norm.cdf(z0 + (z0 + z) / (1 - acc * (z0 + z)))
    lo, hi = np.quantile(reps, q)
    return float(lo), float(hi)


def _nan_corr(method: str, n: int, reason: str, p_value: float = math.nan) -> CorrResult:
    return CorrResult(method, math.nan, math.nan, math.nan, n, p_value, 0, reason)


def rank_correlation(
    x: npt.ArrayLike,
    y: npt.ArrayLike,
    *,
    seed: SeedLike,
    method: str = "spearman",
    strata: npt.ArrayLike | None = None,
    n_boot: int = 2000,
    confidence: float = 0.95,
    ci_method: str = "percentile",
) -> CorrResult:
    """Spearman rho or Kendall tau-b of (x, y) with a paired bootstrap CI over runs.

    Runs (pairs) are resampled with replacement; with ``strata`` (e.g. the task of each run) they are
    resampled within each stratum, and x and y are first replaced by percentile ranks within their
    stratum, so the pooled coefficient asks "is a run that is sharp *for its task* also fragile *for
    its task*?" rather than comparing raw scales across tasks. Pairs with a NaN are dropped; fewer
    than ``MIN_N`` complete pairs, or a constant x or y, give NaN with a ``reason``. Resamples with
    a constant x or y have no defined statistic; they are excluded and counted in ``n_degenerate``.
    If all valid replicates coincide (e.g. perfectly monotone data) the CI is that single value.
    The p-value is scipy's (for pooled data it treats the within-stratum ranks as i.i.d.).
    ``ci_method`` is "percentile" or "bca" (Efron 1987; jackknife acceleration).
    """
    _check_choice("correlation method", method, CORR_METHODS)
    _check_choice("CI method", ci_method, CI_METHODS)
    _check_boot(n_boot, confidence)
    rng = _rng(seed)
    xa = np.asarray(x, dtype=np.float64).ravel()
    ya = np.asarray(y, dtype=np.float64).ravel()
    labels = np.zeros(xa.size, dtype=np.int64) if strata is None else np.asarray(strata).ravel()
    if not xa.size == ya.size == labels.size:
        raise RlflatError(f"x, y and strata must have equal lengths, got {xa.size}, {ya.size}, {labels.size}")
    keep = np.isfinite(xa) & np.isfinite(ya)
    xa, ya = xa[keep], ya[keep]
    codes = pd.factorize(labels[keep])[0].astype(np.int64)
    n = int(xa.size)
    if n < MIN_N:
        return _nan_corr(method, n, f"n={n} complete pairs < {MIN_N}")
    reason = ""
    counts = np.bincount(codes)
    if counts.size > 1 and counts.min() < 2:
        small = counts < 2
        reason = f"dropped {int(small.sum())} stratum/strata with a single run"
        keep_s = ~small[codes]
        xa, ya = xa[keep_s], ya[keep_s]
        codes = pd.factorize(codes[keep_s])[0].astype(np.int64)
        n = int(xa.size)
        if n < MIN_N:
            return _nan_corr(method, n, f"n={n} complete pairs < {MIN_N} after {reason}")
    multi = int(codes.max()) > 0

    def transform(vx: FloatArray, vy: FloatArray, c: IntArray) -> tuple[FloatArray, FloatArray]:
        return (_within_strata_ranks(vx, c), _within_strata_ranks(vy, c)) if multi else (vx, vy)

    tx, ty = transform(xa[None, :], ya[None, :], codes)
    if np.ptp(tx) == 0 or np.ptp(ty) == 0:
        return _nan_corr(method, n, "x is constant" if np.ptp(tx) == 0 else "y is constant")
    ref = sps.spearmanr(tx[0], ty[0]) if method == "spearman" else sps.kendalltau(tx[0], ty[0])
    estimate, p_value = float(ref.statistic), float(ref.pvalue)

    # stratified resampling: block s of every row holds a resample of stratum s, so codes stay fixed
    order = np.argsort(codes, kind="stable")
    sorted_codes = codes[order]
    idx = np.concatenate(
        [rng.choice(order[sorted_codes == s], size=(n_boot, int(np.sum(codes == s)))) for s in range(codes.max() + 1)],
        axis=1,
    )
    bx, by = transform(xa[idx], ya[idx], sorted_codes)
    reps = _ROW_STATS[method](bx, by)
    valid = reps[np.isfinite(reps)]
    n_degenerate = int(n_boot - valid.size)
    if valid.size == 0:
        return CorrResult(method, estimate, math.nan, math.nan, n, p_value, n_degenerate, "all resamples degenerate")
    alpha = 1.0 - confidence
    if np.ptp(valid) == 0:
        lo = hi = float(valid[0])
    elif ci_method == "percentile":
        lo, hi = _percentile_ci(valid, alpha)
    else:
        jx = np.stack([np.delete(xa, i) for i in range(n)])
        jy = np.stack([np.delete(ya, i) for i in range(n)])
        jack = np.array(
            [_ROW_STATS[method](*transform(jx[i : i + 1], jy[i : i + 1], np.delete(codes, i)))[0] for i in range(n)]
        )
        lo, hi = _bca_ci(valid, estimate, jack, alpha)
    return CorrResult(method, estimate, lo, hi, n, p_value, n_degenerate, reason)


CORR_COLUMNS = [
    "task",
    "measure",
    "metric",
    "method",
    "estimate",
    "ci_low",
    "ci_high",
    "n",
    "p_value",
    "n_degenerate",
    "reason",
]


def correlation_table(
    runs: pd.DataFrame,
    measures: Sequence[str],
    metrics: Sequence[str],
    *,
    seed: SeedLike,
    task_col: str = "task",
    methods: Sequence[str] = CORR_METHODS,
    pooled: bool = True,
    n_boot: int = 2000,
    confidence: float = 0.95,
    ci_method: str = "percentile",
) -> pd.DataFrame:
    """Tidy table of rank correlations for every (measure, metric, method), per task and pooled.

    Pooled rows (``task == POOLED``) correlate within-task percentile ranks with a bootstrap
    stratified by task (see :func:`rank_correlation`). NaNs are dropped per pair and ``n`` reports
    what remains; undefined rows hold NaN and a ``reason``. Each row draws from its own child
    generator spawned from ``seed`` in row order, so the table is reproducible. Columns:
    ``CORR_COLUMNS``.
    """
    _check_columns(runs, [task_col, *measures, *metrics])
    for m in methods:
        _check_choice("correlation method", m, CORR_METHODS)
    _check_choice("CI method", ci_method, CI_METHODS)
    _check_boot(n_boot, confidence)
    rng = _rng(seed)
    tasks: list[Hashable] = sorted(runs[task_col].dropna().unique(), key=str)
    scopes: list[tuple[Hashable, pd.DataFrame]] = [(t, runs[runs[task_col] == t]) for t in tasks]
    if pooled:
        scopes.append((POOLED, runs[runs[task_col].notna()]))
    jobs = [(t, df, me, mt, mo) for t, df in scopes for me in measures for mt in metrics for mo in methods]
    children = rng.spawn(len(jobs))
    rows = []
    for (task, df, measure, metric, method), child in zip(jobs, children, strict=True):
        res = rank_correlation(
            df[measure].to_numpy(dtype=np.float64),
            df[metric].to_numpy(dtype=np.float64),
            seed=child,
            method=method,
            strata=df[task_col].to_numpy() if task == POOLED else None,
            n_boot=n_boot,
            confidence=confidence,
            ci_method=ci_method,
        )
        rows.append(
            {
                "task": task,
                "measure": measure,
                "metric": metric,
                "method": method,
                "estimate": res.estimate,
                "ci_low": res.ci_low,
                "ci_high": res.ci_high,
                "n": res.n,
                "p_value": res.p_value,
                "n_degenerate": res.n_degenerate,
                "reason": res.reason,
            }
        )
    return pd.DataFrame(rows, columns=CORR_COLUMNS)


# ----------------------------------------------------------------------------- granulated Kendall


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
    _check_columns(runs, [*factors, measure, metric])
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
    return GranulatedKendall(psi, overall, _tau(cfg[measure], cfg[metric]), n_groups, n_used, len(cfg), notes)


GRANULATED_COLUMNS = ["task", "measure", "metric", "factor", "psi", "n_groups", "n_groups_used", "n_configs"]


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
    _check_columns(runs, [*measures, *metrics, *([task_col] if task_col else [])])
    if task_col:
        scopes = [(t, runs[runs[task_col] == t]) for t in sorted(runs[task_col].dropna().unique(), key=str)]
    else:
        scopes = [(POOLED, runs)]
    rows = []
    for task, df in scopes:
        for measure in measures:
            for metric in metrics:
                g = granulated_kendall(df, measure, metric, factors)
                base = {"task": task, "measure": measure, "metric": metric, "n_configs": g.n_configs}
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


# ----------------------------------------------------------------------------- algorithm comparisons


def interquartile_mean(values: npt.ArrayLike, axis: int = -1) -> FloatArray:
    """Interquartile mean (Agarwal et al. 2021): mean of the middle 50% via scipy's trim_mean(0.25).

    Robust to outlier runs yet far more efficient than the median. trim_mean cuts
    floor(0.25 n) values from each end.
    """
    return np.asarray(sps.trim_mean(np.asarray(values, dtype=np.float64), 0.25, axis=axis))


def _aggregate(values: FloatArray, stat: str) -> FloatArray:
    """Aggregate along the last axis (one value per bootstrap row)."""
    if stat == "mean":
        return values.mean(axis=-1)
    if stat == "iqm":
        return interquartile_mean(values, axis=-1)
    return np.median(values, axis=-1)


def prob_improvement(x: npt.ArrayLike, y: npt.ArrayLike) -> float:
    """P(X > Y) + P(X = Y)/2 for X from ``x`` and Y from ``y`` (Agarwal et al. 2021, Sec. 4.3).

    Equals the Mann-Whitney U statistic of x divided by n_x n_y. For a lower-is-better metric the
    probability that x improves on y is 1 minus this.
    """
    xa, ya = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if xa.size == 0 or ya.size == 0:
        raise RlflatError(f"prob_improvement needs non-empty samples, got sizes {xa.size} and {ya.size}")
    return float(sps.mannwhitneyu(xa, ya).statistic / (xa.size * ya.size))


def _poi_rows(x: FloatArray, y: FloatArray) -> FloatArray:
    """Row-wise P(X > Y) + P(X = Y)/2 for resamples x (B, n) and y (B, m)."""
    gt = (x[:, :, None] > y[:, None, :]).mean(axis=(1, 2))
    eq = (x[:, :, None] == y[:, None, :]).mean(axis=(1, 2))
    return np.asarray(gt + 0.5 * eq, dtype=np.float64)


def _stratified_resample(groups: Sequence[FloatArray], n_boot: int, rng: np.random.Generator) -> FloatArray:
    """(n_boot, sum n_t) matrix; block t of each row resamples group t with replacement."""
    return np.concatenate([g[rng.integers(0, g.size, size=(n_boot, g.size))] for g in groups], axis=1)


def _values_by_task(
    runs: pd.DataFrame, metric: str, algo: str, algo_col: str, task_col: str
) -> dict[Hashable, FloatArray]:
    sub = runs[(runs[algo_col] == algo) & runs[metric].notna()]
    return {t: g[metric].to_numpy(dtype=np.float64) for t, g in sub.groupby(task_col, sort=True) if len(g)}


AGGREGATE_COLUMNS = ["task", "metric", "algo", "stat", "estimate", "ci_low", "ci_high", "n_runs", "n_tasks"]


def aggregate_table(
    runs: pd.DataFrame,
    metrics: Sequence[str],
    *,
    seed: SeedLike,
    stat: str = "iqm",
    algo_col: str = "algo",
    task_col: str = "task",
    n_boot: int = 2000,
    confidence: float = 0.95,
) -> pd.DataFrame:
    """Per-algorithm mean / IQM / median of each metric with a stratified percentile bootstrap CI.

    Rows per (task, algo) and pooled over tasks (``task == POOLED``: the statistic of all runs,
    bootstrapped by resampling runs within each task as in Agarwal et al. 2021, so each task keeps
    its run count). Pooling raw values assumes the metric is comparable across tasks (normalise it
    first otherwise). NaN metric values are dropped. Columns: ``AGGREGATE_COLUMNS``.
    """
    _check_choice("aggregate statistic", stat, AGG_STATS)
    _check_boot(n_boot, confidence)
    _check_columns(runs, [algo_col, task_col, *metrics])
    rng = _rng(seed)
    alpha = 1.0 - confidence
    rows = []
    for metric in metrics:
        for algo in sorted(runs[algo_col].dropna().unique(), key=str):
            by_task = _values_by_task(runs, metric, algo, algo_col, task_col)
            scopes = [(t, [v]) for t, v in by_task.items()]
            if by_task:
                scopes.append((POOLED, list(by_task.values())))
            for task, groups in scopes:
                est = float(_aggregate(np.concatenate(groups), stat))
                lo, hi = _percentile_ci(_aggregate(_stratified_resample(groups, n_boot, rng), stat), alpha)
                rows.append(
                    {
                        "task": task,
                        "metric": metric,
                        "algo": algo,
                        "stat": stat,
                        "estimate": est,
                        "ci_low": lo,
                        "ci_high": hi,
                        "n_runs": int(sum(g.size for g in groups)),
                        "n_tasks": len(groups),
                    }
                )
    return pd.DataFrame(rows, columns=AGGREGATE_COLUMNS)


COMPARISON_COLUMNS = [
    "task",
    "metric",
    "algo",
    "baseline",
    "stat",
    "algo_value",
    "baseline_value",
    "difference",
    "diff_ci_low",
    "diff_ci_high",
    "poi",
    "poi_ci_low",
    "poi_ci_high",
    "n_algo",
    "n_baseline",
    "n_tasks",
    "reason",
]


def compare_algorithms(
    runs: pd.DataFrame,
    metrics: Sequence[str],
    algo: str,
    baseline: str,
    *,
    seed: SeedLike,
    stat: str = "mean",
    algo_col: str = "algo",
    task_col: str = "task",
    n_boot: int = 2000,
    confidence: float = 0.95,
) -> pd.DataFrame:
    """``algo`` versus ``baseline`` on each metric: difference of ``stat`` and probability of improvement.

    ``difference`` = stat(algo) - stat(baseline); ``poi`` = P(X > Y) + P(X = Y)/2, X a run of ``algo``
    and Y one of ``baseline`` (for lower-is-better metrics read 1 - poi). Runs of the two algorithms
    are independent (a shared seed number does not pair them), so each is resampled separately,
    within each task. The ``POOLED`` row takes ``stat`` over all runs of the tasks both algorithms
    ran, and ``poi`` as the mean of per-task poi (Agarwal et al. 2021); tasks missing either
    algorithm are left out and named in ``reason``. Percentile CIs. Columns: ``COMPARISON_COLUMNS``.
    """
    _check_choice("aggregate statistic", stat, AGG_STATS)
    _check_boot(n_boot, confidence)
    _check_columns(runs, [algo_col, task_col, *metrics])
    present = set(runs[algo_col].dropna().unique())
    for a in (algo, baseline):
        if a not in present:
            raise bad_choice("algorithm", a, sorted(present, key=str))
    rng = _rng(seed)
    alpha = 1.0 - confidence
    rows = []
    for metric in metrics:
        va = _values_by_task(runs, metric, algo, algo_col, task_col)
        vb = _values_by_task(runs, metric, baseline, algo_col, task_col)
        shared = [t for t in va if t in vb]
        missing = sorted(set(va) ^ set(vb), key=str)
        scopes = [(t, [t]) for t in shared]
        if shared:
            scopes.append((POOLED, shared))
        for task, ts in scopes:
            ga, gb = [va[t] for t in ts], [vb[t] for t in ts]
            ra, rb = _stratified_resample(ga, n_boot, rng), _stratified_resample(gb, n_boot, rng)
            a_val = float(_aggregate(np.concatenate(ga), stat))
            b_val = float(_aggregate(np.concatenate(gb), stat))
            diff_lo, diff_hi = _percentile_ci(_aggregate(ra, stat) - _aggregate(rb, stat), alpha)
            poi = float(np.mean([prob_improvement(x, y) for x, y in zip(ga, gb, strict=True)]))
            poi_reps = np.zeros(n_boot)
            ca = np.cumsum([0, *(g.size for g in ga)])
            cb = np.cumsum([0, *(g.size for g in gb)])
            for i in range(len(ts)):
                poi_reps += _poi_rows(ra[:, ca[i] : ca[i + 1]], rb[:, cb[i] : cb[i + 1]])
            poi_lo, poi_hi = _percentile_ci(poi_reps / len(ts), alpha)
            rows.append(
                {
                    "task": task,
                    "metric": metric,
                    "algo": algo,
                    "baseline": baseline,
                    "stat": stat,
                    "algo_value": a_val,
                    "baseline_value": b_val,
                    "difference": a_val - b_val,
                    "diff_ci_low": diff_lo,
                    "diff_ci_high": diff_hi,
                    "poi": poi,
                    "poi_ci_low": poi_lo,
                    "poi_ci_high": poi_hi,
                    "n_algo": int(sum(g.size for g in ga)),
                    "n_baseline": int(sum(g.size for g in gb)),
                    "n_tasks": len(ts),
                    "reason": f"tasks without both algorithms left out: {missing}"
                    if task == POOLED and missing
                    else "",
                }
            )
    return pd.DataFrame(rows, columns=COMPARISON_COLUMNS)


# ----------------------------------------------------------------------------- sentences


def _fmt(value: float, digits: int) -> str:
    return f"{value:.{digits}g}"


def _label(metric: str, labels: Mapping[str, str] | None) -> str:
    if labels and metric in labels:
        return labels[metric]
    return metric.rsplit(".", 1)[-1]


def describe_comparison(
    comparison: pd.DataFrame,
    *,
    task: Hashable | None = None,
    metrics: Sequence[str] | None = None,
    labels: Mapping[str, str] | None = None,
    digits: int = 3,
) -> str:
    """One plain-text sentence summarising :func:`compare_algorithms` rows for one task.

    E.g. "ppo_sam lowered lambda_max by 12.3 [CI 4.1, 20.5] and raised robust AUC by 0.04
    [CI -0.01, 0.09] (the CI spans zero: no evidence of a difference) on CartPole (5 seeds)".
    The CI is stated on the scale of the stated change (a reduction's CI is the negated diff CI),
    so "lowered by 3 [CI -2, 8]" reads directly. ``labels`` maps metric columns to words (default:
    the last dotted component); ``metrics`` picks and orders the clauses (default: all rows);
    ``task`` may be omitted when the rows hold a single task.
    """
    _check_columns(comparison, COMPARISON_COLUMNS)
    tasks = list(dict.fromkeys(comparison["task"]))
    if task is None:
        if len(tasks) != 1:
            raise RlflatError(f"task is required when rows hold several tasks; valid choices: {tasks}")
        task = tasks[0]
    if task not in tasks:
        raise bad_choice("task", task, tasks)
    rows = comparison[comparison["task"] == task]
    if metrics is not None:
        present = list(rows["metric"])
        for m in metrics:
            if m not in present:
                raise bad_choice("metric", m, present)
        rows = rows.set_index("metric").loc[list(metrics)].reset_index()
    algos = list(dict.fromkeys(rows["algo"]))
    if len(algos) != 1:
        raise RlflatError(f"rows compare several algorithms {algos}; filter to one")
    stat_word = {"mean": "", "iqm": "the IQM of ", "median": "the median of "}
    clauses = []
    for r in rows.to_dict("records"):
        diff, lo, hi = float(r["difference"]), float(r["diff_ci_low"]), float(r["diff_ci_high"])
        what = stat_word.get(str(r["stat"]), f"{r['stat']} of ") + _label(str(r["metric"]), labels)
        if diff > 0:
            text = f"raised {what} by {_fmt(diff, digits)} [CI {_fmt(lo, digits)}, {_fmt(hi, digits)}]"
        elif diff < 0:
            text = f"lowered {what} by {_fmt(-diff, digits)} [CI {_fmt(-hi, digits)}, {_fmt(-lo, digits)}]"
        else:
            text = f"left {what} unchanged (difference 0 [CI {_fmt(lo, digits)}, {_fmt(hi, digits)}])"
        if lo <= 0 <= hi:
            text += " (the CI spans zero: no evidence of a difference)"
        clauses.append(text)
    body = clauses[0] if len(clauses) == 1 else ", ".join(clauses[:-1]) + " and " + clauses[-1]
    first = rows.iloc[0]
    na, nb, nt = int(first["n_algo"]), int(first["n_baseline"]), int(first["n_tasks"])
    baseline = str(first["baseline"])
    if task == POOLED:
        where = f"across {nt} tasks ({na} vs {nb} runs)"
    else:
        seeds = f"{na} seeds" if na == nb else f"{na} vs {nb} seeds"
        where = f"on {task} ({seeds})"
    return f"{algos[0]} {body} relative to {baseline} {where}"
