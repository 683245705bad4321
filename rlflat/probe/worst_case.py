"""Worst-case (adversarial) sharpness: max over ||eps|| <= rho of L(theta + eps) - L(theta).

* One step: the first-order maximiser eps = rho g / ||g|| used by SAM (Foret et al., 2021).
* Multi-step: normalised projected gradient ascent on the ball (Madry et al., 2018), started from
  the one-step point and returning the best iterate, so it is never below the one-step value.
* Adaptive: the ball is rescaled elementwise, ||eps / (|theta| + eta)|| <= rho, which makes the
  measure invariant to per-weight rescalings (ASAM, Kwon et al., 2021; Andriushchenko et al., 2023).

Both solve in the scaled variable delta = eps / T with T = |theta| + eta (T = 1 when not
adaptive): the gradient w.r.t. delta is T * g, and the one-step solution is
eps = rho T^2 g / ||T g||, the closed form of ASAM.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

from rlflat.errors import RlflatError
from rlflat.probe.hvp import LossFn, Params, check_params

__all__ = ["WorstCase", "pgd_sharpness", "sam_sharpness"]


@dataclass(frozen=True)
class WorstCase:
    """Result of a worst-case sharpness search.

    ``sharpness`` = ``perturbed_loss`` - ``loss``; ``eps_norm`` is the Euclidean norm of the
    perturbation and ``scaled_norm`` its norm in the (possibly adaptive) ball, <= rho;
    ``grad_evals`` counts loss gradients taken.
    """

    sharpness: float
    loss: float
    perturbed_loss: float
    eps_norm: float
    scaled_norm: float
    rho: float
    adaptive: bool
    grad_evals: int
    perturbation: Params


def _loss_and_grad(loss_fn: LossFn, point: Mapping[str, torch.Tensor]) -> tuple[float, list[torch.Tensor]]:
    """Loss and gradient at ``point`` on fresh leaves: no .grad is written anywhere."""
    names = list(point)
    leaves = [point[k].detach().requires_grad_(True) for k in names]
    with torch.enable_grad():
        loss = loss_fn(dict(zip(names, leaves, strict=True)))
        if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
            raise RlflatError("loss_fn must return a scalar tensor")
        grads = torch.autograd.grad(loss.reshape(()), leaves, allow_unused=True)
    return float(loss.detach()), [torch.zeros_like(p) if g is None else g for g, p in zip(grads, leaves, strict=True)]


def _loss(loss_fn: LossFn, point: Mapping[str, torch.Tensor]) -> float:
    with torch.no_grad():
        return float(loss_fn(dict(point)))


def _norm(ts: list[torch.Tensor]) -> torch.Tensor:
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(t) for t in ts]))


class _Ball:
    """The (adaptive) rho-ball around theta, parametrised by delta = eps / T."""

    def __init__(self, params: Mapping[str, torch.Tensor], rho: float, adaptive: bool, eta: float):
        check_params(params)
        if not rho >= 0.0:
            raise RlflatError(f"rho must be >= 0; got {rho}")
        if adaptive and not eta >= 0.0:
            raise RlflatError(f"eta must be >= 0; got {eta}")
        self.names = list(params)
        self.theta = [params[k].detach() for k in self.names]
        self.scale = [(t.abs() + eta) if adaptive else torch.ones_like(t) for t in self.theta]
        self.rho = rho

    def point(self, delta: list[torch.Tensor]) -> Params:
        return {k: t + s * d for k, t, s, d in zip(self.names, self.theta, self.scale, delta, strict=True)}

    def delta_grad(self, g: list[torch.Tensor]) -> list[torch.Tensor]:
        return [s * gi for s, gi in zip(self.scale, g, strict=True)]

    def step_to_sphere(self, g_delta: list[torch.Tensor], radius: float) -> list[torch.Tensor]:
        """radius * g_delta / ||g_delta|| (zero when the gradient vanishes)."""
        n = _norm(g_delta)
        if float(n) == 0.0:
            return [torch.zeros_like(x) for x in g_delta]
        return [radius * x / n for x in g_delta]

    def project(self, delta: list[torch.Tensor]) -> list[torch.Tensor]:
        n = float(_norm(delta))
        return delta if n <= self.rho else [d * (self.rho / n) for d in delta]

    def result(self, delta: list[torch.Tensor], loss: float, perturbed: float, adaptive: bool, evals: int) -> WorstCase:
        eps = [s * d for s, d in zip(self.scale, delta, strict=True)]
        return WorstCase(
            sharpness=perturbed - loss,
            loss=loss,
            perturbed_loss=perturbed,
            eps_norm=float(_norm(eps)),
            scaled_norm=float(_norm(delta)),
            rho=self.rho,
            adaptive=adaptive,
            grad_evals=evals,
            perturbation=dict(zip(self.names, eps, strict=True)),
        )


def sam_sharpness(
    loss_fn: LossFn,
    params: Mapping[str, torch.Tensor],
    rho: float,
    *,
    adaptive: bool = False,
    eta: float = 0.01,
) -> WorstCase:
    """One-step worst-case sharpness L(theta + eps*) - L(theta), eps* the SAM/ASAM ascent step.

    eps* = rho g / ||g|| (Foret et al., 2021), or rho T^2 g / ||T g|| with T = |theta| + eta when
    ``adaptive`` (Kwon et al., 2021; eta = 0.01 as there). One gradient, two loss evaluations.
    """
    ball = _Ball(params, rho, adaptive, eta)
    loss, g = _loss_and_grad(loss_fn, ball.point([torch.zeros_like(t) for t in ball.theta]))
    delta = ball.step_to_sphere(ball.delta_grad(g), rho)
    return ball.result(delta, loss, _loss(loss_fn, ball.point(delta)), adaptive, 1)


def pgd_sharpness(
    loss_fn: LossFn,
    params: Mapping[str, torch.Tensor],
    rho: float,
    *,
    steps: int = 10,
    step_size: float | None = None,
    adaptive: bool = False,
    eta: float = 0.01,
) -> WorstCase:
    """Multi-step worst-case sharpness by projected normalised gradient ascent on the rho-ball.

    Starts at the one-step SAM/ASAM point, takes ``steps`` ascent steps of length ``step_size``
    (default 2.5 rho / steps, Madry et al., 2018) in delta = eps / T, projects back onto
    ||delta|| <= rho after each, and returns the best iterate seen (hence >= the one-step value).
    """
    if steps < 1:
        raise RlflatError(f"steps must be >= 1; got {steps}")
    alpha = 2.5 * rho / steps if step_size is None else step_size
    if not alpha >= 0.0:
        raise RlflatError(f"step_size must be >= 0; got {step_size}")
    ball = _Ball(params, rho, adaptive, eta)
    loss, g = _loss_and_grad(loss_fn, ball.point([torch.zeros_like(t) for t in ball.theta]))
    delta = ball.step_to_sphere(ball.delta_grad(g), rho)
    evals = 1
    best_delta, best = delta, -float("inf")
    for _ in range(steps):
        cur, g = _loss_and_grad(loss_fn, ball.point(delta))
        evals += 1
        if cur > best:
            best_delta, best = delta, cur
        step = ball.step_to_sphere(ball.delta_grad(g), alpha)
        delta = ball.project([d + s for d, s in zip(delta, step, strict=True)])
    final = _loss(loss_fn, ball.point(delta))
    if final > best:
        best_delta, best = delta, final
    return ball.result(best_delta, loss, best, adaptive, evals)
