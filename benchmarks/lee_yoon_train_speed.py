"""Training cost of configs/hopper_lee_yoon.yaml's three algorithms, as ratios to its ppo measured in the same run.

Each algorithm (seed 0, the config's resolved hyperparameters) learns ``--steps`` env steps (default 8,192: four
rollouts of 2,048 and 4 x 320 minibatch updates); the CPU time of ``learn`` alone (this process, one torch
thread) gives env steps per CPU second. CPU time, not wall time, so other work on a shared machine does not
distort the ratios. Also printed: the median norm of the actor's minibatch gradient over the last rollout (the
scale that decides how Foret's SAM with radius rho compares with Lee & Yoon's step: SAM's ``H g`` weight is
``rho / ||g||``, theirs is 1). Usage: ``python benchmarks/lee_yoon_train_speed.py [--steps 8192]``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rlflat.algos import build_model
from rlflat.scope import actor_parameter_names
from rlflat.sweep.config import expand_runs, load_study_config
from rlflat.tasks import load_task
from rlflat.train import training_env

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "hopper_lee_yoon.yaml"
RUN_KEYS = ("n_envs", "normalize", "total_timesteps")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8192)
    args = parser.parse_args()
    torch.set_num_threads(1)
    rates: dict[str, float] = {}
    norms: dict[str, float] = {}
    for run in (r for r in expand_runs(load_study_config(CONFIG)) if r.config["seed"] == 0):
        hp = run.config["hyperparameters"]
        env = training_env(load_task(run.config["task"]), hp, seed=0)
        model = build_model(run.config["algo"], env, {k: v for k, v in hp.items() if k not in RUN_KEYS}, seed=0)
        start = time.process_time()
        model.learn(total_timesteps=args.steps)
        rates[run.config["algo"]] = args.steps / (time.process_time() - start)
        norms[run.config["algo"]] = _actor_gradient_norm(model)
        env.close()
    for algo, rate in rates.items():
        hours = 1e6 / rate / 3600
        print(
            f"{algo:<10} {rate:7.0f} env steps per CPU s  ({rate / rates['ppo']:.2f} x ppo; 1M steps = {hours:.2f} "
            f"core-h); actor minibatch ||g|| median {norms[algo]:.3f}"
        )


def _actor_gradient_norm(model: Any) -> float:
    """Median over the last rollout's minibatches of the actor-scope gradient norm of the PPO loss."""
    named = dict(model.policy.named_parameters())
    actor = [named[n] for n in actor_parameter_names(named)]
    norms = []
    for batch in model.rollout_buffer.get(model.batch_size):
        loss, _ = model.minibatch_loss(batch, 0.2, None, with_stats=False)
        model.policy.optimizer.zero_grad()
        loss.backward()
        norms.append(
            float(torch.sqrt(sum(((p.grad**2).sum() for p in actor if p.grad is not None), torch.tensor(0.0))))
        )
    return float(np.median(norms))


if __name__ == "__main__":
    main()
