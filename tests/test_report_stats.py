"""Known-answer tests for rlflat.report.stats (rank correlations, granulated Kendall, comparisons)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from rlflat.errors import RlflatError
from rlflat.report import stats as S

METHODS = [(m, c) for m in S.CORR_METHODS for c in S.CI_METHODS]


# ----------------------------------------------------------------------------- rank correlations


@pytest.mark.parametrize(("method", "ci_method"), METHODS)
def test_monotone_gives_one_and_anti_monotone_minus_one(method: str, ci_method: str) -> None:
    x = np.linspace(0.1, 3.0, 12)
    up = S.rank_correlation(x, np.exp(x), seed=0, method=method, ci_method=ci_method, n_boot=300)
    down = S.rank_correlation(x, -(x**3), seed=0, method=method, ci_method=ci_method, n_boot=300)
    assert (up.estimate, up.ci_low, up.ci_high) == pytest.approx((1.0, 1.0, 1.0), abs=1e-12)
    assert (down.estimate, down.ci_low, down.ci_high) == pytest.approx((-1.0, -1.0, -1.0), abs=1e-12)
    assert up.n == 12 and up.reason == "" and up.p_value < 1e-3


@pytest.mark.parametrize(("method", "ci_method"), METHODS)
def test_independent_data_ci_covers_zero(method: str, ci_method: str) -> None:
    rng = np.random.default_rng(2024)
    x, y = rng.normal(size=200), rng.normal(size=200)
    res = S.rank_correlation(x, y, seed=7, method=method, ci_method=ci_method, n_boot=400)
    assert res.ci_low < 0.0 < res.ci_high
    assert res.ci_high - res.ci_low < 0.4  # n=200: the interval is informative, not [-1, 1]


def test_correlated_data_ci_excludes_zero_and_matches_scipy_estimate() -> None:
    rng = np.random.default_rng(5)
    x = rng.normal(size=80)
    y = x + rng.normal(size=80)
    res = S.rank_correlation(x, y, seed=1, method="kendall", n_boot=400)
    assert res.estimate == pytest.approx(sps.kendalltau(x, y).statistic)
    assert 0.0 < res.ci_low < res.estimate < res.ci_high


def test_same_seed_same_ci_different_seed_different_ci() -> None:
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=40), rng.normal(size=40)
    a = S.rank_correlation(x, y, seed=11, n_boot=300)
    b = S.rank_correlation(x, y, seed=11, n_boot=300)
    c = S.rank_correlation(x, y, seed=12, n_boot=300)
    assert (a.ci_low, a.ci_high) == (b.ci_low, b.ci_high)
    assert (a.ci_low, a.ci_high) != (c.ci_low, c.ci_high)
    assert a.estimate == c.estimate  # only the interval depends on the seed


@pytest.mark.parametrize("method", S.CORR_METHODS)
def test_vectorised_replicates_agree_with_scipy_on_tied_data(method: str) -> None:
    rng = np.random.default_rng(3)
    x = rng.integers(0, 4, size=(40, 15)).astype(float)
    y = rng.integers(0, 4, size=(40, 15)).astype(float)
    x[0] = 1.0  # a constant row is undefined
    ref_fn = sps.kendalltau if method == "kendall" else sps.spearmanr
    got = S._ROW_STATS[method](x, y)
    assert math.isnan(got[0])
    ref = np.array([ref_fn(a, b).statistic for a, b in zip(x[1:], y[1:], strict=True)])
    np.testing.assert_allclose(got[1:], ref, atol=1e-12)


def test_too_few_pairs_and_constant_input_give_nan_with_reason() -> None:
    res = S.rank_correlation([1.0, 2.0, np.nan, 4.0], [1.0, np.nan, 3.0, 2.0], seed=0)
    assert res.n == 2 and math.isnan(res.estimate) and math.isnan(res.ci_low)
    assert "n=2" in res.reason
    const = S.rank_correlation([1.0, 2.0, 3.0, 4.0], [5.0] * 4, seed=0)
    assert math.isnan(const.estimate) and const.reason == "y is constant"


def test_degenerate_resamples_are_counted_not_fatal() -> None:
    # n=3: a resample repeating one run has constant x (probability 3/27 per draw)
    res = S.rank_correlation([1.0, 2.0, 3.0], [1.0, 3.0, 2.0], seed=0, n_boot=500)
    assert 20 < res.n_degenerate < 100
    assert -1.0 <= res.ci_low <= res.ci_high <= 1.0


def test_pooled_ranks_within_task_remove_scale_differences() -> None:
    # Within each task y rises with x, but the task with large x has small y: raw pooling says -ve.
    x = np.r_[np.arange(6.0), 100 + np.arange(6.0)]
    y = np.r_[50 + np.arange(6.0), np.arange(6.0)]
    task = np.repeat(["a", "b"], 6)
    assert sps.spearmanr(x, y).statistic < 0
    res = S.rank_correlation(x, y, seed=0, strata=task, n_boot=200)
    assert (res.estimate, res.ci_low, res.ci_high) == pytest.approx((1.0, 1.0, 1.0))


def test_bad_choices_raise_rlflat_error() -> None:
    with pytest.raises(RlflatError, match="pearson"):
        S.rank_correlation([1, 2, 3], [1, 2, 3], seed=0, method="pearson")
    with pytest.raises(RlflatError, match="seed"):
        S.rank_correlation([1, 2, 3], [1, 2, 3], seed=None)  # type: ignore[arg-type]


def _runs_table() -> pd.DataFrame:
    rng = np.random.default_rng(9)
    rows = []
    for task, n in (("CartPole", 12), ("Pendulum", 2)):
        for s in range(n):
            lam = rng.gamma(2.0, size=1)[0]
            rows.append(
                {
                    "task": task,
                    "seed": s,
                    "probe.hessian.lambda_max": lam,
                    "robustness.auc": -lam + 0.1 * rng.normal(),
                    "robustness.worst_return": np.nan if s == 0 else rng.normal(),
                }
            )
    return pd.DataFrame(rows)


def test_correlation_table_shape_nan_rows_and_reproducibility() -> None:
    runs = _runs_table()
    measures, metrics = ["probe.hessian.lambda_max"], ["robustness.auc", "robustness.worst_return"]
    tab = S.correlation_table(runs, measures, metrics, seed=3, n_boot=200)
    assert list(tab.columns) == S.CORR_COLUMNS
    assert len(tab) == 3 * 2 * 2  # (2 tasks + pooled) x 2 metrics x 2 methods
    cp = tab[(tab.task == "CartPole") & (tab.metric == "robustness.auc")]
    assert (cp.estimate < -0.5).all() and (cp.ci_high < 0).all()
    worst = tab[(tab.task == "CartPole") & (tab.metric == "robustness.worst_return")]
    assert (worst.n == 11).all()  # the NaN run is dropped for this pair only
    small = tab[tab.task == "Pendulum"]
    assert small.estimate.isna().all() and small.reason.str.contains("< 3").all()
    pooled = tab[tab.task == S.POOLED]
    by_metric = pooled.groupby("metric").reason.apply(lambda r: r.str.contains("single run").all())
    # Pendulum keeps one complete worst_return pair: it cannot be ranked, so it leaves the pool
    assert by_metric.to_dict() == {"robustness.auc": False, "robustness.worst_return": True}
    again = S.correlation_table(runs, measures, metrics, seed=np.random.default_rng(3), n_boot=200)
    pd.testing.assert_frame_equal(tab, again)
    with pytest.raises(RlflatError, match="probe.nope"):
        S.correlation_table(runs, ["probe.nope"], ["robustness.auc"], seed=0)


# ----------------------------------------------------------------------------- granulated Kendall


def _granulated_table() -> pd.DataFrame:
    """Across algorithms measure and metric rise together; within one, varying rho, they oppose."""
    rows = []
    for a in range(6):
        for r, rho in enumerate((0.01, 0.05, 0.1)):
            for seed, noise in enumerate((-0.02, 0.0, 0.02)):  # seed noise averages out exactly
                rows.append(
                    {
                        "algo": f"algo{a}",
                        "hp.rho": rho,
                        "seed": seed,
                        "measure": 10.0 * a + r + noise,
                        "metric": 10.0 * a - r - noise,
                    }
                )
    return pd.DataFrame(rows)


def test_granulated_kendall_isolates_the_factor_that_drives_the_correlation() -> None:
    g = S.granulated_kendall(_granulated_table(), "measure", "metric", ["algo", "hp.rho"])
    assert g.psi["algo"] == pytest.approx(1.0)
    assert g.psi["hp.rho"] == pytest.approx(-1.0)
    assert g.overall == pytest.approx(0.0)
    assert g.kendall_all > 0.7  # plain tau is fooled by the between-algorithm trend
    assert g.n_configs == 18  # seeds averaged into configurations
    assert g.n_groups == {"algo": 3, "hp.rho": 6} == g.n_groups_used


def test_granulated_kendall_nan_factor_level_and_undefined_groups() -> None:
    runs = _granulated_table()
    base = runs[runs.algo == "algo0"].assign(algo="ppo", **{"hp.rho": np.nan})
    runs = pd.concat([runs, base], ignore_index=True)
    g = S.granulated_kendall(runs, "measure", "metric", ["algo", "hp.rho"])
    # ppo has one configuration (rho NaN): its rho-group is undefined, and the NaN-rho algo-group too
    assert g.n_configs == 19
    assert (g.n_groups["hp.rho"], g.n_groups_used["hp.rho"]) == (7, 6)
    assert (g.n_groups["algo"], g.n_groups_used["algo"]) == (4, 3)
    assert g.psi["hp.rho"] == pytest.approx(-1.0)


def test_granulated_kendall_table_rows() -> None:
    runs = _granulated_table().assign(task="CartPole")
    tab = S.granulated_kendall_table(runs, ["measure"], ["metric"], ["algo", "hp.rho"])
    assert list(tab.columns) == S.GRANULATED_COLUMNS
    psi = dict(zip(tab.factor, tab.psi, strict=True))
    assert psi["algo"] == pytest.approx(1.0) and psi[S.PSI_OVERALL] == pytest.approx(0.0)
    assert psi[S.KENDALL_ALL] > 0.7
    with pytest.raises(RlflatError):
        S.granulated_kendall(runs, "measure", "metric", [])


# ----------------------------------------------------------------------------- algorithm comparisons


def test_iqm_hand_computed() -> None:
    # sorted: 1 2 | 3 4 5 6 | 7 100 -> mean of the middle four = 4.5
    assert float(S.interquartile_mean([7, 1, 100, 3, 5, 2, 6, 4])) == pytest.approx(4.5)
    # n=5 cuts one value from each end: mean(2, 3, 50) = 55/3
    assert float(S.interquartile_mean([-40, 2, 3, 50, 99])) == pytest.approx(55 / 3)


def test_probability_of_improvement_known_values() -> None:
    assert S.prob_improvement([5, 6, 7], [1, 2, 3, 4]) == 1.0
    assert S.prob_improvement([1, 2, 3], [5, 6]) == 0.0
    assert S.prob_improvement([1, 2, 3], [1, 2, 3]) == 0.5
    # four pairs: two 2>1, two ties 2=2 -> (2 + 2 * 0.5) / 4
    assert S.prob_improvement([2, 2], [1, 2]) == pytest.approx(0.75)


def _algo_runs(shift: float, tasks: dict[str, float], n: int = 5, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for task, scale in tasks.items():
        for algo in ("ppo", "ppo_sam"):
            for s in range(n):
                lam = scale * (1 + 0.1 * rng.normal()) - (shift * scale if algo == "ppo_sam" else 0.0)
                rows.append(
                    {
                        "task": task,
                        "algo": algo,
                        "seed": s,
                        "probe.hessian.lambda_max": lam,
                        "robustness.auc": rng.normal(),
                    }
                )
    return pd.DataFrame(rows)


def test_stratified_bootstrap_keeps_task_counts() -> None:
    # Constant values within each task: resampling within tasks cannot move the pooled mean,
    # whereas resampling all runs together would.
    runs = pd.DataFrame(
        {
            "task": ["a"] * 3 + ["b"] * 5,
            "algo": ["ppo"] * 8,
            "x": [0.0] * 3 + [100.0] * 5,
        }
    )
    tab = S.aggregate_table(runs, ["x"], seed=0, stat="mean", n_boot=200)
    assert list(tab.columns) == S.AGGREGATE_COLUMNS
    pooled = tab[tab.task == S.POOLED].iloc[0]
    assert (pooled.estimate, pooled.ci_low, pooled.ci_high) == pytest.approx((62.5, 62.5, 62.5))
    assert (pooled.n_runs, pooled.n_tasks) == (8, 2)


def test_aggregate_iqm_ci_contains_estimate() -> None:
    tab = S.aggregate_table(_algo_runs(0.5, {"A": 1.0}), ["robustness.auc"], seed=1, n_boot=300)
    assert (tab.ci_low <= tab.estimate).all() and (tab.estimate <= tab.ci_high).all()
    assert set(tab.algo) == {"ppo", "ppo_sam"} and set(tab.task) == {"A", S.POOLED}


def test_compare_algorithms_detects_a_shift_and_not_noise() -> None:
    runs = _algo_runs(0.5, {"CartPole": 1.0, "Pendulum": 10.0})
    metrics = ["probe.hessian.lambda_max", "robustness.auc"]
    tab = S.compare_algorithms(runs, metrics, "ppo_sam", "ppo", seed=4, n_boot=500)
    assert list(tab.columns) == S.COMPARISON_COLUMNS
    lam = tab[(tab.task == "CartPole") & (tab.metric == metrics[0])].iloc[0]
    assert lam.diff_ci_high < 0 < lam.diff_ci_high - lam.diff_ci_low
    assert lam.difference == pytest.approx(lam.algo_value - lam.baseline_value)
    assert lam.poi == 0.0 and lam.poi_ci_high == 0.0  # every sam run is flatter
    auc = tab[(tab.task == "CartPole") & (tab.metric == metrics[1])].iloc[0]
    assert auc.diff_ci_low < 0 < auc.diff_ci_high and auc.poi_ci_low < 0.5 < auc.poi_ci_high
    pooled = tab[(tab.task == S.POOLED) & (tab.metric == metrics[0])].iloc[0]
    assert (pooled.n_algo, pooled.n_baseline, pooled.n_tasks) == (10, 10, 2)

    text = S.describe_comparison(tab, task="CartPole", labels={"robustness.auc": "robust AUC"})
    assert text.startswith("ppo_sam lowered lambda_max by ")
    assert "robust AUC by" in text and text.endswith("relative to ppo on CartPole (5 seeds)")
    assert text.count("the CI spans zero: no evidence of a difference") == 1
    assert "across 2 tasks (10 vs 10 runs)" in S.describe_comparison(tab, task=S.POOLED)
    only_auc = S.describe_comparison(tab, task="Pendulum", metrics=["robustness.auc"])
    assert only_auc.startswith("ppo_sam ") and "lambda_max" not in only_auc and "auc" in only_auc
    with pytest.raises(RlflatError, match="task"):
        S.describe_comparison(tab)


def test_sentence_states_reduction_ci_on_the_reduction_scale() -> None:
    row = dict.fromkeys(S.COMPARISON_COLUMNS, 0.0) | {
        "task": "CartPole",
        "metric": "probe.hessian.lambda_max",
        "algo": "ppo_sam",
        "baseline": "ppo",
        "stat": "mean",
        "difference": -3.0,
        "diff_ci_low": -8.0,
        "diff_ci_high": 2.0,
        "n_algo": 5,
        "n_baseline": 4,
        "n_tasks": 1,
        "reason": "",
    }
    text = S.describe_comparison(pd.DataFrame([row]))
    assert text == (
        "ppo_sam lowered lambda_max by 3 [CI -2, 8] (the CI spans zero: no evidence of a difference) "
        "relative to ppo on CartPole (5 vs 4 seeds)"
    )


def test_compare_rejects_unknown_algorithm() -> None:
    with pytest.raises(RlflatError, match="valid choices: ppo, ppo_sam"):
        S.compare_algorithms(_algo_runs(0.0, {"A": 1.0}), ["robustness.auc"], "sam", "ppo", seed=0)
