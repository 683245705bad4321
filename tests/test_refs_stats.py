"""Stratified rank correlation against scipy per stratum and hand-computed pooling, with strata of unequal sizes
(where n_s-weighting, equivalent_n's offsets and the dropped strata each change the answer)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from rlflat.errors import RlflatError
from rlflat.report import stats as S
from rlflat.report.stats.correlation import equivalent_n

SCIPY = {"spearman": sps.spearmanr, "kendall": sps.kendalltau}


def _strata_data() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Strata of 4, 7 and 11 runs with different strengths and scales, one of 2 runs (too few) and one with a
    constant x (no coefficient)."""
    rng = np.random.default_rng(3)
    xs, ys, labels = [], [], []
    for label, n, slope, shift in (("a", 4, 1.0, 0.0), ("b", 7, -0.4, 50.0), ("c", 11, 0.7, -20.0)):
        x = rng.normal(size=n) + shift
        xs += list(x)
        ys += list(slope * x + rng.normal(scale=0.6, size=n) - 3 * shift)
        labels += [label] * n
    xs += [1.0, 2.0]
    ys += [5.0, 4.0]
    labels += ["tiny", "tiny"]
    xs += [7.0] * 5
    ys += list(rng.normal(size=5))
    labels += ["flat"] * 5
    return np.array(xs), np.array(ys), np.array(labels)


def test_equivalent_n_by_hand() -> None:
    assert equivalent_n("spearman", [4, 7, 11]) == 3 + 1 + 4 + 8
    assert equivalent_n("kendall", [4, 7, 11]) == 4 + 0 + 3 + 7
    assert equivalent_n("kendall", [3, 10]) == 4 + 0 + 6  # a stratum below the offset adds nothing
    assert equivalent_n("spearman", [9]) == 9 and equivalent_n("kendall", [9]) == 9  # one stratum: its n


@pytest.mark.parametrize("method", S.CORR_METHODS)
def test_stratified_estimate_and_interval_by_hand_on_unequal_strata(method: str) -> None:
    x, y, labels = _strata_data()
    res = S.rank_correlation(x, y, seed=0, method=method, strata=labels, n_perm=199)
    sizes, coefs = [], []
    for label in ("a", "b", "c"):
        mask = labels == label
        sizes.append(mask.sum())
        coefs.append(SCIPY[method](x[mask], y[mask]).statistic)
    estimate = float(np.dot(sizes, coefs) / np.sum(sizes))
    assert len(set(np.sign(coefs))) == 2  # strata disagree in sign: the weights matter
    assert res.estimate == pytest.approx(estimate, rel=1e-12)
    assert res.estimate != pytest.approx(float(np.mean(coefs)), rel=1e-3)  # not the unweighted mean
    assert res.n == 22 and res.n_strata == 3 and "left out 2 of 5 strata" in res.reason
    offset = 3 if method == "spearman" else 4
    n_eq = offset + sum(max(n - offset, 0) for n in sizes)
    var = (1 + estimate**2 / 2) / (n_eq - 3) if method == "spearman" else 0.437 / (n_eq - 4)
    half = sps.norm.ppf(0.975) * math.sqrt(var)
    z = math.atanh(estimate)
    assert (res.ci_low, res.ci_high) == pytest.approx((math.tanh(z - half), math.tanh(z + half)), rel=1e-12)


def test_stratified_permutation_p_value_matches_exact_enumeration() -> None:
    """Strata of 3 and 4 runs: 3! x 4! = 144 joint orderings enumerate the within-stratum null exactly."""
    x = np.array([0.3, 1.9, 1.1, 5.0, 4.2, 6.1, 7.7])
    y = np.array([2.0, 3.5, 2.9, 1.0, 0.4, 1.7, 0.2])
    labels = np.array(["p"] * 3 + ["q"] * 4)
    observed = (3 * sps.spearmanr(x[:3], y[:3]).statistic + 4 * sps.spearmanr(x[3:], y[3:]).statistic) / 7
    null = [
        (3 * sps.spearmanr(x[:3], y[:3][list(p)]).statistic + 4 * sps.spearmanr(x[3:], y[3:][list(q)]).statistic) / 7
        for p in itertools.permutations(range(3))
        for q in itertools.permutations(range(4))
    ]
    exact = float(np.mean(np.abs(null) >= abs(observed) - 1e-12))
    n_perm = 20_000
    res = S.rank_correlation(x, y, seed=5, strata=labels, n_perm=n_perm)
    assert res.estimate == pytest.approx(observed, rel=1e-12)
    se = math.sqrt(exact * (1 - exact) / n_perm)
    assert abs(res.p_value - exact) < 4 * se + 2 / n_perm, (res.p_value, exact)
    assert "20000 random" in res.p_method


