"""PG's loss and SAM/ASAM's step against computations written independently of rlflat, with inputs that break
symmetry (unequal advantages, several parameter tensors, a subset of them perturbed)."""

from __future__ import annotations

import os
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
import pytest
import torch as th
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.logger import KVWriter, Logger
from torch.func import functional_call, grad

from rlflat.algos import ASAM, PG, SAM, UpdateRule, build_model
from rlflat.algos.rules import make_rule

th.set_num_threads(1)

# -- PG: the loss gradient is the REINFORCE estimator --------------------------------------------------------

_PG_HP: dict[str, Any] = {
    "n_steps": 24,
    "learning_rate": 0.05,
    "ent_coef": 0.03,
    "vf_coef": 0.7,
    "max_grad_norm": 1e9,  # no clipping: the step is -lr * gradient exactly
    "policy_kwargs": {"net_arch": {"pi": [5], "vf": [4]}, "optimizer_class": th.optim.SGD},
}


def _np(t: th.Tensor) -> np.ndarray:
    return t.detach().double().numpy()


def _reinforce_gradient(model: PG, obs: np.ndarray, actions: np.ndarray, adv: np.ndarray, returns: np.ndarray
                        ) -> tuple[dict[str, np.ndarray], dict[str, float]]:  # fmt: skip
    """Hand-derived gradient of -mean(A_hat log pi) - c_H mean(H) + c_V mean((R - V)^2), by backprop in numpy.

    A_hat is the batch-standardised advantage (unbiased std + 1e-8). Softmax policy: d log pi(a)/dz = onehot(a) - pi,
    dH/dz = -pi (log pi + H). Tanh layers: dh/dpre = 1 - h^2. Per-sample terms summed in a loop (no batching).
    """
    p = {k: _np(v) for k, v in model.policy.state_dict().items()}
    w1, b1 = p["mlp_extractor.policy_net.0.weight"], p["mlp_extractor.policy_net.0.bias"]
    w2, b2 = p["action_net.weight"], p["action_net.bias"]
    v1, c1 = p["mlp_extractor.value_net.0.weight"], p["mlp_extractor.value_net.0.bias"]
    v2, c2 = p["value_net.weight"], p["value_net.bias"]
    n = len(obs)
    a_hat = (adv - adv.mean()) / (adv.std(ddof=1) + 1e-8)
    g = {k: np.zeros_like(v) for k, v in p.items()}
    policy_loss = value_loss = entropy_sum = 0.0
    for s, a, ah, ret in zip(obs, actions, a_hat, returns, strict=True):
        h = np.tanh(w1 @ s + b1)
        z = w2 @ h + b2
        pi = np.exp(z - z.max())
        pi /= pi.sum()
        logpi = np.log(pi)
        entropy = -float(pi @ logpi)
        onehot = np.eye(len(pi))[int(a)]
        policy_loss += -ah * logpi[int(a)] / n
        entropy_sum += entropy
        # d(loss)/dz for this sample: policy part and entropy part (entropy_loss = -mean(H))
        dz = -ah * (onehot - pi) / n - _PG_HP["ent_coef"] * (-pi * (logpi + entropy)) / n
        g["action_net.weight"] += np.outer(dz, h)
        g["action_net.bias"] += dz
        dpre = (w2.T @ dz) * (1 - h * h)
        g["mlp_extractor.policy_net.0.weight"] += np.outer(dpre, s)
        g["mlp_extractor.policy_net.0.bias"] += dpre
        # value part
        u = np.tanh(v1 @ s + c1)
        value = float((v2 @ u)[0] + c2[0])
        value_loss += (ret - value) ** 2 / n
        dv = _PG_HP["vf_coef"] * 2 * (value - ret) / n
        g["value_net.weight"] += dv * u[None, :]
        g["value_net.bias"] += np.array([dv])
        dupre = dv * v2[0] * (1 - u * u)
        g["mlp_extractor.value_net.0.weight"] += np.outer(dupre, s)
        g["mlp_extractor.value_net.0.bias"] += dupre
    parts = {"policy_loss": policy_loss, "value_loss": value_loss, "entropy_loss": -entropy_sum / n}
    return g, parts


