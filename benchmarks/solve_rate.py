"""Does each algorithm solve the task with its spec's hyperparameters? Final deterministic return per seed.

Trains every algorithm for the task's ``total_timesteps`` (per base, from ``envs/*.yaml``) on a few seeds and
prints the mean deterministic return over 20 evaluation episodes, and whether it reaches the task's
``solved_threshold``. This is how the ``pg:`` blocks of the specs were tuned. Usage::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/solve_rate.py [--task CartPole] \
        [--algos ppo ppo_sam pg pg_sam] [--seeds 0 1 2] [--set key=value ...]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
import torch as th
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.vec_env import VecNormalize

from rlflat.algos import build_model, parse_override, resolve_hyperparameters
from rlflat.tasks import TaskSpec, load_task, make_env


def train_and_evaluate(algo: str, task: TaskSpec, hp: dict[str, Any], seed: int, episodes: int) -> float:
    """Train one seed; return the mean deterministic return over ``episodes`` on the nominal task."""
    env: Any = make_vec_env(lambda: make_env(task), n_envs=hp["n_envs"], seed=seed)
    if hp["normalize"]:
        env = VecNormalize(env, gamma=float(hp.get("gamma", 0.99)))
    model = build_model(algo, env, hp, seed=seed)
    model.learn(hp["total_timesteps"])
    eval_env: Any = make_vec_env(lambda: make_env(task), n_envs=1, seed=10_000 + seed)
    if hp["normalize"]:
        eval_env = VecNormalize(eval_env, training=False, norm_reward=False)
        eval_env.obs_rms = env.obs_rms
    mean, _ = evaluate_policy(model, eval_env, n_eval_episodes=episodes, deterministic=True)
    return float(np.mean(mean))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="CartPole")
    parser.add_argument("--algos", nargs="+", default=["ppo", "ppo_sam", "pg", "pg_sam"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--episodes", type=int, default=20)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    th.set_num_threads(1)

    task = load_task(args.task)
    overrides = dict(parse_override(text) for text in args.overrides)
    print(f"{task.alias}: deterministic mean return over {args.episodes} episodes (solved >= {task.solved_threshold})")
    for algo in args.algos:
        hp = resolve_hyperparameters(algo, task, overrides)
        returns = []
        start = time.perf_counter()
        for seed in args.seeds:
            returns.append(train_and_evaluate(algo, task, hp, seed, args.episodes))
        solved = sum(r >= task.solved_threshold for r in returns)
        seconds = (time.perf_counter() - start) / len(args.seeds)
        shown = " ".join(f"{r:6.1f}" for r in returns)
        print(
            f"  {algo:<9} {hp['total_timesteps']:>7} steps  returns [{shown}]  median {statistics.median(returns):6.1f}"
            f"  solved {solved}/{len(returns)}  ({seconds:.0f} s/seed)",
            flush=True,
        )


if __name__ == "__main__":
    main()
