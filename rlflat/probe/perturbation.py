"""Random-perturbation sharpness: how loss, actions and return change when the parameters are perturbed.

Average case: the expected loss increase E_d[L(theta + sigma d)] - L(theta) over K random directions (with the mean
KL and the action change of the perturbed policies on the probe batch), filter-normalised as Li et al. (2018, Sec.
4: per output row, biases zeroed) so sigma is relative to each neuron's weight norm, or raw (isotropic Gaussian
scaled to the norm of all probed parameters, so sigma is relative to ||theta||). This is an *average* over random
directions, not Keskar et al.'s (2017) epsilon-sharpness (a maximum over a box, in
:mod:`rlflat.probe.literature`) nor Jiang et al.'s (2020) sigma' (also there). Worst case:
the max of L in the ball ||eps|| <= rho (SAM, Foret et al., 2021) by one ascent step and by projected multi-step
ascent, and the adaptive ball of ASAM (Kwon et al., 2021), which Andriushchenko et al. (2023) found the more
meaningful for generalisation. Returns under perturbed parameters always come from the evaluator's batched
:func:`rlflat.evaluate.rollout_returns` (all perturbed sets stacked, one call), never from a loop here.

The return of a good CartPole policy saturates (exactly 500 under filter-normalised noise up to sigma ~ 1), so
measures that keep moving are reported beside it: the return-halving sigma (the first sigma of the grid, log-
interpolated, where the expected return falls below half of nominal, normalised from the task's floor as the
evaluator does; None when it never does on the grid), the action disagreement and mean KL of perturbed vs original
policy on the probe batch, and the loss increase. The expected normalised return drop at fixed sigmas, with a CI,
is :mod:`rlflat.probe.return_sharpness`.
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
from rlflat.probe.options import ProbeOptions  # the defaults below are the CLI's: the same measure either way
from rlflat.probe.seeding import subseed
from rlflat.probe.worst_case import Direction, WorstCase, pgd_sharpness, sam_sharpness
from rlflat.tasks import TaskSpec

__all__ = [
    "action_change",
    "average_case",
    "draw_directions",
    "perturbed_returns",
    "return_halving_sigma",
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


def return_halving_sigma(
    sigmas: np.ndarray | Sequence[float],
    mean_returns: np.ndarray | Sequence[float],
    nominal: float,
    *,
    floor: float | None = 0.0,
    fraction: float = 0.5,
) -> float | None:
    """First sigma where the normalised expected return falls below ``fraction`` (a half by default: the
    return-halving point of a sigma grid), or None if never on the grid.

    Returns are normalised as the evaluator does (:func:`rlflat.evaluate.metrics.normalize`):
    (R - floor) / (R_nominal - floor), with ``floor`` the task's worst return
    (:func:`rlflat.evaluate.metrics.return_floor`; 0 suits positive returns), so "half of nominal" is halfway
    from the floor to nominal also for negative returns (Pendulum), where R / R_nominal = 0.5 would be a better
    return than nominal. Between grid points the crossing is interpolated linearly in log sigma (linearly in sigma
    on a segment that starts at sigma = 0); the first grid sigma is returned if already below there. None too when
    the returns cannot be normalised (no floor, or nominal on the floor).
    """
    from rlflat.evaluate.metrics import normalize

    sig = np.asarray(sigmas, dtype=np.float64)
    level = normalize(np.asarray(mean_returns, dtype=np.float64), nominal, floor)
    if sig.shape != level.shape or np.any(sig < 0) or np.any(np.diff(sig) <= 0):
        raise RlflatError(f"sigmas must be ascending, >= 0 and match the returns, got {sig.tolist()}")
    if np.isnan(level).all():
        return None
    below = np.flatnonzero(level < fraction)
    if below.size == 0:
        return None
    i = int(below[0])
    if i == 0:
        return float(sig[0])
    y0, y1 = float(level[i - 1]), float(level[i])
    t = (y0 - fraction) / (y0 - y1)
    lo, hi = float(sig[i - 1]), float(sig[i])
    if lo == 0.0:
        return lo + t * (hi - lo)
    return float(math.exp(math.log(lo) + t * (math.log(hi) - math.log(lo))))


def _mean_se(x: np.ndarray, axis: int = 0) -> tuple[np.ndarray, np.ndarray]:
    n = x.shape[axis]
    se = x.std(axis=axis, ddof=1) / math.sqrt(n) if n > 1 else np.full(np.delete(x.shape, axis), np.nan)
    return x.mean(axis=axis), se


def _batch_measures(
    policy: FunctionalPolicy,
    loss_fn: LossFn,
    params: Params,
    obs: Tensor,
    directions: Sequence[Params],
    sigmas: np.ndarray,
    base: tuple[float, Tensor],
) -> tuple[dict[str, np.ndarray], list[Params]]:
    """Loss increase, mean KL and action change (K, S) on the probe batch, and the K x S perturbed points."""
    base_loss, base_actions = base
    curves = {name: np.zeros((len(directions), sigmas.size)) for name in ("loss_increase", "kl", "action_change")}
    points: list[Params] = []
    for k, d in enumerate(directions):
        for j, s in enumerate(sigmas):
            point = add_scaled(params, d, float(s))
            with torch.no_grad():
                curves["loss_increase"][k, j] = float(loss_fn(point)) - base_loss
                curves["kl"][k, j] = float(mean_kl(policy, obs, params, point))
            curves["action_change"][k, j] = action_change(policy, obs, base_actions, point)
            points.append(point)
    return curves, points


def _summarise(curves: Mapping[str, np.ndarray]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, values in curves.items():
        mean, se = _mean_se(values)
        out[name] = {"mean": mean.tolist(), "stderr": se.tolist()}
    return out


def _check_sigmas(sigmas: Sequence[float], what: str) -> np.ndarray:
    sig = np.asarray(sigmas, dtype=np.float64)
    if sig.ndim != 1 or np.any(sig < 0) or not np.all(np.isfinite(sig)):
        raise RlflatError(f"{what} must be a list of finite values >= 0, got {list(sigmas)}")
    return sig


def average_case(
    policy: FunctionalPolicy,
    task: TaskSpec | None,
    loss_fn: LossFn,
    params: Params,
    obs: Tensor,
    sigmas: Sequence[float],
    *,
    kinds: Sequence[str] = ("filter", "raw"),
    n_directions: int = ProbeOptions.n_directions,
    episodes: int = ProbeOptions.episodes,
    seed: int = 0,
    eval_seed: int = 0,
    ignore_1d: bool | None = None,
    reference_sigmas: Sequence[float] = (),
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Average-case sharpness curves over ``sigmas`` for each direction kind: (scalars for probe.json, arrays).

    The same K directions serve every sigma (a curve per direction), so curves are smooth in sigma; each kind
    draws them from its own stream ``subseed(seed, kind)``. Returns for theta0 and all K x S perturbed sets of all
    kinds come from one stacked evaluator call (skipped when ``task`` is None). Standard errors are over the K
    directions. ``reference_sigmas`` (on or off the grid) add, per kind, ``at_reference_sigmas``: the batch
    measures (loss increase, mean KL, action change; no returns) at those fixed sigmas along the same directions,
    single numbers that compare across probes whatever their grids.
    """
    sig = _check_sigmas(sigmas, "sigmas")
    ref = _check_sigmas(reference_sigmas, "reference_sigmas")
    if sig.size == 0:
        raise RlflatError("sigmas must not be empty")
    with torch.no_grad():
        base = (float(loss_fn(params)), policy.mode(params, obs))
    points: list[Params] = [dict(params)]
    scalars: dict[str, Any] = {"sigmas": sig.tolist(), "base_loss": base[0]}
    arrays: dict[str, np.ndarray] = {"perturbation_sigmas": sig}
    for kind in kinds:
        dirs = draw_directions(params, kind, n_directions, seed=subseed(seed, kind), ignore_1d=ignore_1d)
        curves, kind_points = _batch_measures(policy, loss_fn, params, obs, dirs, sig, base)
        points += kind_points
        scalars[kind] = _summarise(curves)
        arrays.update({f"perturbation_{kind}_{name}": values for name, values in curves.items()})
        if ref.size:
            at_ref, _ = _batch_measures(policy, loss_fn, params, obs, dirs, ref, base)
            scalars[kind]["at_reference_sigmas"] = {"sigmas": ref.tolist(), **_summarise(at_ref)}
    if task is None:
        scalars["nominal_return"] = None
        return scalars, arrays
    returns = perturbed_returns(policy, task, points, episodes, seed=eval_seed)
    _add_returns(scalars, arrays, returns, task, kinds, (n_directions, sig.size, episodes))
    return scalars, arrays


