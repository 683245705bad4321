"""Perturbation sharpness: how loss, actions and return change when the parameters are perturbed.

Average case (Keskar et al., 2017; Jiang et al., 2020): E_d[L(theta + sigma d)] - L(theta) over K random directions,
filter-normalised (Li et al., 2018) so sigma is relative to each neuron's weight norm, or raw Gaussian. Worst case:
the max of L in the ball ||eps|| <= rho (SAM, Foret et al., 2021) by one ascent step and by projected multi-step
ascent, and the adaptive ball of ASAM (Kwon et al., 2021), which Andriushchenko et al. (2023) found the more
meaningful for generalisation. Returns under perturbed parameters always come from the evaluator's batched
:func:`rlflat.evaluate.rollout_returns` (all perturbed sets stacked, one call), never from a loop here.

The return of a good CartPole policy saturates (exactly 500 under filter-normalised noise up to sigma ~ 1), so
measures that keep moving are reported beside it: the critical sigma where the expected return first falls below
half of nominal, the action disagreement and mean KL of perturbed vs original policy on the probe batch, and the
loss increase.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from torch import Tensor

from rlflat.errors import RlflatError
from rlflat.policy import FunctionalPolicy, Params
from rlflat.probe.directions import KINDS, add_scaled, random_direction
from rlflat.probe.losses import LossFn, mean_kl
from rlflat.probe.worst_case import WorstCase, pgd_sharpness, sam_sharpness
from rlflat.tasks import TaskSpec

__all__ = [
    "action_change",
    "average_case",
    "critical_sigma",
    "draw_directions",
    "perturbed_returns",
    "stack_params",
    "worst_case",
]


def stack_params(sets: Sequence[Mapping[str, Tensor]]) -> Params:
    """K parameter dicts (same keys) -> one dict of tensors with a leading K axis (the evaluator's layout)."""
    if not sets:
        raise RlflatError("no parameter sets to stack")
    return {name: torch.stack([s[name].detach() for s in sets]) for name in sets[0]}


def perturbed_returns(
    policy: FunctionalPolicy,
    task: TaskSpec,
    points: Sequence[Mapping[str, Tensor]],
    episodes: int,
    seed: int = 0,
) -> np.ndarray:
    """Nominal-task returns (P, episodes) of P parameter sets, all stacked into one batched evaluator call.

    Deterministic actions and common episode seeds (episode e starts from ``seed + e`` for every set), so
    differences between sets are due to the parameters alone.
    """
    from rlflat.evaluate import rollout_returns

    out = rollout_returns(policy, task, [{}], episodes, seed=seed, params=stack_params(points), deterministic=True)
    return out[:, 0, :]


def draw_directions(params: Params, kind: str, count: int, seed: int, *, ignore_1d: bool | None = None) -> list[Params]:
    """``count`` seeded random directions of ``kind`` (raw / filter / layer), from one generator."""
    if count < 1:
        raise RlflatError(f"need at least one direction, got {count}")
    if kind not in KINDS:
        from rlflat.errors import bad_choice

        raise bad_choice("direction kind", kind, KINDS)
    gen = torch.Generator().manual_seed(int(seed))
    return [random_direction(params, kind, seed=gen, ignore_1d=ignore_1d) for _ in range(count)]  # type: ignore[arg-type]


def action_change(policy: FunctionalPolicy, obs: Tensor, reference: Tensor, params: Params) -> float:
    """Discrete: fraction of states whose deterministic action changes. Box: mean |delta a| / (high - low) over
    states and dimensions, on clipped actions."""
    with torch.no_grad():
        actions = policy.mode(params, obs)
    if policy.discrete:
        return float((actions != reference).double().mean())
    box = policy.action_space
    assert isinstance(box, spaces.Box)
    width = torch.as_tensor(np.maximum(box.high - box.low, 1e-12), dtype=torch.float32)
    low, high = torch.as_tensor(box.low), torch.as_tensor(box.high)
    a, b = torch.clamp(actions, low, high), torch.clamp(reference, low, high)
    return float(((a - b).abs() / width).mean())


def critical_sigma(sigmas: np.ndarray, mean_returns: np.ndarray, nominal: float, fraction: float = 0.5) -> float | None:
    """First sigma where the expected return falls below ``nominal - fraction * |nominal|`` (half of a positive
    nominal), linearly interpolated in log sigma between grid points; the first grid sigma if already below
    there; None if never on the grid."""
    threshold = nominal - fraction * abs(nominal)
    below = np.flatnonzero(mean_returns < threshold)
    if below.size == 0:
        return None
    i = int(below[0])
    if i == 0:
        return float(sigmas[0])
    r0, r1 = float(mean_returns[i - 1]), float(mean_returns[i])
    t = (r0 - threshold) / (r0 - r1)
    lo, hi = math.log(sigmas[i - 1]), math.log(sigmas[i])
    return float(math.exp(lo + t * (hi - lo)))


def _mean_se(x: np.ndarray, axis: int = 0) -> tuple[np.ndarray, np.ndarray]:
    n = x.shape[axis]
    se = x.std(axis=axis, ddof=1) / math.sqrt(n) if n > 1 else np.full(np.delete(x.shape, axis), np.nan)
    return x.mean(axis=axis), se


def average_case(
    policy: FunctionalPolicy,
    task: TaskSpec | None,
    loss_fn: LossFn,
    params: Params,
    obs: Tensor,
    sigmas: Sequence[float],
    *,
    kinds: Sequence[str] = ("filter", "raw"),
    n_directions: int = 8,
    episodes: int = 5,
    seed: int = 0,
    eval_seed: int = 0,
    ignore_1d: bool | None = None,
    critical_fraction: float = 0.5,
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Average-case sharpness curves over ``sigmas`` for each direction kind: (scalars for probe.json, arrays).

    The same K directions serve every sigma (a curve per direction), so curves are smooth in sigma. Returns for
    theta0 and all K x S perturbed sets of all kinds come from one stacked evaluator call (skipped when ``task``
    is None). Standard errors are over the K directions.
    """
    sig = np.asarray(sigmas, dtype=np.float64)
    if sig.ndim != 1 or sig.size == 0 or np.any(sig < 0) or not np.all(np.isfinite(sig)):
        raise RlflatError(f"sigmas must be a non-empty list of finite values >= 0, got {list(sigmas)}")
    with torch.no_grad():
        base_loss = float(loss_fn(params))
        base_actions = policy.mode(params, obs)
    points: list[Params] = [dict(params)]
    per_kind: dict[str, dict[str, np.ndarray]] = {}
    for kind in kinds:
        dirs = draw_directions(params, kind, n_directions, seed=seed + KINDS.index(kind), ignore_1d=ignore_1d)
        loss = np.zeros((n_directions, sig.size))
        kl = np.zeros_like(loss)
        change = np.zeros_like(loss)
        for k, d in enumerate(dirs):
            for j, s in enumerate(sig):
                point = add_scaled(params, d, float(s))
                with torch.no_grad():
                    loss[k, j] = float(loss_fn(point)) - base_loss
                    kl[k, j] = float(mean_kl(policy, obs, params, point))
                change[k, j] = action_change(policy, obs, base_actions, point)
                points.append(point)
        per_kind[kind] = {"loss_increase": loss, "kl": kl, "action_change": change}
    returns = perturbed_returns(policy, task, points, episodes, seed=eval_seed) if task is not None else None

    scalars: dict[str, Any] = {"sigmas": sig.tolist(), "base_loss": base_loss}
    arrays: dict[str, np.ndarray] = {"perturbation_sigmas": sig}
    nominal = float(returns[0].mean()) if returns is not None else None
    scalars["nominal_return"] = nominal
    offset = 1
    for kind, curves in per_kind.items():
        entry: dict[str, Any] = {}
        for name, values in curves.items():
            mean, se = _mean_se(values)
            entry[name] = {"mean": mean.tolist(), "stderr": se.tolist()}
            arrays[f"perturbation_{kind}_{name}"] = values
        if returns is not None and nominal is not None:
            block = returns[offset : offset + n_directions * sig.size].reshape(n_directions, sig.size, episodes)
            offset += n_directions * sig.size
            per_direction = block.mean(-1)  # (K, S)
            mean, se = _mean_se(nominal - per_direction)
            entry["return"] = per_direction.mean(0).tolist()
            entry["return_drop"] = {"mean": mean.tolist(), "stderr": se.tolist()}
            entry["critical_sigma"] = critical_sigma(sig, per_direction.mean(0), nominal, critical_fraction)
            arrays[f"perturbation_{kind}_returns"] = block
        scalars[kind] = entry
    if returns is not None:
        arrays["perturbation_nominal_returns"] = returns[0]
    return scalars, arrays


def worst_case(
    policy: FunctionalPolicy,
    task: TaskSpec | None,
    loss_fn: LossFn,
    params: Params,
    obs: Tensor,
    *,
    rho: float = 0.05,
    adaptive_rho: float = 0.5,
    steps: int = 10,
    eta: float = 0.01,
    episodes: int = 5,
    eval_seed: int = 0,
    nominal_return: float | None = None,
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Worst-case sharpness in the raw ball (radius ``rho``) and the adaptive ASAM ball (``adaptive_rho``, ``eta``),
    each by one SAM step and by ``steps`` of projected ascent; plus KL, action change and return at each maximiser
    (the four perturbed sets evaluated in one stacked call, beside theta0 unless ``nominal_return`` is given)."""
    with torch.no_grad():
        base_actions = policy.mode(params, obs)
    found: dict[str, dict[str, WorstCase]] = {
        "raw": {
            "one_step": sam_sharpness(loss_fn, params, rho),
            "multi_step": pgd_sharpness(loss_fn, params, rho, steps=steps),
        },
        "adaptive": {
            "one_step": sam_sharpness(loss_fn, params, adaptive_rho, adaptive=True, eta=eta),
            "multi_step": pgd_sharpness(loss_fn, params, adaptive_rho, steps=steps, adaptive=True, eta=eta),
        },
    }
    points = [add_scaled(params, r.perturbation, 1.0) for ball in found.values() for r in ball.values()]
    returns = None
    if task is not None:
        sets = points if nominal_return is not None else [dict(params), *points]
        returns = perturbed_returns(policy, task, sets, episodes, seed=eval_seed)
        if nominal_return is None:
            nominal_return, returns = float(returns[0].mean()), returns[1:]
    scalars: dict[str, Any] = {}
    i = 0
    for ball, results in found.items():
        entry: dict[str, Any] = {"rho": results["one_step"].rho}
        if ball == "adaptive":
            entry["eta"] = eta
        for name, r in results.items():
            point = points[i]
            with torch.no_grad():
                kl = float(mean_kl(policy, obs, params, point))
            entry[name] = {
                "sharpness": r.sharpness,
                "perturbed_loss": r.perturbed_loss,
                "eps_norm": r.eps_norm,
                "grad_evals": r.grad_evals,
                "kl": kl,
                "action_change": action_change(policy, obs, base_actions, point),
                "return": None if returns is None else float(returns[i].mean()),
                "return_drop": None
                if returns is None or nominal_return is None
                else float(nominal_return - returns[i].mean()),
            }
            i += 1
        scalars[ball] = entry
    arrays = {} if returns is None else {"worst_case_returns": returns}
    return scalars, arrays
