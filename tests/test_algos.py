"""rlflat.algos: PPO == SB3 PPO, SAM/ASAM closed forms and invariants, knobs, save/load, errors."""

from __future__ import annotations

import copy
import json
import math
import os
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
import pytest
import torch as th
from stable_baselines3 import PPO
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.logger import KVWriter, Logger

from rlflat.algos import (
    ADAM_EPS,
    ALGORITHM_NAMES,
    ASAM,
    PG,
    SAM,
    RlflatPPO,
    TrainingDiverged,
    UpdateRule,
    build_model,
    describe_algorithms,
    effective_hyperparameters,
    load_model,
    merge_overrides,
    parse_algorithm,
    parse_override,
    parse_overrides,
    resolve_hyperparameters,
    valid_keys,
)
from rlflat.algos.schedules import LinearSchedule, WarmupCosineSchedule, parse_schedule
from rlflat.errors import RlflatError
from rlflat.tasks import load_task

th.set_num_threads(1)

TINY_CARTPOLE: dict[str, Any] = {
    "n_steps": 32,
    "batch_size": 16,
    "n_epochs": 2,
    "learning_rate": 1e-3,  # constant: with lin_ the last update has lr 0 and compares nothing
    "clip_range": 0.2,
    "gamma": 0.98,
    "gae_lambda": 0.8,
}
ROLLOUT = 2 * 32
"""Env steps per rollout of TINY_CARTPOLE on ``_env()`` (2 envs)."""


_SCHEDULES = ("learning_rate", "clip_range")


class _Capture(KVWriter):
    """Keeps every dumped key/value, to compare SB3's logs with ours."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    def write(self, key_values: dict[str, Any], key_excluded: dict[str, Any], step: int = 0) -> None:
        self.rows.append({k: v for k, v in key_values.items() if k.startswith("train/")})


def _env(name: str = "CartPole-v1", n_envs: int = 2) -> Any:
    return make_vec_env(name, n_envs=n_envs)


def _trained(algo: str, hp: dict[str, Any], seed: int, steps: int, env_id: str = "CartPole-v1") -> Any:
    """Build then learn at once: models share torch's global RNG, so builds must not interleave."""
    model = build_model(algo, _env(env_id), hp, seed=seed)
    model.learn(steps)
    return model


def _params(model: Any) -> dict[str, th.Tensor]:
    return {k: v.detach().clone() for k, v in model.policy.state_dict().items()}


def _assert_same_params(a: Any, b: Any, rtol: float = 1e-6, atol: float = 1e-7) -> None:
    pa, pb = _params(a), _params(b)
    assert pa.keys() == pb.keys()
    for key in pa:
        th.testing.assert_close(pa[key], pb[key], rtol=rtol, atol=atol, msg=f"parameter {key} differs")


def _train_twins(env_id: str, hp: dict[str, Any], seed: int, steps: int) -> tuple[Any, Any, _Capture, _Capture]:
    """rlflat ppo and SB3 PPO, each built and trained in turn (they share torch's global RNG)."""
    kwargs: dict[str, Any] = {k: parse_schedule(k, v) if k in _SCHEDULES else v for k, v in hp.items()}
    builders = (
        lambda: build_model("ppo", _env(env_id), hp, seed=seed),
        lambda: PPO("MlpPolicy", _env(env_id), seed=seed, device="cpu", **kwargs),
    )
    models, logs = [], []
    for build in builders:
        model, log = build(), _Capture()
        model.set_logger(Logger(None, [log]))
        model.learn(steps)
        models.append(model)
        logs.append(log)
    return models[0], models[1], logs[0], logs[1]


def _compare_logs(ours: _Capture, theirs: _Capture) -> None:
    assert len(ours.rows) == len(theirs.rows) > 0
    for mine, ref in zip(ours.rows, theirs.rows, strict=True):
        assert mine.keys() == ref.keys()
        for key in ref:
            assert float(mine[key]) == pytest.approx(float(ref[key]), rel=1e-5, abs=1e-7), key


# -- PPO == SB3 PPO ---------------------------------------------------------------------------------------


