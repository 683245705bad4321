"""Training throughput: rlflat ``ppo`` vs SB3 ``PPO`` (target >= 0.95x), and ``ppo_sam`` vs ``ppo`` wall time
(target <= 1.6x), with a task's zoo hyperparameters.

The runs are interleaved and each is repeated; the fastest repeat counts, since on a shared machine other
load only ever slows a run down. Usage::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/train_speed.py [--task CartPole] [--steps 20000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch as th
from stable_baselines3 import PPO

from rlflat.algos import build_model, constructor_kwargs, resolve_hyperparameters
from rlflat.tasks import load_task
from rlflat.train import training_env


def _timed(build: Callable[[], Any], steps: int) -> float:
    model = build()
    start = time.perf_counter()
    model.learn(steps)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="CartPole")
    parser.add_argument("--steps", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    th.set_num_threads(1)

    task = load_task(args.task)
    # every model's hyperparameters, the SB3 twin's included, come from the task spec through rlflat's resolver
    hp = resolve_hyperparameters("ppo", task, {})
    sam_hp = resolve_hyperparameters("ppo_sam", task, {})
    n_envs = hp["n_envs"]

    def env() -> Any:
        return training_env(task, hp, seed=0)

    sb3_kwargs = constructor_kwargs(hp)  # schedules parsed, activation names resolved, run keys dropped

    runs: dict[str, Callable[[], Any]] = {
        "sb3 PPO": lambda: PPO("MlpPolicy", env(), seed=0, device="cpu", **sb3_kwargs),
        "rlflat ppo": lambda: build_model("ppo", env(), hp, seed=0),
        "rlflat ppo_sam": lambda: build_model("ppo_sam", env(), sam_hp, seed=0),
    }
    best = {name: float("inf") for name in runs}
    for _ in range(args.repeats):
        for name, build in runs.items():
            best[name] = min(best[name], _timed(build, args.steps))

    print(f"{task.alias}, {args.steps} steps, n_envs={n_envs}, best of {args.repeats}, torch threads 1")
    print(f"  hyperparameters (from the task spec): {hp}")
    for name, seconds in best.items():
        print(f"  {name:<15} {seconds:6.2f} s  {args.steps / seconds:7.0f} env-steps/s")
    speed = best["sb3 PPO"] / best["rlflat ppo"]
    ratio = best["rlflat ppo_sam"] / best["rlflat ppo"]
    print(f"  rlflat ppo / sb3 PPO throughput: {speed:.3f}x (target >= 0.95)")
    print(f"  ppo_sam / ppo wall time:         {ratio:.3f}x (target <= 1.6)")


if __name__ == "__main__":
    main()
