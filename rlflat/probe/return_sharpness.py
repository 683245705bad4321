"""Return-based sharpness: the expected normalised drop of the episode return under random parameter noise.

This is the quantity the project's question is about (does a policy keep its return when its parameters move?),
measured directly rather than through a loss on a probe batch. At each fixed sigma (default 0.05, 0.1, 0.2) and
for each direction kind, K seeded random directions d_k give perturbed policies theta + sigma d_k, whose returns
on E common episodes (episode e seeded with ``eval_seed + e`` for every policy, deterministic actions) come from
one stacked :func:`rlflat.evaluate.rollout_returns` call. The drop on episode e along direction k is
``(R_theta(e) - R_k(e)) / scale``: paired with theta's own return on the same episode, and divided by one
task-level scale, R_ref - R_low of the task spec (never by the run's own return, so drops compare across runs; a
drop of 1 is the whole way from the reference return to a random policy's).

Direction kinds (both give E ||sigma d||^2 = sigma^2 ||theta||^2 restricted to what they perturb):

* ``filter``: Li et al. (2018, Sec. 4) filter normalisation, each output row of every weight matrix rescaled to the
  norm of the same row of the weights, biases and other 1-D tensors zeroed (their default), see
  :func:`rlflat.probe.directions.filter_normalize`.
* ``adaptive``: per-weight, d_i = |theta_i| z_i with z ~ N(0, I), biases included: the random counterpart of ASAM's
  elementwise ball (Kwon et al., 2021) and of Jiang et al.'s (2020) magnitude-aware noise with eps = 0. It is
  invariant under per-neuron rescaling of a ReLU net (Dinh et al., 2017), filter normalisation is not
  (:data:`rlflat.probe.invariance.INVARIANCE`).

Uncertainty. Within one probe replicate, directions and episodes are crossed (every direction is run on the same E
episodes), so the standard error of the grand mean is that of a two-way random-effects design,
Var = s_d^2/K + s_e^2/E + s_r^2/(KE), estimated from the ANOVA mean squares as (MS_dir + MS_ep - MS_res) / (KE)
(floored at MS_res / (KE)): ``drop_stderr``. The probe repeats the stage on B replicates with their own directions
and episodes, and reports the mean over replicates with its SE (:mod:`rlflat.probe.pooling`), which contains both
sources; a 95% CI is drop +- 1.96 se.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from rlflat.errors import RlflatError, bad_choice
from rlflat.policy import FunctionalPolicy, Params
from rlflat.probe.directions import add_scaled, random_direction, raw_direction
from rlflat.probe.options import RETURN_SCALES
from rlflat.probe.perturbation import perturbed_returns
from rlflat.probe.seeding import Seed, subseed
from rlflat.tasks import TaskSpec

__all__ = [
    "RETURN_DIRECTION_KINDS",
    "RETURN_SCALES",
    "RETURN_SIGMAS",
    "ReturnScale",
    "adaptive_direction",
    "crossed_mean_se",
    "return_scale",
    "return_sharpness",
]

RETURN_SIGMAS: tuple[float, ...] = (0.05, 0.1, 0.2)
RETURN_DIRECTION_KINDS: tuple[str, ...] = ("filter", "adaptive")


def adaptive_direction(params: Mapping[str, torch.Tensor], seed: Seed) -> Params:
    """d_i = |theta_i| z_i, z ~ N(0, I) drawn as :func:`rlflat.probe.directions.raw_direction` (biases included)."""
    z = raw_direction(params, seed)
    return {k: p.detach().abs() * z[k] for k, p in params.items()}


def _direction(params: Params, kind: str, gen: torch.Generator) -> Params:
    if kind == "adaptive":
        return adaptive_direction(params, gen)
    return random_direction(params, "filter", seed=gen, ignore_1d=True)


@dataclass(frozen=True)
class ReturnScale:
    """The task-level divisor of return drops and where it comes from (recorded in probe.json)."""

    value: float
    source: str
    reference: float
    floor: float


def return_scale(task: TaskSpec, source: str = "task") -> ReturnScale:
    """The divisor of return drops for ``task``: R_ref - R_low of the spec (``task``, the evaluator's task-level
    normalisation, :func:`rlflat.evaluate.metrics.normalization`) or the solved threshold above the task's worst
    return (``solved_threshold``)."""
    from rlflat.evaluate.metrics import normalization, return_floor

    if source not in RETURN_SCALES:
        raise bad_choice("return scale", source, RETURN_SCALES)
    if source == "task":
        norm = normalization(task, math.nan, "task")
        assert norm.zero is not None and norm.one is not None
        if not norm.one - norm.zero > 0:
            raise RlflatError(f"{task.alias}: R_ref {norm.one} is not above R_low {norm.zero}")
        return ReturnScale(norm.one - norm.zero, f"task: {norm.source}", norm.one, norm.zero)
    reference = float(task.solved_threshold)
    floor = return_floor(task, reference)
    if floor is None or not reference - floor > 0:
        raise RlflatError(f"{task.alias}: cannot normalise returns (solved threshold {reference}, floor {floor})")
    return ReturnScale(reference - floor, source, reference, floor)


def crossed_mean_se(x: np.ndarray) -> tuple[float, float]:
    """Mean of a (K directions, E episodes) table and its standard error under the crossed random-effects design.

    NaN se when K or E is 1 (a crossed design needs both factors replicated)."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.size == 0:
        raise RlflatError(f"need a (directions, episodes) table, got shape {x.shape}")
    k, e = x.shape
    mean = float(x.mean())
    if k < 2 or e < 2:
        return mean, math.nan
    rows, cols = x.mean(1), x.mean(0)
    ms_dir = e * float(((rows - mean) ** 2).sum()) / (k - 1)
    ms_ep = k * float(((cols - mean) ** 2).sum()) / (e - 1)
    resid = x - rows[:, None] - cols[None, :] + mean
    ms_res = float((resid**2).sum()) / ((k - 1) * (e - 1))
    var = max(ms_dir + ms_ep - ms_res, ms_res) / (k * e)
    return mean, math.sqrt(max(var, 0.0))


