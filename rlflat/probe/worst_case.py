"""Worst-case (adversarial) sharpness: max over ||eps|| <= rho of L(theta + eps) - L(theta).

* One step: the first-order maximiser eps = rho g / ||g|| used by SAM (Foret et al., 2021).
* Multi-step: normalised projected gradient ascent on the ball (Madry et al., 2018), started from
  the one-step point and returning the best iterate, so it is never below the one-step value.
* Adaptive: the ball is rescaled elementwise, ||eps / (|theta| + eta)|| <= rho, biases included, the scale ASAM
  training uses (:func:`rlflat.scope.adaptive_scale`), which makes the measure invariant to per-weight
  rescalings at eta = 0 (ASAM, Kwon et al., 2021; Andriushchenko et al., 2023).

Both solve in the scaled variable delta = eps / T with T = |theta| + eta (T = 1 when not
adaptive): the gradient w.r.t. delta is T * g, and the one-step solution is
eps = rho T^2 g / ||T g||, the closed form of ASAM.

A vanishing gradient (the ``kl`` loss at theta0 is exactly stationary: its computed gradient is
float rounding, ~1e-8) would make the one-step direction noise and the measure ~1000x too small
(1.5e-5 where the ball's maximum is ~0.5 rho^2 lambda_max = 1.2e-3). When the first-order gain
rho ||T g|| is below ``grad_rtol`` times the actual change of the loss at the SAM point (the step's
effect is then curvature, not slope), the one-step search also tries +-rho along a given direction
(the top Hessian eigenvector, the second-order maximiser) or, without one, along the gradient at a
seeded random point of the sphere (g(theta + eps_r) ~ H eps_r: one power step toward the top
eigenvector) and keeps the best; projected ascent starts from that point.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch

from rlflat.errors import RlflatError
from rlflat.probe.hvp import LossFn, Params, check_params
from rlflat.probe.seeding import Seed, as_generator
from rlflat.scope import adaptive_scale

__all__ = ["GRAD_RTOL", "Direction", "WorstCase", "loss_and_grad", "pgd_sharpness", "sam_sharpness"]

Direction = Mapping[str, torch.Tensor] | Callable[[], Mapping[str, torch.Tensor] | None] | None
"""A fallback direction shaped like the parameters, or a function computing one (called only when needed)."""

GRAD_RTOL = 1e-3
"""Gradient treated as vanishing when rho ||T g|| < GRAD_RTOL * |L(theta + eps) - L(theta)| at the SAM point."""


@dataclass(frozen=True)
class WorstCase:
    """Result of a worst-case sharpness search.

    ``sharpness`` = ``perturbed_loss`` - ``loss``; ``eps_norm`` is the Euclidean norm of the
    perturbation and ``scaled_norm`` its norm in the (possibly adaptive) ball, <= rho;
    ``grad_evals`` counts loss gradients taken; ``start`` names the one-step direction that won:
    'gradient' (SAM/ASAM), or 'eigenvector' / 'random' after a vanishing gradient.
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
    start: str = "gradient"


def loss_and_grad(loss_fn: LossFn, point: Mapping[str, torch.Tensor]) -> tuple[float, list[torch.Tensor]]:
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
        self.scale = [adaptive_scale(t, eta) if adaptive else torch.ones_like(t) for t in self.theta]
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

    def along(self, direction: list[torch.Tensor], radius: float) -> list[torch.Tensor]:
        """The point of the sphere ||delta|| = radius in the direction of the raw perturbation ``direction``."""
        return self.step_to_sphere([d / s for d, s in zip(direction, self.scale, strict=True)], radius)

    def result(
        self, delta: list[torch.Tensor], loss: float, perturbed: float, adaptive: bool, evals: int, start: str
    ) -> WorstCase:
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
            start=start,
        )


@dataclass(frozen=True)
class _Start:
    delta: list[torch.Tensor]
    loss: float
    perturbed: float
    evals: int
    start: str


def _one_step(loss_fn: LossFn, ball: _Ball, direction: Direction, seed: Seed, grad_rtol: float) -> _Start:
    """The SAM/ASAM point, or after a vanishing gradient the best of it and +-rho along a fallback direction."""
    loss, g = loss_and_grad(loss_fn, ball.point([torch.zeros_like(t) for t in ball.theta]))
    g_delta = ball.delta_grad(g)
    delta = ball.step_to_sphere(g_delta, ball.rho)
    best = _Start(delta, loss, _loss(loss_fn, ball.point(delta)), 1, "gradient")
    gain = ball.rho * float(_norm(g_delta))
    if ball.rho == 0.0 or (gain > 0.0 and gain >= grad_rtol * abs(best.perturbed - loss)):
        return best
    fallback, start, evals = _fallback(loss_fn, ball, direction, seed)
    for sign in (1.0, -1.0):
        candidate = [sign * ball.rho * f for f in fallback]
        value = _loss(loss_fn, ball.point(candidate))
        if value > best.perturbed:
            best = _Start(candidate, loss, value, evals, start)
    return _Start(best.delta, loss, best.perturbed, evals, best.start)


