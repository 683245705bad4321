"""Which parameters "the actor" is, and how the adaptive (ASAM) ball scales them: one definition for training
(SAM/ASAM in :mod:`rlflat.algos`) and the probe (:mod:`rlflat.probe`), so a flatness trained for is the flatness
measured.

* Actor scope: the policy network and the action head (SB3's ``mlp_extractor.policy_net.*`` and
  ``action_net.*``). ``log_std`` is left out: it is a state-independent exploration parameter that the
  deterministic policy the evaluator rolls out never reads, and its KL curvature is a constant (2 per action
  dimension), so it adds nothing about the function whose robustness is tested while it would dominate a
  Hessian's scale. The critic is left out as it does not enter the policy losses.
* Adaptive scale: ``T = |theta| + eta`` elementwise for *every* tensor, biases included, as ASAM's
  normalisation operator is defined (Kwon et al. 2021, Sec. 3). Kwon et al.'s reference code scales only
  tensors named ``weight``; scaling biases too is what makes the ball invariant to per-neuron rescaling, which
  scales a neuron's bias with its incoming weights.

This module has no dependencies, so both sides import it without an arrow between them.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

__all__ = ["ACTOR_PREFIXES", "actor_parameter_names", "adaptive_scale"]

ACTOR_PREFIXES: tuple[str, ...] = ("mlp_extractor.policy_net.", "action_net.")
"""Name prefixes (as in ``ActorCriticPolicy.named_parameters()``) of the actor's parameters."""


def actor_parameter_names(names: Iterable[str]) -> list[str]:
    """The actor's parameter names among ``names``, in their order (see the module docstring for why)."""
    return [name for name in names if name.startswith(ACTOR_PREFIXES)]


def adaptive_scale(theta: torch.Tensor, eta: float) -> torch.Tensor:
    """ASAM's elementwise normalisation ``|theta| + eta``, applied alike to weights and biases."""
    return theta.detach().abs() + eta
