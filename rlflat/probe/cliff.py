"""The cliff test of Sullivan et al. (2022, "Cliff Diving: Exploring Reward Surfaces in Reinforcement Learning
Environments", ICML; Sec. 5): is there a sudden large drop of the return along the policy-gradient direction?

Sullivan et al. evaluate the return on a line theta + alpha g from the policy along its (filter-normalised)
policy-gradient direction and call the line a cliff when the return at the 10th grid point has fallen to at most
50% of the return at the start *and* that drop exceeds 25% of the range (max - min) of the whole line (the
thresholds ``cliff_ratio = 0.5`` and ``global_ratio = 0.25`` of their ``scripts/compute_cliff.py`` in
github.com/RyanNavillus/reward-surfaces; their script also scans later grid steps, which this test does not).
Here returns are measured above the task's worst return (:func:`rlflat.evaluate.metrics.return_floor`) so that
"50%" means halfway to the floor also when returns are negative; for CartPole the floor is 0 and this is their
test on raw returns.

The gradient is that of the expected return on the probe batch, i.e. minus the gradient of the ``surrogate``
loss (:mod:`rlflat.probe.losses`), filter-normalised as Li et al. (2018) (biases zeroed), so alpha is in units
of each neuron's weight norm. All grid points are evaluated in one stacked evaluator call.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from rlflat.errors import RlflatError
from rlflat.policy import FunctionalPolicy, Params
from rlflat.probe.directions import add_scaled, filter_normalize
from rlflat.probe.losses import LossFn
from rlflat.probe.perturbation import perturbed_returns
from rlflat.probe.worst_case import loss_and_grad
from rlflat.tasks import TaskSpec

__all__ = ["CLIFF_INDEX", "CLIFF_RANGE_FRACTION", "CLIFF_RATIO", "CliffTest", "cliff_test", "gradient_cliff"]

CLIFF_INDEX = 9
"""The test compares grid point 0 with grid point 9 (the first 10 points)."""
CLIFF_RATIO = 0.5
"""Return at point 9 at most this fraction of the return at point 0."""
CLIFF_RANGE_FRACTION = 0.25
"""The drop must exceed this fraction of the line's range."""


@dataclass(frozen=True)
class CliffTest:
    """``cliff`` is Sullivan et al.'s boolean; ``drop_over_range`` its magnitude ((R_0 - R_9) / range). The probe
    also records ``indicator`` (1.0 / 0.0), whose mean over replicates is the share of lines with a cliff."""

    cliff: bool
    drop_over_range: float
    return_ratio: float | None
    """R_9 / R_0 above the floor (None when R_0 is on the floor)."""
    start: float
    end: float
    surface_range: float


def cliff_test(returns: Sequence[float] | np.ndarray, floor: float = 0.0) -> CliffTest:
    """Sullivan et al.'s cliff test on mean returns along a line, ``returns[0]`` at the policy itself."""
    z = np.asarray(returns, dtype=np.float64) - float(floor)
    if z.ndim != 1 or z.size <= CLIFF_INDEX or not np.all(np.isfinite(z)):
        raise RlflatError(f"the cliff test needs >= {CLIFF_INDEX + 1} finite returns, got {np.shape(returns)}")
    start, end = float(z[0]), float(z[CLIFF_INDEX])
    span = float(z.max() - z.min())
    drop = (start - end) / span if span > 0 else 0.0
    ratio = end / start if start > 0 else None
    cliff = ratio is not None and end <= CLIFF_RATIO * start and drop > CLIFF_RANGE_FRACTION
    return CliffTest(bool(cliff), drop, ratio, start + floor, end + floor, span)


def gradient_cliff(
    policy: FunctionalPolicy,
    task: TaskSpec,
    surrogate: LossFn,
    params: Params,
    *,
    points: int = 20,
    span: float = 1.0,
    episodes: int = 5,
    eval_seed: int = 0,
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Returns along theta + alpha g_hat, alpha = span * j / (points - 1), and the cliff test on their means.

    ``surrogate`` is the surrogate loss on the probe batch (its negative gradient is the policy gradient).
    """
    from rlflat.evaluate.metrics import return_floor

    if points <= CLIFF_INDEX or not (math.isfinite(span) and span > 0):
        raise RlflatError(f"the cliff line needs points >= {CLIFF_INDEX + 1} and span > 0, got {points}, {span}")
    _, grad = loss_and_grad(surrogate, params)
    ascent = {k: -g for k, g in zip(params, grad, strict=True)}
    if all(float(g.abs().max()) == 0.0 for g in ascent.values()):
        raise RlflatError("the policy gradient is zero on the probe batch: no direction for the cliff test")
    direction = filter_normalize(ascent, params, ignore_1d=True)
    alphas = span * np.arange(points) / (points - 1)
    with torch.no_grad():
        line = [add_scaled(params, direction, float(a)) for a in alphas]
    returns = perturbed_returns(policy, task, line, episodes, seed=eval_seed)  # (P, E)
    means = returns.mean(1)
    floor = return_floor(task, float(means[0]))
    test = cliff_test(means, 0.0 if floor is None else floor)
    stderr = returns.std(1, ddof=1) / math.sqrt(episodes) if episodes > 1 else np.full(points, math.nan)
    scalars: dict[str, Any] = {
        **asdict(test),
        "indicator": float(test.cliff),
        "alphas": alphas.tolist(),
        "mean_returns": means.tolist(),
        "mean_returns_stderr": stderr.tolist(),
        "floor": floor,
        "definition": "Sullivan et al. (2022): R_9 <= 0.5 R_0 and (R_0 - R_9) > 0.25 (max - min), returns above "
        "the task floor, along the filter-normalised policy gradient",
    }
    return scalars, {"cliff_alphas": alphas, "cliff_returns": returns}
