"""Power statements and partial Spearman: checked against simulation and the closed-form partial correlation."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from rlflat.report.stats.correlation import fisher_z_interval
from rlflat.report.stats.partial import partial_spearman
from rlflat.report.stats.power import correlation_power, min_detectable_rho, stratified_power


def _spearman_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    ra = sps.rankdata(a, axis=1)
    rb = sps.rankdata(b, axis=1)
    ra -= ra.mean(axis=1, keepdims=True)
    rb -= rb.mean(axis=1, keepdims=True)
    return np.asarray((ra * rb).sum(1) / np.sqrt((ra * ra).sum(1) * (rb * rb).sum(1)))


def _simulated_power(rho_s: float, sizes: list[int], reps: int, rng: np.random.Generator) -> float:
    """Share of bivariate-normal samples (Spearman rho_s, strata of ``sizes``) whose pooled Fisher-z CI excludes 0."""
    r = 2.0 * math.sin(math.pi * rho_s / 6.0)  # Pearson r with Spearman rho_s (bivariate normal)
    rhos = []
    for n in sizes:
        a = rng.normal(size=(reps, n))
        b = r * a + math.sqrt(1 - r * r) * rng.normal(size=(reps, n))
        rhos.append(_spearman_rows(a, b))
    est = np.average(np.stack(rhos), axis=0, weights=sizes)
    n_eq = 3.0 + sum(n - 3.0 for n in sizes)
    intervals = [fisher_z_interval(float(e), n_eq, "spearman") for e in est]
    return float(np.mean([not (lo <= 0 <= hi) for lo, hi in intervals]))


def test_min_detectable_rho_has_the_stated_power_in_simulation() -> None:
    rng = np.random.default_rng(0)
    rho = min_detectable_rho(30)
    assert 0.45 < rho < 0.6 and correlation_power(rho, 30) == pytest.approx(0.8, abs=1e-6)
    assert _simulated_power(rho, [30], 4000, rng) == pytest.approx(0.8, abs=0.05)


def test_stratified_design_power_in_simulation() -> None:
    rng = np.random.default_rng(1)
    sizes = [7, 14, 7, 14]
    stated = stratified_power(0.5, sizes)
    assert 0.75 < stated < 0.85
    assert _simulated_power(0.5, sizes, 4000, rng) == pytest.approx(stated, abs=0.05)
    assert stratified_power(0.5, [5, 5, 5, 5]) < 0.4  # the first study's design: four strata of five
    assert math.isnan(min_detectable_rho(3)) and min_detectable_rho(4) > 0.99 and min_detectable_rho(200) < 0.2


def test_partial_spearman_equals_the_closed_form_with_one_covariate() -> None:
    rng = np.random.default_rng(2)
    x, z = rng.normal(size=40), rng.normal(size=40)
    y = x + 2 * z + rng.normal(size=40)
    rx, ry, rz = (sps.rankdata(v) for v in (x, y, z))
    r = np.corrcoef([rx, ry, rz])
    closed = (r[0, 1] - r[0, 2] * r[1, 2]) / math.sqrt((1 - r[0, 2] ** 2) * (1 - r[1, 2] ** 2))
    result = partial_spearman(x, y, seed=0, confounds=z[:, None], n_perm=999)
    assert result.estimate == pytest.approx(closed, abs=1e-12)
    assert result.ci_low < result.estimate < result.ci_high and result.p_value < 0.01


def test_partial_spearman_on_strata_is_the_correlation_of_group_centred_ranks() -> None:
    rng = np.random.default_rng(3)
    groups = np.repeat(["a", "b", "c"], 10)
    shift = pd.Series(groups).map({"a": 0.0, "b": 5.0, "c": -5.0}).to_numpy()
    x = rng.normal(size=30) + shift
    y = -shift + 0.3 * rng.normal(size=30)  # the algorithm drives both: a between-group association only
    frame = pd.DataFrame({"g": groups, "rx": sps.rankdata(x), "ry": sps.rankdata(y)})
    centred = frame.groupby("g")[["rx", "ry"]].transform(lambda v: v - v.mean())
    expected = float(np.corrcoef(centred["rx"], centred["ry"])[0, 1])
    result = partial_spearman(x, y, seed=0, strata=groups, n_perm=999)
    assert result.estimate == pytest.approx(expected, abs=1e-12)
    assert sps.spearmanr(x, y).statistic < -0.5 and result.p_value > 0.05  # pooled: strong; within: nothing
    assert math.isnan(partial_spearman(x[:5], y[:5], seed=0, strata=groups[:5]).estimate) is False
    assert math.isnan(partial_spearman(x[:4], y[:4], seed=0, confounds=np.ones((4, 1))).estimate)


def test_power_formula_by_hand_for_both_coefficients() -> None:
    """Phi(z - c) + Phi(-z - c), z = atanh|rho| / se, c = z_{1 - alpha/2}; se^2 = (1 + rho^2/2)/(n - 3) (Spearman,
    Bonett & Wright) or 0.437/(n - 4) (Kendall, Fieller et al.); no power below the offset; |rho| capped at 0.999."""

    def by_hand(rho: float, n: float, method: str, alpha: float) -> float:
        se = math.sqrt((1 + rho**2 / 2) / (n - 3)) if method == "spearman" else math.sqrt(0.437 / (n - 4))
        z, c = math.atanh(min(abs(rho), 0.999)) / se, sps.norm.ppf(1 - alpha / 2)
        return float(sps.norm.cdf(z - c) + sps.norm.cdf(-z - c))

    for rho, n, method, alpha in ((0.3, 20, "spearman", 0.05), (-0.45, 11.5, "kendall", 0.01), (1.0, 8, "kendall", 0.05),
                                  (0.6, 7, "spearman", 0.1)):  # fmt: skip
        assert correlation_power(rho, n, method, alpha) == pytest.approx(by_hand(rho, n, method, alpha), rel=1e-12)
    assert math.isnan(correlation_power(0.5, 3, "spearman")) and math.isnan(correlation_power(0.5, 4, "kendall"))
    assert correlation_power(0.5, 4.5, "kendall") == pytest.approx(by_hand(0.5, 4.5, "kendall", 0.05), rel=1e-12)
    assert (
        math.isnan(min_detectable_rho(3.5))
        and 0.9 < min_detectable_rho(5) < 0.999
        and min_detectable_rho(30, "kendall") < min_detectable_rho(30, alpha=0.01)
    )


def test_partial_spearman_without_complete_runs_is_undefined() -> None:
    nan = [math.nan] * 6
    out = partial_spearman(nan, list(range(6)), seed=0, confounds=np.arange(6.0)[:, None])
    assert out.n == 0 and math.isnan(out.estimate) and out.reason == "n=0 too few for 1 covariates"
