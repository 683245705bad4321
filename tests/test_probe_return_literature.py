"""Return-based sharpness, the cliff test and the published-definition measures against independent computations:
a simulated crossed design for the SE, returns recomputed through the evaluator, hand-made cliff lines, closed-form
maxima of quadratics on a box (and brute force over its vertices), and a closed-form sigma'."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
import torch
from stable_baselines3 import PPO

from rlflat.errors import RlflatError
from rlflat.evaluate import rollout_returns
from rlflat.policy import FunctionalPolicy, load_policy
from rlflat.probe.cliff import cliff_test
from rlflat.probe.directions import raw_direction
from rlflat.probe.literature import keskar_sharpness, magnitude_aware_sigma
from rlflat.probe.losses import scope_params
from rlflat.probe.options import make_options
from rlflat.probe.perturbation import stack_params
from rlflat.probe.return_sharpness import (
    adaptive_direction,
    crossed_mean_se,
    return_scale,
    return_sharpness,
)
from rlflat.probe.seeding import subseed
from rlflat.tasks import load_task, make_env

torch.set_num_threads(1)
CARTPOLE = load_task("CartPole")


@pytest.fixture(scope="module")
def policy(tmp_path_factory: pytest.TempPathFactory) -> FunctionalPolicy:
    directory = tmp_path_factory.mktemp("ret")
    model = PPO("MlpPolicy", make_env(CARTPOLE), seed=0, n_steps=128, batch_size=64, policy_kwargs={"net_arch": [8]})
    model.learn(256)
    model.save(directory / "model.zip")
    (directory / "config.json").write_text(json.dumps({"algo": "ppo", "task": "CartPole", "seed": 0}))
    return load_policy(directory)


# ----- return sharpness ---------------------------------------------------------------------------------------


def test_crossed_se_matches_the_spread_of_simulated_crossed_designs() -> None:
    rng = np.random.default_rng(0)
    k, e, reps = 8, 6, 4000
    sd_dir, sd_ep, sd_res = 1.0, 0.5, 0.3
    means, ses = [], []
    for _ in range(reps):
        x = rng.normal(0, sd_dir, (k, 1)) + rng.normal(0, sd_ep, (1, e)) + rng.normal(0, sd_res, (k, e))
        m, se = crossed_mean_se(x)
        means.append(m)
        ses.append(se)
    true_sd = math.sqrt(sd_dir**2 / k + sd_ep**2 / e + sd_res**2 / (k * e))
    assert np.std(means) == pytest.approx(true_sd, rel=0.05)  # the simulation itself
    assert np.sqrt(np.mean(np.square(ses))) == pytest.approx(true_sd, rel=0.05)  # the estimator, on average
    naive = np.mean([np.std(rng.normal(size=(k, e)), ddof=1) / math.sqrt(k * e) for _ in range(10)])
    assert naive < 0.5 * true_sd  # treating the k x e cells as independent would understate it


def test_crossed_se_is_nan_without_replication() -> None:
    assert math.isnan(crossed_mean_se(np.ones((1, 5)))[1])
    assert crossed_mean_se(np.array([[1.0, 3.0], [5.0, 7.0]]))[0] == 4.0


def test_adaptive_direction_is_weight_magnitude_times_gaussian(policy: FunctionalPolicy) -> None:
    params = scope_params(policy, "actor")
    d = adaptive_direction(params, 3)
    z = torch.cat([(d[k] / params[k].abs()).reshape(-1) for k in params if bool((params[k] != 0).all())])
    assert abs(float(z.mean())) < 0.15 and float(z.std()) == pytest.approx(1.0, abs=0.15)
    assert all(torch.equal(d[k] == 0, params[k] == 0) for k in params)  # zero weights are never moved


def test_return_drop_recomputed_through_the_evaluator(policy: FunctionalPolicy) -> None:
    params = scope_params(policy, "actor")
    scalars, arrays = return_sharpness(
        policy, CARTPOLE, params, sigmas=(0.5,), kinds=("adaptive",), n_directions=3, episodes=2, seed=7
    )
    gen = torch.Generator().manual_seed(subseed(7, "return-adaptive"))
    points = [
        {k: p + 0.5 * d[k] for k, p in params.items()} for d in (adaptive_direction(params, gen) for _ in range(3))
    ]
    independent = rollout_returns(policy, CARTPOLE, [{}], 2, params=stack_params(points))[:, 0, :]
    nominal = rollout_returns(policy, CARTPOLE, [{}], 2)[0, 0, :]
    np.testing.assert_array_equal(arrays["return_sharpness_adaptive_returns"][:, 0, :], independent)
    scale = CARTPOLE.reference_returns.ref - CARTPOLE.reference_returns.low  # type: ignore[union-attr]
    assert scalars["scale"]["value"] == pytest.approx(500.0 - 22.197)
    expected = float(((nominal[None, :] - independent) / scale).mean())
    assert scalars["adaptive"]["drop"] == [pytest.approx(expected)]
    assert scalars["adaptive"]["drop_stderr"][0] >= 0.0


def test_return_drop_at_tiny_sigma_is_zero(policy: FunctionalPolicy) -> None:
    params = scope_params(policy, "actor")
    scalars, _ = return_sharpness(policy, CARTPOLE, params, sigmas=(1e-9,), n_directions=2, episodes=2)
    assert [scalars[k]["drop"] for k in ("filter", "adaptive")] == [[0.0], [0.0]]


# ----- cliff test ---------------------------------------------------------------------------------------------


def test_cliff_test_on_hand_made_lines() -> None:
    flat_then_fall = [100.0] * 9 + [40.0] + [40.0] * 5
    test = cliff_test(flat_then_fall)
    assert test.cliff and test.drop_over_range == pytest.approx(1.0) and test.return_ratio == pytest.approx(0.4)
    to_45 = [100.0] * 9 + [45.0] + [0.0] * 5  # to 45% of the start, a drop of 55% of the line's range: cliff
    assert cliff_test(to_45).cliff
    deep_surface = [100.0] * 9 + [48.0] + [-1000.0]  # to 48%, but 52 of a 1100 range is < 25%: no cliff
    assert not cliff_test(deep_surface).cliff
    gentle = list(np.linspace(100.0, 60.0, 12))  # 40% drop only
    assert not cliff_test(gentle).cliff
    # negative returns are measured above the floor: -600 -> -1500 with floor -2000 keeps 500/1400 = 36%
    assert cliff_test([-600.0] * 9 + [-1500.0] * 3, floor=-2000.0).cliff
    with pytest.raises(RlflatError):
        cliff_test([1.0] * 9)


# ----- Keskar et al. (2017) -----------------------------------------------------------------------------------


def _quadratic(a: torch.Tensor, b: torch.Tensor, c: float):  # type: ignore[no-untyped-def]
    def loss(params: dict[str, torch.Tensor]) -> torch.Tensor:
        x = params["x"].double()
        return (0.5 * x @ a @ x + b @ x + c).float()

    return loss


def test_keskar_on_a_separable_quadratic_matches_the_closed_form() -> None:
    x0 = torch.tensor([0.5, -2.0, 0.0, 3.0], dtype=torch.float32)
    a = torch.diag(torch.tensor([2.0, 1.0, 4.0, 0.5], dtype=torch.float64))
    b = torch.tensor([1.0, -0.5, 0.3, 0.0], dtype=torch.float64)
    loss = _quadratic(a, b, 1.0)
    eps = 0.1
    bound = eps * (x0.double().abs() + 1)
    f = lambda x: float(0.5 * x @ a @ x + b @ x + 1.0)  # noqa: E731
    x = x0.double()
    # convex and separable: each coordinate's maximum over [-bound, bound] is at an end
    best = x.clone()
    for i in range(4):
        ends = [x[i] - bound[i], x[i] + bound[i]]
        vals = [0.5 * a[i, i] * e**2 + b[i] * e for e in ends]
        best[i] = ends[int(np.argmax(vals))]
    result = keskar_sharpness(loss, {"x": x0}, eps, max_iter=50)
    assert result.max_loss == pytest.approx(f(best), rel=1e-5)
    assert result.sharpness == pytest.approx(100 * (f(best) - f(x)) / (1 + f(x)), rel=1e-4)


def test_keskar_reaches_the_brute_force_vertex_maximum_of_a_coupled_convex_quadratic() -> None:
    rng = np.random.default_rng(2)
    m = rng.normal(size=(5, 5))
    a = torch.as_tensor(m @ m.T / 5 + np.eye(5))
    b = torch.as_tensor(rng.normal(size=5))
    x0 = torch.as_tensor(rng.normal(size=5), dtype=torch.float32)
    eps = 0.05
    bound = eps * (x0.double().abs() + 1)
    f = lambda x: float(0.5 * x @ a @ x + b @ x)  # noqa: E731
    brute = max(
        f(x0.double() + torch.tensor(s, dtype=torch.float64) * bound) for s in itertools.product((-1, 1), repeat=5)
    )
    result = keskar_sharpness(_quadratic(a, b, 0.0), {"x": x0}, eps, max_iter=50)
    assert result.max_loss == pytest.approx(brute, rel=1e-5)


def test_keskar_starts_off_a_stationary_point_and_refuses_undefined_normalisation() -> None:
    a = torch.eye(3, dtype=torch.float64)
    loss = _quadratic(a, torch.zeros(3, dtype=torch.float64), 0.0)  # minimum at 0: zero gradient there
    result = keskar_sharpness(loss, {"x": torch.zeros(3)}, 0.1, max_iter=20, seed=1)
    assert result.start == "random" and result.max_loss == pytest.approx(3 * 0.5 * 0.1**2, rel=1e-4)
    with pytest.raises(RlflatError, match="1 \\+ f"):
        keskar_sharpness(_quadratic(a, torch.zeros(3, dtype=torch.float64), -2.0), {"x": torch.zeros(3)}, 0.1)


# ----- Jiang et al. (2020) ------------------------------------------------------------------------------------


def _relative_energy(theta: dict[str, torch.Tensor]):  # type: ignore[no-untyped-def]
    norm = sum(float((p**2).sum()) for p in theta.values())

    def deviation(point: dict[str, torch.Tensor]) -> float:
        return sum(float(((point[k] - p) ** 2).sum()) for k, p in theta.items()) / norm

    return deviation


def test_magnitude_aware_sigma_matches_the_closed_form_root() -> None:
    theta = {"w": torch.linspace(0.1, 2.0, 50, dtype=torch.float64).reshape(5, 10), "b": torch.full((5,), -0.7)}
    theta["b"] = theta["b"].double()
    result = magnitude_aware_sigma(
        _relative_energy(theta), theta, target=0.05, eps=0.0, samples=6, depth=60, tolerance=0.0, seed=4
    )
    # with eps = 0 the deviation is sigma^2 * c, c = mean over the draws of sum theta^2 z^2 / sum theta^2
    gen = torch.Generator().manual_seed(4)
    norm = sum(float((p**2).sum()) for p in theta.values())
    c = np.mean(
        [
            sum(float((theta[k] ** 2 * z[k] ** 2).sum()) for k in theta) / norm
            for z in (raw_direction(theta, gen) for _ in range(6))
        ]
    )
    assert result.sigma == pytest.approx(math.sqrt(0.05 / c), rel=1e-9)
    assert result.flatness == pytest.approx(c / 0.05, rel=1e-8) and not result.censored
    assert result.sigma_stderr > 0


def test_magnitude_aware_sigma_is_censored_at_its_upper_bound() -> None:
    theta = {"w": torch.ones(4, dtype=torch.float64)}
    result = magnitude_aware_sigma(_relative_energy(theta), theta, target=1e6, upper=2.0, samples=2)
    assert result.censored and result.sigma == 2.0 and result.flatness == 0.25


def test_new_probe_options_reject_bad_values_in_one_line() -> None:
    for bad in ({"return_sigmas": (0.1, 0.05)}, {"cliff_points": 5}, {"keskar_eps": 0.0},
                {"magnitude_aware_deviation": "loss"}, {"return_scale": "run"}):  # fmt: skip
        with pytest.raises(RlflatError):
            make_options(**bad)
    assert make_options(return_sigmas=[0.1]).return_sigmas == (0.1,)
    assert return_scale(CARTPOLE, "solved_threshold").value == 475.0  # the other declared scale
