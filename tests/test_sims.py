"""Batched simulators vs Gymnasium's own single envs, step by step, with per-row random dynamics."""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np
import numpy.typing as npt
import pytest

from rlflat.errors import RlflatError
from rlflat.tasks import load_task
from rlflat.tasks.sims import (
    PARAMETER_DEFAULTS,
    SIMULATORS,
    AcrobotSim,
    BatchedSimulator,
    CartPoleSim,
    MountainCarContinuousSim,
    make_simulator,
)

NUM_SEEDS = 20
NOMINAL = PARAMETER_DEFAULTS  # Gymnasium's defaults (tests/test_tasks.py checks them against gym.make)
SIM_ONLY_FACTORS = (0.5, 2.0)
"""Factor range for simulator parameters the task spec does not perturb (Acrobot's MAX_VEL_*, Pendulum's max_speed)."""


def random_params(env_id: str, rng: np.random.Generator, n: int) -> dict[str, npt.NDArray[np.float64]]:
    """Every simulator parameter times an independent log-uniform factor per row, drawn from the task spec's own
    ``range`` for spec parameters (so extremes such as CartPole's x0.1 cart mass are exercised)."""
    spec = load_task(env_id)
    ranges = {spec.attribute(name): p.range for name, p in spec.parameters.items()}
    params = {}
    for attribute, value in NOMINAL[env_id].items():
        low, high = ranges.get(attribute, SIM_ONLY_FACTORS)
        params[attribute] = value * np.exp(rng.uniform(np.log(low), np.log(high), size=n))
    return params


def reference_env(env_id: str, params: dict[str, float], **attrs: Any) -> gym.Env[Any, Any]:
    """A plain ``gym.make`` env (TimeLimit included) with attributes set as Python floats."""
    env = gym.make(env_id, disable_env_checker=True)
    base = env.unwrapped
    for name, value in {**params, **attrs}.items():
        assert hasattr(base, name), name
        setattr(base, name, value)
    if env_id == "CartPole-v1":
        base.total_mass = base.masspole + base.masscart  # type: ignore[attr-defined]
        base.polemass_length = base.masspole * base.length  # type: ignore[attr-defined]
    return env


def random_actions(env_id: str, rng: np.random.Generator, n: int, dtype: type[np.floating[Any]]) -> npt.NDArray[Any]:
    """Random actions, continuous ones partly outside the action bounds so clipping is exercised."""
    if env_id == "CartPole-v1":
        return rng.integers(0, 2, size=n)
    if env_id in ("Acrobot-v1", "MountainCar-v0"):
        return rng.integers(0, 3, size=n)
    bound = 5.0 if env_id == "Pendulum-v1" else 1.4
    return rng.uniform(-bound, bound, size=(n, 1)).astype(dtype)


def run_side_by_side(
    env_id: str,
    sim: BatchedSimulator,
    params: dict[str, npt.NDArray[np.float64]],
    seeds: npt.NDArray[np.int64],
    rng: np.random.Generator,
    dtype: type[np.floating[Any]] = np.float32,
    policy: Callable[[npt.NDArray[np.float32]], npt.NDArray[Any]] | None = None,
    **attrs: Any,
) -> int:
    """Step the sim and one reference env per row until every row finished; assert equality.

    Returns the number of rows that terminated (rather than being truncated).
    """
    n = seeds.size
    envs = [reference_env(env_id, {k: float(v[i]) for k, v in params.items()}, **attrs) for i in range(n)]
    expected = np.stack([env.reset(seed=int(seed))[0] for env, seed in zip(envs, seeds, strict=True)])
    obs = sim.reset(seeds)
    assert obs.dtype == np.float32
    np.testing.assert_array_equal(obs, expected)
    alive = np.ones(n, dtype=bool)
    steps = terminations = 0
    while alive.any():
        actions = random_actions(env_id, rng, n, dtype) if policy is None else policy(obs)
        obs, reward, terminated, truncated = sim.step(actions if actions.ndim == 1 or steps % 2 else actions[:, 0])
        steps += 1
        for i in np.flatnonzero(alive):
            ref_obs, ref_reward, ref_term, ref_trunc, _ = envs[i].step(actions[i])
            where = f"{env_id} row {i} seed {seeds[i]} step {steps}"
            assert np.array_equal(obs[i], ref_obs), f"{where}: {obs[i]} != {ref_obs}"
            assert reward[i] == ref_reward, f"{where}: reward {reward[i]!r} != {ref_reward!r}"
            assert terminated[i] == ref_term, f"{where}: terminated"
            assert truncated[i] == ref_trunc, f"{where}: truncated"
            alive[i] = not (ref_term or ref_trunc)
            terminations += bool(ref_term)
    assert steps <= sim.max_episode_steps
    return terminations


