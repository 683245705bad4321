"""Sharpness along training: is an on-policy learner at the edge of stability (Cohen et al. 2021, 2022)?

Every ``every`` updates (one update = one ``train()`` on a fresh rollout), at the end of the update, a
:class:`SharpnessTracker` measures on the whole current rollout buffer, at the current parameters, with the
schedules' current values:

* ``sharpness``: the top Hessian eigenvalue of the loss ``train()`` minimises (PPO: clipped surrogate + value +
  entropy terms; PG: REINFORCE with baseline), and ``preconditioned_sharpness``, the top eigenvalue of
  ``P^{-1} H`` with Adam's preconditioner ``P`` from the optimizer's own state (:mod:`rlflat.probe.preconditioned`);
* ``surrogate_sharpness`` / ``surrogate_preconditioned_sharpness``: the same for the policy surrogate alone;
* for SAM/ASAM runs, ``perturbed_sharpness`` / ``perturbed_preconditioned_sharpness``: the loss's at the point
  the rule takes its gradient, ``theta + e`` with ``e`` from the rule and the buffer's full gradient;
* ``actor_sharpness`` / ``critic_sharpness``: the loss's top eigenvalue over the actor's parameters alone
  (:func:`rlflat.scope.actor_parameter_names`) and over the critic's alone (its diagonal blocks), and
  ``critic_saturation``: the share of the critic's last hidden tanh units with |phi| > 0.99 on the buffer (NaN
  for other activations). PPO's loss carries ``vf_coef`` x the value error, so the whole loss's top eigenvalue can
  be the critic's: a saturated tanh value head puts it near 2 vf_coef (1 + ||phi||^2) (64.9 in the first edge
  study) whatever the policy does, and that is not the policy at an edge of stability;

with the current learning rate and the two thresholds ``gd_threshold = 2 / eta`` and ``adam_threshold =
2 (1 + b1) / ((1 - b1) eta)``. The Hessians are the probe's (:class:`rlflat.probe.hvp.HessianOperator`, on
private copies of the parameters); each eigenvalue is warm-started from the previous measurement's eigenvector
(:func:`rlflat.probe.preconditioned.top_eigenpair`), the first start drawn from the tracker's own generator.
Tracking reads the buffer without ``get()`` (which would shuffle with numpy's global RNG) and never writes the
parameters, gradients or optimizer, so a tracked run trains bit-identically to an untracked one.

With CartPole's PPO spec one minibatch is the whole buffer (256 = 8 envs x 32 steps), so the loss measured is
exactly the one each step minimises; where minibatches are smaller it is their full-buffer average (advantages
normalised over the buffer).
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from stable_baselines3.common.type_aliases import RolloutBufferSamples
from torch.func import functional_call

from rlflat.algos.base import FlatOnPolicyAlgorithm
from rlflat.algos.rules import SAM
from rlflat.errors import RlflatError
from rlflat.probe.hvp import HessianOperator
from rlflat.probe.preconditioned import (
    adam_beta1,
    adam_preconditioner,
    adam_threshold,
    gd_threshold,
    preconditioned,
    top_eigenpair,
)
from rlflat.probe.seeding import subseed
from rlflat.scope import actor_parameter_names

__all__ = ["COLUMNS", "DEFAULT_EVERY", "SharpnessTracker", "path_summary"]

DEFAULT_EVERY = 10
"""Updates between measurements for a bare ``--track-sharpness``: the smallest interval whose overhead stays within
1.2x wall time on CartPole's PPO spec (a measurement costs about two PPO updates; ``benchmarks/train_speed.py``)."""

COLUMNS = (
    "update",
    "learning_rate",
    "gd_threshold",
    "adam_threshold",
    "sharpness",
    "preconditioned_sharpness",
    "surrogate_sharpness",
    "surrogate_preconditioned_sharpness",
    "perturbed_sharpness",
    "perturbed_preconditioned_sharpness",
    "actor_sharpness",
    "critic_sharpness",
    "critic_saturation",
    "tracking_seconds",
)
"""Columns a tracker adds to ``train.csv`` (with ``timesteps``); a value not measured is empty (NaN)."""


class _Objective(torch.nn.Module):
    """One of an algorithm's objective terms as a module, so ``functional_call`` can swap the policy's parameters
    (the algorithm's own loss code runs unchanged, on the swapped-in tensors)."""

    def __init__(self, model: FlatOnPolicyAlgorithm, term: str) -> None:
        super().__init__()
        self.policy = model.policy
        self._model = [model]  # a list: an nn.Module attribute would register the algorithm's modules twice
        self.term = term

    def forward(self, batch: RolloutBufferSamples) -> torch.Tensor:
        return self._model[0].objective_terms(batch)[self.term]


def full_buffer(model: FlatOnPolicyAlgorithm) -> RolloutBufferSamples:
    """The whole rollout buffer as one batch, in stored order (no shuffling, so no RNG is drawn)."""
    buffer = model.rollout_buffer
    if not buffer.generator_ready:
        raise RlflatError("the rollout buffer has not been used by train() yet; track after an update")
    return buffer._get_samples(np.arange(buffer.buffer_size * buffer.n_envs))


