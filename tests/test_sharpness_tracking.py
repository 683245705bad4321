"""Sharpness along training: Adam's preconditioner and both eigenvalues against closed forms, and tracking that
leaves training bit-identical."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.linalg
import torch

from rlflat.algos.sharpness_tracking import SharpnessTracker, path_summary
from rlflat.errors import RlflatError
from rlflat.probe.hvp import HessianOperator
from rlflat.probe.preconditioned import (
    adam_preconditioner,
    adam_threshold,
    gd_threshold,
    preconditioned,
    top_eigenpair,
)
from rlflat.sweep.table import run_row
from rlflat.train import main, resolve_run_config

TINY = {"n_envs": 2, "n_steps": 32, "batch_size": 32, "n_epochs": 2}


def _quadratic(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A random symmetric indefinite A with a clear top eigenvalue, and a start point."""
    gen = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=torch.float64))
    eigenvalues = torch.linspace(-2.0, 5.0, n, dtype=torch.float64)
    eigenvalues[-1] = 9.0
    return q @ torch.diag(eigenvalues) @ q.T, torch.randn(n, generator=gen, dtype=torch.float64)


def _adam_history(a: torch.Tensor, x0: torch.Tensor, steps: int, lr: float, betas: tuple[float, float], eps: float):
    """Run torch Adam on 0.5 x'Ax; return the optimizer, the parameter and the gradients it saw (in order)."""
    x = torch.nn.Parameter(x0.clone())
    opt = torch.optim.Adam([x], lr=lr, betas=betas, eps=eps)
    grads = []
    for _ in range(steps):
        opt.zero_grad()
        (0.5 * x @ a @ x).backward()
        assert x.grad is not None
        grads.append(x.grad.detach().clone())
        opt.step()
    return opt, x, grads


def test_adam_preconditioner_matches_cohen_et_al_from_the_gradient_history() -> None:
    a, x0 = _quadratic(6, seed=0)
    betas, eps, steps = (0.9, 0.99), 1e-3, 7
    opt, x, grads = _adam_history(a, x0, steps, 0.01, betas, eps)
    v = sum((1 - betas[1]) * betas[1] ** (steps - 1 - i) * g**2 for i, g in enumerate(grads))
    expected = (1 - betas[0] ** steps) * (torch.sqrt(v / (1 - betas[1] ** steps)) + eps)
    p = adam_preconditioner(opt, [x])
    assert p is not None
    torch.testing.assert_close(p, expected, rtol=1e-12, atol=0)
    # the step Adam takes next is exactly theta - lr P^{-1} m with the next P: the bias corrections are all in P
    m = sum((1 - betas[0]) * betas[0] ** (steps - i) * g for i, g in enumerate(grads))
    before = x.detach().clone()
    opt.zero_grad()
    (0.5 * x @ a @ x).backward()
    assert x.grad is not None
    m = m + (1 - betas[0]) * x.grad
    opt.step()
    p_next = adam_preconditioner(opt, [x])
    assert p_next is not None
    torch.testing.assert_close(x.detach(), before - 0.01 * m / p_next, rtol=1e-10, atol=1e-12)


def test_both_eigenvalues_match_the_closed_form_on_a_quadratic() -> None:
    a, x0 = _quadratic(12, seed=1)
    opt, x, _ = _adam_history(a, x0, 5, 0.01, (0.9, 0.999), 1e-2)
    op = HessianOperator(lambda p: 0.5 * p["x"] @ a @ p["x"], {"x": x.detach()})
    p = adam_preconditioner(opt, [x])
    assert p is not None
    v0 = torch.ones(12, dtype=torch.float64)
    plain = top_eigenpair(op.matvec, v0, tol=1e-8)
    adam = top_eigenpair(preconditioned(op.matvec, p), v0, tol=1e-8)
    assert plain.converged and adam.converged
    assert plain.value == pytest.approx(9.0, rel=1e-8)
    # P^{-1} A's eigenvalues: the generalised problem A u = lambda P u, solved by scipy on its own
    generalised = scipy.linalg.eigh(a.numpy(), np.diag(p.numpy()), eigvals_only=True)
    assert adam.value == pytest.approx(generalised.max(), rel=1e-8)
    assert adam.value == pytest.approx(np.linalg.eigvals(np.diag(1 / p.numpy()) @ a.numpy()).real.max(), rel=1e-8)


