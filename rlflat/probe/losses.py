"""Probe losses: pure functions of a parameter dict over a fixed probe batch.

The sharpness of "the RL objective" depends on which objective: the probe offers three, all evaluated through the
:class:`~rlflat.policy.FunctionalPolicy` (``torch.func.functional_call``), so they can be differentiated twice and
evaluated at perturbed parameters without touching a live module.

* ``surrogate``: -E[ratio * A], ratio = pi_theta(a|s) / pi_theta0(a|s) (the unclipped PPO/TRPO surrogate, Schulman
  et al., 2015). At theta0 its gradient is minus the policy gradient E[grad log pi * A]; PPO's clipped objective
  has the same value and gradient there.
* ``kl``: mean KL(pi_theta0(.|s) || pi_theta(.|s)) over the batch. Zero with zero gradient at theta0, and its Hessian
  there is the Fisher information matrix (Amari, 1998; Kakade, 2001): PSD, the natural-gradient metric.
* ``nll``: -E[log pi_theta(a|s)] of the batch's (sampled) actions.

Critic parameters do not enter any of them: with scope ``all`` their Hessian rows are exactly zero.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from rlflat.errors import RlflatError, bad_choice
from rlflat.policy import FunctionalPolicy, Params
from rlflat.probe.batch import ProbeBatch

__all__ = ["LOSSES", "SCOPES", "LossFn", "make_loss", "mean_kl", "scope_params"]

LOSSES: tuple[str, ...] = ("surrogate", "kl", "nll")
SCOPES: tuple[str, ...] = ("actor", "all")

LossFn = Callable[[Params], Tensor]


def scope_params(policy: FunctionalPolicy, scope: str) -> Params:
    """The probed parameters: the actor's (they shape the action distribution) or all, critic included."""
    if scope not in SCOPES:
        raise bad_choice("parameter scope", scope, SCOPES)
    names: Sequence[str] = policy.actor_names if scope == "actor" else list(policy.params)
    return {name: policy.params[name] for name in names}


def _kl(old: torch.distributions.Distribution, new: torch.distributions.Distribution, discrete: bool) -> Tensor:
    """Per-state KL(old || new), summed over independent action dimensions for Box spaces."""
    kl = torch.distributions.kl_divergence(old, new)
    return kl if discrete else kl.sum(-1)


def mean_kl(policy: FunctionalPolicy, obs: Tensor, reference: Params, params: Params) -> Tensor:
    """Mean KL(pi_reference || pi_params) over the preprocessed states ``obs``."""
    with torch.no_grad():
        old = policy.distribution(reference, obs)
    return _kl(old, policy.distribution(params, obs), policy.discrete).mean()


def make_loss(policy: FunctionalPolicy, batch: ProbeBatch, kind: str = "surrogate") -> LossFn:
    """The loss ``kind`` on ``batch`` as a pure function of a (partial) parameter dict.

    Keys missing from the dict fall back to the policy's trained values, so a dict of the actor's parameters alone
    is a complete argument. theta0 quantities (log-probs, distributions) are recomputed here on the whole batch, so
    the ratio is exactly 1 and the KL exactly 0 at theta0 (the stored ``old_log_probs`` equal them to rounding).
    """
    if kind not in LOSSES:
        raise bad_choice("loss", kind, LOSSES)
    if len(batch) < 1:
        raise RlflatError("the probe batch is empty")
    obs, actions, _, advantages = batch.tensors(policy)
    with torch.no_grad():
        old_dist = policy.distribution({}, obs)
        old_log_prob = policy.log_prob({}, obs, actions)

    if kind == "surrogate":

        def surrogate(params: Params) -> Tensor:
            ratio = torch.exp(policy.log_prob(params, obs, actions) - old_log_prob)
            return -(ratio * advantages).mean()

        return surrogate
    if kind == "kl":

        def kl(params: Params) -> Tensor:
            return _kl(old_dist, policy.distribution(params, obs), policy.discrete).mean()

        return kl

    def nll(params: Params) -> Tensor:
        return -policy.log_prob(params, obs, actions).mean()

    return nll