@pytest.mark.parametrize("env_id", sorted(NOMINAL))
def test_matches_gymnasium_with_random_dynamics(env_id: str) -> None:
    rng = np.random.default_rng(zlib.crc32(env_id.encode()))
    params = random_params(env_id, rng, NUM_SEEDS)
    seeds = rng.integers(0, 2**31, size=NUM_SEEDS)
    sim = make_simulator(env_id, params, NUM_SEEDS)
    run_side_by_side(env_id, sim, params, seeds, rng)


@pytest.mark.parametrize("env_id", ["Pendulum-v1", "MountainCarContinuous-v0"])
def test_matches_gymnasium_with_float64_actions(env_id: str) -> None:
    rng = np.random.default_rng(7)
    params = random_params(env_id, rng, 8)
    seeds = rng.integers(0, 1000, size=8)
    run_side_by_side(env_id, make_simulator(env_id, params, 8), params, seeds, rng, dtype=np.float64)


@pytest.mark.parametrize("env_id", ["Acrobot-v1", "MountainCar-v0", "MountainCarContinuous-v0"])
def test_goal_reaching_rows_match_gymnasium(env_id: str) -> None:
    """Pump energy (push along the velocity) so rows terminate at the goal: terminal rewards are compared too."""
    rng = np.random.default_rng(5)
    n = 12
    params = random_params(env_id, rng, n)
    sim = make_simulator(env_id, params, n)
    velocity = 5 if env_id == "Acrobot-v1" else 1  # Acrobot: torque along the second joint's motion

    def pump(obs: npt.NDArray[np.float32]) -> npt.NDArray[Any]:
        push = np.where(obs[:, velocity] >= 0, 1.0, -1.0)
        if env_id == "MountainCarContinuous-v0":
            return (push * rng.uniform(0.6, 1.2, size=n)).astype(np.float32)[:, None]
        return (push + 1).astype(np.int64)

    reached = run_side_by_side(env_id, sim, params, rng.integers(0, 1000, size=n), rng, policy=pump)
    assert reached >= n // 2, f"only {reached} rows reached the goal"


def test_acrobot_torque_noise_and_nips_match_gymnasium() -> None:
    rng = np.random.default_rng(11)
    n = 10
    params = random_params("Acrobot-v1", rng, n)
    params["torque_noise_max"] = np.where(np.arange(n) % 3 == 0, 0.0, rng.uniform(0.05, 0.5, size=n))
    seeds = rng.integers(0, 1000, size=n)
    run_side_by_side("Acrobot-v1", AcrobotSim(n, params), params, seeds, rng)
    nips = random_params("Acrobot-v1", rng, n)
    sim = AcrobotSim(n, nips, book_or_nips="nips")
    run_side_by_side("Acrobot-v1", sim, nips, seeds, rng, book_or_nips="nips")


