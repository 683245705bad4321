"""Issue 20's corrections: the exact Fisher trace against a dense float64 Fisher built from explicit per-sample
score outer products (enumerated actions for Discrete, Gauss-Hermite quadrature for Box, exact for the
polynomial scores of a Gaussian), and a Hutchinson estimate's standard error covering its own error."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from stable_baselines3 import PPO

from rlflat.policy import FunctionalPolicy, load_policy
from rlflat.probe.batch import collect_batch
from rlflat.probe.fisher import exact_fisher_traces, fisher_measures
from rlflat.probe.losses import scope_params
from rlflat.probe.spectrum import hutchinson_trace
from rlflat.tasks import load_task, make_env

torch.set_num_threads(1)


def _saved_policy(directory: Path, task: str, steps: int) -> FunctionalPolicy:
    spec = load_task(task)
    model = PPO("MlpPolicy", make_env(spec), seed=0, n_steps=64, batch_size=32, policy_kwargs={"net_arch": [8, 8]})
    model.learn(steps)
    model.save(directory / "model.zip")
    return load_policy(directory / "model.zip")


def _score(policy: FunctionalPolicy, params: dict[str, torch.Tensor], obs: torch.Tensor, action: torch.Tensor):
    """grad_theta log pi(action | obs) in float64, flattened in ``params``' order."""
    live = {k: v.clone().requires_grad_(True) for k, v in params.items()}
    logp = policy.log_prob(live, obs[None], action[None]).sum()
    grads = torch.autograd.grad(logp, list(live.values()), allow_unused=True)
    return torch.cat(
        [(torch.zeros_like(v) if g is None else g).reshape(-1) for v, g in zip(live.values(), grads, strict=True)]
    )


def _dense_fisher_discrete(policy: FunctionalPolicy, params: dict[str, torch.Tensor], obs: torch.Tensor):
    """F = mean_s sum_a p(a|s) g_a g_a^T, g_a the score of action a: every action enumerated."""
    fisher = 0.0
    for o in obs:
        probs = policy.distribution(params, o[None]).probs[0]  # type: ignore[attr-defined]
        for a in range(probs.shape[0]):
            g = _score(policy, params, o, torch.tensor(float(a)))
            fisher = fisher + float(probs[a]) * torch.outer(g, g)
    return fisher / len(obs)


def _dense_fisher_gaussian(policy: FunctionalPolicy, params: dict[str, torch.Tensor], obs: torch.Tensor):
    """F = mean_s E_{a ~ N(mu, sigma)}[g g^T] by 6-node Gauss-Hermite quadrature (one action dimension): the
    scores are polynomials of degree <= 2 in a, so their outer products (degree <= 4) are integrated exactly."""
    nodes, weights = np.polynomial.hermite_e.hermegauss(6)
    weights = weights / weights.sum()
    fisher = 0.0
    for o in obs:
        dist = policy.distribution(params, o[None])
        mu, sigma = float(dist.loc[0, 0]), float(dist.scale[0, 0])  # type: ignore[attr-defined]
        for x, w in zip(nodes, weights, strict=True):
            g = _score(policy, params, o, torch.tensor([mu + sigma * x], dtype=torch.float64))
            fisher = fisher + float(w) * torch.outer(g, g)
    return fisher / len(obs)


def _double(policy: FunctionalPolicy, scope: str) -> dict[str, torch.Tensor]:
    """The policy in float64 throughout (SB3's preprocessing casts observations to float32: bypassed for these
    flat Box observations)."""
    policy.policy.double()
    policy.policy.extract_features = lambda obs, *_: obs.reshape(obs.shape[0], -1)  # type: ignore[method-assign]
    policy.params = {k: v.double() for k, v in policy.params.items()}
    return scope_params(policy, scope)


def test_exact_fisher_trace_equals_a_dense_float64_fisher_from_score_outer_products_discrete(tmp_path: Path) -> None:
    policy = _saved_policy(tmp_path, "CartPole", 128)
    obs = policy.preprocess(collect_batch(policy, load_task("CartPole"), 64, seed=1).observations)[:24].double()
    params = _double(policy, "actor")
    dense = _dense_fisher_discrete(policy, params, obs)
    theta = torch.cat([v.reshape(-1) for v in params.values()])
    trace, adaptive = exact_fisher_traces(policy, obs, params)
    assert trace == pytest.approx(float(torch.trace(dense)), rel=1e-9)
    assert adaptive == pytest.approx(float((theta**2 * torch.diagonal(dense)).sum()), rel=1e-9)
    assert trace >= float(torch.linalg.eigvalsh(dense)[-1])  # PSD: the trace bounds the top eigenvalue