# -- the sentences, word for word ------------------------------------------------------------------------------


def _corr_row(**extra: object) -> dict[str, object]:
    row: dict[str, object] = {"task": "CartPole", "measure": "probe.lambda_max", "metric": "robustness.auc_mean"}
    row |= {"method": "kendall", "scope": S.ACROSS, "estimate": -0.456, "ci_low": -0.81, "ci_high": -0.052}
    row |= {"n": 14, "p_value": 0.0312, "p_holm": 0.0936, "n_tests": 3, "reason": ""}
    return row | extra


def test_describe_correlation_word_for_word() -> None:
    """The full sentence for a Kendall row with a Holm p and censoring, and its variants (no CI, undefined, pooled
    within algorithm): a changed word, number format or clause is a changed report."""
    text = S.describe_correlation(_corr_row(), "lambda_max", "robust AUC", n_censored=2)
    assert text == (
        "lambda_max vs robust AUC on CartPole, across runs (between + within algorithms): Kendall τ = -0.46 [CI -0.81, -0.05] over 14 runs "
        "(permutation p = 0.031, Holm-adjusted over 3 tests p = 0.094; 2 of 14 runs never collapsed (tied at the "
        "range bound)); the CI excludes zero: sharper runs were less robust (as ranked by robust AUC)."
    )
    no_ci = S.describe_correlation(_corr_row(ci_low=math.nan, ci_high=math.nan, p_value=0.0004, p_holm=math.nan),
                                   "m", "r")  # fmt: skip
    assert no_ci == (
        "m vs r on CartPole, across runs (between + within algorithms): Kendall τ = -0.46 over 14 runs (permutation p < 0.001); "
        "too few runs for an interval, so no claim."
    )
    pooled = _corr_row(task=S.POOLED, scope=S.WITHIN_ALGO, method="spearman", estimate=math.nan, reason="no data here")
    assert S.describe_correlation(pooled, "m", "r") == (
        "m vs r pooled over tasks (within-task ranks), within each configuration: undefined (no data here)."
    )
    spans = S.describe_correlation(_corr_row(method="spearman", ci_high=0.2, p_holm=math.nan), "m", "r")
    assert spans == (
        "m vs r on CartPole, across runs (between + within algorithms): Spearman ρ = -0.46 [CI -0.81, 0.20] over 14 runs (permutation p = 0.031); "
        "the CI spans zero: no evidence of an association."
    )


def test_kendall_rows_above_the_vector_limit_match_scipy_on_a_narrow_range() -> None:
    """n = 300 (the scipy loop), y spread over less than 1: the constant-side check is ptp > 0, not a range."""
    rng = np.random.default_rng(2)
    x = rng.normal(size=(2, 300))
    y = 0.3 * x + rng.normal(scale=0.1, size=(2, 300))
    y = 0.5 * (y - y.min()) / np.ptp(y)  # within [0, 0.5]
    got = S.ROW_STATS["kendall"](x, y)
    np.testing.assert_allclose(got, [sps.kendalltau(a, b).statistic for a, b in zip(x, y, strict=True)], rtol=1e-12)


def _two_algos(a: np.ndarray, b: np.ndarray, metric: str = "robustness.auc_mean") -> pd.DataFrame:
    """Runs of algorithm x (values a) and y (values b) on one task."""
    return pd.DataFrame({"task": "CartPole", "algo": ["x"] * a.size + ["y"] * b.size, metric: np.r_[a, b]})


