"""Fisher (KL) curvature of the policy and the batch confounds that any curvature measure should be read beside.

The Hessian of the mean KL(pi_theta0 || pi_theta) at theta0 is the policy's Fisher information matrix F
(Amari, 1998; Kakade, 2001): PSD, the metric of PPO's / TRPO's trust region, and the same matrix as the
Gauss-Newton of the action distribution. At theta0 the KL's gradient with respect to the distribution's
parameters (logits, or mean and log-std) is zero, so the second term of the chain rule vanishes and
F = E_s[J^T F_out J], J the Jacobian of the distribution parameters: the generalised Gauss-Newton (Schraudolph,
2002; Martens, 2020) of the log-likelihood, exactly (tested against an independent J^T F_out J). Unlike the
surrogate's Hessian it does not hinge on the sampled actions or the advantages, only on the states, so one rare
action with a large advantage cannot carry it.

Measures (every one a mean over the probe's replicate batches with its standard error, see
:mod:`rlflat.probe.pooling`):

* ``lambda_max``, ``trace``: top eigenvalue (ARPACK) and the *exact* trace of F on the batch (not reparametrisation-
  invariant; Dinh et al., 2017). The trace is summed from per-sample Jacobians of the distribution parameters
  (``vmap`` of ``jacrev``): tr(F) = E_s tr(J_s^T F_out J_s), for logits z with p = softmax(z)
  E_s[sum_a p_a ||dz_a||^2 - ||sum_a p_a dz_a||^2] (the gradients' variance under p; with z = log p the second
  term is zero), for a diagonal Gaussian
  E_s sum_d [||dmu_d||^2 / sigma_d^2 + 2 ||dlog sigma_d||^2] (log_std enters through sigma when it is among the
  probed parameters). A Hutchinson estimate was used before: this Fisher is nearly rank one, so 30 Rademacher
  probes gave an SE of ~25% of the trace and traces below lambda_max; ``trace_method`` says which route a
  result used (``exact``; older probe files have no such key and hold Hutchinson estimates).
* ``rao_norm``: the Fisher-Rao norm theta^T F theta (Liang et al., 2019). Invariant to any *linear*
  reparametrisation theta -> T theta that leaves the policy unchanged for every theta, such as per-neuron rescaling
  of a ReLU layer (incoming weights and bias by c, outgoing by 1/c) and hidden-unit sign flips of a tanh layer.
* ``adaptive_lambda_max``, ``adaptive_trace``: top eigenvalue and (exact, as above) trace of D F D with D = diag(|theta|), the Fisher
  in ASAM's scale-normalised coordinates (Kwon et al., 2021; tr(D F D) = sum_i theta_i^2 F_ii). Invariant to any
  diagonal reparametrisation that leaves the policy unchanged (per-neuron rescaling, sign flips), as D F D maps
  to itself under it; eta = 0 here so the invariance is exact.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from scipy.sparse.linalg import ArpackNoConvergence, LinearOperator, eigsh
from torch import Tensor
from torch.func import jacrev, vmap

from rlflat.policy import FunctionalPolicy, Params
from rlflat.probe.batch import ProbeBatch
from rlflat.probe.hvp import HessianOperator
from rlflat.probe.losses import make_loss
from rlflat.probe.seeding import as_generator, subseed

__all__ = [
    "ScaledOperator",
    "confounds",
    "exact_fisher_traces",
    "fisher_measures",
    "parameter_norms",
    "top_eigenvalue",
]


class ScaledOperator:
    """D H D for a diagonal D (a flat vector) and an operator H: the Hessian in coordinates theta = D u."""

    def __init__(self, op: HessianOperator, diagonal: torch.Tensor):
        self.op, self.d = op, diagonal.to(dtype=op.dtype, device=op.device)
        self.n, self.dtype = op.n, op.dtype

    @property
    def hvp_count(self) -> int:
        return self.op.hvp_count

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        return self.d * self.op.matvec(self.d * v.to(dtype=self.dtype, device=self.d.device))

    def as_linear_operator(self) -> LinearOperator:
        def mv(x: np.ndarray) -> np.ndarray:
            v = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float64).reshape(-1))
            return self.matvec(v).detach().to("cpu", torch.float64).numpy()

        return LinearOperator((self.n, self.n), matvec=mv, rmatvec=mv, dtype=np.float64)


def top_eigenvalue(op: HessianOperator | ScaledOperator, seed: int, tol: float = 1e-4) -> float:
    """The largest eigenvalue of a symmetric operator by ARPACK (relative residual ``tol``), seeded start."""
    v0 = torch.randint(0, 2, (op.n,), generator=as_generator(seed)).to(torch.float64).mul_(2).sub_(1)
    if op.n <= 2:  # ARPACK needs k < n - 1 for symmetric problems... and n > 2
        dense = torch.stack([op.matvec(e).to(torch.float64) for e in torch.eye(op.n, dtype=torch.float64)])
        return float(torch.linalg.eigvalsh(0.5 * (dense + dense.T))[-1])
    try:
        value = eigsh(
            op.as_linear_operator(),
            k=1,
            which="LA",
            tol=tol,
            v0=v0.numpy() / math.sqrt(op.n),
            return_eigenvectors=False,
        )
    except ArpackNoConvergence as exc:  # keep the best Ritz value rather than fail the probe
        return float(np.max(exc.eigenvalues)) if len(exc.eigenvalues) else math.nan
    return float(value[0])


_JACOBIAN_BYTES = 64 * 2**20
"""Memory for one chunk of per-sample Jacobians (states x distribution outputs x parameters, float32)."""


def _distribution_outputs(policy: FunctionalPolicy, params: Params, obs: Tensor) -> Tensor:
    """One state's distribution parameters: the log-probabilities (Discrete), or the means then the log-stds (Box)."""
    dist = policy.distribution(params, obs[None])
    if isinstance(dist, torch.distributions.Categorical):
        return dist.logits[0]
    assert isinstance(dist, torch.distributions.Normal)
    return torch.cat([dist.loc[0], dist.scale[0].log()])