@pytest.fixture(scope="module")
def pg_after_one_rollout() -> PG:
    model = build_model("pg", make_vec_env("CartPole-v1", n_envs=2), _PG_HP, seed=3)
    assert isinstance(model, PG)
    model.learn(48)  # one rollout of 2 x 24 steps, one update; the buffer keeps that rollout
    return model


def test_pg_loss_gradient_is_the_hand_written_reinforce_estimator(pg_after_one_rollout: PG) -> None:
    model = pg_after_one_rollout
    batch = next(model.rollout_buffer.get(batch_size=None))
    adv = _np(batch.advantages)
    assert np.ptp(adv) > 0.1 and abs(adv.mean()) > 1e-3  # unequal advantages with a non-zero mean
    model.policy.zero_grad()
    loss, stats = model.minibatch_loss(batch)
    loss.backward()
    expected, parts = _reinforce_gradient(
        model, _np(batch.observations), _np(batch.actions).ravel(), adv, _np(batch.returns)
    )
    for name, param in model.policy.named_parameters():
        if name == "log_std":
            continue
        assert param.grad is not None, name
        np.testing.assert_allclose(_np(param.grad), expected[name], rtol=2e-4, atol=1e-6, err_msg=name)
    for key, value in parts.items():
        assert stats[key] == pytest.approx(value, rel=1e-4, abs=1e-6), key
    total = parts["policy_loss"] + _PG_HP["ent_coef"] * parts["entropy_loss"] + _PG_HP["vf_coef"] * parts["value_loss"]
    assert float(loss.detach()) == pytest.approx(total, rel=1e-4)


def test_pg_train_takes_one_sgd_step_along_the_estimator(pg_after_one_rollout: PG) -> None:
    """train() on the stored rollout: theta' = theta - lr * gradient (SGD, no clipping), one update."""
    model = pg_after_one_rollout
    batch = next(model.rollout_buffer.get(batch_size=None))
    before = {k: _np(v) for k, v in model.policy.state_dict().items()}
    expected, _ = _reinforce_gradient(
        model, _np(batch.observations), _np(batch.actions).ravel(), _np(batch.advantages), _np(batch.returns)
    )
    updates = model._n_updates
    model.train()
    assert model._n_updates == updates + 1
    after = {k: _np(v) for k, v in model.policy.state_dict().items()}
    for name, grad_hand in expected.items():
        np.testing.assert_allclose(after[name], before[name] - 0.05 * grad_hand, rtol=1e-4, atol=1e-6, err_msg=name)


class _Keys(KVWriter):
    def __init__(self) -> None:
        self.excluded: dict[str, Any] = {}
        self.values: dict[str, Any] = {}

    def write(self, key_values: dict[str, Any], key_excluded: dict[str, Any], step: int = 0) -> None:
        self.values.update(key_values)
        self.excluded.update(key_excluded)


def test_pg_logs_its_update_like_sb3() -> None:
    """The logged keys of one PG update; n_updates stays out of tensorboard as in SB3's own algorithms."""
    model = build_model("pg", make_vec_env("CartPole-v1", n_envs=2), _PG_HP, seed=5)
    writer = _Keys()
    model.set_logger(Logger(None, [writer]))
    model.learn(96)  # SB3 dumps an update's records with the next rollout's
    assert writer.values["train/n_updates"] == 1 and writer.excluded["train/n_updates"] == ("tensorboard",)
    for key in ("policy_loss", "value_loss", "entropy_loss", "loss", "explained_variance"):
        assert np.isfinite(writer.values[f"train/{key}"]), key


