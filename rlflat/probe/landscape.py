"""Loss and return landscapes: 1-D / 2-D slices and the linear path between two policies.

Slices follow Li et al. (2018): theta + a d1 (+ b d2) with filter-normalised random directions, so the axes are
relative to the weights' scale and slices of different networks are comparable; the top Hessian eigenvector (unit
norm) is rescaled to the norm of the probed parameters so its axis has the same units. Linear interpolation between
two solutions (Goodfellow et al., 2015; Frankle et al., 2020) measures the barrier between them. Every return comes
from one stacked :func:`rlflat.evaluate.rollout_returns` call per slice.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from rlflat.errors import RlflatError
from rlflat.policy import FunctionalPolicy, Params
from rlflat.probe.directions import dict_norm
from rlflat.probe.losses import LossFn
from rlflat.probe.options import ProbeOptions  # the defaults below are the CLI's: the same measure either way
from rlflat.probe.perturbation import perturbed_returns
from rlflat.tasks import TaskSpec

__all__ = ["barrier", "check_same_architecture", "interpolate", "plane", "scaled_to", "slice_1d", "slice_2d"]


def scaled_to(direction: Params, norm: float) -> Params:
    """``direction`` rescaled to Euclidean norm ``norm`` (as one flat vector)."""
    current = float(dict_norm(direction))
    if current == 0.0:
        raise RlflatError("cannot rescale a zero direction")
    return {k: v * (norm / current) for k, v in direction.items()}


def plane(params: Params, d1: Params, d2: Params | None, a: float, b: float = 0.0) -> Params:
    """theta + a d1 + b d2 (new tensors)."""
    return {k: p.detach() + a * d1[k].to(p) + (0.0 if d2 is None else b * d2[k].to(p)) for k, p in params.items()}


def _evaluate(
    policy: FunctionalPolicy,
    task: TaskSpec | None,
    loss_fn: LossFn,
    points: Sequence[Params],
    episodes: int,
    eval_seed: int,
) -> tuple[np.ndarray, np.ndarray | None]:
    with torch.no_grad():
        losses = np.array([float(loss_fn(p)) for p in points])
    returns = None
    if task is not None and episodes > 0:
        returns = perturbed_returns(policy, task, points, episodes, seed=eval_seed).mean(-1)
    return losses, returns


def slice_1d(
    policy: FunctionalPolicy,
    task: TaskSpec | None,
    loss_fn: LossFn,
    params: Params,
    direction: Params,
    alphas: Sequence[float] | np.ndarray,
    *,
    episodes: int = ProbeOptions.episodes,
    eval_seed: int = 0,
) -> tuple[np.ndarray, np.ndarray | None]:
    """(loss, mean return) at theta + alpha d for each alpha (return None when ``task`` is None)."""
    points = [plane(params, direction, None, float(a)) for a in alphas]
    return _evaluate(policy, task, loss_fn, points, episodes, eval_seed)


def slice_2d(
    policy: FunctionalPolicy,
    task: TaskSpec | None,
    loss_fn: LossFn,
    params: Params,
    d1: Params,
    d2: Params,
    alphas: Sequence[float] | np.ndarray,
    *,
    episodes: int = ProbeOptions.episodes,
    eval_seed: int = 0,
) -> tuple[np.ndarray, np.ndarray | None]:
    """(loss, mean return) grids of shape (len(alphas), len(alphas)) at theta + a d1 + b d2, rows indexed by a."""
    points = [plane(params, d1, d2, float(a), float(b)) for a in alphas for b in alphas]
    losses, returns = _evaluate(policy, task, loss_fn, points, episodes, eval_seed)
    n = len(alphas)
    return losses.reshape(n, n), None if returns is None else returns.reshape(n, n)


def check_same_architecture(a: FunctionalPolicy, b: FunctionalPolicy) -> None:
    """Interpolation needs identical parameter names and shapes and the same spaces, else a one-line error."""
    shapes_a = {k: tuple(v.shape) for k, v in a.params.items()}
    shapes_b = {k: tuple(v.shape) for k, v in b.params.items()}
    if shapes_a != shapes_b:
        diff = sorted(k for k in shapes_a.keys() | shapes_b.keys() if shapes_a.get(k) != shapes_b.get(k))
        raise RlflatError(
            f"cannot interpolate policies of different architectures: parameters differ at {diff[:4]}"
            + (f" and {len(diff) - 4} more" if len(diff) > 4 else "")
        )
    if a.observation_space != b.observation_space or a.action_space != b.action_space:
        raise RlflatError(
            f"cannot interpolate policies with different spaces: ({a.observation_space}, {a.action_space}) vs "
            f"({b.observation_space}, {b.action_space})"
        )


def barrier(values: np.ndarray, alphas: np.ndarray, higher_is_worse: bool = True) -> float:
    """Barrier on [0, 1]: max along the path minus the mean of the ends (loss), or mean of ends minus min (return).

    The ends are the values at alpha = 0 and 1, which must be on the grid."""
    inside = (alphas >= -1e-12) & (alphas <= 1 + 1e-12)
    ends = [int(np.argmin(np.abs(alphas - e))) for e in (0.0, 1.0)]
    if any(abs(alphas[i] - e) > 1e-9 for i, e in zip(ends, (0.0, 1.0), strict=True)):
        raise RlflatError("interpolation grid must contain alpha = 0 and alpha = 1")
    end_mean = 0.5 * (values[ends[0]] + values[ends[1]])
    if higher_is_worse:
        return float(values[inside].max() - end_mean)
    return float(end_mean - values[inside].min())


def interpolate(
    policy_a: FunctionalPolicy,
    policy_b: FunctionalPolicy,
    task: TaskSpec | None,
    loss_fn: LossFn,
    alphas: Sequence[float] | np.ndarray,
    *,
    episodes: int = ProbeOptions.episodes,
    eval_seed: int = 0,
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Loss (on A's batch) and return along (1 - alpha) theta_A + alpha theta_B over all parameters.

    Observations are normalised with A's statistics all along the path; when B was trained with different
    normalisation statistics the end alpha = 1 is not exactly policy B, which is reported.
    """
    check_same_architecture(policy_a, policy_b)
    grid = np.asarray(alphas, dtype=np.float64)
    points: list[Params] = [
        {k: (1.0 - a) * va + a * policy_b.params[k] for k, va in policy_a.params.items()} for a in grid.tolist()
    ]
    losses, returns = _evaluate(policy_a, task, loss_fn, points, episodes, eval_seed)
    same_norm = _same_normalizer(policy_a, policy_b)
    scalars: dict[str, Any] = {
        "alphas": grid.tolist(),
        "loss": losses.tolist(),
        "loss_barrier": barrier(losses, grid, higher_is_worse=True),
        "return": None if returns is None else returns.tolist(),
        "return_barrier": None if returns is None else barrier(returns, grid, higher_is_worse=False),
        "distance": float(dict_norm({k: policy_a.params[k] - v for k, v in policy_b.params.items()})),
        "same_observation_normalizer": same_norm,
    }
    arrays = {"interpolation_alphas": grid, "interpolation_loss": losses}
    if returns is not None:
        arrays["interpolation_return"] = returns
    return scalars, arrays


def _same_normalizer(a: FunctionalPolicy, b: FunctionalPolicy) -> bool:
    na, nb = a.normalizer, b.normalizer
    if na is None or nb is None:
        return na is nb
    return bool(np.array_equal(na.mean, nb.mean) and np.array_equal(na.var, nb.var) and na.clip == nb.clip)


def eigen_direction(vectors: Tensor, column: int, params: Mapping[str, Tensor]) -> Params:
    """Column ``column`` of a flat (n, k) eigenvector matrix as a dict shaped like ``params`` (key order)."""
    flat = vectors[:, column]
    out: Params = {}
    offset = 0
    for k, p in params.items():
        out[k] = flat[offset : offset + p.numel()].reshape(p.shape).to(p)
        offset += p.numel()
    if offset != flat.numel():
        raise RlflatError(f"eigenvector length {flat.numel()} does not match {offset} parameters")
    return out
