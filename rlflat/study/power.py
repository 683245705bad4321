"""Sample size for the registered tests: analytic power, and the power of the exact test by simulation.

Analytic (the same large-sample approximations the report's intervals use):

* within-configuration Spearman: Fisher z with the Bonett-Wright variance (1 + rho^2/2) / (n_eq - 3), n_eq the
  strata's equivalent n (:func:`rlflat.report.stats.correlation.equivalent_n`); a one-sided test at level a has
  power Phi(|atanh(rho)| / se - z_{1-a});
* matched difference at standardised effect d (cell means differ by d within-cell SDs): the cell-weighted
  difference has variance 1 / sum_c w_c, w_c = n_t n_c / (n_t + n_c), so power = Phi(d sqrt(sum w) - z_{1-a}).

Holm's procedure rejects at least what Bonferroni does, so the power at a = alpha / m (m = tests in the family)
is a lower bound for Holm. Simulated: the registered permutation test itself
(:func:`rlflat.report.stats.registered.stratified_rank_test`) on bivariate-normal strata whose population
Spearman is rho (Pearson 2 sin(pi rho / 6), Kruskal 1958), each run kept with probability ``solve_rate`` (the
unsolved rule), strata below ``min_stratum`` dropped as the analysis drops them.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats as sps

from rlflat.report.stats._common import SeedLike, rng_from
from rlflat.report.stats.correlation import equivalent_n
from rlflat.report.stats.registered import matched_difference_test, stratified_rank_test
from rlflat.study.preregistration import PowerRow, Preregistration

__all__ = [
    "correlation_power_one_sided",
    "design_power_rows",
    "difference_power_one_sided",
    "simulate_correlation_power",
    "simulate_difference_power",
]


def correlation_power_one_sided(rho: float, sizes: list[float], alpha: float) -> float:
    """Analytic power of the one-sided within-strata Spearman test at population |rho| with strata of ``sizes``."""
    n_eq = equivalent_n("spearman", np.asarray(sizes, dtype=np.float64))
    if n_eq <= 3:
        return math.nan
    se = math.sqrt((1.0 + rho * rho / 2.0) / (n_eq - 3.0))
    return float(sps.norm.cdf(math.atanh(min(abs(rho), 0.999)) / se - sps.norm.ppf(1.0 - alpha)))


def difference_power_one_sided(d: float, cells: list[tuple[float, float]], alpha: float) -> float:
    """Analytic power of the one-sided matched difference at standardised effect ``d``; cells as (n_t, n_c)."""
    total = sum(t * c / (t + c) for t, c in cells)
    return float(sps.norm.cdf(abs(d) * math.sqrt(total) - sps.norm.ppf(1.0 - alpha)))


def simulate_correlation_power(
    rho: float,
    strata: int,
    per_stratum: int,
    solve_rate: float,
    alpha: float,
    *,
    seed: SeedLike,
    replicates: int = 400,
    n_perm: int = 999,
    min_stratum: int = 4,
) -> float:
    """Fraction of simulated studies in which the registered one-sided test rejects at ``alpha`` (rho < 0 tested)."""
    rng = rng_from(seed)
    r = 2.0 * math.sin(math.pi * abs(rho) / 6.0)
    cov = np.array([[1.0, -r], [-r, 1.0]])
    hits = 0
    for _ in range(replicates):
        xy = rng.multivariate_normal(np.zeros(2), cov, size=(strata, per_stratum))
        kept = rng.random((strata, per_stratum)) < solve_rate
        labels = np.repeat(np.arange(strata), per_stratum).astype(str)
        x = np.where(kept, xy[..., 0], np.nan).ravel()
        y = np.where(kept, xy[..., 1], np.nan).ravel()
        res = stratified_rank_test(x, y, labels, alternative="less", seed=rng, n_perm=n_perm, min_stratum=min_stratum)
        hits += int(math.isfinite(res.p_value) and res.p_value <= alpha)
    return hits / replicates


def simulate_difference_power(
    d: float,
    cells: int,
    n_treatment: int,
    n_control: int,
    alpha: float,
    *,
    seed: SeedLike,
    replicates: int = 400,
    n_perm: int = 999,
) -> float:
    """Fraction of simulated studies in which the registered matched-difference test rejects (treatment + d)."""
    rng = rng_from(seed)
    hits = 0
    treated = np.tile(np.r_[np.ones(n_treatment, bool), np.zeros(n_control, bool)], cells)
    labels = np.repeat(np.arange(cells), n_treatment + n_control).astype(str)
    for _ in range(replicates):
        values = rng.standard_normal(treated.size) + d * treated
        res = matched_difference_test(values, treated, labels, alternative="greater", seed=rng, n_perm=n_perm)
        hits += int(res.p_value <= alpha)
    return hits / replicates


def _design_counts(prereg: Preregistration) -> tuple[list[int], list[tuple[int, int]]]:
    """Per task: configurations (strata) and, per matching cell, (SAM runs, plain runs) of the registered design."""
    seeds = len(prereg.design.seeds)
    strata, cells = [], []
    for task in prereg.design.tasks:
        radii = len(task.levels.get("rho", []))
        shared = math.prod(len(v) for k, v in task.levels.items() if k != "rho")
        plain = 1 if any(not a.endswith(("_sam", "_asam")) for a in task.algos) else 0
        strata.append(shared * (plain + radii))
        cells += [(radii * seeds, seeds)] * shared
    return strata, cells


def design_power_rows(
    prereg: Preregistration, *, simulate: bool = True, solve_rates: tuple[float, ...] = (1.0, 0.7)
) -> list[PowerRow]:
    """The power rows the preregistration states, recomputed from its design (``simulate``: also by simulation).

    Effects are the issue's targets: within-configuration |rho| = 0.3 pooled over tasks and 0.5 per task; the
    matched difference at d = 0.3 pooled. Levels are alpha / m for the hypothesis's family (Bonferroni bound).
    """
    power = prereg.power
    seeds = len(prereg.design.seeds)
    alpha = prereg.analysis.alpha
    strata, cells = _design_counts(prereg)
    family_size: dict[str, int] = {}
    for h in prereg.hypotheses:
        tests = len(prereg.design.tasks) if h.scope == "per_task" else 1
        family_size[h.family] = family_size.get(h.family, 0) + tests
    rows = []
    done: set[tuple[str, str]] = set()
    for h in prereg.hypotheses:
        key = (h.test, h.scope)
        if key in done:  # H2's design is H1's: the same numbers
            continue
        done.add(key)
        level = alpha / family_size[h.family]
        if h.test == "within_correlation":
            effect = 0.3 if h.scope == "pooled" else 0.5
            n_strata = sum(strata) if h.scope == "pooled" else min(strata)
            for rate in solve_rates:
                analytic = correlation_power_one_sided(effect, [seeds * rate] * n_strata, level)
                sim = (
                    simulate_correlation_power(
                        effect,
                        n_strata,
                        seeds,
                        rate,
                        level,
                        seed=power.seed,
                        replicates=power.replicates,
                        n_perm=power.n_perm,
                        min_stratum=prereg.analysis.min_stratum,
                    )
                    if simulate
                    else None
                )
                rows.append(PowerRow(hypothesis=h.id, scope=h.scope, effect=effect, solve_rate=rate, strata=n_strata,
                                     per_stratum=seeds, alpha_per_test=level, analytic=round(analytic, 4),
                                     simulated=sim))  # fmt: skip
        elif h.scope == "pooled":
            effect = 0.3
            analytic = difference_power_one_sided(effect, [(float(t), float(c)) for t, c in cells], level)
            n_t, n_c = cells[0]
            sim = (
                simulate_difference_power(
                    effect,
                    len(cells),
                    n_t,
                    n_c,
                    level,
                    seed=power.seed,
                    replicates=power.replicates,
                    n_perm=power.n_perm,
                )
                if simulate
                else None
            )
            rows.append(PowerRow(hypothesis=h.id, scope=h.scope, effect=effect, solve_rate=1.0, strata=len(cells),
                                 per_stratum=n_t + n_c, alpha_per_test=level, analytic=round(analytic, 4),
                                 simulated=sim))  # fmt: skip
    return rows