def test_iqm_comparison_matches_scipy_trim_mean_and_bootstrap() -> None:
    """stat='iqm': the difference of scipy trim_mean(0.25) values, and a percentile-bootstrap interval matching
    scipy.stats.bootstrap's (two independent samples) within Monte Carlo error."""
    rng = np.random.default_rng(6)
    a, b = rng.gamma(2.0, 1.5, size=9) + 1.0, rng.normal(2.0, 0.7, size=7)
    runs = _two_algos(a, b, "probe.trace")
    row = S.compare_algorithms(runs, ["probe.trace"], "x", "y", seed=1, stat="iqm", n_boot=20_000).iloc[0]
    iqm_a, iqm_b = sps.trim_mean(a, 0.25), sps.trim_mean(b, 0.25)
    assert (row.algo_value, row.baseline_value) == pytest.approx((iqm_a, iqm_b), rel=1e-12)
    assert row.difference == pytest.approx(iqm_a - iqm_b, rel=1e-12)
    ref = sps.bootstrap((a, b), lambda x, y, axis: sps.trim_mean(x, 0.25, axis=axis) - sps.trim_mean(y, 0.25, axis=axis),
                        n_resamples=20_000, method="percentile", random_state=np.random.default_rng(2)).confidence_interval  # fmt: skip
    width = ref.high - ref.low
    assert row.diff_ci_low == pytest.approx(ref.low, abs=0.05 * width)
    assert row.diff_ci_high == pytest.approx(ref.high, abs=0.05 * width)
    assert row.diff_method.startswith("percentile bootstrap")


def test_mean_comparison_states_both_means_and_words_small_differences_by_sign() -> None:
    """Welch route: algo_value and baseline_value are the two sample means; a difference between 0 and 1 (in
    either direction) is 'raised' / 'lowered' by its sign, and no difference at all is 'unchanged'."""
    for shift, verb in ((0.4, "raised"), (-0.4, "lowered")):
        a = np.array([1.0, 1.2, 0.9, 1.1, 1.3]) + shift
        b = np.array([1.0, 1.2, 0.9, 1.1, 1.3, 1.05])
        runs = _two_algos(a, b)
        table = S.compare_algorithms(runs, ["robustness.auc_mean"], "x", "y", seed=0)
        row = table.iloc[0]
        assert (row.algo_value, row.baseline_value) == pytest.approx((a.mean(), b.mean()), rel=1e-12)
        assert row.difference == pytest.approx(a.mean() - b.mean(), rel=1e-12)
        text = S.describe_comparison(table, task="CartPole")
        assert f"x {verb} auc_mean by {abs(a.mean() - b.mean()):.3g}" in text, text
    same = _two_algos(np.array([0.2, 0.4, 0.3]), np.array([0.2, 0.4, 0.3]))
    text = S.describe_comparison(S.compare_algorithms(same, ["robustness.auc_mean"], "x", "y", seed=0), task="CartPole")
    assert "left auc_mean unchanged (difference 0" in text and "lowered" not in text, text


def test_mean_interval_is_scipy_s_t_interval_and_a_point_without_spread() -> None:
    from rlflat.report.stats.comparison import mean_interval

    a = np.array([0.2, 0.9, 0.4, 0.7, 1.3])
    ref = sps.t.interval(0.9, a.size - 1, a.mean(), sps.sem(a))
    assert mean_interval(a, 0.9) == pytest.approx(ref, rel=1e-12)
    assert mean_interval(np.array([2.5, 2.5, 2.5])) == (2.5, 2.5)
    assert all(np.isnan(mean_interval(np.array([1.0]))))


def test_stats_refusals_name_the_argument() -> None:
    from rlflat.report.stats._common import check_choice
    from rlflat.report.stats.correlation import rank_correlation

    with pytest.raises(RlflatError, match="method"):
        check_choice("method", "pearson", ("spearman", "kendall"))
    with pytest.raises(RlflatError, match="n_perm"):
        rank_correlation([1, 2, 3, 4], [2, 1, 4, 3], seed=0, n_perm=0)


