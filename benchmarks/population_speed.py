"""Population engine throughput per core against SB3 on the same hyperparameters, measured in one run.

Three ratios (issue 19, item 6), each from interleaved repeats, fastest repeat counting (other load on a shared
machine only ever slows a run down), on CPU time (what a loaded machine distorts least) and on wall time:

* CartPole zoo PPO, a population of K = 16 vs one SB3 ``PPO``: env-steps per CPU-second (target >= 3x);
* Hopper zoo PPO, K = 15 vs one SB3 ``PPO`` (target >= 5x), a few rollouts only (the budget is small);
* ``ppo_sam`` vs ``ppo`` inside a CartPole population of K = 16: time per step (target <= 1.6x).

Torch runs single-threaded. Model building, publishing and the final evaluation are outside the timings on both
sides (``learn`` for SB3, the engine's training loop for the population). Usage::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/population_speed.py [--repeats 3] [--only cartpole,hopper,sam]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch as th
from stable_baselines3 import PPO

from rlflat.algos import constructor_kwargs
from rlflat.population import Member
from rlflat.population.batched import prepare, run
from rlflat.tasks import load_task
from rlflat.train import resolve_run_config, training_env


def _population(algo: str, task: str, k: int, steps: int) -> tuple[float, float]:
    """(wall, CPU) seconds of K learners' training loop (seeds 0..K-1, the task's zoo hyperparameters)."""
    configs = [resolve_run_config(algo, task, seed=s, steps=steps) for s in range(k)]
    learners = prepare([Member(c, Path(f"/nonexistent/{i}")) for i, c in enumerate(configs)], {})
    start, cpu = time.perf_counter(), time.process_time()
    run(learners, steps, progress=False)
    return time.perf_counter() - start, time.process_time() - cpu


def _sb3(task: str, steps: int) -> tuple[float, float]:
    """(wall, CPU) seconds of one SB3 ``PPO.learn`` with the same zoo hyperparameters (seed 0)."""
    config = resolve_run_config("ppo", task, seed=0, steps=steps)
    hyperparameters = dict(config["hyperparameters"])
    env = training_env(load_task(task), hyperparameters, 0)
    model = PPO("MlpPolicy", env, seed=0, **constructor_kwargs(hyperparameters))
    start, cpu = time.perf_counter(), time.process_time()
    model.learn(steps)
    return time.perf_counter() - start, time.process_time() - cpu


def _best(times: list[tuple[float, float]]) -> tuple[float, float]:
    return min(t[0] for t in times), min(t[1] for t in times)


def speedup(task: str, k: int, steps: int, repeats: int) -> dict[str, Any]:
    """Population env-steps per second over SB3's, per core (both single-threaded)."""
    population, single = [], []
    for _ in range(repeats):
        population.append(_population("ppo", task, k, steps))
        single.append(_sb3(task, steps))
    (pop_wall, pop_cpu), (sb3_wall, sb3_cpu) = _best(population), _best(single)
    return {
        "population_steps_per_cpu_s": k * steps / pop_cpu,
        "sb3_steps_per_cpu_s": steps / sb3_cpu,
        "ratio_cpu": (k * steps / pop_cpu) / (steps / sb3_cpu),
        "ratio_wall": (k * steps / pop_wall) / (steps / sb3_wall),
    }


def sam_overhead(k: int, steps: int, repeats: int) -> dict[str, Any]:
    """Time of a ``ppo_sam`` population over a ``ppo`` population of the same shape (CartPole)."""
    plain, sam = [], []
    for _ in range(repeats):
        plain.append(_population("ppo", "CartPole", k, steps))
        sam.append(_population("ppo_sam", "CartPole", k, steps))
    (plain_wall, plain_cpu), (sam_wall, sam_cpu) = _best(plain), _best(sam)
    return {"ratio_cpu": sam_cpu / plain_cpu, "ratio_wall": sam_wall / plain_wall}


