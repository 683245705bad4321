"""Two sharpness measures under their published names and definitions.

* **Keskar et al. (2017), epsilon-sharpness** ("On Large-Batch Training for Deep Learning: Generalization Gap and
  Sharp Minima", ICLR, Sec. 2.2.2, Eq. 3-4, full space A = I): the box
  C_eps = {y : |y_i| <= eps (|x_i| + 1)} around the parameters x, and
  phi(x, eps) = 100 * (max_{y in C_eps} f(x + y) - f(x)) / (1 + f(x)).
  A *maximum*, found as Keskar et al. did by L-BFGS-B on the box (scipy's ``L-BFGS-B``, bounds = the box),
  started at y = 0 (at a seeded random point of the box when the gradient there vanishes, as for the ``kl`` loss).
  They report eps = 1e-3 and 5e-4. The "+1" makes it depend on the parametrisation (not rescaling-invariant).
* **Jiang et al. (2020), magnitude-aware sigma'** ("Fantastic Generalization Measures and Where to Find Them",
  ICLR, Appendix C, pacbayes.mag.flatness): noise u_i ~ N(0, sigma'^2 theta_i^2 + eps^2), eps = 1e-3, with sigma'
  the largest value whose expected deviation stays within a declared target, found by bisection on [0, upper]
  (their release: target 0.1 of training accuracy, tolerance 1e-2, Monte-Carlo average over draws); their measure
  is 1 / sigma'^2. In an RL probe the analogue of "training accuracy" is agreement with the policy's own
  deterministic actions on the probe batch, so the default deviation is the action-change rate
  (:func:`rlflat.probe.perturbation.action_change`); ``kl`` (mean KL to the unperturbed policy) is the other
  choice. Unlike their release, the same M noise draws z_m serve every bisection step (common random numbers),
  so the deviation is a deterministic, near-monotone function of sigma' and the search is reproducible. With
  eps = 0 the measure is invariant under per-neuron rescaling of a ReLU net; with eps > 0 it is not.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import Bounds, minimize

from rlflat.errors import RlflatError, bad_choice
from rlflat.policy import FunctionalPolicy, Params
from rlflat.probe.directions import raw_direction
from rlflat.probe.losses import LossFn, mean_kl
from rlflat.probe.options import DEVIATIONS
from rlflat.probe.perturbation import action_change
from rlflat.probe.seeding import Seed, as_generator

__all__ = [
    "DEVIATIONS",
    "KeskarSharpness",
    "MagnitudeAwareSigma",
    "deviation_fn",
    "keskar_sharpness",
    "magnitude_aware_sigma",
]

_VANISHING = 1e-12


@dataclass(frozen=True)
class KeskarSharpness:
    """phi(x, eps) (``sharpness``, in percent), the loss at x and at the maximiser, and the search record."""

    sharpness: float
    loss: float
    max_loss: float
    eps: float
    iterations: int
    function_evals: int
    start: str
    """'zero' or 'random' (after a vanishing gradient at y = 0)."""


class _Flat:
    """The parameter dict as one float64 vector and back (key order), for scipy."""

    def __init__(self, params: Mapping[str, torch.Tensor]):
        self.names = list(params)
        self.shapes = [params[k].shape for k in self.names]
        self.dtype = next(iter(params.values())).dtype
        self.x = torch.cat([params[k].detach().reshape(-1).double() for k in self.names]).numpy()

    def point(self, y: np.ndarray) -> dict[str, torch.Tensor]:
        flat = torch.from_numpy(self.x + y).to(self.dtype)
        parts = torch.split(flat, [int(np.prod(s)) for s in self.shapes])
        return {k: p.reshape(s) for k, p, s in zip(self.names, parts, self.shapes, strict=True)}


def keskar_sharpness(
    loss_fn: LossFn, params: Mapping[str, torch.Tensor], eps: float = 1e-3, *, max_iter: int = 10, seed: Seed = 0
) -> KeskarSharpness:
    """Keskar et al.'s epsilon-sharpness of ``loss_fn`` at ``params`` (see the module docstring).

    Raises when 1 + f(x) <= 0, where their normalisation is undefined."""
    if not (math.isfinite(eps) and eps > 0) or max_iter < 1:
        raise RlflatError(f"keskar eps must be > 0 and max_iter >= 1, got {eps} and {max_iter}")
    flat = _Flat(params)
    bound = eps * (np.abs(flat.x) + 1.0)

    def negative(y: np.ndarray) -> tuple[float, np.ndarray]:
        leaves = {k: v.requires_grad_(True) for k, v in flat.point(y).items()}
        with torch.enable_grad():
            value = loss_fn(leaves)
            grads = torch.autograd.grad(value, list(leaves.values()), allow_unused=True)
        g = [torch.zeros_like(v) if d is None else d for d, v in zip(grads, leaves.values(), strict=True)]
        return -float(value.detach()), -torch.cat([d.reshape(-1) for d in g]).double().numpy()

    f0, g0 = negative(np.zeros_like(flat.x))
    f0 = -f0
    if not 1.0 + f0 > 0:
        raise RlflatError(f"Keskar's sharpness divides by 1 + f(x); here f(x) = {f0:.4g} <= -1")
    y0, start = np.zeros_like(flat.x), "zero"
    if float(np.abs(g0 * bound).sum()) <= _VANISHING * max(1.0, abs(f0)):
        gen = np.random.default_rng(int(torch.randint(0, 2**31 - 1, (1,), generator=as_generator(seed))))
        y0, start = gen.uniform(-bound, bound), "random"
    res = minimize(
        negative, y0, jac=True, method="L-BFGS-B", bounds=Bounds(-bound, bound), options={"maxiter": max_iter}
    )
    best = max(-float(res.fun), f0)
    return KeskarSharpness(
        sharpness=100.0 * (best - f0) / (1.0 + f0),
        loss=f0,
        max_loss=best,
        eps=eps,
        iterations=int(res.nit),
        function_evals=int(res.nfev) + 1,
        start=start,
    )


@dataclass(frozen=True)
class MagnitudeAwareSigma:
    """sigma' and Jiang et al.'s 1 / sigma'^2 (``flatness``), the deviation reached, and whether the search hit
    its upper bound without reaching the target (``censored``: sigma' >= upper, flatness <= 1 / upper^2). The
    ``*_stderr`` are this draw's Monte-Carlo SEs; the probe's SE over replicates supersedes them."""

    sigma: float
    sigma_stderr: float
    """Monte-Carlo SE of sigma' by the delta method: SE of the mean deviation over the draws at sigma', divided
    by the slope of the mean deviation there (central difference at sigma' (1 +- 0.1)); NaN when flat."""
    flatness: float
    flatness_stderr: float
    deviation: float
    target: float
    eps: float
    censored: bool
    steps: int


Deviation = Callable[[Params], float]


def deviation_fn(policy: FunctionalPolicy, obs: torch.Tensor, params: Params, kind: str = "action_change") -> Deviation:
    """How far a perturbed policy is from ``params`` on the probe states ``obs``: action-change rate or mean KL."""
    if kind not in DEVIATIONS:
        raise bad_choice("magnitude-aware deviation", kind, DEVIATIONS)
    with torch.no_grad():
        reference = policy.mode(params, obs)

    def deviation(point: Params) -> float:
        with torch.no_grad():
            if kind == "kl":
                return float(mean_kl(policy, obs, params, point))
            return action_change(policy, obs, reference, point)

    return deviation


def magnitude_aware_sigma(
    deviation: Deviation,
    params: Mapping[str, torch.Tensor],
    *,
    target: float = 0.1,
    eps: float = 1e-3,
    samples: int = 10,
    depth: int = 15,
    upper: float = 5.0,
    tolerance: float = 1e-2,
    seed: Seed = 0,
) -> MagnitudeAwareSigma:
    """Jiang et al.'s magnitude-aware sigma' by bisection on [0, ``upper``] (see the module docstring).

    The deviation at sigma is the mean of ``deviation`` over ``samples`` fixed draws; the search stops early when
    it is within ``tolerance`` of ``target`` (as their release does) and returns the last midpoint."""
    if not (target > 0 and eps >= 0 and upper > 0 and tolerance >= 0) or samples < 1 or depth < 1:
        raise RlflatError(
            f"magnitude-aware search needs target > 0, eps >= 0, upper > 0, samples/depth >= 1; got target {target}, "
            f"eps {eps}, upper {upper}, samples {samples}, depth {depth}"
        )
    gen = as_generator(seed)
    draws = [raw_direction(params, gen) for _ in range(samples)]
    theta = {k: p.detach() for k, p in params.items()}

    def per_draw(sigma: float) -> np.ndarray:
        std = {k: torch.sqrt(sigma**2 * p**2 + eps**2) for k, p in theta.items()}
        return np.array([deviation({k: p + std[k] * z[k] for k, p in theta.items()}) for z in draws])

    at_upper = float(per_draw(upper).mean())
    if at_upper <= target:
        return MagnitudeAwareSigma(upper, math.nan, 1.0 / upper**2, math.nan, at_upper, target, eps, True, 1)
    lower, high, sigma, steps = 0.0, upper, upper, 1
    values = np.array([at_upper])
    for _ in range(depth):
        sigma = 0.5 * (lower + high)
        values = per_draw(sigma)
        steps += 1
        if abs(float(values.mean()) - target) < tolerance:
            break
        if values.mean() > target:
            high = sigma
        else:
            lower = sigma
    se = _delta_se(per_draw, sigma, values)
    return MagnitudeAwareSigma(
        sigma, se, 1.0 / sigma**2, 2.0 * se / sigma**3, float(values.mean()), target, eps, False, steps
    )


def _delta_se(per_draw: Callable[[float], np.ndarray], sigma: float, values: np.ndarray) -> float:
    """SE of the root sigma' of D(sigma) = target: se(D(sigma')) / |D'(sigma')| (delta method)."""
    if values.size < 2:
        return math.nan
    slope = (per_draw(1.1 * sigma).mean() - per_draw(0.9 * sigma).mean()) / (0.2 * sigma)
    if not slope > 0:
        return math.nan
    return float(values.std(ddof=1) / math.sqrt(values.size) / slope)