def _check(sigmas: Sequence[float], kinds: Sequence[str], n_directions: int, episodes: int) -> np.ndarray:
    sig = np.asarray(sigmas, dtype=np.float64)
    if sig.ndim != 1 or sig.size == 0 or not np.all(np.isfinite(sig)) or np.any(sig <= 0):
        raise RlflatError(f"return sigmas must be positive finite numbers, got {list(sigmas)}")
    for kind in kinds:
        if kind not in RETURN_DIRECTION_KINDS:
            raise bad_choice("return-sharpness direction kind", kind, RETURN_DIRECTION_KINDS)
    if n_directions < 1 or episodes < 1:
        raise RlflatError(f"need >= 1 direction and episode, got {n_directions} and {episodes}")
    return sig


def return_sharpness(
    policy: FunctionalPolicy,
    task: TaskSpec,
    params: Params,
    *,
    sigmas: Sequence[float] = RETURN_SIGMAS,
    kinds: Sequence[str] = RETURN_DIRECTION_KINDS,
    n_directions: int = 8,
    episodes: int = 5,
    seed: int = 0,
    eval_seed: int = 0,
    scale: str = "task",
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Expected normalised return drop at each sigma and direction kind, with its crossed SE.

    Each kind draws K directions from its own stream ``subseed(seed, 'return-' + kind)``; the same directions
    serve every sigma. Returns ``(scalars, arrays)``: per kind ``drop`` and ``drop_stderr`` (lists over sigmas;
    ``drop_stderr`` is the crossed SE of this one set of directions and episodes, superseded in ``probe.json`` by
    the SE over the probe's replicates, each of which draws its own directions and episodes), the nominal return
    and the scale; arrays ``return_sharpness_<kind>_returns`` (K, S, E) and ``return_sharpness_nominal_returns``.
    """
    sig = _check(sigmas, kinds, n_directions, episodes)
    norm = return_scale(task, scale)
    points: list[Params] = [dict(params)]
    for kind in kinds:
        gen = torch.Generator().manual_seed(subseed(seed, f"return-{kind}"))
        directions = [_direction(params, kind, gen) for _ in range(n_directions)]
        points += [add_scaled(params, d, float(s)) for d in directions for s in sig]
    returns = perturbed_returns(policy, task, points, episodes, seed=eval_seed)
    nominal = returns[0]
    scalars: dict[str, Any] = {
        "sigmas": sig.tolist(),
        "n_directions": n_directions,
        "episodes": episodes,
        "nominal_return": float(nominal.mean()),
        "scale": {"value": norm.value, "source": norm.source, "reference": norm.reference, "floor": norm.floor},
        "se_method": "drop_stderr: crossed directions x episodes of one replicate (two-way random effects)",
    }
    arrays: dict[str, np.ndarray] = {"return_sharpness_nominal_returns": nominal}
    size = n_directions * sig.size
    for i, kind in enumerate(kinds):
        block = returns[1 + i * size : 1 + (i + 1) * size].reshape(n_directions, sig.size, episodes)
        arrays[f"return_sharpness_{kind}_returns"] = block
        estimates = [crossed_mean_se((nominal[None, :] - block[:, j, :]) / norm.value) for j in range(sig.size)]
        scalars[kind] = {"drop": [m for m, _ in estimates], "drop_stderr": [se for _, se in estimates]}
    return scalars, arrays