@pytest.mark.parametrize("scope", ["actor", "all"])  # "all" holds log_std: its curvature enters through sigma
def test_exact_fisher_trace_equals_a_dense_float64_fisher_from_score_outer_products_gaussian(
    tmp_path: Path, scope: str
) -> None:
    policy = _saved_policy(tmp_path, "Pendulum", 64)
    obs = policy.preprocess(collect_batch(policy, load_task("Pendulum"), 32, seed=1).observations)[:16].double()
    params = _double(policy, scope)
    dense = _dense_fisher_gaussian(policy, params, obs)
    theta = torch.cat([v.reshape(-1) for v in params.values()])
    trace, adaptive = exact_fisher_traces(policy, obs, params)
    assert trace == pytest.approx(float(torch.trace(dense)), rel=1e-9)
    assert adaptive == pytest.approx(float((theta**2 * torch.diagonal(dense)).sum()), rel=1e-9)
    if scope == "all":  # log_std's own Fisher entry is 2 (one action dimension), the critic's rows are zero
        names = list(params)
        offset = sum(params[n].numel() for n in names[: names.index("log_std")])
        assert float(dense[offset, offset]) == pytest.approx(2.0, rel=1e-9)


def test_the_probe_reports_the_exact_trace_above_its_top_eigenvalue(tmp_path: Path) -> None:
    policy = _saved_policy(tmp_path, "CartPole", 128)
    batch = collect_batch(policy, load_task("CartPole"), 128, seed=2)
    params = scope_params(policy, "actor")
    out = fisher_measures(policy, batch, params, seed=0)
    trace, adaptive = exact_fisher_traces(policy, policy.preprocess(batch.observations), params)
    assert out["trace_method"] == "exact" and out["trace"] == trace and out["adaptive_trace"] == adaptive
    assert out["trace"] >= out["lambda_max"] * (1 - 1e-4) and out["adaptive_trace"] >= out["adaptive_lambda_max"] * (
        1 - 1e-4
    )


class _Dense:
    """A fixed symmetric matrix as a matvec operator (the interface hutchinson_trace takes)."""

    def __init__(self, matrix: torch.Tensor) -> None:
        self.matrix, self.n, self.dtype, self.hvp_count = matrix, matrix.shape[0], matrix.dtype, 0

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        self.hvp_count += 1
        return self.matrix @ v


def _coverage(matrix: torch.Tensor, replicates: int, probes: int, se_factor: float) -> float:
    op, truth = _Dense(matrix), float(torch.trace(matrix))
    hits = 0
    for r in range(replicates):
        est = hutchinson_trace(op, probes, seed=r)
        hits += abs(est.estimate - truth) <= 1.96 * se_factor * est.stderr
    return hits / replicates


def test_a_hutchinson_standard_error_covers_its_own_error_over_replicates() -> None:
    """~95% of 400 replicate estimates lie within 1.96 SE of the true trace (binomial SD 1.1 points); the same
    bounds fail for an SE half or twice as large, so the test can tell a wrong SE."""
    gen = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(40, 40, generator=gen, dtype=torch.float64))
    matrix = q @ torch.diag(torch.linspace(0.1, 3.0, 40, dtype=torch.float64)) @ q.T
    lo, hi = 0.91, 0.985
    assert lo <= _coverage(matrix, 400, 100, 1.0) <= hi
    assert _coverage(matrix, 400, 100, 0.5) < lo
    assert _coverage(matrix, 400, 100, 2.0) > hi


# ----- one unsolved rule ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mean", "se", "verdict"),
    [
        (474.94, 5.107, "borderline"),  # cartpole_v2's pg_sam-s3-4adbeec9c8: 0.06 below, SE 5.1
        (462.5, 14.19, "borderline"),  # upper bound 490.3
        (465.0, 5.0, "unsolved"),  # upper bound 474.8 < 475
        (485.0, 5.0, "solved"),  # lower bound 475.2
        (480.0, 5.0, "borderline"),  # above the threshold, lower bound 470.2 below it
        (474.9, None, "unsolved"),  # no SE: the mean alone
        (475.0, None, "solved"),
        (float("nan"), 1.0, "unsolved"),
    ],
)
def test_the_unsolved_rule_uses_the_upper_95_bound(mean: float, se: float | None, verdict: str) -> None:
    from rlflat.tasks.spec import solved_verdict

    assert solved_verdict(mean, se, 475.0) == verdict