def _fallback(loss_fn: LossFn, ball: _Ball, direction: Direction, seed: Seed) -> tuple[list[torch.Tensor], str, int]:
    """A unit delta along ``direction``, or along the gradient at a seeded random point of the sphere."""
    if callable(direction):
        direction = direction()
    if direction is not None:
        _check_direction(direction, ball.names, ball.theta)
        raw = [direction[k].detach().to(t) for k, t in zip(ball.names, ball.theta, strict=True)]
        return ball.along(raw, 1.0), "eigenvector", 1
    gen = as_generator(seed)
    noise = [torch.randn(t.shape, generator=gen, dtype=torch.float64).to(t) for t in ball.theta]
    _, g_random = loss_and_grad(loss_fn, ball.point(ball.step_to_sphere(noise, ball.rho)))
    return ball.step_to_sphere(ball.delta_grad(g_random), 1.0), "random", 2


def _check_direction(direction: Mapping[str, torch.Tensor], names: list[str], theta: list[torch.Tensor]) -> None:
    if set(direction) != set(names):
        raise RlflatError(f"direction keys {sorted(direction)} differ from the parameters' {sorted(names)}")
    for k, t in zip(names, theta, strict=True):
        if direction[k].shape != t.shape:
            raise RlflatError(f"direction {k!r} has shape {tuple(direction[k].shape)}; expected {tuple(t.shape)}")


def sam_sharpness(
    loss_fn: LossFn,
    params: Mapping[str, torch.Tensor],
    rho: float,
    *,
    adaptive: bool = False,
    eta: float = 0.01,
    direction: Direction = None,
    seed: Seed = 0,
    grad_rtol: float = GRAD_RTOL,
) -> WorstCase:
    """One-step worst-case sharpness L(theta + eps*) - L(theta), eps* the SAM/ASAM ascent step.

    eps* = rho g / ||g|| (Foret et al., 2021), or rho T^2 g / ||T g|| with T = |theta| + eta when
    ``adaptive`` (Kwon et al., 2021; eta = 0.01 as there). One gradient, two loss evaluations. After
    a vanishing gradient (see the module docstring) also +-rho along ``direction`` (e.g. the top
    Hessian eigenvector, a dict shaped like ``params``, or a function returning one, called only
    then) or, when None, along the gradient at a
    random point of the sphere drawn from ``seed`` (one more gradient); the best point is kept.
    """
    ball = _Ball(params, rho, adaptive, eta)
    one = _one_step(loss_fn, ball, direction, seed, grad_rtol)
    return ball.result(one.delta, one.loss, one.perturbed, adaptive, one.evals, one.start)


def pgd_sharpness(
    loss_fn: LossFn,
    params: Mapping[str, torch.Tensor],
    rho: float,
    *,
    steps: int = 10,
    step_size: float | None = None,
    adaptive: bool = False,
    eta: float = 0.01,
    direction: Direction = None,
    seed: Seed = 0,
    grad_rtol: float = GRAD_RTOL,
) -> WorstCase:
    """Multi-step worst-case sharpness by projected normalised gradient ascent on the rho-ball.

    Starts at the one-step point of :func:`sam_sharpness` (same ``direction``, ``seed``,
    ``grad_rtol``), takes ``steps`` ascent steps of length ``step_size`` (default 2.5 rho / steps,
    Madry et al., 2018) in delta = eps / T, projects back onto ||delta|| <= rho after each, and
    returns the best iterate seen (hence >= the one-step value).
    """
    if steps < 1:
        raise RlflatError(f"steps must be >= 1; got {steps}")
    alpha = 2.5 * rho / steps if step_size is None else step_size
    if not alpha >= 0.0:
        raise RlflatError(f"step_size must be >= 0; got {step_size}")
    ball = _Ball(params, rho, adaptive, eta)
    one = _one_step(loss_fn, ball, direction, seed, grad_rtol)
    delta, evals = one.delta, one.evals
    best_delta, best = delta, one.perturbed
    for _ in range(steps):
        cur, g = loss_and_grad(loss_fn, ball.point(delta))
        evals += 1
        if cur > best:
            best_delta, best = delta, cur
        step = ball.step_to_sphere(ball.delta_grad(g), alpha)
        delta = ball.project([d + s for d, s in zip(delta, step, strict=True)])
    final = _loss(loss_fn, ball.point(delta))
    if final > best:
        best_delta, best = delta, final
    return ball.result(best_delta, one.loss, best, adaptive, evals, one.start)