def test_pg_without_advantage_normalisation_uses_raw_advantages() -> None:
    model = build_model("pg", make_vec_env("CartPole-v1", n_envs=2), {**_PG_HP, "normalize_advantage": False}, seed=4)
    model.learn(48)
    batch = next(model.rollout_buffer.get(batch_size=None))
    _, log_prob, _, _ = model._evaluate(batch, False)
    _, stats = model.minibatch_loss(batch)
    raw = -float((batch.advantages * log_prob).mean().detach())
    assert stats["policy_loss"] == pytest.approx(raw, rel=1e-5)


# -- SAM / ASAM on a network with several tensors ------------------------------------------------------------


class _Net(th.nn.Module):
    """Two layers (four tensors, weights and biases of different sizes), float64, a fixed regression batch."""

    def __init__(self) -> None:
        super().__init__()
        gen = th.Generator().manual_seed(11)
        self.l1 = th.nn.Linear(3, 4).double()
        self.l2 = th.nn.Linear(4, 2).double()
        with th.no_grad():
            for p in self.parameters():
                p.copy_(th.randn(p.shape, generator=gen, dtype=th.float64))
        self.x = th.randn(7, 3, generator=gen, dtype=th.float64)
        self.y = th.randn(7, 2, generator=gen, dtype=th.float64)

    def forward(self) -> th.Tensor:
        return ((self.l2(th.tanh(self.l1(self.x))) - self.y) ** 2).mean()


def _flat_loss(net: _Net) -> Any:
    names = [k for k, _ in net.named_parameters()]
    shapes = [p.shape for _, p in net.named_parameters()]
    sizes = [p.numel() for _, p in net.named_parameters()]

    def loss(flat: th.Tensor) -> th.Tensor:
        params = {k: t.reshape(s) for k, t, s in zip(names, th.split(flat, sizes), shapes, strict=True)}
        return functional_call(net, params, ())

    return loss


def _expected_step(net: _Net, scale: th.Tensor, moved: th.Tensor, rho: float, lr: float) -> th.Tensor:
    """Flat-vector SAM/ASAM: e = rho T^2 g / ||T g|| over the moved coordinates; theta - lr g(theta + e)."""
    flat = th.nn.utils.parameters_to_vector(net.parameters()).detach().clone()
    loss = _flat_loss(net)
    g = grad(loss)(flat) * moved
    e = rho * scale * scale * g / th.linalg.vector_norm(scale * g)
    return flat - lr * grad(loss)(flat + e)


def _rule_step(rule: UpdateRule, net: _Net, perturbed: list[th.nn.Parameter], lr: float) -> th.Tensor:
    opt = th.optim.SGD(net.parameters(), lr=lr)
    rule.step(opt, net(), net, list(net.parameters()), perturbed, None)
    return th.nn.utils.parameters_to_vector(net.parameters()).detach()


def _mask(net: _Net, perturbed: list[th.nn.Parameter]) -> th.Tensor:
    ids = {id(p) for p in perturbed}
    return th.cat([th.full((p.numel(),), float(id(p) in ids), dtype=th.float64) for p in net.parameters()])


