"""Training cost of consistent dropout (rlflat.algos.dropout) against plain PPO, in CPU seconds of this process.

Plain and dropout runs alternate (same seed, same hyperparameters, CartPole with the flatness_roads rollout of
8 envs x 256 steps) so a busy shared machine slows both alike; CPU time rather than wall time for the same reason.
Prints each arm's median seconds and the ratio dropout / plain. Usage:
``python benchmarks/dropout_overhead.py [--steps 16384] [--repeats 3] [--rate 0.1]``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from stable_baselines3.common.env_util import make_vec_env

from rlflat.algos import build_model

HYPERPARAMETERS = {"n_steps": 256, "batch_size": 256, "n_epochs": 10, "learning_rate": 1e-3, "gamma": 0.98}


def _seconds(steps: int, dropout: float) -> float:
    model = build_model("ppo", make_vec_env("CartPole-v1", n_envs=8), {**HYPERPARAMETERS, "dropout": dropout}, seed=0)
    start = time.process_time()
    model.learn(steps)
    return time.process_time() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=16384)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rate", type=float, default=0.1)
    args = parser.parse_args()
    torch.set_num_threads(1)
    plain, dropout = [], []
    for _ in range(args.repeats):
        plain.append(_seconds(args.steps, 0.0))
        dropout.append(_seconds(args.steps, args.rate))
    p, d = statistics.median(plain), statistics.median(dropout)
    print(f"plain   {p:.2f} s CPU (median of {args.repeats}: {', '.join(f'{x:.2f}' for x in plain)})")
    print(f"dropout {d:.2f} s CPU (rate {args.rate}; {', '.join(f'{x:.2f}' for x in dropout)})")
    print(f"ratio dropout / plain: {d / p:.2f}")


if __name__ == "__main__":
    main()
