"""Consistent dropout (rlflat.algos.dropout): ratio exactly 1 before the first step, naive dropout's ratio noise,
dropout 0 == SB3, masks stored and replayed, and a zip trained with dropout is the eval-mode policy everywhere."""

from __future__ import annotations

import os
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
import pytest
import torch as th
from stable_baselines3 import PPO
from stable_baselines3.common.buffers import RolloutBuffer
from stable_baselines3.common.env_util import make_vec_env

from rlflat.algos import build_model, load_model, validate_hyperparameters
from rlflat.algos.dropout import DropoutRolloutBuffer
from rlflat.errors import RlflatError
from rlflat.policy import load_policy
from rlflat.tasks import load_task

th.set_num_threads(1)

TINY: dict[str, Any] = {
    "n_steps": 64,
    "batch_size": 32,
    "n_epochs": 2,
    "learning_rate": 3e-3,
    "gamma": 0.98,
    "gae_lambda": 0.8,
    "policy_kwargs": {"net_arch": [32, 32]},
}
ENVS = {"CartPole": "CartPole-v1", "Pendulum": "Pendulum-v1"}
EXTRA = {"CartPole": {}, "Pendulum": {"use_sde": True, "sde_sample_freq": 4}}


def _model(task: str, seed: int = 0, **hp: Any) -> Any:
    return build_model("ppo", make_vec_env(ENVS[task], n_envs=2), {**TINY, **EXTRA[task], **hp}, seed=seed)


def _first_minibatches(model: Any, rollouts: int = 6) -> list[dict[str, th.Tensor]]:
    """Ratio and values of the first minibatch of every update, taken before that update's first gradient step."""
    seen: list[dict[str, th.Tensor]] = []
    loss_terms = model._loss_terms

    def spy(batch: Any, clip_range: float, clip_range_vf: float | None) -> Any:
        terms = loss_terms(batch, clip_range, clip_range_vf)
        if len(seen) < model._iteration + 1:
            with th.no_grad():
                values = model._evaluate(batch, False)[0]
            seen.append({"ratio": terms[5].detach().clone(), "values": values, "old_values": batch.old_values})
        return terms

    model._loss_terms = spy
    model.learn(rollouts * 2 * TINY["n_steps"])
    assert len(seen) == rollouts
    return seen


def _deviation(seen: list[dict[str, th.Tensor]], key: str = "ratio", reference: str | None = None) -> float:
    """max |ratio - 1| (or |values - old_values|) over the last update's first minibatch."""
    last = seen[-1]
    other = last[reference] if reference else th.ones_like(last[key])
    return float((last[key] - other).abs().max())


@pytest.mark.parametrize("task", ["CartPole", "Pendulum"])
def test_consistent_dropout_ratio_is_one_before_the_first_step(task: str) -> None:
    """The rollout's masks replayed: pi_new / pi_old = 1 (to float32 rounding) and V = the rollout's values."""
    seen = _first_minibatches(_model(task, dropout=0.3, critic_dropout=0.3))
    for update in seen:  # every update starts at the parameters that acted
        assert float((update["ratio"] - 1).abs().max()) <= 2e-6, float((update["ratio"] - 1).abs().max())
        assert float((update["values"] - update["old_values"]).abs().max()) <= 1e-5


@pytest.mark.parametrize("task", ["CartPole", "Pendulum"])
def test_naive_dropout_ratio_is_noise(task: str) -> None:
    """Fresh masks in the update (the naive variant): the ratio scatters around 1 before any step is taken."""
    model = _model(task, dropout=0.3, critic_dropout=0.3)
    assert model._dropout is not None
    model._dropout.consistent = False
    seen = _first_minibatches(model)
    spread = _deviation(seen)
    assert spread > 0.05, f"naive dropout should move the ratio; max |ratio - 1| = {spread}"
    assert _deviation(seen, "values", "old_values") > 1e-2


def test_dropout_zero_trains_exactly_as_sb3() -> None:
    """dropout = critic_dropout = 0 is SB3's path: same buffer class, no hooks, bit-identical parameters."""
    hp = {**TINY, "dropout": 0.0, "critic_dropout": 0.0}
    ours = build_model("ppo", make_vec_env("CartPole-v1", n_envs=2), hp, seed=5)
    ours.learn(3 * 2 * TINY["n_steps"])
    sb3_kwargs = {k: v for k, v in TINY.items()}
    theirs = PPO("MlpPolicy", make_vec_env("CartPole-v1", n_envs=2), seed=5, device="cpu", **sb3_kwargs)
    theirs.learn(3 * 2 * TINY["n_steps"])
    assert ours._dropout is None and type(ours.rollout_buffer) is RolloutBuffer
    a, b = ours.policy.state_dict(), theirs.policy.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        assert th.equal(a[key], b[key]), key


