"""Env-steps per second of the batched simulators vs a Python loop of single Gymnasium envs (same run).

Usage: ``OMP_NUM_THREADS=1 python benchmarks/sim_speed.py [--rows 1000 10000] [--steps 50] [--env CartPole-v1]``.
The batched figure counts every row every step (finished rows are frozen but still computed, as in the
evaluator); continuous actions are float32, as a policy emits them. Resets are not timed.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import gymnasium as gym
import numpy as np
import numpy.typing as npt

from rlflat.tasks.sims import SIMULATORS, make_simulator


def random_actions(space: gym.Space[Any], rng: np.random.Generator, n: int) -> npt.NDArray[Any]:
    """A batch of in-range random actions for ``n`` rows."""
    if isinstance(space, gym.spaces.Discrete):
        return rng.integers(0, int(space.n), size=n)
    assert isinstance(space, gym.spaces.Box)
    return rng.uniform(space.low[0], space.high[0], size=(n, 1)).astype(np.float32)


def batched_rate(env_id: str, rows: int, steps: int, rng: np.random.Generator) -> float:
    """Row-steps per second of one batched simulator, per-row dynamics jittered by x[0.8, 1.25]."""
    probe = make_simulator(env_id, {}, 1)
    params = {name: value * rng.uniform(0.8, 1.25, size=rows) for name, value in _nominal(probe).items()}
    sim = make_simulator(env_id, params, rows)
    sim.reset(rng.integers(0, 2**31, size=rows))
    actions = [random_actions(sim.action_space, rng, rows) for _ in range(steps)]
    start = time.perf_counter()
    for action in actions:
        sim.step(action)
    return rows * steps / (time.perf_counter() - start)


def single_rate(env_id: str, steps: int, rng: np.random.Generator) -> float:
    """Steps per second of one ``gym.make`` env stepped in a Python loop, reset when done."""
    env = gym.make(env_id, disable_env_checker=True)
    env.reset(seed=0)
    actions = random_actions(env.action_space, rng, steps)
    start = time.perf_counter()
    for action in actions:
        _, _, terminated, truncated, _ = env.step(action)
        if terminated or truncated:
            env.reset()
    return steps / (time.perf_counter() - start)


def _nominal(sim: Any) -> dict[str, float]:
    return {name: float(values[0]) for name, values in sim.params.items() if values[0] != 0.0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[1000, 10_000])
    parser.add_argument("--steps", type=int, default=50, help="batched steps per measurement")
    parser.add_argument("--single-steps", type=int, default=5000, help="steps of the single-env baseline")
    parser.add_argument("--env", action="append", choices=sorted(SIMULATORS), help="default: all five")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    print(f"{'env':<26}{'rows':>7}{'batched steps/s':>17}{'single steps/s':>16}{'speed-up':>10}")
    for env_id in args.env or list(SIMULATORS):
        single = single_rate(env_id, args.single_steps, rng)
        for rows in args.rows:
            batched = batched_rate(env_id, rows, args.steps, rng)
            print(f"{env_id:<26}{rows:>7}{batched:>17,.0f}{single:>16,.0f}{batched / single:>9.0f}x")


if __name__ == "__main__":
    main()
