"""The probe measures what it claims: spectra against torch.func.hessian, Fisher PSD, policy gradient, invariances,
batched returns against a loop, reproducibility, and one-line errors with nothing written."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import cast

import numpy as np
import pytest
import torch
from stable_baselines3 import DQN, PPO
from torch import nn

from rlflat.cli import run_cli
from rlflat.errors import RlflatError
from rlflat.evaluate import rollout_returns
from rlflat.policy import FunctionalPolicy, load_policy
from rlflat.probe import load_probe_arrays, probe_run, validate_probe_options
from rlflat.probe.__main__ import main
from rlflat.probe.batch import ProbeBatch, collect_batch, compute_gae
from rlflat.probe.hvp import HessianOperator
from rlflat.probe.landscape import barrier, eigen_direction, interpolate
from rlflat.probe.losses import make_loss, scope_params
from rlflat.probe.perturbation import average_case, draw_directions, perturbed_returns, worst_case
from rlflat.probe.run import make_options
from rlflat.probe.seeding import subseed
from rlflat.probe.spectrum import extreme_eigenpairs, hutchinson_trace
from rlflat.probe.worst_case import pgd_sharpness, sam_sharpness
from rlflat.tasks import load_task, make_env

torch.set_num_threads(1)
CARTPOLE = load_task("CartPole")
QUICK = {
    "quick": True,
    "batches": 2,
    "batch": 256,
    "episodes": 1,
    "n_directions": 2,
    "sigmas": (0.1, 3.0),
    "ascent_steps": 2,
}


def _save_run(directory: Path, net_arch: list[int], activation: type[nn.Module] = nn.Tanh, steps: int = 256) -> Path:
    directory.mkdir(parents=True)
    model = PPO(
        "MlpPolicy",
        make_env(CARTPOLE),
        seed=0,
        n_steps=128,
        batch_size=64,
        policy_kwargs={"net_arch": net_arch, "activation_fn": activation},
    )
    if steps:
        model.learn(steps)
    model.save(directory / "model.zip")
    config = {"algo": "ppo", "task": "CartPole", "seed": 0, "hyperparameters": {"gamma": 0.98, "gae_lambda": 0.8}}
    (directory / "config.json").write_text(json.dumps(config))
    (directory / "metrics.json").write_text(json.dumps({"status": "ok", "train": {"return_mean": 1.0}}))
    return directory


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _save_run(tmp_path_factory.mktemp("probe") / "run", [16, 16])


@pytest.fixture(scope="module")
def policy(run_dir: Path) -> FunctionalPolicy:
    return load_policy(run_dir)


@pytest.fixture(scope="module")
def batch(policy: FunctionalPolicy) -> ProbeBatch:
    # 8 envs x 64 steps, cut episodes: the batch these tests were tuned on
    return collect_batch(policy, CARTPOLE, 512, seed=0, gamma=0.98, gae_lambda=0.8, n_envs=8, whole_episodes=False)


def _flat_loss(policy: FunctionalPolicy, batch: ProbeBatch, kind: str):  # type: ignore[no-untyped-def]
    params = scope_params(policy, "actor")
    loss = make_loss(policy, batch, kind)
    shapes = {k: v.shape for k, v in params.items()}
    sizes = [v.numel() for v in params.values()]
    flat = torch.cat([v.reshape(-1) for v in params.values()])

    def f(x: torch.Tensor) -> torch.Tensor:
        parts = torch.split(x, sizes)
        return loss({k: p.reshape(shapes[k]) for k, p in zip(shapes, parts, strict=True)})

    return f, flat, params, loss


def test_krylov_extremes_match_autograd_hessian(policy: FunctionalPolicy, batch: ProbeBatch) -> None:
    f, flat, params, loss = _flat_loss(policy, batch, "surrogate")
    exact = torch.linalg.eigvalsh(torch.func.hessian(f)(flat).double())
    op = HessianOperator(loss, params)
    assert op.n == flat.numel() == 386
    top, bottom = extreme_eigenpairs(op, 5, exact_threshold=0, seed=0, tol=1e-7, vectors=False)
    torch.testing.assert_close(top.values, exact.flip(0)[:5], rtol=1e-4, atol=1e-6 * float(exact.abs().max()))
    torch.testing.assert_close(bottom.values, exact[:5], rtol=1e-4, atol=1e-6 * float(exact.abs().max()))
    trace = hutchinson_trace(op, 100, seed=0)
    assert abs(trace.estimate - float(exact.sum())) <= 3 * trace.stderr


def test_kl_hessian_is_fisher_psd_with_zero_gradient(policy: FunctionalPolicy, batch: ProbeBatch) -> None:
    _, _, params, loss = _flat_loss(policy, batch, "kl")
    op = HessianOperator(loss, params)
    assert float(op.gradient().abs().max()) < 1e-6
    eig = torch.linalg.eigvalsh(op.dense().double())
    assert float(eig.max()) > 0
    assert float(eig.min()) >= -1e-6 * float(eig.max())


def test_surrogate_gradient_is_policy_gradient(run_dir: Path, policy: FunctionalPolicy, batch: ProbeBatch) -> None:
    model = PPO.load(run_dir / "model.zip", device="cpu")
    obs, actions, _, adv = batch.tensors(policy)
    _, log_prob, _ = model.policy.evaluate_actions(obs, actions)
    (-(log_prob * adv).mean()).backward()
    grads = {n: p.grad for n, p in model.policy.named_parameters() if n in policy.actor_names}
    assert all(g is not None for g in grads.values())
    expected = torch.cat([g.reshape(-1) for g in grads.values() if g is not None])
    op = HessianOperator(make_loss(policy, batch, "surrogate"), scope_params(policy, "actor"))
    torch.testing.assert_close(op.gradient(), expected, rtol=1e-4, atol=1e-6)
    assert float(expected.norm()) > 1e-3  # a real gradient, not a vacuous match


def test_gae_bootstraps_truncation_and_cuts_termination() -> None:
    rewards = np.ones((3, 1))
    values = np.zeros((3, 1))
    next_values = np.full((3, 1), 10.0)
    terminated = np.array([[0.0], [1.0], [0.0]])
    done = np.array([[0.0], [1.0], [1.0]])  # step 2 is a truncation: bootstrap V(final) = 10
    adv = compute_gae(rewards, values, next_values, terminated, done, gamma=0.5, gae_lambda=1.0)
    np.testing.assert_allclose(adv[:, 0], [6.5, 1.0, 6.0])  # 1 + 0.5 * 10 + 0.5 * 1; cut; 1 + 0.5 * 10


def test_filter_directions_match_weight_norms(policy: FunctionalPolicy) -> None:
    params = scope_params(policy, "actor")
    (d,) = draw_directions(params, "filter", 1, seed=3)
    for name, p in params.items():
        if p.ndim >= 2:
            torch.testing.assert_close(d[name].norm(dim=1), p.norm(dim=1), rtol=1e-5, atol=1e-7)
        else:
            assert float(d[name].abs().max()) == 0.0  # biases zeroed (Li et al. 2018)


def test_zero_sigma_is_zero_sharpness(policy: FunctionalPolicy, batch: ProbeBatch) -> None:
    params = scope_params(policy, "actor")
    loss = make_loss(policy, batch, "surrogate")
    obs = policy.preprocess(batch.observations)
    scalars, _ = average_case(policy, CARTPOLE, loss, params, obs, [0.0], n_directions=2, episodes=1)
    for kind in ("filter", "raw"):
        assert scalars[kind]["loss_increase"]["mean"] == [0.0]
        assert scalars[kind]["kl"]["mean"] == [0.0]
        assert scalars[kind]["action_change"]["mean"] == [0.0]
        assert scalars[kind]["return_drop"]["mean"] == [0.0]
    wc, _ = worst_case(policy, None, loss, params, obs, rho=0.0, adaptive_rho=0.0, steps=2)
    assert all(wc[b][m]["sharpness"] == 0.0 for b in ("raw", "adaptive") for m in ("one_step", "multi_step"))


def test_rescaling_invariance_dinh(tmp_path: Path) -> None:
    """Dinh et al. (2017): W1, b1 -> a W1, a b1 and W2 -> W2 / a leave a ReLU policy unchanged; raw lambda_max
    changes, filter-normalised and adaptive (eta = 0) sharpness do not."""
    run = _save_run(tmp_path / "relu", [16, 16], activation=nn.ReLU, steps=0)
    model = PPO.load(run / "model.zip", device="cpu")
    scaled = copy.deepcopy(model.policy)
    a = 4.0
    with torch.no_grad():
        net = cast(nn.Sequential, scaled.mlp_extractor.policy_net)
        layer1, layer2 = cast(nn.Linear, net[0]), cast(nn.Linear, net[2])
        layer1.weight.mul_(a)
        layer1.bias.mul_(a)
        layer2.weight.div_(a)
    p1, p2 = FunctionalPolicy(model.policy), FunctionalPolicy(scaled)
    b = collect_batch(p1, CARTPOLE, 256, seed=0)
    obs = p1.preprocess(b.observations)
    logits = [cast(torch.distributions.Categorical, p.distribution({}, obs)).logits for p in (p1, p2)]
    torch.testing.assert_close(logits[0], logits[1], rtol=1e-5, atol=1e-5)
    stats = []
    for pol in (p1, p2):
        loss, params = make_loss(pol, b, "surrogate"), scope_params(pol, "actor")
        top, _ = extreme_eigenpairs(HessianOperator(loss, params), 1, vectors=False)
        avg, _ = average_case(pol, None, loss, params, obs, [0.1, 0.5], kinds=("filter",), n_directions=3)
        wc, _ = worst_case(pol, None, loss, params, obs, rho=0.05, adaptive_rho=0.1, steps=3, eta=0.0)
        stats.append((float(top.values[0]), avg["filter"]["loss_increase"]["mean"], wc["adaptive"]))
    (l1, f1, ad1), (l2, f2, ad2) = stats
    assert l2 / l1 > 1.5 or l1 / l2 > 1.5  # raw curvature is not invariant
    np.testing.assert_allclose(f1, f2, rtol=1e-3, atol=1e-7)
    for m in ("one_step", "multi_step"):
        np.testing.assert_allclose(ad1[m]["sharpness"], ad2[m]["sharpness"], rtol=1e-3, atol=1e-7)


def test_batched_perturbed_returns_equal_a_loop(run_dir: Path, policy: FunctionalPolicy) -> None:
    params = scope_params(policy, "actor")
    points = [{k: v + 0.3 * d[k] for k, v in params.items()} for d in draw_directions(params, "filter", 3, seed=1)]
    batched = perturbed_returns(policy, CARTPOLE, points, episodes=3, seed=0)
    model = PPO.load(run_dir / "model.zip", device="cpu")
    looped = []
    for point in points:
        copy_policy = copy.deepcopy(model.policy)
        with torch.no_grad():
            for name, p in copy_policy.named_parameters():
                if name in point:
                    p.copy_(point[name])
        looped.append(rollout_returns(FunctionalPolicy(copy_policy), CARTPOLE, [{}], 3, seed=0)[0, 0])
    np.testing.assert_array_equal(batched, np.stack(looped))


def test_probe_run_writes_reproducible_outputs(tmp_path: Path, run_dir: Path) -> None:
    options = {**QUICK, "measures": "hessian,trace,perturbation,worst_case,landscape", "landscape_points_2d": 3}
    first = probe_run(run_dir, out=tmp_path / "a", **options)
    second = probe_run(run_dir, out=tmp_path / "b", **options)  # issue 23: --out writes only under --out
    assert (tmp_path / "a" / "probe.json").read_text() == (tmp_path / "b" / "probe.json").read_text()
    assert first == json.loads((tmp_path / "a" / "probe.json").read_text())
    assert first == second
    for key in ("loss", "n_params", "hessian", "perturbation", "config"):
        assert key in first
    for key in ("lambda_max", "lambda_max_se", "lambda_min", "trace", "trace_se", "top_eigenvalues"):
        assert key in first["hessian"]
    assert "trace_stderr" not in first["hessian"]  # the batch SE replaced the within-batch one
    assert set(first["perturbation"]["average"]) >= {"filter", "raw"}
    assert set(first["perturbation"]["worst_case"]) == {"raw", "adaptive"}
    arrays = np.load(tmp_path / "a" / "probe.npz")
    sizes = arrays["batch.size_batches"]  # whole episodes: at least 256 transitions per batch
    assert sizes.shape == (2,) and (sizes >= 256).all()
    assert arrays["observations"].shape == (int(sizes.sum()), 4)
    np.testing.assert_array_equal(np.bincount(arrays["batch_index"]), sizes)
    assert arrays["landscape_2d_filter_loss"].shape == (3, 3)
    assert json.loads((run_dir / "metrics.json").read_text()) == {"status": "ok", "train": {"return_mean": 1.0}}
    metrics = json.loads((tmp_path / "a" / "metrics.json").read_text())
    assert "lambda_max" in metrics["probe"]
    block = metrics["probe"]
    non_null = [
        "trace_se",
        "lambda_max_se",
        "entropy",
        "entropy_se",
        "max_action_prob",
        "hessian_method",
        "return_halving_sigma_raw",
        "worst_case_raw_one_step",
        "worst_case_adaptive_one_step",
        "kl_sigma0p1",
        "kl_sigma0p3",
        "action_change_sigma0p1",
        "action_change_sigma0p3",
        "loss_increase_sigma0p1",
        "loss_increase_sigma0p3",
    ]
    assert all(block[key] is not None for key in non_null), {k: block[k] for k in non_null}
    assert all(not isinstance(v, dict | list) for v in block.values())  # flat: one runs.parquet column each
    assert block["hessian_method"] == first["hessian"]["method"] == "eigsh"  # --quick: matrix-free
    assert block["negative_mass_fraction"] is None  # no density and no whole spectrum: unknown, not 0
    assert block["kl_sigma0p3"] > block["kl_sigma0p1"] > 0.0
    at = first["perturbation"]["average"]["filter"]["at_reference_sigmas"]
    assert at["sigmas"] == [0.1, 0.3] and at["kl"]["mean"][0] == block["kl_sigma0p1"]
    assert at["kl"]["mean"][0] == first["perturbation"]["average"]["filter"]["kl"]["mean"][0]  # 0.1 is on the grid
    loaded = load_probe_arrays(tmp_path / "a")
    assert set(loaded) == set(arrays.files) and np.array_equal(loaded["observations"], arrays["observations"])


def test_interpolation(tmp_path: Path, run_dir: Path, policy: FunctionalPolicy, batch: ProbeBatch) -> None:
    loss = make_loss(policy, batch, "nll")
    alphas = np.linspace(-0.25, 1.25, 7)
    scalars, _ = interpolate(policy, policy, CARTPOLE, loss, alphas, episodes=1)
    assert scalars["loss_barrier"] == pytest.approx(0.0, abs=1e-6) and scalars["return_barrier"] == 0.0
    assert barrier(np.array([0.0, 2.0, 1.0]), np.array([0.0, 0.5, 1.0])) == 1.5
    other = load_policy(_save_run(tmp_path / "small", [8], steps=0))
    with pytest.raises(RlflatError, match="different architectures"):
        interpolate(policy, other, CARTPOLE, loss, alphas)


def _dqn_zip(tmp_path: Path) -> Path:
    path = tmp_path / "dqn.zip"
    DQN("MlpPolicy", make_env(CARTPOLE), learning_starts=0, buffer_size=100).save(path)
    return path


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (lambda t, r: [str(t / "nothing.txt")], "neither a run directory"),
        (lambda t, r: [str(_dqn_zip(t)), "--task", "CartPole"], "not an on-policy actor-critic"),
        (lambda t, r: [str(r / "model.zip"), "--task", "Pendulum"], "do not match"),
        (lambda t, r: [str(r), "--measures", "hessian,bogus"], "unknown measure 'bogus'"),
        (lambda t, r: [str(r), "--loss", "mse"], "unknown loss 'mse'"),
        (lambda t, r: [str(r / "model.zip")], "needs --task"),
        (lambda t, r: [str(r), "--batch", "many"], "invalid int value"),
        (lambda t, r: [str(r), "--sigmas", "0.3,0.1"], "ascending"),
    ],
)
def test_bad_input_is_one_line_exit_2_nothing_written(
    tmp_path: Path, run_dir: Path, capsys: pytest.CaptureFixture[str], args, message: str
) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "nothing.txt").write_text("x")
    before = sorted(p.name for p in run_dir.iterdir())
    out = tmp_path / "out"
    assert run_cli(main, [*args(tmp_path, run_dir), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not out.exists()
    assert sorted(p.name for p in run_dir.iterdir()) == before


def test_continuous_actions_fisher_and_zero_sigma(tmp_path: Path) -> None:
    """Box spaces: KL summed over action dims is PSD at theta0; unperturbed actions do not change."""
    pendulum = load_task("Pendulum")
    model = PPO("MlpPolicy", make_env(pendulum), seed=0, policy_kwargs={"net_arch": [8]})
    model.save(tmp_path / "model.zip")
    pol = load_policy(tmp_path / "model.zip")
    b = collect_batch(pol, pendulum, 128, seed=1)
    assert b.actions.shape == (400, 1) and np.isfinite(b.advantages).all()  # two whole 200-step episodes
    op = HessianOperator(make_loss(pol, b, "kl"), scope_params(pol, "all"))
    assert "log_std" in op.names and float(op.gradient().abs().max()) < 1e-6
    assert "log_std" not in scope_params(pol, "actor")  # the actor scope SAM trains (rlflat.scope)
    eig = torch.linalg.eigvalsh(op.dense().double())
    assert float(eig.min()) >= -1e-6 * float(eig.max())
    obs = pol.preprocess(b.observations)
    params = scope_params(pol, "actor")
    avg, _ = average_case(pol, None, make_loss(pol, b, "nll"), params, obs, [0.0, 0.5], n_directions=2)
    assert avg["filter"]["action_change"]["mean"][0] == 0.0 < avg["filter"]["action_change"]["mean"][1]


def test_exact_route_for_small_networks(tmp_path: Path, run_dir: Path) -> None:
    result = probe_run(
        run_dir, out=tmp_path, measures="hessian,trace,density", batch=256, batches=3, update_metrics=False
    )
    hess = result["hessian"]
    assert hess["method"] == "exact" and hess["trace_method"] == "exact" and hess["trace_se"] > 0.0  # not "+- 0"
    batches = np.load(tmp_path / "probe.npz")
    error = batches["hessian.hutchinson.estimate_batches"] - batches["hessian.trace_batches"]
    assert abs(error.mean()) <= 4 * error.std(ddof=1) / np.sqrt(3) + 1e-9 * abs(hess["trace"])
    assert hess["lambda_max"] == hess["top_eigenvalues"][0] >= hess["lambda_min"] == hess["bottom_eigenvalues"][0]
    assert 0.0 <= hess["negative_mass_fraction"] <= 1.0
    assert hess["density"]["method"] == "exact"
    eigs = batches["hessian_eigenvalues"]  # the first replicate's spectrum
    ratio_batches = batches["hessian.lambda_max_over_abs_sum_batches"]
    assert ratio_batches[0] == pytest.approx(eigs.max() / np.abs(eigs).sum(), rel=1e-9)
    assert hess["lambda_max_over_abs_sum"] == pytest.approx(ratio_batches.mean())
    lam, trace = batches["hessian.lambda_max_batches"], batches["hessian.trace_batches"]
    ratio = hess["lambda_max_over_trace"]
    if (trace > 0).all():
        assert ratio == pytest.approx(float(np.mean(lam / trace)))
    else:
        assert ratio is None  # undefined on a batch: undefined
    arrays = np.load(tmp_path / "probe.npz")
    assert arrays["hessian_eigenvalues"].shape == (result["n_params"],)
    integral = np.trapezoid(arrays["density"], arrays["density_grid"])
    assert integral == pytest.approx(1.0, abs=1e-2)
    assert result["perturbation"] == {"average": None, "worst_case": None}


def test_cli_on_bare_zip(tmp_path: Path, run_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = [str(run_dir / "model.zip"), "--task", "CartPole", "--out", str(tmp_path / "p"), "--quick"]
    argv += [
        "--batch",
        "128",
        "--batches",
        "2",
        "--measures",
        "trace,perturbation",
        "--sigmas",
        "0.5",
        "--episodes",
        "1",
    ]
    assert run_cli(main, argv) == 0
    result = json.loads((tmp_path / "p" / "probe.json").read_text())
    assert result["hessian"]["trace_method"] == "hutchinson" and result["hessian"]["lambda_max"] is None
    assert result["hessian"]["method"] is None  # no eigenvalues were computed, by any route
    assert result["config"]["gamma_resolved"] == 0.99  # a bare zip: default gamma / gae_lambda
    assert str(tmp_path / "p" / "probe.json") in capsys.readouterr().out


def _controller_run(directory: Path) -> Path:
    """A 4-64-64-2 PPO actor at SB3's own initialisation scale (||theta|| ~ 12 << sqrt(4610) ~ 68, action head at
    gain 0.01) with a balancing controller written into one path: it scores 500, like a trained policy."""
    directory.mkdir(parents=True)
    model = PPO("MlpPolicy", make_env(CARTPOLE), seed=0)
    net = cast(nn.Sequential, model.policy.mlp_extractor.policy_net)
    first, second = cast(nn.Linear, net[0]), cast(nn.Linear, net[2])
    head = model.policy.action_net
    with torch.no_grad():
        first.weight[0] = 3.0 * torch.tensor([0.1, 0.5, 1.0, 0.5])  # push toward the side the pole falls to
        first.bias[0] = 0.0
        second.weight[0].mul_(0.1)
        second.weight[0, 0], second.bias[0] = 3.0, 0.0
        head.weight[1, 0] += 0.05
        head.weight[0, 0] -= 0.05
    model.save(directory / "model.zip")
    (directory / "config.json").write_text(json.dumps({"algo": "ppo", "task": "CartPole", "seed": 0}))
    return directory


def test_raw_return_halving_sigma_is_not_pinned_to_the_grid_start(tmp_path: Path) -> None:
    """Raw directions are scaled to ||theta||: unscaled (norm ~sqrt(n)) they collapsed this policy before 0.03."""
    pol = load_policy(_controller_run(tmp_path / "controller"))
    assert rollout_returns(pol, CARTPOLE, [{}], 2, seed=0).mean() == 500.0
    b = collect_batch(pol, CARTPOLE, 256, seed=0)
    params = scope_params(pol, "actor")
    sigmas = [0.03, 0.1, 0.3, 1.0, 3.0]
    avg, _ = average_case(
        pol, CARTPOLE, make_loss(pol, b, "surrogate"), params, pol.preprocess(b.observations), sigmas,
        n_directions=4, episodes=2,
    )  # fmt: skip
    for kind in ("filter", "raw"):
        crit = avg[kind]["return_halving_sigma"]
        assert crit is not None and sigmas[0] < crit < sigmas[-1], (kind, crit, avg[kind]["return"])


def test_direction_kinds_draw_from_named_streams(policy: FunctionalPolicy, batch: ProbeBatch) -> None:
    params = scope_params(policy, "actor")
    loss = make_loss(policy, batch, "nll")
    obs = policy.preprocess(batch.observations)
    _, arrays = average_case(policy, None, loss, params, obs, [0.1], kinds=("filter", "raw"), n_directions=2, seed=5)
    for kind in ("filter", "raw"):
        dirs = draw_directions(params, kind, 2, seed=subseed(5, kind))
        with torch.no_grad():
            manual = [float(loss({k: v + 0.1 * d[k] for k, v in params.items()}) - loss(params)) for d in dirs]
        np.testing.assert_allclose(arrays[f"perturbation_{kind}_loss_increase"][:, 0], manual, rtol=1e-6)


def test_worst_case_on_the_kl_loss_follows_the_fisher(tmp_path: Path, run_dir: Path, policy: FunctionalPolicy,
                                                      batch: ProbeBatch) -> None:  # fmt: skip
    """KL(theta0 || theta) is stationary at theta0 (gradient ~1e-8 of rounding): stepping along that noise gave
    ~10x less than the ball's maximum 0.5 rho^2 lambda_max; the one-step search must follow the curvature."""
    params = scope_params(policy, "actor")
    loss = make_loss(policy, batch, "kl")
    op = HessianOperator(loss, params)
    assert float(op.gradient().norm()) < 1e-6
    values, vectors = torch.linalg.eigh(op.dense().double())
    rho = 0.05
    quadratic = 0.5 * rho**2 * float(values[-1])
    noise = sam_sharpness(loss, params, rho, grad_rtol=0.0)  # the plain SAM step along the rounding noise
    assert noise.start == "gradient" and noise.sharpness < 0.3 * quadratic
    top = eigen_direction(vectors[:, -1:], 0, params)
    along = sam_sharpness(loss, params, rho, direction=top)
    assert along.start == "eigenvector" and along.sharpness == pytest.approx(quadratic, rel=0.02)
    rand = sam_sharpness(loss, params, rho, seed=0)
    assert rand.start == "random" and rand.sharpness > 0.5 * quadratic
    assert pgd_sharpness(loss, params, rho, steps=10, seed=0).sharpness > 0.9 * quadratic
    result = probe_run(
        run_dir, out=tmp_path, loss="kl", measures="hessian,worst_case", batch=512, episodes=1, ascent_steps=3,
        rho=rho, update_metrics=False, batches=2,
    )  # fmt: skip
    raw = result["perturbation"]["worst_case"]["raw"]
    assert raw["one_step"]["start"] == "eigenvector" and "note" in result["perturbation"]["worst_case"]
    assert raw["one_step"]["sharpness"] == pytest.approx(0.5 * rho**2 * result["hessian"]["lambda_max"], rel=0.02)


def test_public_option_check_and_array_loader(tmp_path: Path) -> None:
    validate_probe_options({"batch": 512, "sigmas": [0.1, 1.0], "quick": True})
    for bad, message in (({"bacth": 1}, "unknown probe option 'bacth'"), ({"sigmas": [0.0, 1.0]}, "positive")):
        with pytest.raises(RlflatError, match=message):
            validate_probe_options(bad)
    assert make_options(reference_sigmas=[0.2]).reference_sigmas == (0.2,)
    with pytest.raises(RlflatError, match="no probe.npz"):
        load_probe_arrays(tmp_path)
