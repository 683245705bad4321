"""Hessian spectrum probes on a :class:`~rlflat.probe.hvp.HessianOperator`.

* Extreme eigenpairs: implicitly restarted Lanczos (ARPACK ``eigsh``, Lehoucq et al., 1998) on the
  matrix-free operator, or the exact dense route when n is small enough.
* Power iteration with deflation, the method of PyHessian (Yao et al., 2020), kept as a baseline.
* Hutchinson's trace estimator (Hutchinson, 1989) with Rademacher probes and its standard error.
* Stochastic Lanczos quadrature spectral density (Ubaru et al., 2017; Ghorbani et al., 2019),
  on a Lanczos recursion with full reorthogonalisation written here.

All routines take an explicit ``seed`` (an int or a ``torch.Generator``) and report HVPs used.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np
import scipy.linalg
import torch
from scipy.sparse.linalg import ArpackNoConvergence, eigsh

from rlflat.errors import RlflatError, bad_choice
from rlflat.probe.hvp import HessianOperator, MatVec
from rlflat.probe.seeding import Seed, as_generator

Which = Literal["largest", "smallest"]

__all__ = [
    "NEGATIVE_TOL",
    "Eigenpairs",
    "LanczosResult",
    "SpectralDensity",
    "TraceEstimate",
    "density_from_eigenvalues",
    "eigenpairs",
    "exact_eigenvalues",
    "extreme_eigenpairs",
    "hutchinson_trace",
    "lambda_max_over_abs_sum",
    "lambda_max_over_trace",
    "lanczos",
    "negative_abs_mass_fraction",
    "negative_count_fraction",
    "power_iteration",
    "slq_density",
]


def _rademacher(n: int, gen: torch.Generator) -> torch.Tensor:
    return torch.randint(0, 2, (n,), generator=gen, dtype=torch.int64).to(torch.float64).mul_(2).sub_(1)


def _hvp64(op: MatVec) -> Callable[[torch.Tensor], torch.Tensor]:
    """H @ v with float64 in and out (the product itself runs in the parameters' dtype)."""
    return lambda v: op.matvec(v).to(device="cpu", dtype=torch.float64)


# ----- extreme eigenpairs --------------------------------------------------------------------------


@dataclass(frozen=True)
class Eigenpairs:
    """Eigenvalues ordered most extreme first (descending for 'largest', ascending for 'smallest').

    ``vectors`` is (n, k) float64 with unit columns, or None when not requested; ``hvps`` counts
    Hessian-vector products (n for the dense route); ``method`` is 'exact', 'eigsh' or 'power'.
    """

    values: torch.Tensor
    vectors: torch.Tensor | None
    hvps: int
    method: str


def _check_k(op: HessianOperator, k: int) -> None:
    if not 1 <= k <= op.n:
        raise RlflatError(f"k must be in [1, {op.n}]; got {k}")


def _check_which(which: str) -> None:
    if which not in ("largest", "smallest"):
        raise bad_choice("which", which, ("largest", "smallest"))


def exact_eigenvalues(op: HessianOperator) -> torch.Tensor:
    """All n eigenvalues, ascending, float64, from the dense Hessian (n HVPs + one O(n^3) solve)."""
    return torch.linalg.eigvalsh(op.dense().to(device="cpu", dtype=torch.float64))


def _exact_pairs(h: torch.Tensor, k: int, which: Which, vectors: bool, hvps: int) -> Eigenpairs:
    """Eigenpairs of a dense symmetric float64 matrix; partial LAPACK solve (MRRR) for vectors."""
    n = h.shape[0]
    if not vectors:
        w = torch.linalg.eigvalsh(h)
        vals = w.flip(0)[:k] if which == "largest" else w[:k]
        return Eigenpairs(vals, None, hvps, "exact")
    lo, hi = (n - k, n - 1) if which == "largest" else (0, k - 1)
    w_np, v_np = scipy.linalg.eigh(h.numpy(), subset_by_index=[lo, hi], driver="evr")
    w_t, v_t = torch.from_numpy(w_np), torch.from_numpy(v_np)
    if which == "largest":
        w_t, v_t = w_t.flip(0), v_t.flip(1)
    return Eigenpairs(w_t, v_t, hvps, "exact")


def _eigsh_pairs(
    op: HessianOperator,
    k: int,
    which: Which,
    *,
    tol: float | None,
    maxiter: int | None,
    ncv: int | None,
    seed: Seed,
    vectors: bool,
) -> Eigenpairs:
    if k >= op.n:
        raise RlflatError(f"eigsh needs k < n = {op.n}; got k={k} (use the exact route)")
    if tol is None:
        tol = 1e-8 if op.dtype == torch.float64 else 1e-5
    v0 = _rademacher(op.n, as_generator(seed)).numpy() / math.sqrt(op.n)
    before = op.hvp_count
    try:
        out = eigsh(
            op.as_linear_operator(),
            k=k,
            which="LA" if which == "largest" else "SA",
            tol=tol,
            maxiter=maxiter,
            ncv=ncv,
            v0=v0,
            return_eigenvectors=vectors,
        )
    except ArpackNoConvergence as exc:
        raise RlflatError(
            f"eigsh did not converge for k={k} {which} (tol={tol}, maxiter={maxiter}); "
            "raise maxiter or tol, or use the exact route"
        ) from exc
    w, v = out if vectors else (out, None)
    order = np.argsort(-w) if which == "largest" else np.argsort(w)
    vals = torch.from_numpy(np.ascontiguousarray(w[order]))
    vecs = None if v is None else torch.from_numpy(np.ascontiguousarray(v[:, order]))
    return Eigenpairs(vals, vecs, op.hvp_count - before, "eigsh")


def eigenpairs(
    op: HessianOperator,
    k: int = 5,
    *,
    which: Which = "largest",
    exact_threshold: int = 10_000,
    tol: float | None = None,
    maxiter: int | None = None,
    ncv: int | None = None,
    seed: Seed = 0,
    vectors: bool = True,
) -> Eigenpairs:
    """Top-k largest ('LA') or most negative ('SA') Hessian eigenpairs.

    Uses the exact dense route when ``op.n <= exact_threshold`` (or k >= n), else ARPACK ``eigsh``
    on the matrix-free operator with a seeded Rademacher start vector. ARPACK's ``tol`` bounds each
    residual relative to its eigenvalue. The default (1e-5 for float32 products, 1e-8 for float64)
    sits above float32 round-off; looser values save HVPs but can converge to k Ritz pairs that
    skip a clustered extreme eigenvalue (seen at 1e-4 on a 386-parameter policy). 'smallest' means
    algebraically smallest: on a PSD Hessian these are the smallest non-negative eigenvalues.
    """
    _check_k(op, k)
    _check_which(which)
    if op.n <= exact_threshold or k >= op.n:
        before = op.hvp_count
        h = op.dense().to(device="cpu", dtype=torch.float64)
        return _exact_pairs(h, k, which, vectors, op.hvp_count - before)
    return _eigsh_pairs(op, k, which, tol=tol, maxiter=maxiter, ncv=ncv, seed=seed, vectors=vectors)


def extreme_eigenpairs(
    op: HessianOperator,
    k: int = 5,
    *,
    exact_threshold: int = 10_000,
    tol: float | None = None,
    maxiter: int | None = None,
    ncv: int | None = None,
    seed: Seed = 0,
    vectors: bool = True,
) -> tuple[Eigenpairs, Eigenpairs]:
    """(largest, most negative) top-k eigenpairs; the exact route builds the dense Hessian once.

    The HVP count of the exact route is reported on the first result only (shared cost).
    """
    _check_k(op, k)
    if op.n <= exact_threshold or k >= op.n:
        before = op.hvp_count
        h = op.dense().to(device="cpu", dtype=torch.float64)
        hvps = op.hvp_count - before
        if vectors:
            w, v = torch.linalg.eigh(h)  # one full solve beats two partial ones when both ends are wanted
            top = Eigenpairs(w.flip(0)[:k], v.flip(1)[:, :k], hvps, "exact")
            return top, Eigenpairs(w[:k], v[:, :k], 0, "exact")
        w = torch.linalg.eigvalsh(h)
        return Eigenpairs(w.flip(0)[:k], None, hvps, "exact"), Eigenpairs(w[:k], None, 0, "exact")
    kw = {"tol": tol, "maxiter": maxiter, "ncv": ncv, "seed": seed, "vectors": vectors}
    return _eigsh_pairs(op, k, "largest", **kw), _eigsh_pairs(op, k, "smallest", **kw)  # type: ignore[arg-type]


def power_iteration(
    op: HessianOperator,
    k: int = 5,
    *,
    tol: float = 1e-4,
    maxiter: int = 1000,
    shift: float = 0.0,
    seed: Seed = 0,
) -> Eigenpairs:
    """Top-k eigenpairs of largest magnitude of H - shift*I, by power iteration with deflation.

    The baseline of PyHessian (Yao et al., 2020): each eigenvector is found by power iteration
    kept orthogonal to the previous ones, stopping when the Rayleigh quotient changes by less than
    ``tol`` relative. ``shift`` (e.g. lambda_max) turns it toward the most negative end. Returned
    values are eigenvalues of H (shift added back), in order found.
    """
    _check_k(op, k)
    gen = as_generator(seed)
    hv = _hvp64(op)
    before = op.hvp_count
    found: list[torch.Tensor] = []
    vals: list[float] = []

    def deflate(x: torch.Tensor) -> torch.Tensor:
        for u in found:
            x = x - (u @ x) * u
        return x

    for _ in range(k):
        v = deflate(torch.randn(op.n, generator=gen, dtype=torch.float64))
        v = v / v.norm()
        lam = math.nan
        for _ in range(maxiter):
            w = deflate(hv(v) - shift * v)
            lam_new = float(v @ w)
            norm = float(w.norm())
            if norm == 0.0:
                lam = lam_new
                break
            v = w / norm
            converged = abs(lam_new - lam) < tol * (abs(lam) + 1e-6)
            lam = lam_new
            if converged:
                break
        found.append(v)
        vals.append(lam + shift)
    return Eigenpairs(
        torch.tensor(vals, dtype=torch.float64), torch.stack(found, dim=1), op.hvp_count - before, "power"
    )


# ----- trace -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TraceEstimate:
    """Hutchinson trace estimate with its standard error (sample std / sqrt(m)) and HVPs used."""

    estimate: float
    stderr: float
    n_probes: int
    hvps: int


def hutchinson_trace(op: MatVec, n_probes: int = 100, *, seed: Seed = 0) -> TraceEstimate:
    """tr(H) ~ mean of z^T H z over Rademacher z (Hutchinson, 1989); unbiased, one HVP per probe."""
    if n_probes < 2:
        raise RlflatError(f"n_probes must be >= 2 to give a standard error; got {n_probes}")
    gen = as_generator(seed)
    hv = _hvp64(op)
    before = op.hvp_count
    samples = torch.empty(n_probes, dtype=torch.float64)
    for i in range(n_probes):
        z = _rademacher(op.n, gen)
        samples[i] = z @ hv(z)
    return TraceEstimate(
        estimate=float(samples.mean()),
        stderr=float(samples.std(correction=1) / math.sqrt(n_probes)),
        n_probes=n_probes,
        hvps=op.hvp_count - before,
    )


def lambda_max_over_trace(lambda_max: float, trace: float) -> float | None:
    """lambda_max / tr(H): the share of the total curvature carried by the top direction, or None when tr(H) <= 0.

    The ratio reads as a share only for a positive trace; policy losses are not convex, and where negative
    curvature outweighs positive (tr(H) <= 0, e.g. -0.109 on smoke runs) it is meaningless (and its sign flips),
    so None (null in probe.json) is returned rather than a misleading number. With the whole spectrum known,
    :func:`lambda_max_over_abs_sum` is the signed-safe variant.
    """
    return None if not trace > 0.0 else lambda_max / trace


def lambda_max_over_abs_sum(eigenvalues: torch.Tensor) -> float | None:
    """lambda_max / sum |lambda_i| over the whole spectrum (in [-1, 1], defined whatever the trace's sign), or None
    for an all-zero spectrum."""
    total = float(eigenvalues.abs().sum())
    return None if total == 0.0 else float(eigenvalues.max()) / total


# ----- Lanczos and SLQ ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class LanczosResult:
    """Tridiagonal T (diagonal ``alpha``, off-diagonal ``beta``) and the orthonormal basis rows Q."""

    alpha: torch.Tensor
    beta: torch.Tensor
    basis: torch.Tensor

    def ritz(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Ritz values (ascending) and Gauss quadrature weights (squared first eigenvector entries)."""
        t = torch.diag(self.alpha)
        if self.beta.numel():
            t = t + torch.diag(self.beta, 1) + torch.diag(self.beta, -1)
        nodes, vecs = torch.linalg.eigh(t)
        return nodes, vecs[0] ** 2


def lanczos(
    matvec: Callable[[torch.Tensor], torch.Tensor],
    v0: torch.Tensor,
    steps: int,
    *,
    reorthogonalize: bool = True,
    breakdown_tol: float = 1e-10,
) -> LanczosResult:
    """Symmetric Lanczos in float64 (Lanczos, 1950) from v0, for at most ``steps`` steps.

    With ``reorthogonalize`` each new vector is Gram-Schmidt'ed twice against the whole basis
    ("twice is enough", Parlett, 1998), which removes the ghost eigenvalues of plain Lanczos.
    Stops early on an invariant subspace (beta below ``breakdown_tol`` times the running norm).
    """
    if v0.ndim != 1 or steps < 1:
        raise RlflatError("lanczos needs a 1-D start vector and steps >= 1")
    n = v0.shape[0]
    steps = min(steps, n)
    q = v0.to(torch.float64) / v0.norm().to(torch.float64)
    basis = torch.empty(steps, n, dtype=torch.float64)
    alphas: list[float] = []
    betas: list[float] = []
    scale = 0.0
    q_prev = torch.zeros_like(q)
    beta = 0.0
    for j in range(steps):
        basis[j] = q
        w = matvec(q).to(torch.float64)
        alpha = float(q @ w)
        alphas.append(alpha)
        w = w - alpha * q - beta * q_prev
        if reorthogonalize:
            qs = basis[: j + 1]
            for _ in range(2):
                w = w - qs.T @ (qs @ w)
        beta = float(w.norm())
        scale = max(scale, abs(alpha), beta)
        if j == steps - 1 or beta <= breakdown_tol * max(scale, 1e-300):
            break
        betas.append(beta)
        q_prev, q = q, w / beta
    m = len(alphas)
    return LanczosResult(torch.tensor(alphas, dtype=torch.float64), torch.tensor(betas, dtype=torch.float64), basis[:m])


@dataclass(frozen=True)
class SpectralDensity:
    """Smoothed spectral density phi(t) on ``grid`` plus the raw quadrature.

    ``nodes`` and ``weights`` are (m, s): per probe, the Ritz values and Gauss weights (each row's
    weights sum to 1; rows shorter than s are padded with zero weight). The density integrates to
    ~1 and its mean estimates tr(H)/n.
    """

    grid: torch.Tensor
    density: torch.Tensor
    nodes: torch.Tensor
    weights: torch.Tensor
    sigma: float
    hvps: int


def _smooth(
    nodes: torch.Tensor, weights: torch.Tensor, grid_size: int, sigma: float | None, sigma2_rel: float
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Gaussian-kernel smoothing of the probe-averaged quadrature onto a grid."""
    if grid_size < 2:
        raise RlflatError(f"grid_size must be >= 2; got {grid_size}")
    live = weights > 0
    lo, hi = float(nodes[live].min()), float(nodes[live].max())
    if sigma is None:
        # Ghorbani et al. (2019): sigma^2 = 1e-5 on a spectrum rescaled to [-1, 1].
        half = 0.5 * (hi - lo) if hi > lo else max(abs(hi), 1.0)
        sigma = math.sqrt(sigma2_rel) * half
    if sigma <= 0:
        raise RlflatError(f"sigma must be > 0; got {sigma}")
    pad = 8.0 * sigma
    grid = torch.linspace(lo - pad, hi + pad, grid_size, dtype=torch.float64)
    w = weights.reshape(-1) / nodes.shape[0]
    t = nodes.reshape(-1)[w > 0]
    w = w[w > 0]
    dens = torch.zeros_like(grid)
    norm = 1.0 / (sigma * math.sqrt(2.0 * math.pi))
    for start in range(0, t.numel(), 256):  # bounded memory: grid x 256 nodes at a time
        z = (grid[:, None] - t[None, start : start + 256]) / sigma
        dens += (torch.exp(-0.5 * z * z) * w[None, start : start + 256]).sum(1) * norm
    return grid, dens, sigma


def slq_density(
    op: HessianOperator,
    *,
    n_probes: int = 4,
    steps: int = 90,
    grid_size: int = 10_000,
    sigma: float | None = None,
    sigma2_rel: float = 1e-5,
    seed: Seed = 0,
) -> SpectralDensity:
    """Stochastic Lanczos quadrature estimate of the Hessian eigenvalue density.

    Each probe is a normalised Rademacher vector; ``steps`` Lanczos steps with full
    reorthogonalisation give Ritz nodes and Gauss weights, averaged over probes and smoothed by a
    Gaussian of width ``sigma`` (default: Ghorbani et al., 2019, sigma^2 = ``sigma2_rel`` on the
    Ritz range rescaled to [-1, 1]).
    """
    if n_probes < 1 or steps < 1:
        raise RlflatError(f"n_probes and steps must be >= 1; got {n_probes}, {steps}")
    gen = as_generator(seed)
    hv = _hvp64(op)
    before = op.hvp_count
    s = min(steps, op.n)
    nodes = torch.zeros(n_probes, s, dtype=torch.float64)
    weights = torch.zeros(n_probes, s, dtype=torch.float64)
    for i in range(n_probes):
        res = lanczos(hv, _rademacher(op.n, gen), s)
        nd, wt = res.ritz()
        nodes[i, : nd.numel()] = nd
        weights[i, : wt.numel()] = wt
    grid, dens, sig = _smooth(nodes, weights, grid_size, sigma, sigma2_rel)
    return SpectralDensity(grid, dens, nodes, weights, sig, op.hvp_count - before)


def density_from_eigenvalues(
    eigenvalues: torch.Tensor, *, grid_size: int = 10_000, sigma: float | None = None, sigma2_rel: float = 1e-5
) -> SpectralDensity:
    """The exact counterpart of :func:`slq_density`: every eigenvalue a node of weight 1/n."""
    if eigenvalues.ndim != 1 or eigenvalues.numel() == 0:
        raise RlflatError("eigenvalues must be a non-empty 1-D tensor")
    e = eigenvalues.to(device="cpu", dtype=torch.float64)[None]
    w = torch.full_like(e, 1.0 / e.shape[1])
    grid, dens, sig = _smooth(e, w, grid_size, sigma, sigma2_rel)
    return SpectralDensity(grid, dens, e, w, sig, 0)


NEGATIVE_TOL = 1e-3
"""Eigenvalues below -NEGATIVE_TOL * max|lambda| count as negative, on both routes: above float32 round-off of the
HVPs (~1e-6 relative) and of SLQ's resolution of the cluster at zero, so neither route counts rounding noise."""


def negative_count_fraction(
    nodes: torch.Tensor, weights: torch.Tensor, *, scale: float | None = None, tol: float = NEGATIVE_TOL
) -> float | None:
    """The spectral mass below -tol * scale: the fraction of eigenvalues that are clearly negative.

    One definition for both routes: ``nodes`` / ``weights`` are the eigenvalues with weight 1 each (exact) or the
    SLQ Ritz nodes with their Gauss weights (each probe's summing to 1); weights are summed. ``scale`` defaults to
    the largest |node| of positive weight (max |lambda|; SLQ's extreme Ritz values converge to the extreme
    eigenvalues). None for an all-zero spectrum.
    """
    live = weights > 0
    if not bool(live.any()):
        return None
    if scale is None:
        scale = float(nodes[live].abs().max())
    if scale == 0.0:
        return None
    return float((weights * (nodes < -tol * scale)).sum() / weights.sum())


def negative_abs_mass_fraction(nodes: torch.Tensor, weights: torch.Tensor) -> float | None:
    """sum |lambda| over negative eigenvalues / sum |lambda| over all (weights as in
    :func:`negative_count_fraction`), or None for an all-zero spectrum."""
    a = weights * nodes.abs()
    total = float(a.sum())
    return None if total == 0.0 else float((a * (nodes < 0)).sum()) / total
