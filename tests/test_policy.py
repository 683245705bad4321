"""The functional policy reproduces SB3's own policy: actions, log-probs, values, normalisation."""

from __future__ import annotations

from pathlib import Path

import gymnasium
import numpy as np
import pytest
import torch
from stable_baselines3 import A2C, PPO
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.vec_env import VecNormalize

from rlflat.errors import RlflatError
from rlflat.io import write_json
from rlflat.normalization import NORMALIZATION_FILE, NormalizationStats
from rlflat.policy import check_spaces, load_policy
from rlflat.tasks import load_task, make_env


def _states(env_id: str, n: int = 32, seed: int = 0) -> np.ndarray:
    space = make_env(load_task(env_id)).observation_space
    space.seed(seed)
    return np.stack([space.sample() for _ in range(n)]).astype(np.float32)


@pytest.mark.parametrize(
    ("algo", "task", "kwargs"),
    [
        (PPO, "CartPole", {}),
        (A2C, "CartPole", {}),
        (PPO, "Pendulum", {}),
        (PPO, "Pendulum", {"use_sde": True}),
    ],
)
def test_matches_sb3_policy(tmp_path: Path, algo: type, task: str, kwargs: dict) -> None:
    model = algo("MlpPolicy", make_env(load_task(task)), seed=0, n_steps=64, **kwargs)
    model.learn(128)
    model.save(tmp_path / "model.zip")
    policy = load_policy(tmp_path / "model.zip")
    obs = _states(task)
    expected, _ = model.predict(obs, deterministic=True)
    np.testing.assert_array_equal(policy.act(obs), expected)
    x = torch.as_tensor(obs)
    actions = torch.as_tensor(expected)
    values, log_prob, _ = model.policy.evaluate_actions(x, actions)
    torch.testing.assert_close(policy.log_prob({}, x, actions), log_prob)
    torch.testing.assert_close(policy.value({}, x), values.squeeze(-1))
    assert policy.n_params == sum(p.numel() for p in model.policy.parameters())
    assert not any("value" in name for name in policy.actor_names)


def test_vecnormalize_statistics_are_applied(tmp_path: Path) -> None:
    venv = VecNormalize(make_vec_env(lambda: make_env(load_task("Pendulum")), n_envs=2, seed=0))
    model = PPO("MlpPolicy", venv, seed=0, n_steps=64)
    model.learn(256)
    model.save(tmp_path / "model.zip")
    venv.save(str(tmp_path / "vecnormalize.pkl"))
    with pytest.raises(RlflatError, match="only as a pickle, which is never read by default"):
        load_policy(tmp_path)  # the run's pickle alone is not read without --trust
    write_json(tmp_path / NORMALIZATION_FILE, NormalizationStats.from_vec_normalize(venv).to_json())
    policy = load_policy(tmp_path)
    assert policy.normalizer is not None
    raw = _states("Pendulum")
    expected, _ = model.predict(venv.normalize_obs(raw), deterministic=True)
    np.testing.assert_allclose(policy.act(raw), expected, rtol=1e-5, atol=1e-6)
    alone = tmp_path / "alone"
    alone.mkdir()
    (tmp_path / "model.zip").rename(alone / "model.zip")
    (tmp_path / NORMALIZATION_FILE).rename(alone / NORMALIZATION_FILE)
    unnormalised = load_policy(alone / "model.zip")  # statistics beside a bare zip are never applied by proximity
    assert unnormalised.normalizer is None
    assert not np.allclose(unnormalised.act(raw), expected)
    named = load_policy(alone / "model.zip", vecnormalize=alone / NORMALIZATION_FILE)
    np.testing.assert_array_equal(named.act(raw), policy.act(raw))


def test_stacked_parameters_equal_separate_calls() -> None:
    model = PPO("MlpPolicy", make_env(load_task("CartPole")), seed=0)
    from rlflat.policy import FunctionalPolicy

    policy = FunctionalPolicy(model.policy)
    generator = torch.Generator().manual_seed(0)
    sets = [
        {k: v + 0.5 * torch.randn(v.shape, generator=generator) for k, v in policy.params.items()} for _ in range(3)
    ]
    stacked = {k: torch.stack([s[k] for s in sets]) for k in policy.params}
    obs = torch.as_tensor(_states("CartPole", 16))
    batched = policy.stacked_mode(stacked, obs.expand(3, *obs.shape))
    for i, params in enumerate(sets):
        torch.testing.assert_close(batched[i], policy.mode(params, obs))
    assert not torch.equal(batched[0], batched[1]) or not torch.equal(batched[1], batched[2])


def test_bad_paths_are_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(RlflatError, match="neither a run directory nor an SB3 model"):
        load_policy(tmp_path / "nothing.zip")
    with pytest.raises(RlflatError, match="without model.zip"):
        load_policy(tmp_path)
    (tmp_path / "junk.zip").write_bytes(b"not a zip")
    with pytest.raises(RlflatError, match="not a readable SB3 model"):
        load_policy(tmp_path / "junk.zip")


def test_space_mismatch_is_reported(tmp_path: Path) -> None:
    model = PPO("MlpPolicy", make_env(load_task("CartPole")), seed=0)
    model.save(tmp_path / "model.zip")
    policy = load_policy(tmp_path / "model.zip")
    pendulum = make_env(load_task("Pendulum"))
    with pytest.raises(RlflatError, match="do not match"):
        check_spaces(policy, pendulum.observation_space, pendulum.action_space)


def test_box_action_shape_mismatch_is_reported() -> None:
    from rlflat.policy import FunctionalPolicy

    pendulum = make_env(load_task("Pendulum"))
    policy = FunctionalPolicy(PPO("MlpPolicy", pendulum, seed=0).policy)
    check_spaces(policy, pendulum.observation_space, pendulum.action_space)  # its own task passes
    wider = gymnasium.spaces.Box(-2.0, 2.0, shape=(2,), dtype=np.float32)
    with pytest.raises(RlflatError, match=r"action shape \(1,\) does not match the task's \(2,\)"):
        check_spaces(policy, pendulum.observation_space, wider)