def exact_fisher_traces(policy: FunctionalPolicy, obs: Tensor, params: Params) -> tuple[float, float]:
    """tr(F) and tr(D F D), D = diag(|theta|), of the mean-KL Fisher over the states ``obs``, exactly.

    Per-sample Jacobians J_s of the distribution parameters with respect to ``params`` (``vmap`` over states of
    ``jacrev``), contracted with the output Fisher: tr(J^T F_out J) = sum_ij F_out[i, j] <J_i, J_j>, where F_out
    is diag(p) - p p^T for logits (diag(p) for log-probabilities) and diag(1/sigma^2, 2) for (mean, log-std) per action dimension. Costs one
    backward pass per state and output, in chunks of bounded memory.
    """
    names = list(params)
    primal = {name: params[name].detach() for name in names}
    scale = torch.cat([primal[name].abs().reshape(-1) for name in names]).to(torch.float64)
    n_params = sum(v.numel() for v in primal.values())
    with torch.no_grad():
        outputs = _distribution_outputs(policy, primal, obs[0]).shape[-1]
    chunk = max(1, _JACOBIAN_BYTES // (4 * outputs * max(n_params, 1)))
    jac_fn = vmap(jacrev(lambda p, o: _distribution_outputs(policy, p, o)), in_dims=(None, 0))
    total, adaptive = 0.0, 0.0
    for start in range(0, obs.shape[0], chunk):
        part = obs[start : start + chunk]
        jac = jac_fn(primal, part)
        with torch.no_grad():
            flat = torch.cat([jac[name].reshape(len(part), outputs, -1).to(torch.float64) for name in names], -1)
            dist = policy.distribution(primal, part)
            total += float(_contract(dist, flat).sum())
            adaptive += float(_contract(dist, flat * scale).sum())
    return total / len(obs), adaptive / len(obs)


def _contract(dist: torch.distributions.Distribution, jac: Tensor) -> Tensor:
    """Per-state tr(J^T F_out J) for Jacobians ``jac`` (states, outputs, parameters) in float64."""
    sq = (jac**2).sum(-1)  # (states, outputs): ||J_i||^2
    if isinstance(dist, torch.distributions.Categorical):
        # outputs are log p_a (normalised logits): their gradients, the scores, have mean zero under p, so the
        # variance sum_a p_a ||dz_a||^2 - ||sum_a p_a dz_a||^2 is its first term
        return (dist.probs.to(torch.float64) * sq).sum(-1)
    assert isinstance(dist, torch.distributions.Normal)
    d = dist.loc.shape[-1]
    inv_var = dist.scale.to(torch.float64) ** -2
    return (inv_var * sq[:, :d]).sum(-1) + 2.0 * sq[:, d:].sum(-1)


def fisher_measures(policy: FunctionalPolicy, batch: ProbeBatch, params: Params, *, seed: int) -> dict[str, Any]:
    """Fisher (= KL Hessian = Gauss-Newton) curvature of ``params`` on ``batch``: see the module docstring."""
    op = HessianOperator(make_loss(policy, batch, "kl"), params)
    theta = op.flatten(params).detach()
    scaled = ScaledOperator(op, theta.abs())
    before = op.hvp_count
    trace, adaptive_trace = exact_fisher_traces(policy, policy.preprocess(batch.observations), params)
    out: dict[str, Any] = {
        "lambda_max": top_eigenvalue(op, subseed(seed, "fisher-top")),
        "trace": trace,
        "rao_norm": float(theta.to(torch.float64) @ op.matvec(theta).to(torch.float64)),
        "adaptive_lambda_max": top_eigenvalue(scaled, subseed(seed, "fisher-adaptive-top")),
        "adaptive_trace": adaptive_trace,
        "trace_method": "exact",
    }
    out["hvps"] = op.hvp_count - before
    return out


def confounds(policy: FunctionalPolicy, obs: torch.Tensor) -> dict[str, float]:
    """What a curvature measure may merely track: mean policy entropy on the batch states, and the mean
    probability of the most likely action (Discrete) or mean log-std (Box)."""
    with torch.no_grad():
        dist = policy.distribution({}, obs)
        entropy = dist.entropy()
        out = {"entropy": float((entropy if policy.discrete else entropy.sum(-1)).mean())}
        if isinstance(dist, torch.distributions.Categorical):
            out["max_action_prob"] = float(dist.probs.max(-1).values.mean())
        else:
            out["log_std"] = float(dist.stddev.log().mean())
    return out


def parameter_norms(policy: FunctionalPolicy) -> dict[str, float]:
    """Euclidean norm of every parameter tensor of the policy (actor and critic), by name."""
    return {name: float(p.norm()) for name, p in policy.params.items()}