def test_masks_are_stored_per_transition_at_the_rate() -> None:
    model = _model("CartPole", dropout=0.25, critic_dropout=0.5)
    model.learn(2 * TINY["n_steps"])
    buffer = model.rollout_buffer
    assert isinstance(buffer, DropoutRolloutBuffer)
    assert set(buffer.masks) == {"policy_net.1", "policy_net.3", "value_net.1", "value_net.3"}
    for name, rate in (("policy_net.1", 0.25), ("value_net.3", 0.5)):
        mask = buffer.masks[name]
        assert mask.shape == (TINY["n_steps"] * 2, 32)  # flattened by get(): one row per transition
        assert set(np.unique(mask)) <= {0.0, np.float32(1 / (1 - rate))}
        assert abs(float((mask == 0).mean()) - rate) < 0.05
        assert len({tuple(row) for row in mask}) > 100  # a mask per transition, not one per rollout


def test_dropout_training_is_reproducible() -> None:
    models = []
    for _ in range(2):  # build then learn at once: models share torch's global RNG (actions, init)
        model = _model("CartPole", seed=2, dropout=0.2)
        model.learn(2 * TINY["n_steps"])
        models.append(model)
    a, b = models
    for key, value in a.policy.state_dict().items():
        assert th.equal(value, b.policy.state_dict()[key]), key


def test_zip_trained_with_dropout_is_the_eval_policy(tmp_path: Any) -> None:
    """SB3's own load, rlflat's safe loader (probe/evaluate) and rlflat's load all act without dropout."""
    model = _model("CartPole", dropout=0.3, critic_dropout=0.2)
    model.learn(2 * TINY["n_steps"])
    path = tmp_path / "model.zip"
    model.save(path)
    obs = np.random.default_rng(0).normal(size=(64, 4)).astype(np.float32)
    with th.no_grad():  # the expected network: no mask active outside a rollout or a replayed minibatch
        logits = model.policy.get_distribution(th.as_tensor(obs)).distribution.logits
    expected = logits.argmax(-1).numpy()
    sb3 = PPO.load(path, device="cpu")
    assert sb3.predict(obs, deterministic=True)[0].tolist() == expected.tolist()
    functional = load_policy(path, load_task("CartPole"))
    assert functional.act(obs).tolist() == expected.tolist()
    with th.no_grad():
        th.testing.assert_close(
            functional.distribution({}, th.as_tensor(obs)).logits, logits - logits.logsumexp(-1, True)
        )
    again = load_model(path)
    assert again.dropout == 0.3 and again.critic_dropout == 0.2 and again._dropout is not None
    again.set_env(make_vec_env("CartPole-v1", n_envs=2))
    again.learn(2 * TINY["n_steps"])  # training resumes with consistent masks


def test_dropout_hyperparameters_are_validated() -> None:
    assert validate_hyperparameters("ppo", {"dropout": "0.1", "critic_dropout": 0}) == {
        "dropout": 0.1,
        "critic_dropout": 0.0,
    }
    assert validate_hyperparameters("ppo_sam", {"dropout": 0.05})["dropout"] == 0.05
    for bad in (1.0, -0.1, "x", True):
        with pytest.raises(RlflatError, match="dropout must be a probability 0 <= p < 1"):
            validate_hyperparameters("ppo", {"dropout": bad})
    with pytest.raises(RlflatError, match="needs hidden layers"):
        _model("CartPole", dropout=0.1, policy_kwargs={"net_arch": []})


def test_population_engine_never_batches_dropout_runs() -> None:
    """The batched engine has its own forward pass without masks: a dropout run must train alone (SB3 path), and
    never share a population with runs of another rate."""
    from rlflat.population.batched import supports
    from rlflat.population.members import shape_key

    def config(**hp: Any) -> dict[str, Any]:
        return {"algo": "ppo", "task_id": "CartPole-v1", "hyperparameters": {"n_steps": 64, **hp}}

    assert not supports(config(dropout=0.1), "cpu") and not supports(config(critic_dropout=0.2), "cpu")
    assert shape_key(config(dropout=0.1)) != shape_key(config(dropout=0.2)) != shape_key(config())