def test_ppo_matches_sb3_discrete_with_vf_clip_and_target_kl() -> None:
    hp = {**TINY_CARTPOLE, "learning_rate": 3e-3, "clip_range": "lin_0.2", "n_epochs": 4}
    hp.update(clip_range_vf=0.2, target_kl=1e-3)
    ours, theirs, log_ours, log_theirs = _train_twins("CartPole-v1", hp, seed=3, steps=4 * ROLLOUT)
    assert isinstance(ours, PPO)
    assert ours._n_updates == theirs._n_updates < 4 * 4  # the KL early stop fired
    _assert_same_params(ours, theirs)
    _compare_logs(log_ours, log_theirs)


def test_ppo_matches_sb3_continuous_sde() -> None:
    hp = {**TINY_CARTPOLE, "learning_rate": 1e-3, "clip_range": 0.2, "use_sde": True, "sde_sample_freq": 4}
    ours, theirs, log_ours, log_theirs = _train_twins("Pendulum-v1", hp, seed=1, steps=3 * 64)
    _assert_same_params(ours, theirs)
    _compare_logs(log_ours, log_theirs)


# -- update rules on a quadratic -----------------------------------------------------------------------------


class _Quadratic(th.nn.Module):
    """loss(x) = 0.5 x^T A x, gradient A x: SAM's step has a closed form."""

    def __init__(self) -> None:
        super().__init__()
        self.x = th.nn.Parameter(th.tensor([1.0, -2.0, 0.5], dtype=th.float64))
        self.matrix = False
        q = th.tensor([[2.0, 0.3, 0.0], [0.3, 1.0, -0.2], [0.0, -0.2, 0.5]], dtype=th.float64)
        self.A = q @ q.T

    def forward(self) -> th.Tensor:
        x = self.x.flatten()
        return 0.5 * x @ self.A @ x


def _rule_step(
    rule: UpdateRule, lr: float = 0.1, max_grad_norm: float | None = None, as_weight: bool = False
) -> tuple[Any, Any]:
    """One rule step on the quadratic; ``as_weight`` makes x a 1x3 weight matrix (ASAM scales only weights)."""
    quad = _Quadratic()
    if as_weight:
        quad.x = th.nn.Parameter(quad.x.detach().reshape(1, 3))
    x0 = quad.x.detach().flatten().clone()
    opt = th.optim.SGD(quad.parameters(), lr=lr)
    rule.step(opt, quad(), quad, [quad.x], [quad.x], max_grad_norm)
    return quad, x0


def test_sam_step_matches_closed_form_and_does_not_accumulate() -> None:
    quad, x = _rule_step(SAM(rho=0.3))
    g = quad.A @ x
    e = 0.3 * g / g.norm()
    expected = x - 0.1 * (quad.A @ (x + e))  # the step uses g(x + e) alone, not g(x) + g(x + e)
    th.testing.assert_close(quad.x.detach(), expected, rtol=1e-12, atol=1e-12)


def test_sam_clips_the_gradient_it_steps_with() -> None:
    quad, x = _rule_step(SAM(rho=0.3), max_grad_norm=0.5)
    g = quad.A @ x
    g_sam = quad.A @ (x + 0.3 * g / g.norm())
    expected = x - 0.1 * g_sam * (0.5 / (g_sam.norm() + 1e-6))  # clip_grad_norm_'s formula
    th.testing.assert_close(quad.x.detach(), expected, rtol=1e-10, atol=1e-12)


def test_asam_step_matches_closed_form() -> None:
    quad, x = _rule_step(ASAM(rho=0.5, eta=0.01), as_weight=True)
    g = quad.A @ x
    t = x.abs() + 0.01
    e = 0.5 * t * t * g / (t * g).norm()
    expected = x - 0.1 * (quad.A @ (x + e))
    th.testing.assert_close(quad.x.detach().flatten(), expected, rtol=1e-12, atol=1e-12)


def test_asam_scales_weights_and_biases_alike() -> None:
    """ASAM's operator T = |theta| + eta elementwise on every tensor, biases included; one norm over both."""
    gen = th.Generator().manual_seed(0)
    weight, bias = th.randn(3, 4, generator=gen), th.randn(3, generator=gen)
    g_w, g_b = th.randn(3, 4, generator=gen), th.randn(3, generator=gen)
    e_w, e_b = ASAM(rho=0.5, eta=0.01).perturbation([weight, bias], [g_w, g_b])
    t_w, t_b = weight.abs() + 0.01, bias.abs() + 0.01
    norm = th.sqrt((t_w * g_w).pow(2).sum() + (t_b * g_b).pow(2).sum())
    th.testing.assert_close(e_w, 0.5 * t_w * t_w * g_w / norm)
    th.testing.assert_close(e_b, 0.5 * t_b * t_b * g_b / norm)


