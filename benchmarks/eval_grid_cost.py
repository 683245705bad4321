"""Evaluation cost per run before and after the finer default grids (issue 10), in CPU seconds of this process.

Before: the first reference study's suite (11-point sweeps of the five default CartPole parameters, 5-point sweeps
and a 5 x 5 grid of pole length x pole mass, 20 episodes, one nominal row of 20). After: the defaults now (21-point
sweeps holding the declared severities x0.5 and x2, an 11 x 11 grid (13 x 13 with the severities), a 100-episode
nominal row, and the inert/saturated check). CPU time, not wall time, so a busy shared machine does not distort the
ratio. Usage: ``python benchmarks/eval_grid_cost.py RUN_DIR_OR_ZIP [--repeats 3]``.
"""

from __future__ import annotations

import argparse
import time

import torch

from rlflat.evaluate import SuiteSpec, evaluate
from rlflat.evaluate.api import resolve_task
from rlflat.policy import load_policy

BEFORE = SuiteSpec(
    parameters=("length", "masspole", "masscart", "gravity", "force_mag"),
    grids=(("length", "masspole"),),
    points=11,
    grid_points=5,
    severities=(),
    factors={"length": [0.25, 0.5, 1.0, 2.0, 4.0], "masspole": [0.1, 0.316, 1.0, 3.16, 10.0]},
)
AFTER = SuiteSpec(
    parameters=("length", "masspole", "masscart", "gravity", "force_mag"), grids=(("length", "masspole"),)
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    task = resolve_task(args.path)
    policy = load_policy(args.path)
    results = {}
    for name, suite, options in (
        ("before", BEFORE, {"nominal_episodes": 20, "detect_inert": False}),
        ("after", AFTER, {}),
    ):
        seconds = []
        for _ in range(args.repeats):
            start = time.process_time()
            table = evaluate(policy, task, suite, progress=False, **options)  # type: ignore[arg-type]
            seconds.append(time.process_time() - start)
        results[name] = min(seconds)
        print(f"{name:>6}: {len(table)} settings, {min(seconds):.2f} CPU s (best of {args.repeats})", flush=True)
    print(f" ratio: after / before = {results['after'] / results['before']:.2f}")


if __name__ == "__main__":
    main()