class SharpnessTracker:
    """Measures sharpness every ``every`` updates; rows accumulate in :attr:`rows` (dicts keyed by ``COLUMNS``
    and ``timesteps``). ``steps``/``tol``/``max_restarts`` configure each warm-started Lanczos solve."""

    def __init__(
        self, every: int, seed: int = 0, *, steps: int = 10, tol: float = 1e-2, max_restarts: int = 10
    ) -> None:
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise RlflatError(
                f"track_sharpness must be a positive integer (updates between measurements), got {every!r}"
            )
        self.every = every
        self.steps, self.tol, self.max_restarts = steps, tol, max_restarts
        self.rows: list[dict[str, float]] = []
        self._generator = torch.Generator().manual_seed(subseed(seed, "sharpness-tracking"))
        self._vectors: dict[str, torch.Tensor] = {}
        self._updates = 0
        self.unconverged = 0

    def __call__(self, model: FlatOnPolicyAlgorithm) -> None:
        self._updates += 1
        if (self._updates - 1) % self.every:
            return
        start = time.perf_counter()
        row = self.measure(model)
        row["tracking_seconds"] = time.perf_counter() - start
        self.rows.append(row)

    def _blocks(self, row: dict[str, float], model: FlatOnPolicyAlgorithm, named: dict[str, Any], batch: Any) -> None:
        """The loss's top eigenvalue on the actor's and on the critic's parameters apart, and the value head's
        tanh saturation."""
        actor = actor_parameter_names(named)
        critic = [k for k in named if k.startswith(CRITIC_PREFIXES)]
        for key, names in (("actor", actor), ("critic", critic)):
            if names:
                op = HessianOperator(self._loss_fn(model, "loss", batch), {k: named[k] for k in names})
                row[f"{key}_sharpness"] = self._top(f"{key}_plain", op.matvec, op.n)
        row["critic_saturation"] = critic_saturation(model, batch)

    def measure(self, model: FlatOnPolicyAlgorithm) -> dict[str, float]:
        """One row: sharpness values, learning rate and thresholds at the model's current state."""
        lr = float(model.policy.optimizer.param_groups[0]["lr"])
        beta1 = adam_beta1(model.policy.optimizer)
        row: dict[str, float] = dict.fromkeys(COLUMNS, math.nan)
        row.update(
            timesteps=float(model.num_timesteps),
            update=float(self._updates),
            learning_rate=lr,
            gd_threshold=gd_threshold(lr),
            adam_threshold=adam_threshold(lr, beta1) if beta1 is not None else math.nan,
        )
        named = dict(model.policy.named_parameters())
        p = adam_preconditioner(model.policy.optimizer, list(named.values()))
        batch = full_buffer(model)
        for term, prefix in (("loss", ""), ("surrogate", "surrogate_")):
            op = HessianOperator(self._loss_fn(model, term, batch), named)
            self._record(row, prefix, op, p)
            if term == "loss" and isinstance(model._rule, SAM):
                moved = self._perturbed_point(model, named, op.unflatten(op.gradient()))
                self._record(row, "perturbed_", HessianOperator(self._loss_fn(model, term, batch), moved), p)
        self._blocks(row, model, named, batch)
        return row

    @staticmethod
    def _loss_fn(model: FlatOnPolicyAlgorithm, term: str, batch: RolloutBufferSamples) -> Any:
        objective = _Objective(model, term)
        return lambda params: functional_call(objective, {f"policy.{k}": v for k, v in params.items()}, (batch,))

    @staticmethod
    def _perturbed_point(
        model: FlatOnPolicyAlgorithm, named: Mapping[str, torch.Tensor], grads: Mapping[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """``theta + e``: the rule's ascent step from the full-buffer gradient, on the parameters it perturbs."""
        perturbed = {id(p) for p in model._perturbed}
        names = [k for k, v in named.items() if id(v) in perturbed]
        steps = model._rule.perturbation([named[k].detach() for k in names], [grads[k] for k in names])  # type: ignore[attr-defined]
        moved = {k: v.detach().clone() for k, v in named.items()}
        for k, e in zip(names, steps, strict=True):
            moved[k] = moved[k] + e
        return moved

    def _record(self, row: dict[str, float], prefix: str, op: HessianOperator, p: torch.Tensor | None) -> None:
        row[f"{prefix}sharpness"] = self._top(f"{prefix}plain", op.matvec, op.n)
        if p is not None:
            row[f"{prefix}preconditioned_sharpness"] = self._top(f"{prefix}adam", preconditioned(op.matvec, p), op.n)

    def _top(self, key: str, matvec: Any, n: int) -> float:
        v0 = self._vectors.get(key)
        if v0 is None:
            v0 = torch.randn(n, generator=self._generator, dtype=torch.float64)
        pair = top_eigenpair(matvec, v0, steps=self.steps, tol=self.tol, max_restarts=self.max_restarts)
        self._vectors[key] = pair.vector
        self.unconverged += not pair.converged
        return pair.value


CRITIC_PREFIXES: tuple[str, ...] = ("mlp_extractor.value_net.", "value_net.")
"""Name prefixes of the critic's parameters (its hidden layers and its value head)."""
SATURATED = 0.99
"""|tanh| above which a unit counts as saturated (its derivative 1 - phi^2 is below 0.02)."""


def critic_saturation(model: FlatOnPolicyAlgorithm, batch: RolloutBufferSamples) -> float:
    """Share of the critic's last hidden units with |phi| > SATURATED over the buffer's states (tanh critics; NaN
    for any other activation, whose values are not bounded by 1)."""
    policy = model.policy
    if not isinstance(policy.activation_fn(), torch.nn.Tanh):
        return math.nan
    with torch.no_grad():
        features = policy.extract_features(batch.observations)
        vf_features = features[1] if isinstance(features, tuple) else features
        latent = policy.mlp_extractor.forward_critic(vf_features)
    return float((latent.abs() > SATURATED).double().mean())


def _late(values: np.ndarray) -> float:
    return float(np.nanmedian(values[len(values) // 2 :])) if np.isfinite(values).any() else math.nan


def path_summary(rows: Sequence[Mapping[str, float]]) -> dict[str, Any]:
    """Per-run scalars of the sharpness path, for ``metrics.json`` (and so ``runs.parquet``).

    Ratios divide each measurement by its threshold at that update (the learning rate may follow a schedule):
    ``*_ratio_*`` >= 1 means at or above the edge. ``late_*`` is the median over the second half of the tracked
    updates, where Cohen et al. see the equilibrium; ``frac_*_at_edge`` counts updates at or above threshold.
    ``*_surrogate_gd_ratio`` / ``*_surrogate_adam_ratio``: the policy surrogate's own sharpness (plain, Adam-
    preconditioned) over its threshold (actor parameters only enter it), and
    ``value_dominated``: the whole loss's late sharpness is more than twice the surrogate's, so its top curvature is
    the value/entropy terms' (a saturated value head), not the policy's. Where the tracker measured them, also
    ``*_actor_gd_ratio``, ``*_critic_gd_ratio`` and ``late_critic_saturation``.
    """
    if not rows:
        return {"n_tracked": 0}
    gd = np.array([r["sharpness"] / r["gd_threshold"] for r in rows], dtype=np.float64)
    pre = np.array([r["preconditioned_sharpness"] for r in rows], dtype=np.float64)
    pre_ratio = pre / np.array([r["adam_threshold"] for r in rows], dtype=np.float64)
    late = slice(len(rows) // 2, None)
    summary: dict[str, Any] = {
        "n_tracked": len(rows),
        "max_sharpness": float(np.nanmax([r["sharpness"] for r in rows])),
        "final_sharpness": float(rows[-1]["sharpness"]),
        "frac_gd_at_edge": float(np.mean(gd >= 1.0)),
        "max_gd_ratio": float(np.nanmax(gd)),
        "late_gd_ratio": float(np.nanmedian(gd[late])),
    }
    surrogate = np.array([r.get("surrogate_sharpness", math.nan) for r in rows], dtype=np.float64)
    thresholds = np.array([r["gd_threshold"] for r in rows], dtype=np.float64)
    if np.isfinite(surrogate).any():
        late_full = _late(np.array([r["sharpness"] for r in rows], dtype=np.float64))
        summary.update(
            max_surrogate_gd_ratio=float(np.nanmax(surrogate / thresholds)),
            late_surrogate_gd_ratio=_late(surrogate / thresholds),
            value_dominated=bool(late_full > 2.0 * _late(surrogate)),
        )
    for key in ("actor", "critic"):
        values = np.array([r.get(f"{key}_sharpness", math.nan) for r in rows], dtype=np.float64)
        if np.isfinite(values).any():
            summary[f"max_{key}_gd_ratio"] = float(np.nanmax(values / thresholds))
            summary[f"late_{key}_gd_ratio"] = _late(values / thresholds)
    surrogate_pre = np.array([r.get("surrogate_preconditioned_sharpness", math.nan) for r in rows], dtype=np.float64)
    if np.isfinite(surrogate_pre).any():
        adam = np.array([r["adam_threshold"] for r in rows], dtype=np.float64)
        summary["max_surrogate_adam_ratio"] = float(np.nanmax(surrogate_pre / adam))
        summary["late_surrogate_adam_ratio"] = _late(surrogate_pre / adam)
    saturation = np.array([r.get("critic_saturation", math.nan) for r in rows], dtype=np.float64)
    if np.isfinite(saturation).any():
        summary["late_critic_saturation"] = _late(saturation)
    if np.isfinite(pre).any():
        summary.update(
            max_preconditioned_sharpness=float(np.nanmax(pre)),
            final_preconditioned_sharpness=float(pre[-1]),
            frac_adam_at_edge=float(np.mean(pre_ratio >= 1.0)),
            max_adam_ratio=float(np.nanmax(pre_ratio)),
            final_adam_ratio=float(pre_ratio[-1]),
            late_adam_ratio=float(np.nanmedian(pre_ratio[late])),
        )
    return summary