def textbook_cartpole_step(state: npt.NDArray[np.float64], push_right: bool, p: dict[str, float]) -> Any:
    """Barto-Sutton-Anderson cart-pole (Florian 2007 form) with explicit Euler, written independently."""
    x, x_dot, theta, theta_dot = state
    mc, mp, half, g, tau = p["masscart"], p["masspole"], p["length"], p["gravity"], p["tau"]
    force = p["force_mag"] if push_right else -p["force_mag"]
    total = mc + mp
    sin, cos = math.sin(theta), math.cos(theta)
    theta_acc = (g * sin + cos * (-force - mp * half * theta_dot**2 * sin) / total) / (
        half * (4.0 / 3.0 - mp * cos**2 / total)
    )
    x_acc = (force + mp * half * (theta_dot**2 * sin - theta_acc * cos)) / total
    return np.array([x + tau * x_dot, x_dot + tau * x_acc, theta + tau * theta_dot, theta_dot + tau * theta_acc])


def test_cartpole_pole_length_changes_physics_as_textbook() -> None:
    base = dict(NOMINAL["CartPole-v1"])
    lengths = np.array([0.5, 1.0])
    sim = CartPoleSim(2, {"length": lengths, "masspole": 0.3})
    start = sim.reset(np.array([123, 123])).astype(np.float64)
    np.testing.assert_array_equal(start[0], start[1])
    state = np.array(sim._env.state, dtype=np.float64).T  # the exact float64 start state
    obs, _, _, _ = sim.step(np.array([1, 1]))
    assert not np.allclose(obs[0], obs[1], rtol=0, atol=1e-7), "pole length did not change the dynamics"
    for row, length in enumerate(lengths):
        expected = textbook_cartpole_step(state[row], True, {**base, "length": length, "masspole": 0.3})
        np.testing.assert_allclose(obs[row], expected, rtol=1e-6, atol=1e-7)
    stale = textbook_cartpole_step(state[1], True, {**base, "masspole": 0.3})
    assert not np.allclose(obs[1], stale, rtol=1e-6, atol=1e-7)


def test_finished_rows_are_frozen_and_not_autoreset() -> None:
    sim = CartPoleSim(3, {"length": np.array([0.5, 0.5, 0.2])})
    sim.reset(np.array([1, 2, 3]))
    for _ in range(200):
        obs, _, terminated, _ = sim.step(np.array([1, 1, 1]))
        if terminated.any():
            break
    finished = terminated.copy()
    assert finished.any() and not finished.all()
    last = obs.copy()
    state = np.array(sim._env.state, copy=True)  # the wrapped CartPoleVectorEnv's physics state
    for _ in range(3):
        obs2, reward2, terminated2, truncated2 = sim.step(np.array([0, 0, 0]))
        np.testing.assert_array_equal(obs2[finished], last[finished])
        assert np.all(reward2[finished] == 0.0) and np.all(terminated2[finished])
        assert not np.any(truncated2[finished])
        assert not np.array_equal(obs2[~finished], last[~finished])
        # No autoreset inside the vector env either: a finished row's physics state stays put.
        np.testing.assert_array_equal(np.asarray(sim._env.state)[:, finished], state[:, finished])
        last = obs2


@pytest.mark.parametrize("env_id", sorted(NOMINAL))
def test_truncation_at_time_limit_and_frozen_afterwards(env_id: str) -> None:
    sim = make_simulator(env_id, {}, 2)
    limit = sim.max_episode_steps
    sim.reset(np.array([0, 1]))
    action = np.zeros(2, dtype=np.int64) if isinstance(sim.action_space, gym.spaces.Discrete) else np.zeros(2)
    done = np.zeros(2, dtype=bool)
    for step in range(1, limit + 3):
        _, reward, terminated, truncated = sim.step(action)
        newly = (terminated | truncated) & ~done
        assert not np.any(truncated & ~done & (step < limit))
        if step > limit:
            assert np.all(reward == 0.0)
        done |= newly
    assert done.all()