def test_train_table_and_report_apply_one_rule() -> None:
    """Training's ``solved`` (per-episode returns), the runs table (from an evaluator block written under the old
    rule) and the report (from the table's columns) agree on every case of the rule."""
    from rlflat.report.solved import run_verdicts
    from rlflat.sweep.table import _verdict
    from rlflat.tasks.spec import returns_standard_error

    task = load_task("CartPole")
    rng = np.random.default_rng(0)
    for centre in (440.0, 470.0, 474.0, 478.0, 500.0):
        returns = np.clip(centre + rng.normal(0, 30, 20), 0, 500)
        mean, se = float(np.mean(returns)), returns_standard_error(returns)
        assert se == pytest.approx(float(np.std(returns, ddof=1) / np.sqrt(20)))
        old_block = {"nominal_return": mean, "nominal_return_se": se, "solved_threshold": 475.0,
                     "unsolved": mean < 475.0}  # fmt: skip
        verdict = _verdict({"robustness": old_block})
        assert verdict == task.verdict(mean, se)
        assert task.returns_solved(returns) == (verdict != "unsolved")
        row = pd.DataFrame([{f"robustness.{k}": v for k, v in old_block.items()} | {"unsolved": mean < 475.0}])
        assert run_verdicts(row).iloc[0] == verdict
    assert _verdict({"train": {"solved": False}}) == "unsolved" and _verdict({}) is None


def test_the_committed_borderline_run_is_counted_as_solved() -> None:
    from rlflat.sweep.table import build_table

    table = build_table(Path(__file__).resolve().parents[1] / "results" / "cartpole_v2")
    row = table[table["run_id"].str.endswith("4adbeec9c8")].iloc[0]
    assert row["robustness.nominal_return"] == pytest.approx(474.94)
    assert row["solved_verdict"] == "borderline" and not row["unsolved"] and row["train.solved"]


# ----- strata are configurations ----------------------------------------------------------------------------


def _config_runs() -> pd.DataFrame:
    """pg at one setting (3 runs: too few), pg_sam at rho 0.02 and 0.1 (6 runs each): inside each radius x and y
    are unrelated draws, but radius 0.1 shifts both up, so pooling the radii makes an association."""
    rng = np.random.default_rng(5)
    rows = [{"task": "CartPole", "algo": "pg", "hp.rho": np.nan, "hp.gamma": 0.99, "x": rng.normal(), "y": rng.normal()}
            for _ in range(3)]  # fmt: skip
    for rho, shift in ((0.02, 0.0), (0.1, 5.0)):
        rows += [{"task": "CartPole", "algo": "pg_sam", "hp.rho": rho, "hp.gamma": 0.99,
                  "x": shift + rng.normal(), "y": shift + rng.normal()} for _ in range(6)]  # fmt: skip
    return pd.DataFrame(rows)


def test_strata_are_algorithm_by_every_varying_hyperparameter_and_small_ones_are_left_out() -> None:
    import scipy.stats

    from rlflat.report import stats as S
    from rlflat.report.stats.strata import configuration_columns, configuration_labels, strata_table

    runs = _config_runs()
    assert configuration_columns(runs) == ["hp.rho"]  # gamma is constant; rho varies inside pg_sam
    labels = configuration_labels(runs, ["hp.rho"], task_col=None)
    assert sorted(labels.unique()) == ["pg, rho=—", "pg_sam, rho=0.02", "pg_sam, rho=0.1"]
    table = strata_table(configuration_labels(runs, ["hp.rho"]))
    assert table.set_index("configuration")["entered"].to_dict() == {
        "pg, rho=—": False, "pg_sam, rho=0.02": True, "pg_sam, rho=0.1": True}  # fmt: skip
    corr = S.correlation_table(runs, ["x"], ["y"], seed=0, n_perm=199, methods=["spearman"])
    within = corr[corr["scope"] == S.WITHIN_ALGO].iloc[0]
    by_hand = np.mean([scipy.stats.spearmanr(g["x"], g["y"]).statistic
                       for _, g in runs[runs.algo == "pg_sam"].groupby("hp.rho")])  # fmt: skip
    assert within["estimate"] == pytest.approx(by_hand) and within["n"] == 12 and within["n_strata"] == 2
    assert "left out 1 of 3 strata (fewer than 4 runs" in within["reason"]
    by_algo = S.rank_correlation(runs["x"], runs["y"], seed=0, strata=runs["algo"], n_perm=199)
    assert by_algo.estimate > 0.5 > abs(by_hand)  # what pooling the radii claimed


def test_a_partial_correlation_of_no_runs_is_undefined_not_an_error() -> None:
    from rlflat.report.stats.partial import partial_spearman

    out = partial_spearman([], [], seed=0, strata=[], confounds=np.empty((0, 1)), confound_names=["entropy"])
    assert out.reason == "no runs" and math.isnan(out.estimate) and out.covariates == ("entropy",)


# ----- retention --------------------------------------------------------------------------------------------


