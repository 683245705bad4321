"""Does each algorithm solve the task with its spec's hyperparameters? Final deterministic return per seed.

Each (algorithm, seed) is one ordinary run, trained by :func:`rlflat.train.train_run` into a temporary
directory: the number printed is the ``return_mean`` of that run's ``metrics.json`` (the deterministic mean
over ``rlflat.train.EVAL_EPISODES`` nominal episodes), exactly what ``python -m rlflat.train`` reports, so the
benchmark and the runs it vouches for cannot disagree. This is how the ``pg:`` blocks of the specs were
tuned. Usage::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/solve_rate.py [--task CartPole] \
        [--algos ppo ppo_sam pg pg_sam] [--seeds 0 1 2] [--steps N] [--set key=value ...]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch as th

from rlflat.algos import TrainingDiverged, parse_overrides
from rlflat.io import read_json
from rlflat.tasks import load_task
from rlflat.train import EVAL_EPISODES, resolve_run_config, train_run


def run_metrics(algo: str, task: str, seed: int, steps: int | None, overrides: dict[str, Any]) -> dict[str, Any]:
    """Train one run in a temporary directory; its ``metrics.json`` train block (return nan if it diverged)."""
    config = resolve_run_config(algo, task, seed=seed, steps=steps, overrides=overrides)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        try:
            train_run(config, out=out, progress=False)
        except TrainingDiverged:
            return {"return_mean": float("nan"), "total_timesteps": config["hyperparameters"]["total_timesteps"]}
        return dict(read_json(out / "metrics.json")["train"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="CartPole")
    parser.add_argument("--algos", nargs="+", default=["ppo", "ppo_sam", "pg", "pg_sam"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--steps", type=int, help="total_timesteps (default: the task spec's, per algorithm)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    th.set_num_threads(1)

    task = load_task(args.task)
    overrides = parse_overrides(args.overrides)
    print(f"{task.alias}: deterministic mean return over {EVAL_EPISODES} episodes (solved >= {task.solved_threshold})")
    for algo in args.algos:
        start = time.perf_counter()
        runs = [run_metrics(algo, task.alias, seed, args.steps, overrides) for seed in args.seeds]
        returns = [float(run["return_mean"]) for run in runs]
        solved = sum(r >= task.solved_threshold for r in returns)
        seconds = (time.perf_counter() - start) / len(args.seeds)
        shown = " ".join(f"{r:6.1f}" for r in returns)
        print(
            f"  {algo:<9} {runs[0]['total_timesteps']:>7} steps  returns [{shown}]"
            f"  median {statistics.median(returns):6.1f}  solved {solved}/{len(returns)}  ({seconds:.0f} s/seed)",
            flush=True,
        )


if __name__ == "__main__":
    main()