def test_warm_start_from_the_eigenvector_converges_in_one_cycle() -> None:
    a, _ = _quadratic(40, seed=2)
    cold = top_eigenpair(lambda v: a @ v, torch.ones(40, dtype=torch.float64), steps=4, tol=1e-6, max_restarts=50)
    warm = top_eigenpair(lambda v: a @ v, cold.vector, steps=4, tol=1e-6)
    assert cold.converged and warm.converged
    assert warm.matvecs <= 5 < cold.matvecs
    assert warm.value == pytest.approx(9.0, rel=1e-6)


def test_thresholds_and_bad_inputs() -> None:
    assert gd_threshold(0.01) == pytest.approx(200.0)
    assert adam_threshold(0.01, 0.9) == pytest.approx(3800.0)  # Cohen et al. 2022: 38 / eta at beta1 = 0.9
    assert math.isinf(adam_threshold(0.0, 0.9))
    with pytest.raises(RlflatError, match="positive"):
        preconditioned(lambda v: v, torch.tensor([1.0, 0.0]))
    sgd = torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=0.1)
    assert adam_preconditioner(sgd, sgd.param_groups[0]["params"]) is None
    with pytest.raises(RlflatError, match="positive integer"):
        SharpnessTracker(0)


def _final_parameters(algo: str, track: int | None, tmp_path: Path) -> dict[str, torch.Tensor]:
    from rlflat import algos
    from rlflat.tasks import load_task
    from rlflat.train import training_env

    overrides = TINY if algo.startswith("ppo") else {"n_envs": 2, "n_steps": 32}
    hp = resolve_run_config(algo, "CartPole", seed=3, steps=256, overrides=overrides)["hyperparameters"]
    model = algos.build_model(algo, training_env(load_task("CartPole"), hp, 3), hp, seed=3)
    tracker = SharpnessTracker(track, seed=3) if track else None
    model.update_observer = tracker
    model.learn(256)
    if tracker is not None:
        assert len(tracker.rows) == 4 and all(math.isfinite(r["preconditioned_sharpness"]) for r in tracker.rows)
    state = {f"param.{k}": v.detach().clone() for k, v in model.policy.named_parameters()}
    for i, s in enumerate(model.policy.optimizer.state.values()):
        state.update({f"adam.{i}.{k}": torch.as_tensor(v).clone() for k, v in s.items()})
    return state


@pytest.mark.parametrize("algo", ["ppo_sam", "pg"])
def test_tracking_does_not_change_training(algo: str, tmp_path: Path) -> None:
    untracked = _final_parameters(algo, None, tmp_path)
    tracked = _final_parameters(algo, 1, tmp_path)
    assert untracked.keys() == tracked.keys()
    for key in untracked:
        assert torch.equal(untracked[key], tracked[key]), key


def test_cli_writes_columns_and_path_summary(tmp_path: Path) -> None:
    args = ["ppo_sam", "CartPole", "--steps", "256", "--track-sharpness", "2", "--no-progress", "--out"]
    overrides = [f"--set={k}={v}" for k, v in TINY.items()]
    assert main([*args, str(tmp_path / "run"), *overrides]) == 0
    with open(tmp_path / "run" / "train.csv") as handle:
        rows = list(csv.DictReader(handle))
    tracked = [r for r in rows if r["update"]]
    assert [int(float(r["update"])) for r in tracked] == [1, 3]
    assert all(r["episode_return"] == "" for r in tracked)
    assert any(r["episode_return"] for r in rows)
    first = tracked[0]
    lr = float(first["learning_rate"])
    assert float(first["gd_threshold"]) == pytest.approx(2 / lr)
    assert float(first["adam_threshold"]) == pytest.approx(38 / lr)
    assert first["perturbed_sharpness"] and first["surrogate_preconditioned_sharpness"]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    summary = metrics["train"]["sharpness_path"]
    assert summary["n_tracked"] == 2
    values = [float(r["preconditioned_sharpness"]) for r in tracked]
    assert summary["max_preconditioned_sharpness"] == pytest.approx(max(values))
    assert summary["final_preconditioned_sharpness"] == pytest.approx(values[-1])
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["hyperparameters"]["track_sharpness"] == 2
    row = run_row(tmp_path / "run", ("train",))  # the runs.parquet row the sweep collects
    assert row is not None
    assert row["train.sharpness_path.max_preconditioned_sharpness"] == pytest.approx(max(values))
    assert row["hp.track_sharpness"] == 2