def test_retention_is_the_auc_of_the_curve_over_its_own_nominal_for_solved_runs_only() -> None:
    from rlflat.evaluate.metrics import robustness_block
    from rlflat.report.sections_retention import retention

    run = Path(__file__).resolve().parents[1] / "results" / "cartpole_v2" / "ppo-CartPole-s0-2063bb46ea"
    table = pd.read_parquet(run / "robustness.parquet")
    task = load_task("CartPole")
    block = robustness_block(table, task)
    own = table.copy()
    own["normalized_return"] = own["normalized_return"] / block["nominal_normalized_return"]
    frame = pd.DataFrame([{f"robustness.{k}": block[k] for k in
                           ("auc_mean", "nominal_normalized_return", "nominal_return", "nominal_return_se",
                            "solved_threshold")}])  # fmt: skip
    assert retention(frame).iloc[0] == pytest.approx(robustness_block(own, task)["auc_mean"], rel=1e-12)
    unsolved = frame.assign(**{"robustness.nominal_return": 300.0, "robustness.nominal_return_se": 5.0})
    assert math.isnan(retention(unsolved).iloc[0])


# ----- edge of stability: re-summarised paths ---------------------------------------------------------------


def test_resummarised_paths_match_the_committed_summary_and_add_the_policys_own_ratio(tmp_path: Path) -> None:
    import shutil

    from rlflat.io import read_json_object
    from rlflat.sweep.resummarize import resummarize_run

    source = Path(__file__).resolve().parents[1] / "results" / "edge_of_stability" / "ppo-CartPole-s0-a087cbb644"
    run = Path(shutil.copytree(source, tmp_path / "run"))
    before = read_json_object(run / "metrics.json")["train"]["sharpness_path"]
    after = resummarize_run(run)
    for key in ("n_tracked", "max_sharpness", "late_gd_ratio", "max_gd_ratio", "late_adam_ratio", "max_adam_ratio"):
        assert after[key] == pytest.approx(before[key], rel=1e-9), key
    curve = pd.read_csv(run / "train.csv").dropna(subset=["update"])
    ratio = (curve["surrogate_sharpness"] / curve["gd_threshold"]).to_numpy()
    assert after["late_surrogate_gd_ratio"] == pytest.approx(float(np.median(ratio[len(ratio) // 2 :])))
    assert read_json_object(run / "metrics.json")["train"]["sharpness_path"] == after


def test_threshold_crossings_are_per_run_not_cell_means() -> None:
    from rlflat.report.sections_stability import _crossings_sentence, crossings_table

    runs = pd.DataFrame({"run_id": ["a", "b", "c"], "algo": ["ppo"] * 3, "hp.learning_rate": [3e-3] * 3,
                         "train.sharpness_path.max_gd_ratio": [2.81, 0.5, 0.2],
                         "train.sharpness_path.late_gd_ratio": [0.5, 0.1, 0.1],
                         "train.sharpness_path.value_dominated": [True, True, False]})  # fmt: skip
    table = crossings_table(runs)
    assert list(table["verdict"]) == [None, None, None] and len(table) == 3
    text = _crossings_sentence(table)
    assert "max λ₁(H) / (2/η) ≥ 1 in 1 of 3 runs (largest 2.81): a (2.81)" in text  # the cell mean is 1.17
    assert "late λ₁(H) / (2/η) ≥ 1 in 0 of 3 runs (largest 0.50)" in text and "in 2 of 3 runs" in text


def test_bar_margins_mark_verdicts_within_a_hair_of_their_bar() -> None:
    from rlflat.report.reliability import bar_margins

    pooled = pd.DataFrame({"measure": ["kl", "fisher", "far"], "icc": [0.947, 0.998, 0.5]})
    family = pd.DataFrame({"measure": ["kl", "kl", "fisher", "fisher"], "icc": [0.804, 0.95, 0.792, 0.99]})
    margins = bar_margins(pooled, family)
    assert margins[0] == pytest.approx(0.004) and margins[1] == pytest.approx(-0.008)  # the family bars decide
    assert margins[2] == pytest.approx(-0.3)  # pooled vs 0.8, the nearer bar


def test_reverdict_rewrites_only_the_verdict_keys(tmp_path: Path) -> None:
    import json
    import shutil

    from rlflat.evaluate.rescore import reverdict_run

    source = Path(__file__).resolve().parents[1] / "results" / "cartpole_v2" / "pg_sam-CartPole-s3-4adbeec9c8"
    run = Path(shutil.copytree(source, tmp_path / "run"))
    metrics = json.loads((run / "metrics.json").read_text())
    old = {k: v for k, v in metrics["robustness"].items() if k != "solved_verdict"} | {"unsolved": True}
    (run / "metrics.json").write_text(json.dumps({**metrics, "robustness": old}))  # as the old rule wrote it
    reverdict_run(run)
    new = json.loads((run / "metrics.json").read_text())
    assert new["robustness"] == old | {"unsolved": False, "solved_verdict": "borderline"}
    assert {k: v for k, v in new.items() if k != "robustness"} == {
        k: v for k, v in metrics.items() if k != "robustness"
    }