def test_iqm_comparison_is_worded_as_the_iqm() -> None:
    rng = np.random.default_rng(3)
    runs = _two_algos(rng.normal(0.8, 0.05, 6), rng.normal(0.6, 0.05, 6))
    table = S.compare_algorithms(runs, ["robustness.auc_mean"], "x", "y", seed=0, stat="iqm", n_boot=500)
    assert "x raised the IQM of auc_mean by" in S.describe_comparison(table, task="CartPole")


def test_correlation_without_one_complete_pair_is_undefined_and_says_why() -> None:
    """Every pair has a NaN: no coefficient, no interval, and the reason (pooled, and by strata)."""
    x, y = [math.nan] * 5, [1.0, 2.0, 3.0, 4.0, 5.0]
    for strata, reason, n_strata in ((None, "n=0 complete pairs < 3", 1), (list("aabbb"), "no stratum with data", 0)):
        r = S.rank_correlation(x, y, seed=0, strata=strata)
        assert (r.n, r.n_strata, r.reason) == (0, n_strata, reason)
        assert all(math.isnan(v) for v in (r.estimate, r.ci_low, r.ci_high, r.p_value))


# -- the median route, censored wording, defaults and refusals (survivors of the fifth mutation sample) ----------


def test_median_summaries_are_numpy_s_median_without_an_interval() -> None:
    a, b = np.array([0.1, 0.9, 0.35, 0.4]), np.array([0.2, 0.25, 0.8, 0.3, 0.6])
    runs = _two_algos(a, b)
    agg = S.aggregate_table(runs, ["robustness.auc_mean"], seed=0, stat="median").set_index("algo")
    assert agg.loc["x", "estimate"] == np.median(a) and agg.loc["y", "estimate"] == np.median(b)
    assert agg["ci_low"].isna().all() and agg["ci_high"].isna().all() and set(agg["ci_method"]) == {"no interval"}
    row = S.compare_algorithms(runs, ["robustness.auc_mean"], "x", "y", seed=0, stat="median").iloc[0]
    assert (row.algo_value, row.baseline_value, row.difference) == (np.median(a), np.median(b),
                                                                     np.median(a) - np.median(b))  # fmt: skip
    assert math.isnan(row.diff_ci_low) and math.isnan(row.diff_ci_high) and row.diff_method == ""


def test_the_bootstrap_default_is_2000_resamples() -> None:
    """The documented default: the same seed with n_boot=2000 spelled out gives the same intervals."""
    rng = np.random.default_rng(4)
    runs = _two_algos(rng.normal(0.7, 0.1, 7), rng.normal(0.5, 0.1, 6))
    kw = {"seed": 3, "stat": "iqm"}
    default = S.compare_algorithms(runs, ["robustness.auc_mean"], "x", "y", **kw).iloc[0]  # type: ignore[arg-type]
    spelled = S.compare_algorithms(runs, ["robustness.auc_mean"], "x", "y", n_boot=2000, **kw).iloc[0]  # type: ignore[arg-type]
    assert (default.diff_ci_low, default.diff_ci_high) == (spelled.diff_ci_low, spelled.diff_ci_high)
    agg = S.aggregate_table(runs, ["robustness.auc_mean"], **kw)  # type: ignore[arg-type]
    pd.testing.assert_frame_equal(agg, S.aggregate_table(runs, ["robustness.auc_mean"], n_boot=2000, **kw))  # type: ignore[arg-type]


def test_one_censored_run_switches_the_sentence_to_medians_and_counts() -> None:
    """A single never-collapsed run is enough for the censored wording (median, k/n never collapsed)."""
    metric = "robustness.collapse_log_factor_min"
    a, b = np.array([1.0, 0.8, 1.2, 0.9]), np.array([0.5, 0.7, 0.6, 0.4])
    runs = _two_algos(a, b, metric)
    flags = pd.Series([True] + [False] * 7, index=runs.index)
    table = S.compare_algorithms(runs, [metric], "x", "y", seed=0, censored={metric: flags})
    text = S.describe_comparison(table, task="CartPole")
    assert "had median" in text and "1/4 vs 0/4 runs never collapsed" in text, text