def test_path_summary_counts_updates_at_the_edge() -> None:
    rows = [
        {"sharpness": s, "gd_threshold": 10.0, "preconditioned_sharpness": p, "adam_threshold": 100.0}
        for s, p in [(1.0, 50.0), (12.0, 120.0), (9.0, 99.0), (10.0, 100.0)]
    ]
    summary = path_summary(rows)
    assert summary["frac_gd_at_edge"] == 0.5 and summary["frac_adam_at_edge"] == 0.5
    assert summary["max_adam_ratio"] == pytest.approx(1.2) and summary["final_adam_ratio"] == pytest.approx(1.0)
    assert summary["late_adam_ratio"] == pytest.approx(0.995)  # median of the second half: 0.99 and 1.0
    assert path_summary([]) == {"n_tracked": 0}


def test_bad_track_sharpness_is_a_one_line_error(tmp_path: Path) -> None:
    with pytest.raises(RlflatError, match="track_sharpness must be a positive integer"):
        resolve_run_config("ppo", "CartPole", overrides={"track_sharpness": 0})
    assert not (tmp_path / "x").exists()


def test_report_draws_paths_and_tabulates_path_scalars(tmp_path: Path) -> None:
    from test_report import FAST, make_study

    from rlflat.report import render
    from rlflat.report.sections_stability import path_table

    study = make_study(tmp_path / "study", algos=("ppo", "ppo_sam"), seeds=3)
    runs = pd.read_parquet(study / "runs.parquet")
    rng = np.random.default_rng(0)
    late = []
    for run_id, lr in zip(runs["run_id"], runs["hp.learning_rate"], strict=True):
        if not (study / run_id).exists():
            late.append(np.nan)
            continue
        steps = np.arange(256, 30_000, 768)
        edge = 38 / lr
        pre = edge * np.minimum(steps / 10_000, 1.0) * rng.uniform(0.9, 1.1, steps.size)
        tracked = pd.DataFrame(
            {
                "timesteps": steps,
                "update": np.arange(1, steps.size + 1),
                "learning_rate": lr,
                "gd_threshold": 2 / lr,
                "adam_threshold": edge,
                "sharpness": pre / 50,
                "preconditioned_sharpness": pre,
            }
        )
        train = pd.read_csv(study / run_id / "train.csv")
        merged = pd.concat([train, tracked], ignore_index=True).sort_values("timesteps", kind="stable")
        merged.to_csv(study / run_id / "train.csv", index=False)
        late.append(path_summary(tracked.to_dict("records"))["late_adam_ratio"])
    runs["train.sharpness_path.late_adam_ratio"] = late
    runs.to_parquet(study / "runs.parquet")
    out = render.build_report([study], seed=0, **FAST)
    assert (out / "figures" / "sharpness_paths.png").exists()
    assert (out / "figures" / "learning_curves.png").exists()  # the tracking rows do not break the curves
    md = (out / "report.md").read_text()
    assert "Sharpness along training" in md and "figures/sharpness_paths.png" in md
    table = path_table(runs[runs["status"] == "ok"])
    ppo = runs[(runs["algo"] == "ppo") & (runs["hp.learning_rate"] == 1e-3)]["train.sharpness_path.late_adam_ratio"]
    row = table[(table["algo"] == "ppo") & (table["learning rate"] == "0.001")].iloc[0]
    assert row["runs"] == len(ppo)
    assert row["late λ₁(P⁻¹H) / threshold"].startswith(f"{ppo.mean():.3g} [")
    saved = pd.read_csv(out / "tables" / "sharpness_paths.csv")
    assert len(saved) == len(table)
    slopes = pd.read_csv(out / "tables" / "threshold_slopes.csv").set_index("algo")
    assert slopes.loc["ppo", "slope of log late λ₁(P⁻¹H) on log η"].startswith("-1")  # built to ride 38/eta