def test_plain_rule_is_gradient_descent() -> None:
    quad, x = _rule_step(UpdateRule())
    th.testing.assert_close(quad.x.detach(), x - 0.1 * (quad.A @ x), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("rule", [SAM(rho=0.7), ASAM(rho=2.0)])
def test_nonfinite_loss_at_the_perturbed_point_raises_with_theta_restored(rule: UpdateRule) -> None:
    quad = _Quadratic()
    x0 = quad.x.detach().clone()
    opt = th.optim.SGD(quad.parameters(), lr=0.1)
    with pytest.raises(TrainingDiverged, match="loss at the A?SAM-perturbed point is nan"):
        rule.step(opt, quad(), lambda: quad() * float("nan"), [quad.x], [quad.x], None)
    assert th.equal(quad.x.detach(), x0)  # restored, and no step taken


def test_ppo_names_the_update_whose_perturbed_loss_diverged() -> None:
    model = build_model("ppo_sam", _env(), TINY_CARTPOLE, seed=0)
    assert isinstance(model, RlflatPPO)
    original = model.minibatch_loss

    def spy(batch: Any, clip: float, clip_vf: float | None, with_stats: bool = True) -> Any:
        loss, stats = original(batch, clip, clip_vf, with_stats=with_stats)
        return (loss if with_stats else loss * float("inf") * 0.0), stats  # nan at the perturbed point only

    model.minibatch_loss = spy  # type: ignore[method-assign,assignment]
    with pytest.raises(TrainingDiverged, match=r"iteration 0 .*minibatch 0: loss at the SAM-perturbed point is nan"):
        model.learn(ROLLOUT)


@pytest.mark.parametrize("rule", [SAM(rho=0.7), ASAM(rho=2.0)])
def test_parameters_restored_bit_for_bit_before_base_step(rule: UpdateRule) -> None:
    th.manual_seed(0)
    net = th.nn.Sequential(th.nn.Linear(4, 16), th.nn.Tanh(), th.nn.Linear(16, 1))
    data = th.randn(32, 4)
    params = list(net.parameters())
    before = [p.detach().clone() for p in params]
    seen: list[list[th.Tensor]] = []
    opt = th.optim.Adam(params, lr=1e-3)
    original_step = opt.step

    def spy(*args: Any, **kwargs: Any) -> Any:
        seen.append([p.detach().clone() for p in params])
        return original_step(*args, **kwargs)

    opt.step = spy  # type: ignore[method-assign]

    def closure() -> th.Tensor:
        return net(data).pow(2).mean()

    rule.step(opt, closure(), closure, params, params, 0.5)
    assert len(seen) == 1
    assert all(th.equal(a, b) for a, b in zip(seen[0], before, strict=True))
    assert not all(th.equal(a, b) for a, b in zip(params, before, strict=True))  # and then it stepped


# -- SAM inside PPO -------------------------------------------------------------------------------------------


def test_sam_with_rho_zero_equals_plain_ppo() -> None:
    plain = _trained("ppo", TINY_CARTPOLE, seed=5, steps=3 * ROLLOUT)
    sam = _trained("ppo_sam", {**TINY_CARTPOLE, "rho": 0.0, "sam_scope": "all"}, seed=5, steps=3 * ROLLOUT)
    assert plain._n_updates == 3 * TINY_CARTPOLE["n_epochs"]  # three rollouts, all with lr > 0
    _assert_same_params(plain, sam, rtol=0, atol=0)
    fresh = build_model("ppo", _env(), TINY_CARTPOLE, seed=5)
    assert not th.equal(_params(fresh)["action_net.weight"], _params(plain)["action_net.weight"])  # it did train


def test_sam_changes_training() -> None:
    plain = _trained("ppo", TINY_CARTPOLE, seed=5, steps=2 * ROLLOUT)
    sam = _trained("ppo_sam", {**TINY_CARTPOLE, "rho": 0.1}, seed=5, steps=2 * ROLLOUT)
    assert not th.equal(plain.policy.action_net.weight, sam.policy.action_net.weight)


@pytest.mark.parametrize("scope", ["actor", "all"])
def test_sam_scope_decides_what_is_perturbed(scope: str) -> None:
    hp = {**TINY_CARTPOLE, "learning_rate": 1e-3, "clip_range": 0.2, "use_sde": False, "rho": 0.5}
    model = build_model("ppo_sam", _env("Pendulum-v1"), {**hp, "sam_scope": scope}, seed=0)
    assert isinstance(model, RlflatPPO)
    at_theta: list[dict[str, th.Tensor]] = []
    perturbed: list[dict[str, th.Tensor]] = []
    original = model.minibatch_loss

    def spy(batch: Any, clip: float, clip_vf: float | None, with_stats: bool = True) -> Any:
        (at_theta if with_stats else perturbed).append(_params(model))
        return original(batch, clip, clip_vf, with_stats=with_stats)

    model.minibatch_loss = spy  # type: ignore[method-assign,assignment]
    model.learn(64)
    assert len(perturbed) == len(at_theta) > 0
    theta, moved = at_theta[0], perturbed[0]
    changed = {k for k in theta if not th.equal(theta[k], moved[k])}
    actor = {k for k in theta if k.startswith(("mlp_extractor.policy_net.", "action_net."))}
    if scope == "actor":
        from rlflat.policy import FunctionalPolicy

        assert changed == actor == set(FunctionalPolicy(model.policy).actor_names)  # the probe's actor scope
        assert "log_std" not in changed
    else:
        assert changed == set(theta)  # critic and log_std too
    assert "log_std" in theta


# -- knobs, schedules, SWA --------------------------------------------------------------------------------------


def test_weight_decay_switches_to_adamw_keeping_eps() -> None:
    model = build_model("pg", _env(), {"weight_decay": 0.01}, seed=0)
    opt = model.policy.optimizer
    assert type(opt) is th.optim.AdamW
    assert opt.defaults["eps"] == ADAM_EPS
    assert opt.defaults["weight_decay"] == 0.01
    default = build_model("pg", _env(), {}, seed=0).policy.optimizer
    assert type(default) is th.optim.Adam and default.defaults["eps"] == ADAM_EPS


@pytest.mark.parametrize(
    ("policy_kwargs", "optimizer", "eps"),
    [
        ({"optimizer_kwargs": {"amsgrad": True}}, th.optim.Adam, ADAM_EPS),  # SB3 alone would give 1e-8
        ({"optimizer_class": th.optim.AdamW}, th.optim.AdamW, ADAM_EPS),
        ({"optimizer_class": th.optim.AdamW, "optimizer_kwargs": {"betas": [0.8, 0.9]}}, th.optim.AdamW, ADAM_EPS),
        ({"optimizer_kwargs": {"eps": 1e-8}}, th.optim.Adam, 1e-8),  # an eps the user names is kept
        ({"optimizer_class": th.optim.SGD, "optimizer_kwargs": {"momentum": 0.9}}, th.optim.SGD, None),
    ],
)
def test_adam_eps_survives_optimizer_kwargs(policy_kwargs: dict[str, Any], optimizer: type, eps: float | None) -> None:
    given = copy.deepcopy(policy_kwargs)
    for algo in ("ppo", "pg"):
        opt = build_model(algo, _env(), {"policy_kwargs": policy_kwargs}, seed=0).policy.optimizer
        assert type(opt) is optimizer and opt.defaults.get("eps") == eps
        for key, value in policy_kwargs.get("optimizer_kwargs", {}).items():
            assert opt.defaults[key] == (tuple(value) if isinstance(value, list) else value)
    assert policy_kwargs == given  # the caller's dict is not mutated


def test_schedules_clamp_negative_progress() -> None:
    """SB3's progress_remaining is negative when the last rollout overshoots (30000 steps / 256: -0.0069)."""
    overshoot = 1.0 - 30_208 / 30_000
    assert overshoot < 0
    assert parse_schedule("learning_rate", "lin_1e-3")(overshoot) == 0.0  # type: ignore[operator]
    assert parse_schedule("learning_rate", "warmcos_1e-3_0.1")(overshoot) == pytest.approx(0.0, abs=1e-15)  # type: ignore[operator]
    # in training: 100 steps in rollouts of 64 end at progress 1 - 128/100 < 0
    hp = {**TINY_CARTPOLE, "learning_rate": "lin_1e-3", "clip_range": "lin_0.2"}
    model = build_model("ppo", _env(), hp, seed=0)
    assert isinstance(model, RlflatPPO)
    clip_ranges: list[float] = []
    original = model.minibatch_loss

    def spy(batch: Any, clip: float, clip_vf: float | None, with_stats: bool = True) -> Any:
        clip_ranges.append(clip)
        return original(batch, clip, clip_vf, with_stats=with_stats)

    model.minibatch_loss = spy  # type: ignore[method-assign,assignment]
    model.learn(100)
    assert model._current_progress_remaining < 0
    assert model.policy.optimizer.param_groups[0]["lr"] == 0.0
    assert clip_ranges[0] == pytest.approx(0.2 * (1 - 64 / 100)) and clip_ranges[-1] == 0.0


def test_schedules() -> None:
    cos = parse_schedule("learning_rate", "warmcos_1e-3_0.1")
    assert isinstance(cos, WarmupCosineSchedule)
    assert cos(1.0) == 0.0
    assert cos(1 - 0.05) == pytest.approx(0.5e-3)
    assert cos(1 - 0.1) == pytest.approx(1e-3)
    assert cos(1 - 0.55) == pytest.approx(0.5e-3)
    assert cos(1 - 0.1 - 0.9 * 0.25) == pytest.approx(1e-3 * 0.5 * (1 + math.cos(math.pi * 0.25)))
    assert cos(0.0) == pytest.approx(0.0, abs=1e-15)
    lin = parse_schedule("learning_rate", "lin_1e-3")
    assert isinstance(lin, LinearSchedule) and lin(0.25) == pytest.approx(0.25e-3)
    assert parse_schedule("learning_rate", "3e-3") == 0.003
    for bad in ("lin_", "cos_1e-3", "warmcos_1e-3_1.5", "lin_-1", "__import__('os')", "lin_1e-3_"):
        with pytest.raises(RlflatError, match="learning_rate"):
            parse_schedule("learning_rate", bad)


def test_swa_yields_the_average_of_the_snapshots() -> None:
    model = build_model("pg", _env(), {"n_steps": 16, "swa_start": 0.5, "learning_rate": 1e-2}, seed=0)
    snapshots: list[tuple[float, dict[str, th.Tensor]]] = []
    original = model.train

    def spy() -> None:
        original()
        snapshots.append((1.0 - model._current_progress_remaining, _params(model)))

    model.train = spy  # type: ignore[method-assign]
    model.learn(8 * 32)
    averaged = [p for done, p in snapshots if done >= 0.5]
    assert 1 < len(averaged) < len(snapshots) and model.swa_n_averaged == len(averaged)
    final = _params(model)
    assert not th.equal(final["action_net.weight"], snapshots[-1][1]["action_net.weight"])
    for key in final:
        th.testing.assert_close(final[key], th.stack([p[key] for p in averaged]).mean(0), rtol=1e-5, atol=1e-6)


# -- reproducibility, save/load, divergence -----------------------------------------------------------------------


def test_same_seed_same_parameters() -> None:
    runs = [_trained("ppo_asam", TINY_CARTPOLE, seed=11, steps=3 * ROLLOUT) for _ in range(3)]
    _assert_same_params(runs[0], runs[1], rtol=0, atol=0)
    other = _trained("ppo_asam", TINY_CARTPOLE, seed=12, steps=3 * ROLLOUT)
    assert not th.equal(other.policy.action_net.weight, runs[2].policy.action_net.weight)


@pytest.mark.parametrize("algo", ["ppo_sam", "pg_asam"])
def test_save_load_keeps_optimizer_state_and_rule(algo: str, tmp_path: Any) -> None:
    hp = {**TINY_CARTPOLE, "rho": 0.02, "weight_decay": 1e-4}
    if algo.startswith("pg"):
        hp = {k: v for k, v in hp.items() if k not in ("batch_size", "n_epochs", "clip_range")}
    model = build_model(algo, _env(), hp, seed=2)
    model.learn(2 * 64)
    model.save(tmp_path / "model.zip")
    loaded = load_model(tmp_path / "model")
    assert type(loaded) is type(model)
    assert loaded.rlflat_algorithm == algo and loaded.rho == 0.02 and loaded.update_rule == algo.split("_")[1]
    assert type(loaded._rule) is type(model._rule)
    _assert_same_params(model, loaded, rtol=0, atol=0)
    state, restored = model.policy.optimizer.state_dict(), loaded.policy.optimizer.state_dict()
    assert type(loaded.policy.optimizer) is th.optim.AdamW
    assert state["state"].keys() == restored["state"].keys() and len(state["state"]) > 0
    for index, tensors in state["state"].items():
        for name, value in tensors.items():
            assert th.equal(th.as_tensor(value), th.as_tensor(restored["state"][index][name])), name
    if algo.startswith("ppo"):
        assert type(PPO.load(tmp_path / "model.zip")) is PPO


def test_nan_loss_raises_training_diverged_and_nan_model_is_not_saved(tmp_path: Any) -> None:
    model = build_model("ppo_sam", _env(), TINY_CARTPOLE, seed=0)
    buffer = model.rollout_buffer
    original = buffer.compute_returns_and_advantage

    def poisoned(*args: Any, **kwargs: Any) -> None:
        original(*args, **kwargs)
        buffer.returns[0, 0] = float("nan")  # a NaN return: the value loss, hence the loss, is NaN

    buffer.compute_returns_and_advantage = poisoned  # type: ignore[method-assign]
    with pytest.raises(TrainingDiverged, match=r"iteration 0 .*minibatch \d+: loss is nan .*value_loss=nan"):
        model.learn(64)
    with th.no_grad():
        model.policy.value_net.weight.fill_(float("nan"))  # type: ignore[operator]
    with pytest.raises(TrainingDiverged, match="value_net.weight"):
        model.save(tmp_path / "nan.zip")
    assert not (tmp_path / "nan.zip").exists()


def test_nonfinite_parameters_before_learning_raise() -> None:
    model = build_model("ppo", _env(), TINY_CARTPOLE, seed=0)
    with th.no_grad():
        model.policy.action_net.weight.fill_(float("nan"))  # type: ignore[operator]
    with pytest.raises(TrainingDiverged, match=r"before learning .*action_net.weight"):
        model.learn(64)


def test_nonfinite_parameters_after_update_raise() -> None:
    model = build_model("pg", _env(), {"n_steps": 16}, seed=0)
    original = model._step

    def poisoned(loss: th.Tensor, closure: Any, minibatch: int = 0) -> None:
        original(loss, closure, minibatch)
        with th.no_grad():
            model.policy.action_net.bias.fill_(float("inf"))  # type: ignore[operator]

    model._step = poisoned  # type: ignore[method-assign]
    with pytest.raises(TrainingDiverged, match=r"iteration 1 .*action_net.bias"):
        model.learn(64)


# -- names, keys, values --------------------------------------------------------------------------------------


def test_names_compose_bases_and_rules() -> None:
    assert ALGORITHM_NAMES == ["ppo", "ppo_sam", "ppo_asam", "ppo_lysam", "pg", "pg_sam", "pg_asam", "pg_lysam"]
    assert parse_algorithm("ppo") == ("ppo", "plain")
    assert parse_algorithm("pg_asam") == ("pg", "asam")
    assert len(describe_algorithms()) == len(ALGORITHM_NAMES)
    with pytest.raises(RlflatError, match=r"'ppo_adam'.*ppo_sam"):
        parse_algorithm("ppo_adam")


def test_resolve_merges_spec_rule_defaults_and_overrides() -> None:
    task = load_task("CartPole")
    overrides = {"rho": 0.1, "batch_size": 64, "policy_kwargs": {"activation_fn": "relu"}}
    hp = resolve_hyperparameters("ppo_sam", task, overrides)
    assert hp["rho"] == 0.1 and hp["sam_scope"] == "actor" and hp["n_epochs"] == 20
    assert hp["learning_rate"] == "lin_1e-3" and hp["total_timesteps"] == 100000
    assert resolve_hyperparameters("pg", task, {"learning_rate": "3e-3"})["learning_rate"] == 0.003
    assert resolve_hyperparameters("ppo_asam", task, {})["rho"] == 0.5
    model = build_model("ppo_sam", _env(), hp, seed=0)
    assert model.policy.activation_fn is th.nn.ReLU


@pytest.mark.parametrize(
    ("algo", "overrides", "needle"),
    [
        ("ppo_sam", {"rhoo": 0.1}, r"'rhoo'.*rho"),
        ("ppo", {"rho": 0.1}, r"'rho'"),  # rho means nothing without SAM
        ("pg", {"n_epochs": 3}, r"'n_epochs'"),
        ("ppo_sam", {"rho": -0.1}, r"rho must be >= 0, got -0.1"),
        ("ppo", {"batch_size": 0}, r"batch_size .*got 0"),
        ("ppo", {"n_steps": 2.5}, r"n_steps .*2.5"),
        ("ppo", {"learning_rate": "lin_abc"}, r"'lin_abc'"),
        ("ppo", {"clip_range": "warmcos_0.2"}, r"'warmcos_0.2'"),
        ("ppo_sam", {"sam_scope": "critic"}, r"'critic'.*actor, all"),
        ("ppo", {"swa_start": 1.5}, r"swa_start.*1.5"),
        ("ppo", {"policy_kwargs": {"activation_fn": "sigmoid"}}, r"'sigmoid'.*tanh"),
        ("ppo", {"policy_kwargs": {"net_arch": [64, -1]}}, r"net_arch"),
        ("ppo", {"use_sde": "yes"}, r"use_sde .*'yes'"),
        ("ppo", {"tensorboard_log": 5}, r"'tensorboard_log'"),  # logging keys are not hyperparameters
        ("ppo", {"verbose": 1}, r"'verbose'"),
        ("ppo", {"stats_window_size": 10}, r"'stats_window_size'"),
        ("ppo", {"policy_kwargs": {"optimizer_class": "adam"}}, r"optimizer_class must be a subclass .*'adam'"),
        ("ppo", {"policy_kwargs": {"optimizer_class": th.nn.Tanh}}, r"optimizer_class must be a subclass"),
        ("ppo", {"policy_kwargs": {"features_extractor_class": 3}}, r"features_extractor_class must be a subclass"),
        ("ppo", {"policy_kwargs": {"activation_fn": 3}}, r"activation_fn must be one of"),
        ("ppo", {"policy_kwargs": {"ortho_init": "no"}}, r"ortho_init must be true or false"),
        ("ppo", {"policy_kwargs": {"log_std_init": "big"}}, r"log_std_init must be a number"),
        ("ppo", {"policy_kwargs": {"net_arch": {"pi": [8], "q": [8]}}}, r"net_arch may only have keys pi and vf"),
        ("ppo", {"policy_kwargs": {"optimizer_kwargs": {"bettas": [0.9, 0.9]}}}, r"optimizer_kwargs .*bettas"),
        ("ppo", {"policy_kwargs": {"optimizer_kwargs": {"eps": -1}}}, r"optimizer_kwargs .*eps"),
        ("ppo", {"policy_kwargs": {"optimizer_kwargs": {"lr": 0.1}}}, r"may not set lr .*learning_rate"),
        ("ppo", {"policy_kwargs": {"features_extractor_kwargs": {"dim": 3}}}, r"'dim'"),
        ("ppo", {"policy_kwargs": 3}, r"policy_kwargs must be a mapping"),
    ],
)
def test_bad_keys_and_values_raise(algo: str, overrides: dict[str, Any], needle: str) -> None:
    with pytest.raises(RlflatError, match=needle):
        resolve_hyperparameters(algo, load_task("CartPole"), overrides)


def test_only_checked_keys_are_settable() -> None:
    assert set(valid_keys("pg")) == {
        *("ent_coef", "gae_lambda", "gamma", "learning_rate", "max_grad_norm", "n_steps", "normalize_advantage"),
        *("policy_kwargs", "sde_sample_freq", "use_sde", "vf_coef", "weight_decay", "swa_start"),
        *("dropout", "critic_dropout"),
        *("n_envs", "normalize", "total_timesteps", "track_sharpness"),
    }
    extra = {"batch_size", "n_epochs", "clip_range", "clip_range_vf", "target_kl"}
    assert set(valid_keys("ppo_asam")) == set(valid_keys("pg")) | extra | {"rho", "sam_scope", "asam_eta"}


def test_policy_kwargs_classes_from_python_are_accepted() -> None:
    policy_kwargs = {
        "optimizer_class": th.optim.SGD,
        "optimizer_kwargs": {"momentum": 0.5},
        "activation_fn": th.nn.ReLU,
    }
    model = build_model("ppo", _env(), {"policy_kwargs": policy_kwargs}, seed=0)
    assert type(model.policy.optimizer) is th.optim.SGD and model.policy.activation_fn is th.nn.ReLU


def test_effective_hyperparameters_record_defaults_and_what_was_built() -> None:
    hp = resolve_hyperparameters("ppo_asam", load_task("CartPole"), {**TINY_CARTPOLE, "vf_coef": 0.25})
    model = build_model("ppo_asam", _env(), hp, seed=0)
    effective = effective_hyperparameters(model, hp)
    json.dumps(effective)  # JSON-friendly throughout
    assert set(valid_keys("ppo_asam")) <= set(effective)
    assert effective["vf_coef"] == 0.25 and effective["learning_rate"] == 1e-3  # the resolved values win
    # SB3 defaults nobody set, read back from the model that was built
    for key in ("max_grad_norm", "normalize_advantage", "ent_coef", "target_kl", "rho", "asam_eta", "sam_scope"):
        assert effective[key] == getattr(model, key), key
    assert effective["clip_range_vf"] is None and effective["max_grad_norm"] == 0.5
    policy = effective["policy_kwargs"]
    assert policy["net_arch"] == {"pi": [64, 64], "vf": [64, 64]} and policy["ortho_init"] is True
    assert policy["activation_fn"] == "torch.nn.modules.activation.Tanh"
    assert policy["optimizer_class"] == "torch.optim.adam.Adam"
    assert policy["optimizer_kwargs"]["eps"] == ADAM_EPS and policy["optimizer_kwargs"]["betas"] == [0.9, 0.999]
    plain = build_model("pg", _env(), {"weight_decay": 0.1}, seed=0)
    effective = effective_hyperparameters(plain, {"weight_decay": 0.1})
    assert "rho" not in effective and effective["policy_kwargs"]["optimizer_class"] == "torch.optim.adamw.AdamW"
    assert effective["policy_kwargs"]["optimizer_kwargs"]["weight_decay"] == 0.1


def test_overrides_merge_mappings_one_level() -> None:
    assert merge_overrides({"policy_kwargs": {"a": 1, "b": 2}, "n": 1}, {"policy_kwargs": {"b": 3}, "n": 2}) == {
        "policy_kwargs": {"a": 1, "b": 3},
        "n": 2,
    }
    texts = ["policy_kwargs={net_arch: [16]}", "n_steps=32", "policy_kwargs={activation_fn: relu}", "n_steps=64"]
    assert parse_overrides(texts) == {"policy_kwargs": {"net_arch": [16], "activation_fn": "relu"}, "n_steps": 64}
    spec = load_task("MountainCarContinuous")  # its spec sets policy_kwargs {log_std_init, ortho_init}
    hp = resolve_hyperparameters("ppo", spec, parse_overrides(texts))
    assert hp["policy_kwargs"] == {
        **spec.hyperparameters["ppo"]["policy_kwargs"],
        "net_arch": [16],
        "activation_fn": "relu",
    }


def test_parse_override() -> None:
    assert parse_override("rho=0.1") == ("rho", 0.1)
    assert parse_override("policy_kwargs={net_arch: [32, 32]}") == ("policy_kwargs", {"net_arch": [32, 32]})
    assert parse_override("swa_start=null") == ("swa_start", None)
    for bad in ("rho", "=1", "rho=[1,", "a b=1"):
        with pytest.raises(RlflatError, match="--set"):
            parse_override(bad)


def test_rule_rejects_negative_rho() -> None:
    with pytest.raises(RlflatError, match="-1"):
        SAM(rho=-1.0)
    with pytest.raises(RlflatError, match="asam_eta"):
        ASAM(rho=0.5, eta=0.0)


def test_pg_takes_one_step_per_rollout_and_moves_the_policy() -> None:
    """PG's mechanics (not its learning): one update per rollout, and the update changes the policy."""
    model = build_model("pg", _env(), {"n_steps": 64}, seed=0)
    assert isinstance(model, PG)
    before = _params(model)
    steps: list[int] = []
    original = model._step

    def counting(loss: th.Tensor, closure: Any, minibatch: int = 0) -> None:
        steps.append(minibatch)
        original(loss, closure, minibatch)

    model._step = counting  # type: ignore[method-assign]
    model.learn(256)
    assert model._n_updates == 2 and steps == [0, 0]  # 256 steps in rollouts of 2 x 64: two full-batch steps
    after = _params(model)
    assert not np.allclose(before["action_net.weight"].numpy(), after["action_net.weight"].numpy())