def env_costs(k: int, steps: int) -> dict[str, float]:
    """Per-step CPU microseconds of stepping K Hopper envs: each learner's own SB3 VecEnv (what the engine uses:
    DummyVecEnv + Monitor + VecNormalize), the same Monitor-wrapped Gymnasium envs stepped directly (no
    DummyVecEnv, no VecNormalize: the floor a batched wrapper stack could reach in this process), and the bare
    MuJoCo env (``env.unwrapped``)."""
    import numpy as np

    config = resolve_run_config("ppo", "Hopper", seed=0)
    hyperparameters = dict(config["hyperparameters"])
    vecenvs = [training_env(load_task("Hopper"), hyperparameters, s) for s in range(k)]
    rng = np.random.default_rng(0)
    actions = rng.uniform(-1, 1, size=(steps, k, 1, 3)).astype(np.float32)
    costs = {}
    for venv in vecenvs:
        venv.reset()
    cpu = time.process_time()
    for t in range(steps):
        for j, venv in enumerate(vecenvs):
            venv.step(actions[t, j])
    costs["sb3_vecenv"] = (time.process_time() - cpu) / (steps * k) * 1e6
    envs = [venv.unwrapped.envs[0] if hasattr(venv, "unwrapped") else venv.venv.envs[0] for venv in vecenvs]
    for name, pick in (("monitor_env", lambda e: e), ("bare_mujoco", lambda e: e.unwrapped)):
        chosen = [pick(e) for e in envs]
        for e in chosen:
            e.reset(seed=0)
        cpu = time.process_time()
        for t in range(steps):
            for j, e in enumerate(chosen):
                _, _, terminated, truncated, _ = e.step(actions[t, j, 0])
                if terminated or truncated:
                    e.reset()
        costs[name] = (time.process_time() - cpu) / (steps * k) * 1e6
    return costs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--only", default="cartpole,hopper,sam", help="comma-separated: cartpole, hopper, sam, envs")
    parser.add_argument("--cartpole-steps", type=int, default=8192, help="steps per learner (32 rollouts)")
    parser.add_argument("--hopper-steps", type=int, default=1536, help="steps per learner (3 rollouts of 512)")
    args = parser.parse_args()
    th.set_num_threads(1)
    only = set(args.only.split(","))
    if "cartpole" in only:
        r = speedup("CartPole", 16, args.cartpole_steps, args.repeats)
        print(f"CartPole zoo PPO, K=16 vs SB3: {r['ratio_cpu']:.2f}x per CPU-second (wall {r['ratio_wall']:.2f}x); "
              f"population {r['population_steps_per_cpu_s']:.0f} vs SB3 {r['sb3_steps_per_cpu_s']:.0f} steps/s "
              "(target >= 3x)")  # fmt: skip
    if "hopper" in only:
        r = speedup("Hopper", 15, args.hopper_steps, args.repeats)
        print(f"Hopper zoo PPO, K=15 vs SB3: {r['ratio_cpu']:.2f}x per CPU-second (wall {r['ratio_wall']:.2f}x); "
              f"population {r['population_steps_per_cpu_s']:.0f} vs SB3 {r['sb3_steps_per_cpu_s']:.0f} steps/s "
              "(target >= 5x)")  # fmt: skip
    if "envs" in only:
        c = env_costs(15, 300)
        print(f"Hopper env step, K=15, CPU us per learner-step: SB3 VecEnv {c['sb3_vecenv']:.0f}, Monitor-wrapped env "
              f"{c['monitor_env']:.0f}, bare MuJoCo env {c['bare_mujoco']:.0f}")  # fmt: skip
    if "sam" in only:
        r = sam_overhead(16, args.cartpole_steps // 2, args.repeats)
        print(f"ppo_sam / ppo inside a CartPole population of K=16: {r['ratio_cpu']:.2f}x CPU time "
              f"(wall {r['ratio_wall']:.2f}x) (target <= 1.6x)")  # fmt: skip


if __name__ == "__main__":
    main()