def test_tracked_values_match_the_dense_hessian_of_a_small_policy() -> None:
    from rlflat import algos
    from rlflat.algos.sharpness_tracking import full_buffer
    from rlflat.tasks import load_task
    from rlflat.train import training_env

    overrides = {**TINY, "policy_kwargs": {"net_arch": [6]}, "learning_rate": 1e-3}
    hp = resolve_run_config("ppo", "CartPole", seed=1, steps=128, overrides=overrides)["hyperparameters"]
    model = algos.build_model("ppo", training_env(load_task("CartPole"), hp, 1), hp, seed=1)
    model.learn(128)
    row = SharpnessTracker(1, seed=0, tol=1e-6, max_restarts=50).measure(model)
    named = {k: v.detach() for k, v in model.policy.named_parameters()}
    sizes = [v.numel() for v in named.values()]
    loss = SharpnessTracker._loss_fn(model, "loss", full_buffer(model))

    def flat_loss(flat: torch.Tensor) -> torch.Tensor:
        parts = torch.split(flat, sizes)
        return loss({k: p.view_as(v) for (k, v), p in zip(named.items(), parts, strict=True)})

    flat = torch.cat([v.reshape(-1) for v in named.values()])
    h = torch.autograd.functional.hessian(flat_loss, flat).to(torch.float64)  # dense, by its own route
    h = 0.5 * (h + h.T)
    p = adam_preconditioner(model.policy.optimizer, list(model.policy.parameters()))
    assert p is not None
    d = torch.diag(p.rsqrt())
    assert row["sharpness"] == pytest.approx(float(torch.linalg.eigvalsh(h)[-1]), rel=1e-4)
    assert row["preconditioned_sharpness"] == pytest.approx(float(torch.linalg.eigvalsh(d @ h @ d)[-1]), rel=1e-4)
    assert row["learning_rate"] == 1e-3 and row["adam_threshold"] == pytest.approx(38_000.0)
    # the actor's and the critic's diagonal blocks apart, and the value head's tanh saturation by hand
    names = list(named)
    offsets = np.cumsum([0, *sizes])
    for key, prefixes in (("actor", ("mlp_extractor.policy_net.", "action_net.")),
                          ("critic", ("mlp_extractor.value_net.", "value_net."))):  # fmt: skip
        idx = torch.cat(
            [torch.arange(offsets[i], offsets[i + 1]) for i, k in enumerate(names) if k.startswith(prefixes)]
        )
        block = h[idx][:, idx]
        assert row[f"{key}_sharpness"] == pytest.approx(float(torch.linalg.eigvalsh(block)[-1]), rel=1e-4), key
    obs = full_buffer(model).observations
    with torch.no_grad():
        phi = model.policy.mlp_extractor.value_net(model.policy.extract_features(obs))
    assert row["critic_saturation"] == pytest.approx(float((phi.abs() > 0.99).double().mean()))


def test_path_summary_flags_a_loss_whose_top_curvature_is_the_value_heads() -> None:
    """The late whole-loss sharpness at 64.9 (2 vf_coef (1 + ...): a saturated value head) with the surrogate's at
    3: value-dominated, and the policy's own ratio is 3 / (2 / eta)."""
    rows = [{"sharpness": s, "surrogate_sharpness": 3.0, "gd_threshold": 2 / 3e-3, "preconditioned_sharpness": 1.0,
             "adam_threshold": 38 / 3e-3, "actor_sharpness": 4.0, "critic_sharpness": s, "critic_saturation": 0.87}
            for s in (10.0, 20.0, 64.9, 64.9)]  # fmt: skip
    summary = path_summary(rows)
    assert summary["value_dominated"] is True
    assert summary["late_surrogate_gd_ratio"] == pytest.approx(3.0 * 3e-3 / 2)
    assert summary["late_critic_gd_ratio"] == pytest.approx(64.9 * 3e-3 / 2)
    assert summary["late_actor_gd_ratio"] == pytest.approx(4.0 * 3e-3 / 2)
    assert summary["late_critic_saturation"] == pytest.approx(0.87)
    calm = path_summary([{**r, "sharpness": 4.0} for r in rows])
    assert calm["value_dominated"] is False


def test_threshold_slope_is_minus_one_at_the_edge_and_zero_off_it() -> None:
    from rlflat.report.sections_stability import threshold_slopes

    rng = np.random.default_rng(0)
    lrs = np.repeat([1e-4, 1e-3, 1e-2], 4)
    noise = rng.uniform(0.9, 1.1, lrs.size)
    levels = pd.DataFrame(
        {
            "algo": "ppo",
            "run_id": [f"r{i}" for i in range(lrs.size)],
            "lr": lrs,
            "sharpness": 5.0 * noise,  # set by the problem: does not move with eta
            "preconditioned_sharpness": 38 / lrs * noise,  # rides the Adam threshold
            "surrogate_preconditioned_sharpness": np.nan,  # not measured: no slope, no error
        }
    )
    row = threshold_slopes(levels).iloc[0]
    assert row["_preconditioned_sharpness_slope"] == pytest.approx(-1.0, abs=0.03)
    assert row["_sharpness_slope"] == pytest.approx(0.0, abs=0.03)
    assert row["slope of log late surrogate λ₁(P⁻¹H) on log η"] == "n/a"
    low, high = (float(x) for x in row["slope of log late λ₁(P⁻¹H) on log η"].split("[")[1].rstrip("]").split(","))
    assert low < -1.0 < high and high - low < 0.2