def test_make_simulator_rejects_unknown_ids_and_params() -> None:
    with pytest.raises(RlflatError, match=r"'CartPole-v0'.*CartPole-v1.*Acrobot-v1"):
        make_simulator("CartPole-v0", {}, 2)
    with pytest.raises(RlflatError, match=r"'mass'.*masspole"):
        make_simulator("CartPole-v1", {"mass": np.ones(2)}, 2)
    with pytest.raises(RlflatError, match=r"shape \(3,\)"):
        make_simulator("Pendulum-v1", {"g": np.ones(3)}, 2)
    with pytest.raises(RlflatError, match="finite"):
        make_simulator("Pendulum-v1", {"g": np.array([1.0, np.nan])}, 2)
    with pytest.raises(RlflatError, match="num_rows"):
        make_simulator("Pendulum-v1", {}, 0)
    with pytest.raises(RlflatError, match="book_or_nips"):
        AcrobotSim(2, {}, book_or_nips="java")


def test_step_checks_reset_seeds_and_actions() -> None:
    sim = make_simulator("Acrobot-v1", {"LINK_MOI": 2.0}, 2)
    with pytest.raises(RlflatError, match="reset"):
        sim.step(np.array([0, 1]))
    with pytest.raises(RlflatError, match="non-negative"):
        sim.reset(np.array([1, -1]))
    sim.reset(np.array([1, 2]))
    with pytest.raises(RlflatError, match=r"invalid action 3; valid choices: 0, 1, 2"):
        sim.step(np.array([0, 3]))
    with pytest.raises(RlflatError, match="integers"):
        sim.step(np.array([0.0, 1.0]))


def test_registry_covers_the_five_tasks_with_gymnasium_spaces() -> None:
    assert sorted(SIMULATORS) == sorted(NOMINAL)
    for env_id in SIMULATORS:
        sim = make_simulator(env_id, {}, 4)
        single = gym.make(env_id).unwrapped
        assert sim.observation_space == single.observation_space
        assert sim.action_space == single.action_space
        assert sim.num_rows == 4
        assert sim.max_episode_steps == gym.spec(env_id).max_episode_steps


def test_pendulum_float32_torque_cost_uses_scalar_powf() -> None:
    """``u**2`` of a float32 torque is libm ``powf`` in Gymnasium, which is not always the rounded ``u*u``."""
    candidates = np.random.default_rng(3).uniform(-2.0, 2.0, size=20_000).astype(np.float32)
    tricky = np.array([u for u in candidates if u**2 != np.square(u)][:8], dtype=np.float32)
    assert tricky.size == 8
    seeds = np.arange(8)
    sim = make_simulator("Pendulum-v1", {}, 8)
    sim.reset(seeds)
    _, reward, _, _ = sim.step(tricky[:, None])
    for i, seed in enumerate(seeds):
        env = reference_env("Pendulum-v1", {})
        env.reset(seed=int(seed))
        assert reward[i] == env.step(tricky[i : i + 1])[1]


@pytest.mark.parametrize(("edge", "low", "high"), [(-1.2, -5e-8, 0.0), (0.45, 0.0, 1.4e-8)])
def test_mountain_car_continuous_float32_edges(edge: float, low: float, high: float) -> None:
    """A float32 position landing exactly on float32(-1.2) or float32(0.45): the wall stops the car, and the goal
    counts as reached because NumPy 2 compares a float32 with a Python float in float32 (0.45 > float32(0.45))."""
    power = 0.003
    start = np.float32(edge)
    slope = np.float32(0.0025 * math.cos(float(np.float32(3) * start)))
    # Actions whose float32 velocity increment is tiny, so the car stays on float32(edge).
    grid = (slope / np.float32(power) + np.arange(-64, 64, dtype=np.float32) * np.float32(1e-7)).astype(np.float32)
    increments = grid * np.float32(power) - slope
    actions = grid[(increments >= low) & (increments <= high) & (increments != 0)][:4]
    assert actions.size > 0
    n = actions.size
    sim = MountainCarContinuousSim(n, {"power": power})
    sim.reset(np.arange(n))
    sim.step(np.zeros((n, 1), dtype=np.float32))  # Gymnasium holds a float32 state from here on
    sim._state[:] = [float(start), 0.0]
    obs, reward, terminated, _ = sim.step(actions[:, None])
    for i in range(n):
        env = reference_env("MountainCarContinuous-v0", {"power": power})
        env.reset(seed=i)
        env.unwrapped.state = np.array([start, 0.0], dtype=np.float32)  # type: ignore[attr-defined]
        ref_obs, ref_reward, ref_terminated, _, _ = env.step(actions[i : i + 1])
        assert ref_obs[0] == start and (ref_obs[1] == 0.0 if edge < 0 else ref_terminated), "edge not reached"
        np.testing.assert_array_equal(obs[i], ref_obs)
        assert (reward[i], terminated[i]) == (ref_reward, ref_terminated)


