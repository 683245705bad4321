"""The probe's measures, one stage function each, on a collected batch and its loss.

Each stage returns ``(scalars, arrays)``: the scalars go into ``probe.json`` under the stage's key, the arrays into
``probe.npz`` (names in :mod:`rlflat.probe.output`). The Hessian stage also hands on its top eigenvectors as a
:class:`TopVectors`, computed on first use: the worst-case stage needs one only after a vanishing gradient (the kl
loss), the landscape stage two, and on the exact route they cost an extra ARPACK solve on the dense Hessian (0.2 s
to 7 s at n = 4,610, slow when the top eigenvalues nearly coincide), which most probes never pay.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy.sparse.linalg import eigsh
from torch import Tensor

from rlflat.policy import FunctionalPolicy, Params
from rlflat.probe.directions import dict_norm
from rlflat.probe.hvp import HessianOperator
from rlflat.probe.landscape import eigen_direction, interpolate, scaled_to, slice_1d, slice_2d
from rlflat.probe.losses import LossFn
from rlflat.probe.options import ProbeOptions
from rlflat.probe.perturbation import average_case, draw_directions, worst_case
from rlflat.probe.seeding import as_generator, subseed
from rlflat.probe.spectrum import (
    density_from_eigenvalues,
    eigenpairs,
    extreme_eigenpairs,
    hutchinson_trace,
    lambda_max_over_abs_sum,
    lambda_max_over_trace,
    negative_abs_mass_fraction,
    negative_count_fraction,
    slq_density,
)
from rlflat.tasks import TaskSpec

__all__ = [
    "EVAL_SEED",
    "TopVectors",
    "hessian_measures",
    "interpolation_grid",
    "interpolation_measures",
    "landscape_measures",
    "perturbation_measures",
    "worst_case_measures",
]

EVAL_SEED = 0
"""Episode e of an evaluation starts from seed EVAL_SEED + e (the evaluator's convention) unless a stage is given
its own ``eval_seed``: the probe gives each replicate batch its own (``subseed(seed, 'evaluation')``), so the
evaluation episodes are sampled afresh per replicate and their noise is in the replicate standard error."""

Scalars = dict[str, Any]
Arrays = dict[str, np.ndarray]


# ----- Hessian: spectrum, trace, density -------------------------------------------------------------------


class TopVectors:
    """The top Hessian eigenvectors as a flat (n, m) float64 tensor, largest first, computed once on first call
    (None when the spectrum was not computed)."""

    def __init__(self, compute: Callable[[], Tensor | None]):
        self._compute: Callable[[], Tensor | None] | None = compute
        self._vectors: Tensor | None = None

    def __call__(self) -> Tensor | None:
        if self._compute is not None:
            self._vectors, self._compute = self._compute(), None  # drops the closure (and a dense Hessian)
        return self._vectors

    def known(self) -> Tensor | None:
        """The vectors if already computed (never computes them)."""
        return self._vectors


@dataclass(frozen=True)
class _Spectrum:
    method: str
    """'exact' (dense Hessian + eigvalsh) or 'eigsh' (ARPACK on the matrix-free operator)."""
    top: Tensor
    bottom: Tensor
    vectors: TopVectors
    eigenvalues: Tensor | None
    """The whole spectrum, ascending (exact route only)."""


def hessian_measures(op: HessianOperator, opts: ProbeOptions, measures: set[str]) -> tuple[Scalars, Arrays, TopVectors]:
    """Spectrum, trace and density, and the top eigenvectors (computed when first asked for; None without a
    spectrum).

    Exact (dense Hessian, one ``eigvalsh``) when n <= ``exact_threshold`` and the spectrum or density is wanted,
    else matrix-free: ARPACK at both ends, Hutchinson, SLQ. ``method``, ``trace_method`` and ``density.method``
    record the route of each ('exact' / 'eigsh' / None when no eigenvalues were computed; 'exact' / 'hutchinson';
    'exact' / 'slq'), for captions.
    """
    before = op.hvp_count
    spectrum = _spectrum(op, opts, measures)
    out: Scalars = {"method": None if spectrum is None else spectrum.method}
    arrays: Arrays = {}
    out.update(_extremes(spectrum, arrays))
    eigenvalues = None if spectrum is None else spectrum.eigenvalues
    if eigenvalues is not None:
        arrays["hessian_eigenvalues"] = eigenvalues.numpy()
    out.update(_trace(op, opts, measures, eigenvalues))
    out.update(_ratios(out["lambda_max"], out["trace"], eigenvalues))
    if "density" in measures:
        density, darr, fractions = _density(op, opts, eigenvalues)
        out["density"] = density
        arrays.update(darr)
        if fractions is not None:
            out["negative_mass_fraction"], out["negative_count_fraction"] = fractions
    out["hvps"] = op.hvp_count - before
    return out, arrays, TopVectors(lambda: None) if spectrum is None else spectrum.vectors


def _spectrum(op: HessianOperator, opts: ProbeOptions, measures: set[str]) -> _Spectrum | None:
    k, seed = min(opts.top_k, op.n), subseed(opts.seed, "hessian")
    if op.n <= opts.exact_threshold and measures & {"hessian", "density"}:
        h = op.dense().to(torch.float64)
        eigenvalues = torch.linalg.eigvalsh(h)
        vectors = TopVectors(lambda: _top_vectors(h, min(2, op.n), seed))
        return _Spectrum("exact", eigenvalues.flip(0)[:k], eigenvalues[:k], vectors, eigenvalues)
    if "hessian" not in measures:
        return None
    hi, lo = extreme_eigenpairs(op, k, exact_threshold=opts.exact_threshold, seed=seed, vectors=True)
    return _Spectrum(hi.method, hi.values, lo.values, TopVectors(lambda: hi.vectors), None)


def _top_vectors(h: Tensor, k: int, seed: int) -> Tensor:
    """Top-k eigenvectors of a dense symmetric float64 matrix, largest first: ARPACK on the matrix (O(n^2) per
    product), cheaper than LAPACK's subset solve (7 s at n = 4,610 on one thread) unless the top eigenvalues nearly
    coincide."""
    n = h.shape[0]
    if k >= n:
        return torch.linalg.eigh(h)[1].flip(1)[:, :k].contiguous()
    v0 = torch.randint(0, 2, (n,), generator=as_generator(seed)).to(torch.float64).mul_(2).sub_(1) / math.sqrt(n)
    values, vectors = eigsh(h.numpy(), k=k, which="LA", v0=v0.numpy(), tol=1e-10)
    return torch.from_numpy(np.ascontiguousarray(vectors[:, np.argsort(-values)]))


def _extremes(spectrum: _Spectrum | None, arrays: Arrays) -> Scalars:
    if spectrum is None:
        return {"lambda_max": None, "lambda_min": None, "top_eigenvalues": None, "bottom_eigenvalues": None}
    arrays["hessian_top_eigenvalues"] = spectrum.top.numpy()
    arrays["hessian_bottom_eigenvalues"] = spectrum.bottom.numpy()
    return {
        "lambda_max": float(spectrum.top[0]),
        "lambda_min": float(spectrum.bottom[0]),
        "top_eigenvalues": spectrum.top.tolist(),
        "bottom_eigenvalues": spectrum.bottom.tolist(),
    }


def _trace(op: HessianOperator, opts: ProbeOptions, measures: set[str], eigenvalues: Tensor | None) -> Scalars:
    """The exact trace when the spectrum is known, else Hutchinson's; Hutchinson's also when 'trace' is asked for
    (a check of the exact one)."""
    out: Scalars = {}
    if "trace" in measures or eigenvalues is None:
        hutch = hutchinson_trace(op, opts.trace_probes, seed=subseed(opts.seed, "trace"))
        out["hutchinson"] = {"estimate": hutch.estimate, "stderr": hutch.stderr, "n_probes": hutch.n_probes}
        out.update(trace=hutch.estimate, trace_method="hutchinson")
    if eigenvalues is not None:
        out.update(trace=float(eigenvalues.sum()), trace_method="exact")
    return out


def _ratios(lambda_max: float | None, trace: float, eigenvalues: Tensor | None) -> Scalars:
    """lambda_max / trace (None unless trace > 0), lambda_max / sum |lambda| and the negative spectral mass and count
    (whole spectrum only; SLQ fills the last two in from the density, by the same functions)."""
    out: Scalars = {
        "lambda_max_over_trace": None if lambda_max is None else lambda_max_over_trace(lambda_max, trace),
        "lambda_max_over_abs_sum": None,
        "negative_mass_fraction": None,
        "negative_count_fraction": None,
    }
    if eigenvalues is not None:
        ones = torch.ones_like(eigenvalues)
        out["lambda_max_over_abs_sum"] = lambda_max_over_abs_sum(eigenvalues)
        out["negative_mass_fraction"] = negative_abs_mass_fraction(eigenvalues, ones)
        out["negative_count_fraction"] = negative_count_fraction(eigenvalues, ones)
    return out


def _density(
    op: HessianOperator, opts: ProbeOptions, eigenvalues: Tensor | None
) -> tuple[Scalars, Arrays, tuple[float | None, float | None] | None]:
    """Spectral density: exact from the eigenvalues, else SLQ (whose negative mass and count fractions are
    returned too, by the functions the exact route uses on the eigenvalues)."""
    if eigenvalues is not None:
        sd = density_from_eigenvalues(eigenvalues, grid_size=opts.density_grid)
        fractions = None
    else:
        sd = slq_density(
            op,
            n_probes=opts.density_probes,
            steps=opts.density_steps,
            grid_size=opts.density_grid,
            seed=subseed(opts.seed, "density"),
        )
        fractions = (negative_abs_mass_fraction(sd.nodes, sd.weights), negative_count_fraction(sd.nodes, sd.weights))
    method = "exact" if eigenvalues is not None else "slq"
    return (
        {"method": method, "sigma": sd.sigma},
        {"density_grid": sd.grid.numpy(), "density": sd.density.numpy()},
        fractions,
    )


# ----- perturbation: average and worst case ---------------------------------------------------------------


def perturbation_measures(
    policy: FunctionalPolicy,
    spec: TaskSpec,
    loss_fn: LossFn,
    params: Params,
    obs: Tensor,
    opts: ProbeOptions,
    eval_seed: int = EVAL_SEED,
) -> tuple[Scalars, Arrays]:
    """Average-case curves for the configured direction kind and for raw directions (both sigma relative to the
    parameters' scale), with the batch measures at ``opts.reference_sigmas``."""
    kinds = [opts.directions] + (["raw"] if opts.directions != "raw" else [])
    return average_case(
        policy,
        spec,
        loss_fn,
        params,
        obs,
        opts.sigmas,
        kinds=kinds,
        n_directions=opts.n_directions,
        episodes=opts.episodes,
        seed=subseed(opts.seed, "directions"),
        eval_seed=eval_seed,
        ignore_1d=opts.ignore_1d,
        reference_sigmas=opts.reference_sigmas,
    )


def worst_case_measures(
    policy: FunctionalPolicy,
    spec: TaskSpec,
    loss_fn: LossFn,
    params: Params,
    obs: Tensor,
    opts: ProbeOptions,
    *,
    nominal_return: float | None,
    vectors: TopVectors,
    eval_seed: int = EVAL_SEED,
) -> tuple[Scalars, Arrays]:
    """Raw and adaptive worst case, one step and multi-step; ``vectors`` (top eigenvectors) give the fallback
    direction after a vanishing gradient (the kl loss at theta0), else a seeded random start is used."""

    def direction() -> Params | None:
        top = vectors()
        return None if top is None else eigen_direction(top, 0, params)

    wc, arrays = worst_case(
        policy,
        spec,
        loss_fn,
        params,
        obs,
        rho=opts.rho,
        adaptive_rho=opts.adaptive_rho,
        steps=opts.ascent_steps,
        eta=opts.eta,
        episodes=opts.episodes,
        eval_seed=eval_seed,
        nominal_return=nominal_return,
        direction=direction,
        seed=opts.seed,
    )
    if opts.loss == "kl":
        wc["note"] = (
            "the kl loss is stationary at theta0 (its gradient is rounding noise), so the one-step search also steps "
            "along the top Hessian eigenvector, or the gradient at a random point of the ball when the spectrum was "
            "not computed, and keeps the best ('start'); projected ascent starts there"
        )
    return wc, arrays


# ----- landscapes and interpolation --------------------------------------------------------------------------


def landscape_measures(
    policy: FunctionalPolicy,
    spec: TaskSpec,
    loss_fn: LossFn,
    params: Params,
    op: HessianOperator,
    top_vectors: TopVectors,
    opts: ProbeOptions,
) -> tuple[Scalars, Arrays]:
    """1-D slices along a filter-normalised direction and the top eigenvector; 2-D planes (d1, d2) and (v1, v2)."""
    vectors = top_vectors()
    if vectors is None or vectors.shape[1] < 2:
        pairs = eigenpairs(op, min(2, op.n), exact_threshold=opts.exact_threshold, seed=subseed(opts.seed, "hessian"))
        vectors = pairs.vectors
    assert vectors is not None
    d1, d2 = draw_directions(params, "filter", 2, seed=subseed(opts.seed, "landscape"), ignore_1d=opts.ignore_1d)
    norm = float(dict_norm(params))
    v1 = scaled_to(eigen_direction(vectors, 0, params), norm)
    v2 = scaled_to(eigen_direction(vectors, 1, params), norm) if vectors.shape[1] > 1 else d2
    a1 = np.linspace(-opts.landscape_span, opts.landscape_span, opts.landscape_points)
    a2 = np.linspace(-opts.landscape_span, opts.landscape_span, opts.landscape_points_2d)
    ep = opts.landscape_episodes
    out: Scalars = {"span": opts.landscape_span, "points": opts.landscape_points, "points_2d": opts.landscape_points_2d}
    arrays: Arrays = {"landscape_alphas": a1, "landscape_alphas_2d": a2}
    for name, d in (("filter", d1), ("eigen", v1)):
        loss, ret = slice_1d(policy, spec, loss_fn, params, d, a1, episodes=ep)
        arrays[f"landscape_1d_{name}_loss"] = loss
        if ret is not None:
            arrays[f"landscape_1d_{name}_return"] = ret
        out[f"1d_{name}"] = {"loss_range": float(loss.max() - loss.min()), "return_min": _min_or_none(ret)}
    for name, (da, db) in (("filter", (d1, d2)), ("eigen", (v1, v2))):
        loss2, ret2 = slice_2d(policy, spec, loss_fn, params, da, db, a2, episodes=ep)
        arrays[f"landscape_2d_{name}_loss"] = loss2
        if ret2 is not None:
            arrays[f"landscape_2d_{name}_return"] = ret2
        out[f"2d_{name}"] = {"loss_range": float(loss2.max() - loss2.min()), "return_min": _min_or_none(ret2)}
    return out, arrays


def _min_or_none(x: np.ndarray | None) -> float | None:
    return None if x is None else float(x.min())


def interpolation_grid(steps: int, margin: float) -> np.ndarray:
    """alpha = j / steps from -margin to 1 + margin, so 0 and 1 lie exactly on the grid."""
    extra = round(margin * steps)
    return np.arange(-extra, steps + extra + 1) / steps


def interpolation_measures(
    policy: FunctionalPolicy,
    other: FunctionalPolicy,
    spec: TaskSpec,
    loss_fn: LossFn,
    opts: ProbeOptions,
    eval_seed: int = EVAL_SEED,
) -> tuple[Scalars, Arrays]:
    """Loss and return along the linear path to ``other`` (``opts.interpolate``), with the barriers."""
    alphas = interpolation_grid(opts.interpolation_steps, opts.interpolation_margin)
    scalars, arrays = interpolate(policy, other, spec, loss_fn, alphas, episodes=opts.episodes, eval_seed=eval_seed)
    scalars["other"] = str(opts.interpolate)
    return scalars, arrays