def test_describe_comparison_refusals_name_the_bad_value() -> None:
    runs = pd.concat([_two_algos(np.array([1.0, 2.0, 3.0]), np.array([2.0, 3.0, 4.0])),
                      _two_algos(np.array([1.0, 2.5, 3.0]), np.array([2.0, 3.0, 4.0])).replace({"x": "z"})])  # fmt: skip
    table = pd.concat([S.compare_algorithms(runs, ["robustness.auc_mean"], a, "y", seed=0) for a in ("x", "z")])
    with pytest.raises(RlflatError, match=r"^rows compare several algorithms \['x', 'z'\]; filter to one$"):
        S.describe_comparison(table, task="CartPole")
    one = table[table["algo"] == "x"]
    with pytest.raises(RlflatError, match=r"unknown metric 'robustness.nope'.*robustness.auc_mean"):
        S.describe_comparison(one, task="CartPole", metrics=["robustness.nope"])
    assert "x lowered auc_mean" in S.describe_comparison(one, task="CartPole", metrics=["robustness.auc_mean"])


def test_partial_spearman_drops_runs_with_a_missing_value_on_either_side() -> None:
    """A NaN in x (or y) drops that run even when its confounds are known: the estimate is that of the rest."""
    from rlflat.report.stats.partial import partial_spearman

    rng = np.random.default_rng(8)
    x, y, conf = rng.normal(size=14), rng.normal(size=14), rng.normal(size=(14, 1))
    y = y + 0.8 * x
    holed_x, holed_y = x.copy(), y.copy()
    holed_x[2], holed_y[5] = np.nan, np.nan
    keep = np.ones(14, dtype=bool)
    keep[[2, 5]] = False
    got = partial_spearman(holed_x, holed_y, seed=0, confounds=conf, n_perm=199)
    want = partial_spearman(x[keep], y[keep], seed=0, confounds=conf[keep], n_perm=199)
    assert got.n == 12 and got.estimate == pytest.approx(want.estimate, rel=1e-12)


def test_pooled_comparison_averages_oriented_per_task_probabilities_by_hand() -> None:
    """Three tasks of unequal sizes (and one task with a single algorithm, left out and named): each task's P is
    scipy's Mann-Whitney U / (m n), oriented by the metric (lower lambda_max is better); the pooled row averages
    them, takes Newcombe's interval over the tasks' sizes, pools no raw values, and reads as one sentence."""
    from rlflat.report.stats.comparison import poi_interval

    rng = np.random.default_rng(12)
    sizes = {"A": (5, 4), "B": (3, 6), "C": (7, 7)}
    rows = []
    for task, (m, n) in sizes.items():
        scale = {"A": 1.0, "B": 30.0, "C": 0.01}[task]
        rows += [{"task": task, "algo": "x", "probe.lambda_max": scale * v} for v in rng.normal(1.0, 0.5, m)]
        rows += [{"task": task, "algo": "y", "probe.lambda_max": scale * v} for v in rng.normal(1.2, 0.5, n)]
    rows += [{"task": "D", "algo": "x", "probe.lambda_max": 1.0}, {"task": "D", "algo": "x", "probe.lambda_max": 2.0}]
    runs = pd.DataFrame(rows)
    table = S.compare_algorithms(runs, ["probe.lambda_max"], "x", "y", seed=0)
    per_task = {}
    for task in sizes:
        a = runs[(runs.task == task) & (runs.algo == "x")]["probe.lambda_max"].to_numpy()
        b = runs[(runs.task == task) & (runs.algo == "y")]["probe.lambda_max"].to_numpy()
        per_task[task] = 1.0 - sps.mannwhitneyu(a, b).statistic / (a.size * b.size)  # P(x flatter) = P(x lower)
        row = table[table.task == task].iloc[0]
        assert row.poi == pytest.approx(per_task[task], rel=1e-12) and row.better == -1 and row.n_tasks == 1
    pooled = table[table.task == S.POOLED].iloc[0]
    theta = float(np.mean(list(per_task.values())))
    assert pooled.poi == pytest.approx(theta, rel=1e-12)
    assert (pooled.poi_ci_low, pooled.poi_ci_high) == pytest.approx(
        poi_interval(theta, list(sizes.values())), rel=1e-12
    )
    assert (pooled.n_algo, pooled.n_baseline, pooled.n_tasks) == (15, 17, 3)
    assert math.isnan(pooled.algo_value) and math.isnan(pooled.difference) and math.isnan(pooled.diff_ci_low)
    assert pooled.diff_method == "not pooled (scales differ across tasks): P(improvement) only"
    assert pooled.reason == "tasks without both algorithms left out: ['D']"
    assert "D" not in set(table.task)
    text = S.describe_comparison(table, task=S.POOLED)
    assert text.startswith("x vs y across 3 tasks (15 vs 17 runs; per-task P(improvement) averaged): "
                           f"P(flatter on lambda_max) = {theta:.2g} [CI ")  # fmt: skip
    seeds = S.describe_comparison(table, task="B")
    assert seeds.endswith("relative to y on B (3 vs 6 seeds)"), seeds