def _add_returns(
    scalars: dict[str, Any],
    arrays: dict[str, np.ndarray],
    returns: np.ndarray,
    task: TaskSpec,
    kinds: Sequence[str],
    shape: tuple[int, int, int],
) -> None:
    """Return drops and return-halving sigma per kind from the stacked returns (theta0 first, then kind by kind)."""
    from rlflat.evaluate.metrics import return_floor

    nominal = float(returns[0].mean())
    floor = return_floor(task, nominal)
    scalars["nominal_return"], scalars["return_floor"] = nominal, floor
    arrays["perturbation_nominal_returns"] = returns[0]
    size = shape[0] * shape[1]
    sig = np.asarray(scalars["sigmas"])
    for i, kind in enumerate(kinds):
        block = returns[1 + i * size : 1 + (i + 1) * size].reshape(shape)
        per_direction = block.mean(-1)  # (K, S)
        mean, se = _mean_se(nominal - per_direction)
        entry = scalars[kind]
        entry["return"] = per_direction.mean(0).tolist()
        entry["return_drop"] = {"mean": mean.tolist(), "stderr": se.tolist()}
        entry["return_halving_sigma"] = return_halving_sigma(sig, per_direction.mean(0), nominal, floor=floor)
        arrays[f"perturbation_{kind}_returns"] = block


