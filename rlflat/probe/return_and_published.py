"""Probe stages of the return-based measures and of the measures that carry a published name.

Same contract as :mod:`rlflat.probe.measures`: each stage returns ``(scalars, arrays)`` for ``probe.json`` and
``probe.npz``. The numerics live in :mod:`rlflat.probe.return_sharpness` (expected normalised return drop),
:mod:`rlflat.probe.cliff` (Sullivan et al., 2022) and :mod:`rlflat.probe.literature` (Keskar et al., 2017;
Jiang et al., 2020).
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import numpy as np
from torch import Tensor

from rlflat.policy import FunctionalPolicy, Params
from rlflat.probe.batch import ProbeBatch
from rlflat.probe.cliff import gradient_cliff
from rlflat.probe.literature import deviation_fn, keskar_sharpness, magnitude_aware_sigma
from rlflat.probe.losses import LossFn, make_loss
from rlflat.probe.options import ProbeOptions
from rlflat.probe.return_sharpness import return_sharpness
from rlflat.probe.seeding import subseed
from rlflat.tasks import TaskSpec

__all__ = [
    "RETURN_AND_PUBLISHED",
    "cliff_measures",
    "keskar_measures",
    "magnitude_aware_measures",
    "return_sharpness_measures",
]

RETURN_AND_PUBLISHED: tuple[str, ...] = ("return_sharpness", "cliff", "keskar", "magnitude_aware")
"""The stages of this module, in the order the probe runs them."""

Scalars = dict[str, Any]
Arrays = dict[str, np.ndarray]


def return_sharpness_measures(
    policy: FunctionalPolicy, spec: TaskSpec, params: Params, opts: ProbeOptions, eval_seed: int
) -> tuple[Scalars, Arrays]:
    """Expected normalised return drop at ``opts.return_sigmas`` along filter and adaptive directions; episode e
    starts from ``eval_seed + e`` (each replicate its own episodes)."""
    return return_sharpness(
        policy,
        spec,
        params,
        sigmas=opts.return_sigmas,
        n_directions=opts.return_directions,
        episodes=opts.return_episodes,
        seed=subseed(opts.seed, "return-sharpness"),
        eval_seed=eval_seed,
        scale=opts.return_scale,
    )


def cliff_measures(
    policy: FunctionalPolicy,
    spec: TaskSpec,
    batch: ProbeBatch,
    loss_fn: LossFn,
    params: Params,
    opts: ProbeOptions,
    eval_seed: int,
) -> tuple[Scalars, Arrays]:
    """Sullivan et al.'s cliff test along the policy gradient of the probe batch (the surrogate's, whatever
    ``opts.loss`` is)."""
    surrogate = loss_fn if opts.loss == "surrogate" else make_loss(policy, batch, "surrogate")
    return gradient_cliff(
        policy,
        spec,
        surrogate,
        params,
        points=opts.cliff_points,
        span=opts.cliff_span,
        episodes=opts.return_episodes,
        eval_seed=eval_seed,
    )


def keskar_measures(loss_fn: LossFn, params: Params, opts: ProbeOptions) -> tuple[Scalars, Arrays]:
    """Keskar et al.'s epsilon-sharpness of the probe loss."""
    result = keskar_sharpness(
        loss_fn, params, opts.keskar_eps, max_iter=opts.keskar_iterations, seed=subseed(opts.seed, "keskar")
    )
    return {**asdict(result), "loss_name": opts.loss}, {}


def magnitude_aware_measures(
    policy: FunctionalPolicy, params: Params, obs: Tensor, opts: ProbeOptions
) -> tuple[Scalars, Arrays]:
    """Jiang et al.'s magnitude-aware sigma' and 1 / sigma'^2 on the probe states."""
    result = magnitude_aware_sigma(
        deviation_fn(policy, obs, params, opts.magnitude_aware_deviation),
        params,
        target=opts.magnitude_aware_target,
        eps=opts.magnitude_aware_eps,
        samples=opts.magnitude_aware_samples,
        depth=opts.magnitude_aware_depth,
        upper=opts.magnitude_aware_upper,
        seed=subseed(opts.seed, "magnitude-aware"),
    )
    return {**asdict(result), "deviation_name": opts.magnitude_aware_deviation}, {}