def test_welch_interval_from_two_runs_a_side_is_scipy_s() -> None:
    from rlflat.report.stats.comparison import welch_interval

    a, b = np.array([1.0, 1.6]), np.array([0.2, 0.5, 0.4])
    ref = sps.ttest_ind(a, b, equal_var=False).confidence_interval(0.9)
    assert welch_interval(a, b, 0.9) == pytest.approx((ref.low, ref.high), rel=1e-12)
    assert all(np.isnan(welch_interval(a[:1], b)))


def test_censored_aggregates_have_nan_not_none_intervals() -> None:
    metric = "robustness.collapse_log_factor_min"
    runs = _two_algos(np.array([1.0, 0.8, 1.2]), np.array([0.5, 0.7, 0.6]), metric)
    flags = pd.Series([True, False, False, False, False, True], index=runs.index)
    agg = S.aggregate_table(runs, [metric], seed=0, censored={metric: flags})
    assert all(math.isnan(v) for v in [*agg["ci_low"], *agg["ci_high"]])
    assert set(agg["ci_method"]) == {"censored median (no interval)"}


def test_a_metric_without_a_dotted_prefix_is_named_as_it_is() -> None:
    runs = _two_algos(np.array([3.0, 4.0, 5.0]), np.array([1.0, 2.0, 2.5]), "score")
    text = S.describe_comparison(S.compare_algorithms(runs, ["score"], "x", "y", seed=0), task="CartPole")
    assert text.startswith("x raised score by "), text


def test_correlation_table_names_a_missing_algorithm_column() -> None:
    runs = pd.DataFrame({"task": ["a"] * 5, "probe.trace": np.arange(5.0), "robustness.auc_mean": np.arange(5.0)})
    with pytest.raises(RlflatError, match="algo"):
        S.correlation_table(runs, ["probe.trace"], ["robustness.auc_mean"], seed=0, algo_col="algo")


def test_partial_spearman_says_why_it_is_undefined() -> None:
    from rlflat.report.stats.partial import partial_spearman

    x = np.arange(8.0)
    strata = np.repeat([0, 1], 4)
    # y explained exactly by the covariates (constant within strata; constant beside a confound): its residuals are
    # rounding noise, whose "correlation" once came out as 0.74
    for y, kw in ((strata * 3.0, {"strata": strata}), (np.full(8, 2.0), {"confounds": x[:, None]})):
        const = partial_spearman(x, y, seed=0, n_perm=9, **kw)  # type: ignore[arg-type]
        assert const.reason == "a side is constant given covariates" and math.isnan(const.estimate)
        assert math.isnan(const.ci_high) and math.isnan(const.p_value)
    few = partial_spearman(x[:4], x[:4], seed=0, confounds=x[:4, None], n_perm=9)
    assert few.reason == "n=4 too few for 1 covariates" and math.isnan(few.ci_low) and math.isnan(few.ci_high)


def test_min_detectable_rho_honours_alpha() -> None:
    from rlflat.report.stats.power import correlation_power, min_detectable_rho

    for alpha in (0.05, 0.01):
        rho = min_detectable_rho(25, alpha=alpha)
        assert correlation_power(rho, 25, alpha=alpha) == pytest.approx(0.8, abs=1e-6)
    assert min_detectable_rho(25, alpha=0.01) > min_detectable_rho(25, alpha=0.05)
