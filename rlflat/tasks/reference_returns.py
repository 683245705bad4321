"""``python -m rlflat.tasks.reference_returns``: measure R_low, a uniformly random policy's mean return per task.

Task-level normalisation (``(R - R_low) / (R_ref - R_low)``, see :class:`rlflat.tasks.spec.ReferenceReturns`)
needs a floor that means the same for every run: the return of acting at random. This command measures it on
Gymnasium's own env at nominal dynamics (``make_env``), episode ``j`` reset with seed ``seed + j`` and actions
drawn from the action space seeded with ``seed``, and prints each task's mean, its standard error over episodes
and the episode count as the ``reference_returns`` lines to record in ``envs/<task>.yaml``. ``--check`` instead
compares the measurement with the recorded value and exits 1 when they differ by more than 3 combined SEs.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from tqdm.auto import tqdm

from rlflat.errors import RlflatError
from rlflat.tasks.build import make_env
from rlflat.tasks.spec import TaskSpec, list_tasks, load_task

__all__ = ["RandomReturn", "main", "random_policy_returns"]

DEFAULT_EPISODES = 200
DEFAULT_SEED = 0


@dataclass(frozen=True)
class RandomReturn:
    """Mean episode return of a uniformly random policy, its standard error (ddof 1) and episode count."""

    task: str
    mean: float
    se: float
    n: int
    seconds: float


def random_policy_returns(
    task: TaskSpec, episodes: int, seed: int = DEFAULT_SEED, progress: bool = False
) -> np.ndarray:
    """Returns of ``episodes`` episodes of uniform random actions on the nominal task (Gymnasium's own env)."""
    if isinstance(episodes, bool) or not isinstance(episodes, int) or episodes < 2:
        raise RlflatError(f"episodes must be an integer >= 2 (a standard error needs two), got {episodes!r}")
    env = make_env(task)
    try:
        env.action_space.seed(seed)
        returns = np.zeros(episodes)
        for j in tqdm(range(episodes), desc=task.alias, unit="episode", disable=not progress):
            env.reset(seed=seed + j)
            done = False
            while not done:
                _, reward, terminated, truncated, _ = env.step(env.action_space.sample())
                returns[j] += float(reward)
                done = terminated or truncated
        return returns
    finally:
        env.close()


def measure(task: TaskSpec, episodes: int, seed: int = DEFAULT_SEED, progress: bool = False) -> RandomReturn:
    start = time.perf_counter()
    returns = random_policy_returns(task, episodes, seed, progress)
    se = float(returns.std(ddof=1) / math.sqrt(returns.size))
    return RandomReturn(task.alias, float(returns.mean()), se, int(returns.size), time.perf_counter() - start)


def _yaml_lines(result: RandomReturn, episodes: int, seed: int) -> str:
    command = f"python -m rlflat.tasks.reference_returns {result.task} --episodes {episodes} --seed {seed}"
    return (
        f"# {result.task} ({result.seconds:.1f} s)\n"
        f"  low: {result.mean:.6g}\n  low_se: {result.se:.3g}\n  low_n: {result.n}\n  low_source: {command}\n"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m rlflat.tasks.reference_returns",
        description="Measure each task's random-policy mean return (R_low of task-level normalisation).",
    )
    parser.add_argument("tasks", nargs="*", help="task aliases or ids (default: every shipped task)")
    parser.add_argument("--episodes", type=int, default=DEFAULT_EPISODES, help="episodes per task (default 200)")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="first episode seed and action seed")
    parser.add_argument("--check", action="store_true", help="compare with the spec's recorded R_low (exit 1 if off)")
    args = parser.parse_args(argv)
    try:
        tasks = [load_task(t) for t in args.tasks] if args.tasks else list_tasks()
        failed = []
        for task in tasks:
            result = measure(task, args.episodes, args.seed, progress=sys.stderr.isatty())
            if not args.check:
                print(_yaml_lines(result, args.episodes, args.seed), end="", flush=True)
                continue
            recorded = task.reference_returns
            if recorded is None:
                failed.append(f"{task.alias}: no reference_returns recorded")
                continue
            z = abs(result.mean - recorded.low) / max(math.hypot(result.se, recorded.low_se), 1e-12)
            line = f"{task.alias}: measured {result.mean:.4g} +- {result.se:.2g}, recorded {recorded.low:.4g}"
            print(line + (f" (|z| = {z:.2f})" if z > 0 else " (identical)"), flush=True)
            if z > 3:
                failed.append(line)
    except RlflatError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if failed:
        print("mismatch: " + "; ".join(failed), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
