"""Adam-preconditioned sharpness (Cohen et al. 2022) and a warm-started top eigenvalue to track it cheaply.

Cohen et al. (2022, "Adaptive Gradient Methods at the Edge of Stability", Sec. 2) write Adam as preconditioned
EMA momentum: ``m_t = b1 m_{t-1} + (1 - b1) g_t``, ``v_t = b2 v_{t-1} + (1 - b2) g_t^2``,
``theta_{t+1} = theta_t - eta P_t^{-1} m_t`` with ``P_t = (1 - b1^t) [diag(sqrt(v_t / (1 - b2^t))) + eps I]``:
both bias corrections live in ``P`` (the first moment's as the scalar ``1 - b1^t``), which is exactly torch's Adam
step ``lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)``. The *preconditioned sharpness* is the top
eigenvalue of ``P^{-1} H``; that matrix is not symmetric but is similar to ``P^{-1/2} H P^{-1/2}``, whose top
eigenvalue is computed here. Stability thresholds: ``2 / eta`` for gradient descent (Cohen et al. 2021) and
``2 (1 + b1) / ((1 - b1) eta)`` for EMA momentum with ``b1`` (``38 / eta`` at ``b1 = 0.9``), the one Adam's
preconditioned sharpness equilibrates at (Cohen et al. 2022).

The eigensolver is explicitly restarted Lanczos (:func:`rlflat.probe.spectrum.lanczos`) started from a given
vector: along training the top eigenvector moves little between measurements, so starting from the last one
usually converges in one short cycle.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from rlflat.errors import RlflatError
from rlflat.probe.spectrum import lanczos

__all__ = [
    "TopEigenpair",
    "adam_beta1",
    "adam_preconditioner",
    "adam_threshold",
    "gd_threshold",
    "preconditioned",
    "top_eigenpair",
]

MatVec = Callable[[torch.Tensor], torch.Tensor]


def gd_threshold(lr: float) -> float:
    """``2 / eta``: the sharpness above which gradient descent on a quadratic diverges (Cohen et al. 2021)."""
    return 2.0 / lr if lr > 0 else math.inf


def adam_threshold(lr: float, beta1: float) -> float:
    """``2 (1 + b1) / ((1 - b1) eta)``: the stability threshold of EMA momentum (38/eta at b1 = 0.9)."""
    return 2.0 * (1.0 + beta1) / ((1.0 - beta1) * lr) if lr > 0 else math.inf


def _is_adam(optimizer: torch.optim.Optimizer) -> bool:
    return isinstance(optimizer, torch.optim.Adam | torch.optim.AdamW)


def adam_beta1(optimizer: torch.optim.Optimizer) -> float | None:
    """The first-moment decay of an Adam/AdamW optimizer (its first param group), None for other optimizers."""
    if not _is_adam(optimizer):
        return None
    return float(optimizer.param_groups[0]["betas"][0])


def adam_preconditioner(optimizer: torch.optim.Optimizer, params: Sequence[torch.Tensor]) -> torch.Tensor | None:
    """The diagonal of Adam's ``P_t`` (Cohen et al. 2022) for ``params`` in order, flat float64.

    ``t`` is the optimizer's own step count, so this is the preconditioner of the step just taken. None when the
    optimizer is not Adam/AdamW or has not stepped yet. With ``amsgrad`` torch divides by the running maximum of
    ``v``, so that is used.
    """
    if not _is_adam(optimizer):
        return None
    group_of = {id(p): group for group in optimizer.param_groups for p in group["params"]}
    parts = []
    for param in params:
        group = group_of.get(id(param))
        if group is None:
            raise RlflatError("a tracked parameter is not in the optimizer's param groups")
        state = optimizer.state.get(param, {})
        if "exp_avg_sq" not in state:
            return None
        beta1, beta2 = group["betas"]
        step = float(state["step"])
        v = state["max_exp_avg_sq"] if group.get("amsgrad") else state["exp_avg_sq"]
        v_hat = v.detach().to(torch.float64).reshape(-1) / (1.0 - beta2**step)
        parts.append((1.0 - beta1**step) * (v_hat.sqrt() + float(group["eps"])))
    return torch.cat(parts)


def preconditioned(matvec: MatVec, p: torch.Tensor) -> MatVec:
    """``v -> P^{-1/2} H P^{-1/2} v`` for a diagonal ``P`` (flat, positive): symmetric, and similar to P^{-1} H."""
    if bool((p <= 0).any()):
        raise RlflatError("the preconditioner must be positive")
    d = p.to(torch.float64).rsqrt()
    return lambda v: d * matvec(d * v).to(torch.float64)


@dataclass(frozen=True)
class TopEigenpair:
    """The algebraically largest eigenvalue, its unit eigenvector (float64), the products used, and whether the
    residual met the tolerance (``residual`` = ``||A y - value y|| / |value|``)."""

    value: float
    vector: torch.Tensor
    matvecs: int
    residual: float
    converged: bool


def top_eigenpair(
    matvec: MatVec, v0: torch.Tensor, *, steps: int = 12, tol: float = 1e-3, max_restarts: int = 8
) -> TopEigenpair:
    """Top eigenpair of a symmetric operator by Lanczos restarted from the last Ritz vector.

    Each cycle runs ``steps`` Lanczos steps (full reorthogonalisation) from the current vector and checks the top
    Ritz pair's residual with one more product; it stops once ``||A y - theta y|| <= tol |theta|`` (for a symmetric
    A, ``|theta - lambda| <= ||A y - theta y||`` for some eigenvalue lambda) or after ``max_restarts`` cycles.
    """
    if steps < 2 or max_restarts < 1:
        raise RlflatError(f"need steps >= 2 and max_restarts >= 1; got {steps}, {max_restarts}")
    mv = lambda v: matvec(v).to(torch.float64)  # noqa: E731
    vector = v0.to(torch.float64)
    value, residual, used = math.nan, math.inf, 0
    for _ in range(max_restarts):
        result = lanczos(mv, vector, steps)
        used += len(result.alpha)
        t = torch.diag(result.alpha)
        if result.beta.numel():
            t = t + torch.diag(result.beta, 1) + torch.diag(result.beta, -1)
        nodes, vecs = torch.linalg.eigh(t)
        value = float(nodes[-1])
        vector = result.basis.T @ vecs[:, -1]
        vector = vector / vector.norm()
        image = mv(vector)
        used += 1
        residual = float((image - value * vector).norm()) / max(abs(value), 1e-30)
        if residual <= tol:
            break
    return TopEigenpair(value, vector, used, residual, residual <= tol)
