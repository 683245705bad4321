"""Known-answer and coverage tests for rlflat.report.stats (correlations, granulated Kendall, comparisons)."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from rlflat.errors import RlflatError
from rlflat.report import orientation as O
from rlflat.report import stats as S
from rlflat.report.censoring import censor_runs
from rlflat.report.settings import ReportSettings, load_report_settings, parse_report_settings

# ----------------------------------------------------------------------------- rank correlations


@pytest.mark.parametrize("method", S.CORR_METHODS)
def test_monotone_gives_one_with_a_finite_interval(method: str) -> None:
    x = np.linspace(0.1, 3.0, 12)
    up = S.rank_correlation(x, np.exp(x), seed=0, method=method, n_perm=999)
    down = S.rank_correlation(x, -(x**3), seed=0, method=method, n_perm=999)
    assert up.estimate == pytest.approx(1.0) and up.ci_high == 1.0 and 0.9 < up.ci_low < 1.0
    assert down.estimate == pytest.approx(-1.0) and down.ci_low == -1.0 and -1.0 < down.ci_high < -0.9
    assert up.n == 12 and up.reason == "" and up.p_value == pytest.approx(1 / 1000)


@pytest.mark.parametrize("method", S.CORR_METHODS)
def test_independent_data_ci_covers_zero(method: str) -> None:
    rng = np.random.default_rng(2024)
    x, y = rng.normal(size=200), rng.normal(size=200)
    res = S.rank_correlation(x, y, seed=7, method=method, n_perm=499)
    assert res.ci_low < 0.0 < res.ci_high
    assert res.ci_high - res.ci_low < 0.4  # n=200: informative, not [-1, 1]
    assert res.p_value > 0.05


def test_fisher_z_interval_by_hand() -> None:
    # Spearman r = 0.5, n = 20: z = atanh(0.5), se = sqrt((1 + 0.125) / 17)
    lo, hi = S.fisher_z_interval(0.5, 20, "spearman")
    se = math.sqrt(1.125 / 17)
    assert (lo, hi) == pytest.approx(
        (math.tanh(math.atanh(0.5) - 1.959964 * se), math.tanh(math.atanh(0.5) + 1.959964 * se))
    )
    # Kendall (Fieller et al. 1957): se = sqrt(0.437 / (n - 4))
    lo, hi = S.fisher_z_interval(-0.3, 14, "kendall")
    se = math.sqrt(0.437 / 10)
    assert lo == pytest.approx(math.tanh(math.atanh(-0.3) - 1.959964 * se))


@pytest.mark.parametrize("method", S.CORR_METHODS)
def test_exact_permutation_p_value_matches_scipy(method: str) -> None:
    rng = np.random.default_rng(11)
    x, y = rng.normal(size=7), rng.normal(size=7)
    res = S.rank_correlation(x, y, seed=0, method=method)
    stat = (
        (lambda a: sps.spearmanr(a, y).statistic)
        if method == "spearman"
        else (lambda a: sps.kendalltau(a, y).statistic)
    )
    ref = sps.permutation_test((x,), stat, permutation_type="pairings", n_resamples=np.inf)
    assert res.p_value == pytest.approx(ref.pvalue)
    assert res.p_method.startswith("exact permutation (5040")


def test_too_few_runs_give_estimate_and_p_but_no_interval() -> None:
    res = S.rank_correlation([1.0, 2.0, 3.0, 4.0, 5.0], [1.0, 3.0, 2.0, 5.0, 4.0], seed=0)
    assert res.estimate == pytest.approx(0.8) and math.isnan(res.ci_low) and math.isnan(res.ci_high)
    assert "too few runs" in res.reason
    # exact: orderings of 5 with |rho| >= 0.8 out of 120
    perms = np.array(list(itertools.permutations(range(5))), dtype=float)
    rho = np.array([sps.spearmanr(np.arange(5.0), p).statistic for p in perms])
    assert res.p_value == pytest.approx(np.mean(np.abs(rho) >= 0.8 - 1e-12))


def test_nan_pairs_dropped_and_constant_input_reason() -> None:
    res = S.rank_correlation([1.0, 2.0, np.nan, 4.0], [1.0, np.nan, 3.0, 2.0], seed=0)
    assert res.n == 2 and math.isnan(res.estimate) and "n=2" in res.reason
    const = S.rank_correlation([1.0, 2.0, 3.0, 4.0], [5.0] * 4, seed=0)
    assert math.isnan(const.estimate) and const.reason == "y is constant"


@pytest.mark.parametrize("method", S.CORR_METHODS)
def test_vectorised_rows_agree_with_scipy_on_tied_data(method: str) -> None:
    rng = np.random.default_rng(3)
    x = rng.integers(0, 4, size=(40, 15)).astype(float)
    y = rng.integers(0, 4, size=(40, 15)).astype(float)
    x[0] = 1.0
    ref_fn = sps.kendalltau if method == "kendall" else sps.spearmanr
    got = S.ROW_STATS[method](x, y)
    assert math.isnan(got[0])
    ref = np.array([ref_fn(a, b).statistic for a, b in zip(x[1:], y[1:], strict=True)])
    np.testing.assert_allclose(got[1:], ref, atol=1e-12)


def test_strata_remove_scale_and_algorithm_differences() -> None:
    # Within each stratum y rises with x; across strata the large-x stratum has small y: raw rho < 0.
    x = np.r_[np.arange(6.0), 100 + np.arange(6.0)]
    y = np.r_[50 + np.arange(6.0), np.arange(6.0)]
    group = np.repeat(["a", "b"], 6)
    assert sps.spearmanr(x, y).statistic < 0
    res = S.rank_correlation(x, y, seed=0, strata=group, n_perm=499)
    assert res.estimate == pytest.approx(1.0) and res.n_strata == 2 and res.ci_low > 0.5
    assert res.p_value < 0.01


def test_spearman_interval_coverage_simulated() -> None:
    """Null and non-null coverage of the Fisher-z interval at n = 10 and for 4 strata of 5 (seeded, 400 datasets)."""
    rng = np.random.default_rng(1)
    for rho, design in ((0.0, (10,)), (0.5, (10,)), (0.0, (5, 5, 5, 5))):
        truth = 6 / math.pi * math.asin(rho / 2)
        hits = 0
        for _ in range(400):
            xs, ys, strata = [], [], []
            for s, n in enumerate(design):
                z = rng.normal(size=(n, 2))
                xs += list(z[:, 0] + 3 * s)
                ys += list(rho * z[:, 0] + math.sqrt(1 - rho**2) * z[:, 1] - 4 * s)
                strata += [s] * n
            res = S.rank_correlation(xs, ys, seed=0, strata=strata if len(design) > 1 else None, n_perm=99)
            hits += res.ci_low <= truth <= res.ci_high
        assert hits / 400 >= 0.93, (rho, design, hits / 400)


def test_correlation_table_scopes_holm_and_reproducibility() -> None:
    rng = np.random.default_rng(9)
    rows = []
    for task, n in (("CartPole", 12), ("Pendulum", 8)):
        for s in range(n):
            lam = float(rng.gamma(2.0))
            rows.append(
                {
                    "task": task,
                    "algo": "ppo" if s % 2 else "ppo_sam",
                    "probe.lambda_max": lam,
                    "robustness.auc_mean": -lam + 0.1 * rng.normal(),
                    "robustness.worst_return": np.nan if s == 0 else rng.normal(),
                }
            )
    runs = pd.DataFrame(rows)
    measures, metrics = ["probe.lambda_max"], ["robustness.auc_mean", "robustness.worst_return"]
    tab = S.correlation_table(runs, measures, metrics, seed=3, n_perm=199)
    assert list(tab.columns) == S.CORR_COLUMNS
    assert len(tab) == 3 * 2 * 2 * 2  # (2 tasks + pooled) x 2 methods x 2 scopes x 2 metrics
    cp = tab[(tab.task == "CartPole") & (tab.metric == metrics[0]) & (tab.scope == S.ACROSS)]
    assert (cp.estimate < -0.5).all() and (cp.ci_high < 0).all()
    assert (tab[(tab.task == "CartPole") & (tab.metric == metrics[1])].n == 11).all()
    assert (tab.n_tests == 2).all() and (tab.p_holm >= tab.p_value - 1e-12).all()
    within = tab[(tab.task == "CartPole") & (tab.scope == S.WITHIN_ALGO)]
    assert (within.n_strata == 2).all()
    again = S.correlation_table(runs, measures, metrics, seed=np.random.default_rng(3), n_perm=199)
    pd.testing.assert_frame_equal(tab, again)
    with pytest.raises(RlflatError, match="probe.nope"):
        S.correlation_table(runs, ["probe.nope"], metrics, seed=0)


def test_holm_known_values() -> None:
    np.testing.assert_allclose(S.holm([0.01, 0.04, 0.03, np.nan]), [0.03, 0.06, 0.06, np.nan])


def test_bad_choices_and_seeds_raise_rlflat_error() -> None:
    with pytest.raises(RlflatError, match="pearson"):
        S.rank_correlation([1, 2, 3], [1, 2, 3], seed=0, method="pearson")
    with pytest.raises(RlflatError, match="seed"):
        S.rank_correlation([1, 2, 3], [1, 2, 3], seed=None)  # type: ignore[arg-type]
    with pytest.raises(RlflatError, match="non-negative"):
        S.rank_correlation([1, 2, 3], [1, 2, 3], seed=-1)


# ----------------------------------------------------------------------------- orientation


@pytest.mark.parametrize(
    ("measure", "metric", "rho", "expected"),
    [
        ("probe.lambda_max", "robustness.auc_mean", -0.6, "sharper runs were less robust"),
        (
            "probe.return_halving_sigma",
            "robustness.auc_mean",
            0.6,
            "sharper runs were less robust",
        ),  # higher sigma = flatter
        ("probe.lambda_max", "robustness.collapsed_fraction", 0.6, "sharper runs were less robust"),
        ("probe.lambda_min", "robustness.auc_mean", -0.6, "sharper runs were more robust"),
        ("probe.trace", "robustness.collapse_log_factor_min", 0.6, "sharper runs were more robust"),
    ],
)
def test_orientation_reads_the_sign_through_both_axes(measure: str, metric: str, rho: float, expected: str) -> None:
    assert O.association_sentence(measure, metric, rho) == expected
    row = {"task": "CartPole", "measure": measure, "metric": metric, "method": "spearman", "scope": S.ACROSS}
    row |= {"estimate": rho, "ci_low": rho - 0.2, "ci_high": rho + 0.2, "n": 20, "p_value": 0.01, "reason": ""}
    assert expected in S.describe_correlation(row, "m", "r")


def test_orientation_signs() -> None:
    assert O.sharpness_sign("probe.return_halving_sigma") == -1 and O.sharpness_sign("probe.hessian.lambda_max") == 1
    assert O.robustness_sign("robustness.collapsed_fraction") == -1
    assert O.robustness_sign("robustness.parameters.length.collapse_log_factor") == 1
    assert O.robustness_sign("robustness.parameters.length.collapse_factor") == 0
    assert O.better_sign("probe.lambda_max") == -1 and O.better_sign("robustness.auc_mean") == 1


DIRECTIONLESS = {
    "lambda_max_over_trace",
    "lambda_max_over_abs_sum",
    "negative_mass_fraction",
    "negative_count_fraction",
}
"""Shape descriptors of the spectrum: no 'sharper' end."""


def test_every_documented_sharpness_measure_has_a_direction() -> None:
    """A measure the report may headline without a direction would be reported as 'higher went with lower'
    instead of 'sharper runs were less robust' (the Fisher trace and Fisher-Rao norm once were)."""
    from rlflat.probe.invariance import INVARIANCE
    from rlflat.report.reliability import NOT_SHARPNESS

    for key in INVARIANCE:
        if key in NOT_SHARPNESS:
            continue
        column = "probe." + key.replace("<s>", "0p1")
        expected = {0} if key in DIRECTIONLESS else {-1, 1}
        assert O.sharpness_sign(column) in expected, key
    assert O.sharpness_sign("probe.fisher_trace") == O.sharpness_sign("probe.fisher_rao_norm") == 1


# ----------------------------------------------------------------------------- granulated Kendall


def _granulated_table() -> pd.DataFrame:
    """Across algorithms measure and metric rise together; within one, varying rho, they oppose."""
    rows = []
    for a in range(6):
        for r, rho in enumerate((0.01, 0.05, 0.1)):
            for seed, noise in enumerate((-0.02, 0.0, 0.02)):
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
    assert g.psi["algo"] == pytest.approx(1.0) and g.psi["hp.rho"] == pytest.approx(-1.0)
    assert g.overall == pytest.approx(0.0) and g.kendall_all > 0.7
    assert g.n_configs == 18 and g.n_groups == {"algo": 3, "hp.rho": 6} == g.n_groups_used


def test_granulated_kendall_is_suppressed_with_one_factor_or_few_configs() -> None:
    runs = _granulated_table()
    one = S.granulated_kendall(runs, "measure", "metric", ["algo"])
    assert math.isnan(one.psi["algo"]) and math.isnan(one.overall) and "only one factor" in one.notes[0]
    assert one.kendall_all > 0.7  # plain tau is still reported, for contrast
    few = runs[runs.algo.isin(["algo0"]) & (runs["hp.rho"] < 0.1)]
    g = S.granulated_kendall(few, "measure", "metric", ["algo", "hp.rho"])
    assert g.n_configs == 2 and math.isnan(g.overall) and "2 configurations" in g.notes[0]
    tab = S.granulated_kendall_table(runs.assign(task="CartPole"), ["measure"], ["metric"], ["algo"])
    assert list(tab.columns) == S.GRANULATED_COLUMNS
    assert (tab.n_factors == 1).all() and tab[tab.factor == "algo"].psi.isna().all()


# ----------------------------------------------------------------------------- comparisons


def test_iqm_and_probability_of_improvement_known_values() -> None:
    assert float(S.interquartile_mean([7, 1, 100, 3, 5, 2, 6, 4])) == pytest.approx(4.5)
    assert S.prob_improvement([5, 6, 7], [1, 2, 3, 4]) == 1.0
    assert S.prob_improvement([2, 2], [1, 2]) == pytest.approx(0.75)


def test_poi_interval_exact_null_coverage_and_simulation_at_five_vs_five() -> None:
    """Newcombe (2006) method 5 at m = n = 5: exact null coverage over all C(10, 5) splits, then simulated."""
    covered = 0
    for chosen in itertools.combinations(range(10), 5):
        a = np.array(chosen, dtype=float)
        b = np.array([i for i in range(10) if i not in chosen], dtype=float)
        lo, hi = S.poi_interval(S.prob_improvement(a, b), [(5, 5)])
        covered += lo <= 0.5 <= hi
    assert covered / 252 == pytest.approx(1 - 14 / 252)  # misses only U >= 22 or U <= 3
    rng = np.random.default_rng(0)
    for shift in (0.0, 1.0):
        truth = sps.norm.cdf(shift / math.sqrt(2))
        hits = 0
        for _ in range(400):
            a, b = rng.normal(shift, 1, 5), rng.normal(0, 1, 5)
            lo, hi = S.poi_interval(S.prob_improvement(a, b), [(5, 5)])
            hits += lo <= truth <= hi
        assert hits / 400 >= 0.93, (shift, hits / 400)
    assert S.poi_interval(1.0, [(5, 5)])[0] < 0.9  # complete separation is not certainty


def test_welch_interval_matches_scipy_and_covers_at_five_vs_five() -> None:
    rng = np.random.default_rng(4)
    a, b = rng.normal(1, 1, 5), rng.normal(0, 3, 5)
    ref = sps.ttest_ind(a, b, equal_var=False).confidence_interval()
    assert S.welch_interval(a, b) == pytest.approx((ref.low, ref.high))
    hits = sum(
        lo <= 0 <= hi for lo, hi in (S.welch_interval(rng.normal(0, 1, 5), rng.normal(0, 2, 5)) for _ in range(400))
    )
    assert hits / 400 >= 0.93


def test_censored_median_is_a_bound_once_the_middle_is_censored() -> None:
    v = np.array([0.5, 0.7, 1.4, 1.4, 1.4])
    assert S.censored_median(v, np.array([0, 0, 1, 1, 1], bool)) == (1.4, True)
    assert S.censored_median(v, np.array([0, 0, 0, 1, 1], bool)) == (1.4, False)  # third value observed
    assert S.censored_median(v[:4], np.array([0, 0, 1, 1], bool)) == pytest.approx((1.05, True))


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
                        "probe.lambda_max": lam,
                        "robustness.auc_mean": rng.normal(),
                    }
                )
    return pd.DataFrame(rows)


def test_compare_algorithms_detects_a_shift_orients_poi_and_pools_only_poi() -> None:
    runs = _algo_runs(0.5, {"CartPole": 1.0, "Pendulum": 10.0})
    metrics = ["probe.lambda_max", "robustness.auc_mean"]
    tab = S.compare_algorithms(runs, metrics, "ppo_sam", "ppo", seed=4, n_boot=200)
    assert list(tab.columns) == S.COMPARISON_COLUMNS
    lam = tab[(tab.task == "CartPole") & (tab.metric == metrics[0])].iloc[0]
    assert lam.diff_ci_high < 0 and lam.diff_method == "Welch t" and lam.better == -1
    assert lam.poi == 1.0 and 0.5 < lam.poi_ci_low < 1.0 and lam.poi_ci_high == 1.0  # every sam run is flatter
    auc = tab[(tab.task == "CartPole") & (tab.metric == metrics[1])].iloc[0]
    assert auc.diff_ci_low < 0 < auc.diff_ci_high and auc.poi_ci_low < 0.5 < auc.poi_ci_high
    pooled = tab[(tab.task == S.POOLED) & (tab.metric == metrics[0])].iloc[0]
    assert math.isnan(pooled.difference) and pooled.poi == 1.0 and (pooled.n_algo, pooled.n_tasks) == (10, 2)
    text = S.describe_comparison(tab, task="CartPole", labels={"robustness.auc_mean": "robust AUC"})
    assert text.startswith("ppo_sam lowered lambda_max by ") and ", flatter" in text
    assert text.count(S.SPANS_ZERO) == 1 and text.endswith("relative to ppo on CartPole (5 seeds)")
    assert "P(flatter on lambda_max) = 1" in S.describe_comparison(tab, task=S.POOLED)
    with pytest.raises(RlflatError, match="task"):
        S.describe_comparison(tab)
    with pytest.raises(RlflatError, match="valid choices: ppo, ppo_sam"):
        S.compare_algorithms(runs, metrics, "sam", "ppo", seed=0)


def test_censored_runs_tie_at_the_bound_and_count_for_the_robust_algorithm() -> None:
    """ppo_sam never collapses on 3 of 5 runs: dropping them would flip the comparison."""
    runs = pd.DataFrame(
        {
            "run_id": [f"r{i}" for i in range(10)],
            "task": "CartPole",
            "algo": ["ppo"] * 5 + ["ppo_sam"] * 5,
            "robustness.parameters.length.collapse_log_factor": [
                0.9,
                1.0,
                1.1,
                1.2,
                1.3,
                0.5,
                0.6,
                np.nan,
                np.nan,
                np.nan,
            ],
            "robustness.parameters.length.collapsed_within_range": [True] * 7 + [False] * 3,
            "robustness.parameters.length.max_log_factor": [1.386] * 10,
        }
    )
    filled, flags = censor_runs(runs, pd.DataFrame(columns=["run_id", "family", "max_log_factor"]), {})
    col = "robustness.collapse_log_factor_min"
    assert flags[col].tolist() == [False] * 7 + [True] * 3
    assert filled[col].iloc[7:].tolist() == [1.386] * 3
    dropped = runs.dropna(subset=["robustness.parameters.length.collapse_log_factor"])
    naive = S.prob_improvement(dropped[dropped.algo == "ppo_sam"].iloc[:, 3], dropped[dropped.algo == "ppo"].iloc[:, 3])
    assert naive == 0.0  # the two sam runs that collapsed did so early
    tab = S.compare_algorithms(filled, [col], "ppo_sam", "ppo", seed=0, censored=flags)
    row = tab.iloc[0]
    assert row.poi == pytest.approx(15 / 25) and row.stat == "median"
    assert (row.n_censored_algo, row.n_censored_baseline) == (3, 0) and row.value_is_bound
    assert "3/5 vs 0/5 runs never collapsed" in S.describe_comparison(tab)
    agg = S.aggregate_table(filled, [col], seed=0, censored=flags)
    assert agg.set_index("algo").loc["ppo_sam", "n_censored"] == 3


# ----------------------------------------------------------------------------- settings


def test_report_settings_forbid_unknown_keys_and_read_study_yaml(tmp_path: Path) -> None:
    assert ReportSettings().seed == 0 and "probe.fisher_adaptive_lambda_max" in ReportSettings().headline_measures
    with pytest.raises(RlflatError, match="n_bot"):
        parse_report_settings({"n_bot": 5})
    with pytest.raises(RlflatError, match="seed"):
        parse_report_settings({"seed": -1})
    (tmp_path / "study.yaml").write_text("name: s\nreport:\n  seed: 3\n  comparisons: [[pg_sam, pg]]\n")
    loaded = load_report_settings([tmp_path])
    assert loaded.seed == 3 and loaded.comparisons == [("pg_sam", "pg")]


def test_granulated_kendall_names_each_factor_whose_psi_is_undefined() -> None:
    """A factor no group varies with a defined tau (here hp.rho: one value per algorithm) gets its own note."""
    runs = _granulated_table()
    runs = runs[runs["hp.rho"] == runs.groupby("algo")["hp.rho"].transform("min")]
    runs = pd.concat([runs, runs.assign(algo="algo9", measure=runs.measure + 1, metric=runs.metric - 1)])
    g = S.granulated_kendall(runs, "measure", "metric", ["algo", "hp.rho"])
    assert "psi[hp.rho] undefined: no group varies hp.rho with a defined tau" in g.notes
    assert all(isinstance(n, str) for n in g.notes)


def test_counts_of_one_are_allowed_and_zero_refused() -> None:
    from rlflat.report.stats._common import check_count

    check_count("n_boot", 1)
    for bad in (0, -3, 2.0, True):
        with pytest.raises(RlflatError, match=rf"^n_boot must be a positive integer, got {bad!r}$"):
            check_count("n_boot", bad)  # type: ignore[arg-type]
