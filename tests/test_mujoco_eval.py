"""MuJoCo evaluation: Lee & Yoon's protocol (foot friction, torso mass, action noise) and worker processes.

References are independent of the evaluator: SB3's own ``evaluate_policy`` on one env per episode, a plain
Gymnasium loop, and the MuJoCo model arrays set by hand.
"""

from __future__ import annotations

import json
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from stable_baselines3 import PPO
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import DummyVecEnv

from rlflat.errors import RlflatError
from rlflat.evaluate import SuiteSpec, build_settings, evaluate, rollout_returns
from rlflat.evaluate.workers import ProcessRows, default_workers
from rlflat.policy import load_policy
from rlflat.tasks import load_task, make_env, set_dynamics

pytest.importorskip("mujoco")
torch.set_num_threads(1)


@pytest.fixture(scope="module")
def hopper(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained Hopper PPO (short, varied episodes: cheap, and every setting's returns differ)."""
    run = tmp_path_factory.mktemp("hopper")
    PPO("MlpPolicy", make_env(load_task("Hopper")), seed=0, policy_kwargs={"net_arch": [16]}).save(run / "model.zip")
    (run / "config.json").write_text(json.dumps({"task": "Hopper", "algo": "ppo"}))
    return run


def sb3_loop(run: Path, settings: list[dict[str, float]], episodes: int, seed: int) -> np.ndarray:
    """SB3's evaluate_policy, one env per setting, reset with seed + j for episode j (the benchmark's loop)."""
    model = PPO.load(run / "model.zip", device="cpu")
    task = load_task("Hopper")
    out = np.zeros((len(settings), episodes))
    for i, dynamics in enumerate(settings):
        env = DummyVecEnv([lambda d=dynamics: Monitor(make_env(task, d))])  # type: ignore[misc]
        for j in range(episodes):
            env.seed(seed + j)
            rewards, _ = evaluate_policy(model, env, n_eval_episodes=1, deterministic=True, return_episode_rewards=True)
            out[i, j] = rewards[0]  # type: ignore[index]
        env.close()
    return out


def test_workers_return_what_the_single_env_sb3_loop_returns(hopper: Path) -> None:
    task = load_task("Hopper")
    policy = load_policy(hopper)
    settings = [{}, {"torso_mass": 1.5 * task.parameters["torso_mass"].nominal}, {"foot_friction": 0.8}]
    in_process = rollout_returns(policy, task, settings, episodes=3, seed=4, workers=1)[0]
    spread = rollout_returns(policy, task, settings, episodes=3, seed=4, workers=2)[0]
    np.testing.assert_array_equal(spread, in_process)  # same actions, same seeds: bit-identical
    reference = sb3_loop(hopper, settings, episodes=3, seed=4)
    # a batched matmul rounds differently from SB3's one-row forward (~1e-9 in the actions)
    np.testing.assert_allclose(spread, reference, rtol=1e-6)
    assert len({round(float(v), 3) for v in spread.mean(1)}) == 3  # the settings really differ
    # one row per forward is SB3's arithmetic exactly (SB3's Monitor rounds returns to 6 decimals)
    single = rollout_returns(policy, task, [settings[1]], episodes=1, seed=5, workers=1)[0, 0, 0]
    assert round(float(single), 6) == reference[1, 1]


def test_worker_rows_never_autoreset_and_report_errors() -> None:
    task = load_task("Hopper")
    rows = ProcessRows(task, [{}] * 3, workers=2)
    try:
        rows.reset(np.array([0, 1, 2]))
        big = np.full((3, 3), 1.0, dtype=np.float32)
        done = np.zeros(3, dtype=bool)
        for _ in range(400):
            obs, reward, terminated, truncated = rows.step(big)
            assert np.all(reward[done] == 0.0)  # a finished row is never stepped again
            done |= terminated | truncated
        assert done.all()
        frozen = obs.copy()
        obs, reward, *_ = rows.step(big)
        np.testing.assert_array_equal(obs, frozen)
    finally:
        rows.close()
    with pytest.raises(RlflatError, match="evaluation worker failed.*nope"):  # raised in the worker, named here
        ProcessRows(task, [{"nope": 1.0}], workers=1).close()
    assert default_workers(4) == 1 and default_workers(10_000) >= 1


def test_bad_worker_count_is_refused(hopper: Path) -> None:
    with pytest.raises(RlflatError, match="workers must be a positive integer, got 0"):
        rollout_returns(load_policy(hopper), load_task("Hopper"), [{}], episodes=1, workers=0)


def test_paper_foot_friction_scales_two_columns_and_sets_the_third() -> None:
    """Lee & Yoon: foot ``friction[:2] * f`` and ``friction[2] = 0.1``; the nominal model stays Gymnasium's."""
    task = load_task("Hopper")
    plain = gym.make(task.id).unwrapped.model.geom_friction.copy()  # type: ignore[attr-defined]
    env = make_env(task, {"foot_friction": 2.0 * 0.7})
    friction = env.unwrapped.model.geom_friction  # type: ignore[attr-defined]
    np.testing.assert_allclose(friction[4, :2], 0.7 * plain[4, :2], rtol=1e-15)
    assert friction[4, 2] == 0.1
    np.testing.assert_array_equal(friction[:4], plain[:4])
    set_dynamics(env, task)
    np.testing.assert_array_equal(friction, plain)


def test_paper_friction_below_half_is_one_contact_and_extra_columns_are_inert() -> None:
    """The floor's friction is 1.0 and the foot's 2.0; MuJoCo takes the larger, so x0.4 acts as x0.5. The
    contact has condim 3, so the torsional/rolling columns the paper also changes do nothing."""
    task = load_task("Hopper")
    actions = np.random.default_rng(1).uniform(-1, 1, size=(150, 3)).astype(np.float32)

    def trajectory(dynamics: dict[str, float], sliding_only: bool = False) -> np.ndarray:
        env = make_env(task, dynamics)
        if sliding_only:  # by hand: only the sliding coefficient of the foot scaled, from Gymnasium's model
            model = env.unwrapped.model  # type: ignore[attr-defined]
            model.geom_friction[:] = gym.make(task.id).unwrapped.model.geom_friction  # type: ignore[attr-defined]
            model.geom_friction[4, 0] = 2.0 * 0.7
        obs, _ = env.reset(seed=0)
        seen = [obs]
        for action in actions:
            obs, _, terminated, truncated, _ = env.step(action)
            seen.append(obs)
            if terminated or truncated:
                break
        return np.array(seen)

    np.testing.assert_array_equal(trajectory({"foot_friction": 0.8}), trajectory({"foot_friction": 1.0}))
    assert not np.array_equal(trajectory({"foot_friction": 1.2}), trajectory({}))
    np.testing.assert_array_equal(trajectory({"foot_friction": 1.4}), trajectory({}, sliding_only=True))


def test_protocol_suite_is_the_papers(hopper: Path) -> None:
    """Action noise N(0, sigma) on the deterministic action, clipped to the bounds; 11 linear levels."""
    task = load_task("Hopper")
    levels = tuple(float(v) for v in np.linspace(0, 0.5, 11))
    suite = SuiteSpec(
        parameters=("torso_mass", "foot_friction"),
        action_noise=levels,
        factors={"torso_mass": tuple(np.linspace(0.5, 1.5, 11)), "foot_friction": tuple(np.linspace(0.4, 1.6, 11))},
        grids=(("foot_friction", "torso_mass"),),
    )
    settings = build_settings(task, suite)
    assert sum(s.family == "foot_friction:torso_mass" for s in settings) == 121
    assert [s.action_noise for s in settings if s.family == "action_noise"] == list(levels)
    # the noisy action each env receives: clip(mode + sigma z), by hand with the evaluator's noise stream
    policy = load_policy(hopper)
    sigma, seed = 0.3, 2
    got = rollout_returns(policy, task, [{}], episodes=1, seed=seed, action_noise=sigma, rng_seed=9, workers=1)
    act_rng = [np.random.default_rng(c) for c in np.random.SeedSequence(9).spawn(3)][1]
    env = make_env(task)
    obs, _ = env.reset(seed=seed)
    total, done = 0.0, False
    while not done:
        with torch.no_grad():
            mode = policy.mode({}, policy.preprocess(obs[None])).numpy()[0]  # before any clipping
        noisy = np.clip(mode + sigma * act_rng.standard_normal((1, 3))[0], -1.0, 1.0)
        obs, reward, terminated, truncated, _ = env.step(noisy.astype(np.float32))
        total += float(reward)
        done = terminated or truncated
    assert got[0, 0, 0] == pytest.approx(total, rel=1e-6)
    table = evaluate(policy, task, SuiteSpec(action_noise=(0.0, 0.5)), episodes=2, workers=2, progress=False)
    assert table["episodes"].tolist() == [100, 2, 2]  # the nominal row gets the evaluator's 100 episodes


def test_large_gym_evaluations_run_in_passes_that_change_no_return(
    hopper: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Gymnasium-fallback rows are whole envs, so a large evaluation runs a few settings at a time; common random
    numbers (episode j of every setting: seed j, the same noise draws) keep the split out of the returns."""
    from rlflat.evaluate import budget

    task = load_task("Hopper")
    policy = load_policy(hopper)
    mass = task.parameters["torso_mass"].nominal
    settings = [{"torso_mass": mass * f} for f in (0.5, 0.8, 1.0, 1.3, 1.5)]
    kwargs = {"episodes": 3, "seed": 2, "action_noise": 0.2, "rng_seed": 7, "workers": 1}
    whole_stats: dict[str, int] = {}
    whole = rollout_returns(policy, task, settings, stats=whole_stats, **kwargs)  # type: ignore[arg-type]
    passes: list[int] = []
    original = budget.gym_pass_rows

    def small_passes(rows_per_setting: float) -> float:
        passes.append(1)
        return 2 * rows_per_setting  # two settings a pass: passes of 2, 2 and 1 settings

    monkeypatch.setattr(budget, "gym_pass_rows", small_passes)
    split_stats: dict[str, int] = {}
    split = rollout_returns(policy, task, settings, stats=split_stats, **kwargs)  # type: ignore[arg-type]
    # the same actions up to the batched forward's rounding, which depends on how many rows share a matmul (~1e-10)
    np.testing.assert_allclose(split, whole, rtol=1e-7)
    assert not np.array_equal(split[:, :2], split[:, 2:4])  # the settings really differ
    assert len(passes) == 4  # the split decision, then one per pass of <= 2 settings (which never split again)
    assert split_stats["rows"] == whole_stats["rows"] == 15
    assert split_stats["env_steps"] == whole_stats["env_steps"]
    assert original(3) == 2046 and original(5000) == 5000 and original(0.5) == 2048  # whole settings, >= one