def test_mountain_car_continuous_at_the_goal_with_zero_velocity_terminates_as_gymnasium() -> None:
    """Gymnasium's goal test is ``position >= 0.45 and velocity >= 0``: a car standing exactly still past the goal
    has arrived. The crafted step lands on velocity 0.0 exactly (the slope term cancels the start velocity)."""
    position = 0.5
    v0 = 0.0025 * math.cos(3 * position)
    assert float(0.0025 * np.cos(3 * position)) == v0  # the sim's numpy cosine agrees here, so both reach 0.0
    sim = MountainCarContinuousSim(1, {})
    sim.reset(np.array([0]))
    sim._state[:] = [position, v0]
    obs, _, terminated, _ = sim.step(np.zeros((1, 1), dtype=np.float64))
    env = reference_env("MountainCarContinuous-v0", {})
    env.reset(seed=0)
    env.unwrapped.state = np.array([position, v0])  # type: ignore[attr-defined]
    ref_obs, _, ref_terminated, _, _ = env.step(np.zeros(1, dtype=np.float64))
    assert ref_obs[1] == 0.0 and obs[0, 1] == 0.0
    assert ref_terminated and bool(terminated[0])


@pytest.mark.parametrize(("env_id", "n"), [("CartPole-v1", 2), ("Acrobot-v1", 3), ("MountainCar-v0", 3)])
def test_every_discrete_simulator_accepts_exactly_its_actions(env_id: str, n: int) -> None:
    """Discrete(n) as Gymnasium's action space: n - 1 is stepped, n is refused naming the valid choices."""
    assert gym.make(env_id).action_space.n == n  # type: ignore[attr-defined]
    sim = make_simulator(env_id, {}, 2)
    sim.reset(np.array([0, 1]))
    sim.step(np.array([n - 1, 0]))
    valid = ", ".join(map(str, range(n)))
    with pytest.raises(RlflatError, match=rf"^invalid action {n}; valid choices: {valid}$"):
        sim.step(np.array([0, n]))


def test_simulator_refusals_name_the_bad_value() -> None:
    with pytest.raises(RlflatError, match=r"^unknown env id 'Nope-v0'; valid choices: "):
        make_simulator("Nope-v0", {}, 1)
    sim = make_simulator("CartPole-v1", {}, 2)
    with pytest.raises(
        RlflatError, match=r"^seeds must be an integer array of shape \(2,\), got dtype float64 shape \(2,\)$"
    ):
        sim.reset(np.array([0.0, 1.0]))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_mountain_car_continuous_at_full_throttle_and_top_speed_matches_gymnasium(dtype: type) -> None:
    """Actions of exactly +-1 (the clip bounds: not clipped) and a strong engine that drives the car into its speed
    limit: the clipped velocity's float kind then decides the next sums, as in Gymnasium."""
    rng = np.random.default_rng(1)
    n = 4
    params = {"power": np.full(n, 0.0045), "max_speed": np.full(n, 0.03)}
    sim = make_simulator("MountainCarContinuous-v0", params, n)
    speeds: list[float] = []

    def bang_bang(obs: npt.NDArray[np.float32]) -> npt.NDArray[Any]:
        speeds.append(float(np.abs(obs[:, 1]).max()))
        return np.where(obs[:, 1:2] >= 0, 1.0, -1.0).astype(dtype)  # push along the velocity: it saturates

    run_side_by_side("MountainCarContinuous-v0", sim, params, np.arange(n), rng, policy=bang_bang)
    assert max(speeds) == pytest.approx(0.03, rel=1e-6)  # the speed limit was reached