@pytest.mark.parametrize("subset", [False, True])
def test_sam_step_on_several_tensors_uses_one_global_norm(subset: bool) -> None:
    net = _Net()
    perturbed = [net.l2.weight, net.l2.bias] if subset else list(net.parameters())
    moved = _mask(net, perturbed)
    expected = _expected_step(net, th.ones_like(moved), moved, rho=0.4, lr=0.2)
    th.testing.assert_close(_rule_step(SAM(rho=0.4), net, perturbed, lr=0.2), expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("subset", [False, True])
def test_asam_step_on_several_tensors_scales_every_tensor(subset: bool) -> None:
    """T = |theta| + eta elementwise on weights and biases alike (rlflat.scope.adaptive_scale's definition)."""
    net = _Net()
    perturbed = [net.l1.weight, net.l1.bias] if subset else list(net.parameters())
    moved = _mask(net, perturbed)
    eta = 0.05
    scale = th.cat([(p.detach().abs() + eta).flatten() for p in net.parameters()])
    expected = _expected_step(net, scale, moved, rho=0.6, lr=0.2)
    th.testing.assert_close(_rule_step(ASAM(rho=0.6, eta=eta), net, perturbed, lr=0.2), expected, rtol=1e-10,
                            atol=1e-12)  # fmt: skip


def test_sam_perturbation_has_norm_rho_whatever_the_gradient_scale() -> None:
    gen = th.Generator().manual_seed(5)
    grads = [th.randn(4, 3, generator=gen, dtype=th.float64) * 1e3, th.randn(2, generator=gen, dtype=th.float64)]
    e = SAM(rho=0.3).perturbation(grads, grads)
    assert float(th.sqrt(sum((t * t).sum() for t in e))) == pytest.approx(0.3, rel=1e-12)
    # direction: e is parallel to g tensor by tensor, with one common factor
    ratios = [float((t / g).flatten()[0]) for t, g in zip(e, grads, strict=True)]
    assert ratios[0] == pytest.approx(ratios[1], rel=1e-12) and ratios[0] > 0


def test_make_rule_fills_each_rules_defaults_and_keeps_overrides() -> None:
    assert type(make_rule("plain")) is UpdateRule
    sam = make_rule("sam")
    assert type(sam) is SAM and isinstance(sam, SAM) and sam.rho == 0.05
    assert make_rule("sam", rho=0.2).rho == 0.2  # type: ignore[attr-defined]
    asam = make_rule("asam")
    assert isinstance(asam, ASAM) and asam.rho == 0.5 and asam.eta == 0.01
    custom = make_rule("asam", rho=0.3, asam_eta=0.2)
    assert isinstance(custom, ASAM) and custom.rho == 0.3 and custom.eta == 0.2


@pytest.mark.parametrize("rule", [SAM(rho=0.4), ASAM(rho=0.4, eta=1.0)])
def test_a_vanishing_gradient_gives_a_finite_perturbation(rule: SAM) -> None:
    """||g|| = 1e-12 (the size of the guard): e = rho g / (||g|| + 1e-12) has norm rho/2, finite, not inf/nan.

    Zero parameters with eta = 1 make ASAM's scale T = |theta| + eta exactly 1, so both rules give SAM's e."""
    params = [th.zeros(3, dtype=th.float64), th.zeros(4, dtype=th.float64)]
    grads = [th.tensor([3e-13, 0.0, -4e-13], dtype=th.float64), th.tensor([0.0, 0.0, 0.0, 1e-12], dtype=th.float64)]
    grads = [g / float(th.sqrt(sum((t * t).sum() for t in grads))) * 1e-12 for g in grads]
    e = rule.perturbation(params, grads)
    norm = float(th.sqrt(sum((t * t).sum() for t in e)))
    assert norm == pytest.approx(0.2, rel=1e-9)
    assert all(bool(th.isfinite(t).all()) for t in e)


def test_asam_refuses_parameters_and_gradients_of_different_counts() -> None:
    params = [th.ones(2, 3), th.ones(3)]
    with pytest.raises(ValueError, match="zip"):
        ASAM(rho=0.5).perturbation(params, [th.ones(2, 3)])


# -- constructor arguments reach the algorithm (survivors of the second mutation sample) ---------------------


def test_pg_passes_its_arguments_on_and_keeps_a2c_s_defaults() -> None:
    env = make_vec_env("CartPole-v1", n_envs=1)
    default = PG("MlpPolicy", env, seed=0)
    assert default.max_grad_norm == 0.5  # A2C's default, which PG shares
    model = PG("MlpPolicy", env, seed=0, update_rule="asam", rho=0.3, asam_eta=0.07, stats_window_size=7)
    rule = model._rule
    assert isinstance(rule, ASAM) and rule.rho == 0.3 and rule.eta == 0.07
    assert model.ep_info_buffer is None or model.ep_info_buffer.maxlen == 7
    model.learn(16)
    assert model.ep_info_buffer is not None and model.ep_info_buffer.maxlen == 7


def test_pg_refuses_action_spaces_sb3_cannot_sample() -> None:
    import gymnasium as gym
    from gymnasium import spaces

    class TupleEnv(gym.Env):
        observation_space = spaces.Box(-1, 1, (2,))
        action_space = spaces.Tuple((spaces.Discrete(2), spaces.Discrete(2)))

        def reset(self, *, seed: int | None = None, options: dict | None = None):  # type: ignore[override]
            return np.zeros(2, dtype=np.float32), {}

        def step(self, action):  # type: ignore[override]
            return np.zeros(2, dtype=np.float32), 0.0, True, False, {}

    with pytest.raises(AssertionError, match="only supports .*Box.*Discrete.*MultiDiscrete.*MultiBinary"):
        PG("MlpPolicy", TupleEnv(), seed=0)


def test_ppo_objective_terms_are_the_clipped_surrogate_by_hand() -> None:
    """The loss the sharpness tracker differentiates: -mean(min(A r, A clip(r, 1 -+ eps))) with normalised A,
    checked where the ratio has moved past the clip range."""
    model = build_model("ppo", make_vec_env("CartPole-v1", n_envs=2), {"n_steps": 32, "batch_size": 64,
                        "n_epochs": 1, "policy_kwargs": {"net_arch": [8]}}, seed=1)  # fmt: skip
    model.learn(64)
    batch = next(model.rollout_buffer.get(64))
    with th.no_grad():
        for p in model.policy.action_net.parameters():
            p.add_(0.4 * th.randn(p.shape, generator=th.Generator().manual_seed(0)))
    terms = model.objective_terms(batch)
    with th.no_grad():
        _, log_prob, _ = model.policy.evaluate_actions(batch.observations, batch.actions.long().flatten())
    ratio = th.exp(log_prob - batch.old_log_prob)
    eps = model.clip_range(model._current_progress_remaining)
    adv = (batch.advantages - batch.advantages.mean()) / (batch.advantages.std() + 1e-8)
    expected = -th.min(adv * ratio, adv * th.clamp(ratio, 1 - eps, 1 + eps)).mean()
    unclipped = -(adv * ratio).mean()
    assert abs(float(expected - unclipped)) > 1e-4  # the clip changes the value here
    assert float((ratio - 1).abs().max()) > eps  # clipping is active somewhere
    assert float(terms["surrogate"].detach()) == pytest.approx(float(expected), rel=1e-5)
    assert float(terms["loss"].detach()) != float(
        terms["surrogate"].detach()
    )  # the value and entropy terms are in the loss


def test_pg_keeps_its_seed_and_objective_terms_are_its_training_loss(pg_after_one_rollout: PG) -> None:
    assert PG("MlpPolicy", make_vec_env("CartPole-v1", n_envs=1), seed=11).seed == 11
    model = pg_after_one_rollout
    batch = next(model.rollout_buffer.get(None))
    terms = model.objective_terms(batch)
    assert set(terms) == {"loss", "surrogate"}
    loss, policy_loss = model._loss_terms(batch)[:2]
    assert float(terms["loss"].detach()) == pytest.approx(float(loss.detach()), rel=1e-6)
    assert float(terms["surrogate"].detach()) == pytest.approx(float(policy_loss.detach()), rel=1e-6)
    assert float(terms["loss"].detach()) != float(terms["surrogate"].detach())


def test_pg_uses_the_given_rollout_buffer_class_logs_as_pg_and_trains_in_training_mode(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What PG hands SB3: the caller's rollout buffer class, the tensorboard run name 'PG' (SB3's default for a
    custom class would be its own), and the policy put in training mode for the update (dropout/batch-norm
    policies given through policy_kwargs behave differently in eval mode)."""
    from stable_baselines3.common.buffers import RolloutBuffer
    from stable_baselines3.common.on_policy_algorithm import OnPolicyAlgorithm

    class MarkedBuffer(RolloutBuffer):
        pass

    model = PG("MlpPolicy", make_vec_env("CartPole-v1", n_envs=1), n_steps=8, seed=0, rollout_buffer_class=MarkedBuffer)
    assert type(model.rollout_buffer) is MarkedBuffer
    seen: dict[str, Any] = {}
    real_learn = OnPolicyAlgorithm.learn

    def spy(self: Any, *args: Any, **kwargs: Any) -> Any:
        seen.update(kwargs)
        return real_learn(self, *args, **kwargs)

    monkeypatch.setattr(OnPolicyAlgorithm, "learn", spy)
    model.learn(8)
    assert seen["tb_log_name"] == "PG"
    model.learn(8, tb_log_name="mine")
    assert seen["tb_log_name"] == "mine"
    model.policy.set_training_mode(False)
    model.train()
    assert model.policy.training


def test_pg_names_minibatch_0_when_its_loss_diverges() -> None:
    """PG updates on the whole rollout: a divergence names iteration, timestep and minibatch 0."""
    from rlflat.algos import TrainingDiverged

    model = PG("MlpPolicy", make_vec_env("CartPole-v1", n_envs=1), n_steps=8, seed=0)
    buffer = model.rollout_buffer
    original = buffer.compute_returns_and_advantage

    def poisoned(*args: Any, **kwargs: Any) -> None:
        original(*args, **kwargs)
        buffer.returns[0, 0] = float("nan")

    buffer.compute_returns_and_advantage = poisoned  # type: ignore[method-assign]
    with pytest.raises(TrainingDiverged, match=r"at iteration \d+ \(timestep 8\), minibatch 0: loss is nan"):
        model.learn(8)


def test_ppo_keeps_n_updates_out_of_tensorboard_as_sb3_does() -> None:
    """SB3's PPO logs train/n_updates to every output but tensorboard (a step counter there is the x axis)."""
    from stable_baselines3 import PPO as SB3PPO

    logs = {}
    for name, cls in (("rlflat", None), ("sb3", SB3PPO)):
        env = make_vec_env("CartPole-v1", n_envs=1)
        model = build_model("ppo", env, {"n_steps": 16, "batch_size": 16, "n_epochs": 1}, seed=0) if cls is None else (
            cls("MlpPolicy", env, n_steps=16, batch_size=16, n_epochs=1, seed=0))  # fmt: skip
        model.learn(16)
        logs[name] = model.logger.name_to_excluded
    assert logs["rlflat"]["train/n_updates"] == logs["sb3"]["train/n_updates"] == ("tensorboard",)
    pg = PG("MlpPolicy", make_vec_env("CartPole-v1", n_envs=1), n_steps=8, seed=0)
    pg.learn(8)
    assert pg.logger.name_to_excluded["train/n_updates"] == ("tensorboard",)


def test_pg_on_a_continuous_task_logs_the_policy_std_and_keeps_its_sde_settings() -> None:
    """A Gaussian policy's PG update logs train/std = mean exp(log_std), as SB3's A2C/PPO do; gSDE's resampling
    period reaches SB3 (it would otherwise sample fresh exploration noise every step)."""
    env = make_vec_env("Pendulum-v1", n_envs=1)
    model = PG("MlpPolicy", env, n_steps=8, seed=0, policy_kwargs={"net_arch": [8]})
    model.learn(8)
    logged = model.logger.name_to_value
    assert logged["train/std"] == pytest.approx(th.exp(model.policy.log_std).mean().item(), rel=1e-6)
    sde = PG("MlpPolicy", env, n_steps=8, seed=0, use_sde=True, sde_sample_freq=4)
    assert (sde.use_sde, sde.sde_sample_freq) == (True, 4)
    sde.learn(8)


def test_ppo_value_clipping_by_hand_and_its_schedule() -> None:
    """clip_range_vf clips the new value to old_value +- eps_vf on both sides (OpenAI baselines), with eps_vf read
    from its schedule at the current progress."""
    model = build_model("ppo", make_vec_env("CartPole-v1", n_envs=2), {"n_steps": 32, "batch_size": 64, "n_epochs": 1,
                        "clip_range_vf": "lin_0.3", "policy_kwargs": {"net_arch": [8]}}, seed=1)  # fmt: skip
    model.learn(96)  # two updates, the second at progress remaining 1 - 128/96 < 0, where lin_ holds at 0
    assert model.clip_range_vf(0.5) == pytest.approx(0.15)  # type: ignore[operator]
    logged = model.logger.name_to_value["train/clip_range_vf"]
    assert logged == model.clip_range_vf(model._current_progress_remaining) == 0.0  # type: ignore[operator]
    eps_vf = 0.05
    batch = next(model.rollout_buffer.get(64))
    with th.no_grad():
        for p in model.policy.value_net.parameters():
            p.add_(0.5 * th.randn(p.shape, generator=th.Generator().manual_seed(2)))
        shift = (model.policy.predict_values(batch.observations).flatten() - batch.old_values).median()
        model.policy.value_net.bias.sub_(shift)  # centre the moves: some up, some down
        values = model.policy.predict_values(batch.observations).flatten()
        moved = values - batch.old_values
        assert bool((moved > eps_vf).any()) and bool((moved < -eps_vf).any())  # both sides clip
        clipped = batch.old_values + moved.clamp(-eps_vf, eps_vf)
        expected = th.nn.functional.mse_loss(batch.returns, clipped)
        value_loss = model._loss_terms(batch, 0.2, eps_vf)[2]
    assert float(value_loss) == pytest.approx(float(expected), rel=1e-5)


@pytest.mark.parametrize("algo", ["pg", "ppo"])
def test_without_an_analytic_entropy_the_loss_uses_minus_mean_log_prob(algo: str) -> None:
    """gSDE with a squashed output has no closed-form entropy: the entropy loss is then -E[-log p] = mean log p."""
    hyperparameters = {"n_steps": 16, "use_sde": True, "policy_kwargs": {"net_arch": [8], "squash_output": True}}
    if algo == "ppo":
        hyperparameters |= {"batch_size": 16, "n_epochs": 1}
    model = build_model(algo, make_vec_env("Pendulum-v1", n_envs=1), hyperparameters, seed=0)
    model.learn(16)
    batch = next(model.rollout_buffer.get(None))
    with th.no_grad():
        _, log_prob, entropy = model.policy.evaluate_actions(batch.observations, batch.actions)
        terms = model._loss_terms(batch) if algo == "pg" else model._loss_terms(batch, 0.2, None)  # type: ignore[call-arg]
    assert entropy is None and float(terms[3]) == pytest.approx(float(log_prob.mean()), rel=1e-5)


def test_ppo_says_when_it_stops_early_only_when_verbose(capsys: pytest.CaptureFixture[str]) -> None:
    for verbose in (0, 1):
        model = build_model("ppo", make_vec_env("CartPole-v1", n_envs=1), {"n_steps": 32, "batch_size": 16,
                            "n_epochs": 3, "target_kl": 1e-12}, seed=0)  # fmt: skip
        model.verbose = verbose
        model.learn(32)
        out = capsys.readouterr().out
        assert ("Early stopping at step" in out) == (verbose == 1), out


def test_pg_passes_buffer_kwargs_and_log_dir_on_and_has_its_documented_defaults(tmp_path: Any) -> None:
    from stable_baselines3.common.buffers import RolloutBuffer

    class TaggedBuffer(RolloutBuffer):
        def __init__(self, *args: Any, tag: int = 0, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.tag = tag

    env = make_vec_env("CartPole-v1", n_envs=1)
    model = PG("MlpPolicy", env, n_steps=8, rollout_buffer_class=TaggedBuffer, rollout_buffer_kwargs={"tag": 7},
               tensorboard_log=str(tmp_path))  # fmt: skip
    assert model.rollout_buffer.tag == 7 and model.tensorboard_log == str(tmp_path)  # type: ignore[attr-defined]
    default = PG("MlpPolicy", env)
    # the class docstring's defaults: one full-batch step per 256-step rollout, Adam at 1e-3, no entropy bonus
    assert (default.n_steps, default.learning_rate, default.ent_coef) == (256, 1e-3, 0.0)


def test_ppo_objective_terms_read_the_clip_schedule_at_the_current_progress() -> None:
    model = build_model("ppo", make_vec_env("CartPole-v1", n_envs=1), {"n_steps": 32, "batch_size": 32, "n_epochs": 1,
                        "clip_range": "lin_0.4", "policy_kwargs": {"net_arch": [8]}}, seed=3)  # fmt: skip
    model.learn(32)
    model._current_progress_remaining = 0.25  # the clip range is then 0.1
    batch = next(model.rollout_buffer.get(32))
    with th.no_grad():
        for p in model.policy.action_net.parameters():
            p.add_(0.3 * th.randn(p.shape, generator=th.Generator().manual_seed(1)))
        terms = model.objective_terms(batch)
        want = model._loss_terms(batch, 0.1, None)[1]
        other = model._loss_terms(batch, 0.4, None)[1]
    assert float(terms["surrogate"]) == pytest.approx(float(want), rel=1e-6) and float(want) != float(other)


def test_ppo_trains_in_training_mode() -> None:
    model = build_model("ppo", make_vec_env("CartPole-v1", n_envs=1), {"n_steps": 16, "batch_size": 16,
                        "n_epochs": 1}, seed=0)  # fmt: skip
    model.learn(16)
    model.policy.set_training_mode(False)
    model.train()
    assert model.policy.training


def test_ppo_loss_adds_the_weighted_entropy_and_value_terms_and_objective_terms_clip_values() -> None:
    """loss = policy_loss + ent_coef * entropy_loss + vf_coef * value_loss, with a non-zero entropy weight; and
    objective_terms applies the value clipping the update uses."""
    model = build_model("ppo", make_vec_env("CartPole-v1", n_envs=1), {"n_steps": 32, "batch_size": 32, "n_epochs": 1,
                        "ent_coef": 0.3, "vf_coef": 0.7, "clip_range_vf": 0.05,
                        "policy_kwargs": {"net_arch": [8]}}, seed=2)  # fmt: skip
    model.learn(32)
    batch = next(model.rollout_buffer.get(32))
    with th.no_grad():
        for p in model.policy.value_net.parameters():
            p.add_(0.5 * th.randn(p.shape, generator=th.Generator().manual_seed(4)))
        loss, policy_loss, value_loss, entropy_loss = model._loss_terms(batch, 0.2, 0.05)[:4]
        assert float(loss) == pytest.approx(float(policy_loss + 0.3 * entropy_loss + 0.7 * value_loss), rel=1e-6)
        unclipped = model._loss_terms(batch, 0.2, None)[0]
        terms = model.objective_terms(batch)
    assert float(unclipped) != pytest.approx(float(loss), rel=1e-6)  # the clip matters here
    clip = model.clip_range(model._current_progress_remaining)  # type: ignore[operator]
    with th.no_grad():
        want = model._loss_terms(batch, clip, 0.05)[0]
    assert float(terms["loss"]) == pytest.approx(float(want), rel=1e-6)