def worst_case(
    policy: FunctionalPolicy,
    task: TaskSpec | None,
    loss_fn: LossFn,
    params: Params,
    obs: Tensor,
    *,
    rho: float = ProbeOptions.rho,
    adaptive_rho: float = ProbeOptions.adaptive_rho,
    steps: int = ProbeOptions.ascent_steps,
    eta: float = ProbeOptions.eta,
    episodes: int = ProbeOptions.episodes,
    eval_seed: int = 0,
    nominal_return: float | None = None,
    direction: Direction = None,
    seed: int = 0,
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Worst-case sharpness in the raw ball (radius ``rho``) and the adaptive ASAM ball (``adaptive_rho``, ``eta``),
    each by one SAM step and by ``steps`` of projected ascent; plus KL, action change and return at each maximiser
    (the four perturbed sets evaluated in one stacked call, beside theta0 unless ``nominal_return`` is given).

    ``direction`` (the top Hessian eigenvector as a parameter dict, or a function giving it) and ``seed`` are the
    fallback of the one-step search after a vanishing gradient (e.g. the ``kl`` loss at theta0): see
    :mod:`rlflat.probe.worst_case`.
    """
    fallback: dict[str, Any] = {"direction": direction, "seed": subseed(seed, "worst-case")}
    found: dict[str, dict[str, WorstCase]] = {
        "raw": {
            "one_step": sam_sharpness(loss_fn, params, rho, **fallback),
            "multi_step": pgd_sharpness(loss_fn, params, rho, steps=steps, **fallback),
        },
        "adaptive": {
            "one_step": sam_sharpness(loss_fn, params, adaptive_rho, adaptive=True, eta=eta, **fallback),
            "multi_step": pgd_sharpness(loss_fn, params, adaptive_rho, steps=steps, adaptive=True, eta=eta, **fallback),
        },
    }
    points = [add_scaled(params, r.perturbation, 1.0) for ball in found.values() for r in ball.values()]
    returns = None
    if task is not None:
        sets = points if nominal_return is not None else [dict(params), *points]
        returns = perturbed_returns(policy, task, sets, episodes, seed=eval_seed)
        if nominal_return is None:
            nominal_return, returns = float(returns[0].mean()), returns[1:]
    with torch.no_grad():
        base_actions = policy.mode(params, obs)
    scalars: dict[str, Any] = {}
    for b, (ball, results) in enumerate(found.items()):
        entry: dict[str, Any] = {"rho": results["one_step"].rho, **({"eta": eta} if ball == "adaptive" else {})}
        for m, (name, r) in enumerate(results.items()):
            i = 2 * b + m
            entry[name] = _describe(r, policy, obs, params, base_actions, points[i])
            entry[name]["return"] = None if returns is None else float(returns[i].mean())
            entry[name]["return_drop"] = (
                None if returns is None or nominal_return is None else float(nominal_return - returns[i].mean())
            )
        scalars[ball] = entry
    return scalars, ({} if returns is None else {"worst_case_returns": returns})


def _describe(
    r: WorstCase, policy: FunctionalPolicy, obs: Tensor, params: Params, base_actions: Tensor, point: Params
) -> dict[str, Any]:
    """A maximiser's sharpness and search record, and how far its policy moved on the probe batch."""
    with torch.no_grad():
        kl = float(mean_kl(policy, obs, params, point))
    return {
        "sharpness": r.sharpness,
        "perturbed_loss": r.perturbed_loss,
        "eps_norm": r.eps_norm,
        "grad_evals": r.grad_evals,
        "start": r.start,
        "kl": kl,
        "action_change": action_change(policy, obs, base_actions, point),
    }
