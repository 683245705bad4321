"""Training throughput: rlflat ``ppo`` vs SB3 ``PPO`` (target >= 0.95x), ``ppo_sam`` vs ``ppo`` wall time
(target <= 1.6x), and ``ppo`` with sharpness tracking vs without (target <= 1.2x at the default interval; the ratio
at every update is printed too), with a task's zoo hyperparameters.

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
from rlflat.algos.sharpness_tracking import DEFAULT_EVERY, SharpnessTracker
from rlflat.tasks import load_task
from rlflat.train import training_env


def _timed(build: Callable[[], Any], steps: int) -> tuple[float, float]:
    """Wall and CPU seconds of ``learn`` (CPU time is what a loaded machine distorts least)."""
    model = build()
    start, cpu = time.perf_counter(), time.process_time()
    model.learn(steps)
    return time.perf_counter() - start, time.process_time() - cpu


def _tracked(model: Any, every: int) -> Any:
    model.update_observer = SharpnessTracker(every, seed=0)
    return model


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
        "ppo tracked N=1": lambda: _tracked(build_model("ppo", env(), hp, seed=0), 1),
        f"ppo tracked N={DEFAULT_EVERY}": lambda: _tracked(build_model("ppo", env(), hp, seed=0), DEFAULT_EVERY),
    }
    best = {name: float("inf") for name in runs}
    best_cpu = {name: float("inf") for name in runs}
    for _ in range(args.repeats):
        for name, build in runs.items():
            wall, cpu = _timed(build, args.steps)
            best[name], best_cpu[name] = min(best[name], wall), min(best_cpu[name], cpu)

    print(f"{task.alias}, {args.steps} steps, n_envs={n_envs}, best of {args.repeats}, torch threads 1")
    print(f"  hyperparameters (from the task spec): {hp}")
    for name, seconds in best.items():
        print(f"  {name:<18} {seconds:6.2f} s  {args.steps / seconds:7.0f} env-steps/s  (CPU {best_cpu[name]:6.2f} s)")
    speed = best["sb3 PPO"] / best["rlflat ppo"]
    ratio = best["rlflat ppo_sam"] / best["rlflat ppo"]
    print(f"  rlflat ppo / sb3 PPO throughput: {speed:.3f}x (target >= 0.95)")
    print(f"  ppo_sam / ppo wall time:         {ratio:.3f}x (target <= 1.6)")
    for every in (1, DEFAULT_EVERY):
        name = f"ppo tracked N={every}"
        wall, cpu = best[name] / best["rlflat ppo"], best_cpu[name] / best_cpu["rlflat ppo"]
        target = " (target <= 1.2)" if every == DEFAULT_EVERY else ""
        print(f"  tracking every {every:>2} / off wall time: {wall:.3f}x{target}; CPU time {cpu:.3f}x")


if __name__ == "__main__":
    main()
