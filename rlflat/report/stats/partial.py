"""Partial Spearman correlation: the association of a measure and a metric once the algorithm and confounds
(e.g. policy entropy) are accounted for.

Ranks of x and y are regressed (least squares, numpy's ``lstsq``) on an intercept, one indicator per stratum but
the first (the algorithm) and the ranks of each confound; the partial coefficient is Pearson's r of the residuals
(the rank analogue of the classic partial correlation; with one covariate it equals
(r_xy - r_xz r_yz) / sqrt((1 - r_xz^2)(1 - r_yz^2)) on ranks, which the tests check). The interval is Fisher's z
with the Bonett-Wright variance on n - k degrees of freedom (k covariates), the p-value a permutation test that
shuffles y within strata (so the algorithm labels keep their share of each).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pandas as pd
from scipy import stats as sps

from rlflat.errors import RlflatError
from rlflat.report.stats._common import SeedLike, rng_from
from rlflat.report.stats.correlation import fisher_z_interval

__all__ = ["PartialResult", "partial_spearman"]

_RESIDUAL_RTOL = 1e-9
"""Residual norm, relative to the norm of the ranks, below which a side counts as fully explained by the covariates."""


@dataclass(frozen=True)
class PartialResult:
    estimate: float
    ci_low: float
    ci_high: float
    n: int
    n_covariates: int
    p_value: float
    covariates: tuple[str, ...]
    reason: str = ""


def _design(strata: np.ndarray, confounds: np.ndarray) -> np.ndarray:
    codes = pd.factorize(strata)[0]
    columns = [np.ones(codes.size)]
    columns += [(codes == level).astype(np.float64) for level in range(1, int(codes.max()) + 1)] if codes.size else []
    columns += [sps.rankdata(confounds[:, j]) for j in range(confounds.shape[1])]
    return np.column_stack(columns)


def _residual_r(design: np.ndarray, rx: np.ndarray, ry: np.ndarray) -> np.ndarray:
    """Pearson r of residuals of rx and of each row of ry (B, n) on ``design``; NaN where a side is explained by it.

    A side the covariates explain exactly (y constant within strata, or a function of a confound's ranks) leaves
    residuals at rounding level, ~1e-16 of the ranks, not zero: their direction is noise, and correlating it gave
    arbitrary values (0.74 for a constant y beside one confound). Residuals below ``_RESIDUAL_RTOL`` of the ranks'
    norm therefore count as zero.
    """
    q, _ = np.linalg.qr(design)
    ex = rx - q @ (q.T @ rx)
    ey = ry - (ry @ q) @ q.T
    sx = float(ex @ ex)
    sy = np.einsum("ij,ij->i", ey, ey)
    if sx <= _RESIDUAL_RTOL**2 * float(rx @ rx):
        sx = 0.0
    sy = np.where(sy <= _RESIDUAL_RTOL**2 * np.einsum("ij,ij->i", ry, ry), 0.0, sy)
    den = np.sqrt(sx * sy)
    defined = den > 0
    return np.asarray(np.where(defined, (ey @ ex) / np.where(defined, den, 1.0), np.nan))


def partial_spearman(
    x: npt.ArrayLike,
    y: npt.ArrayLike,
    *,
    seed: SeedLike,
    strata: npt.ArrayLike | None = None,
    confounds: npt.ArrayLike | None = None,
    confound_names: Sequence[str] = (),
    n_perm: int = 9999,
    confidence: float = 0.95,
) -> PartialResult:
    """Spearman's rho of x and y partialling out the strata (indicators) and the ranks of ``confounds`` (n, k)."""
    xa = np.asarray(x, dtype=np.float64).ravel()
    ya = np.asarray(y, dtype=np.float64).ravel()
    labels = np.zeros(xa.size, dtype=np.int64) if strata is None else np.asarray(strata).ravel()
    if xa.size == 0:
        return PartialResult(math.nan, math.nan, math.nan, 0, 0, math.nan, tuple(confound_names), "no runs")
    conf = np.empty((xa.size, 0)) if confounds is None else np.asarray(confounds, dtype=np.float64).reshape(xa.size, -1)
    if not xa.size == ya.size == labels.size == conf.shape[0]:
        raise RlflatError(f"x, y, strata and confounds need one row per run, got {xa.size}, {ya.size}, {labels.size}")
    keep = np.isfinite(xa) & np.isfinite(ya) & np.all(np.isfinite(conf), axis=1)
    xa, ya, labels, conf = xa[keep], ya[keep], labels[keep], conf[keep]
    design = _design(labels, conf)
    n, k = int(xa.size), design.shape[1] - 1
    names = tuple(confound_names)
    if n - k < 4 or np.linalg.matrix_rank(design) < design.shape[1]:
        return PartialResult(math.nan, math.nan, math.nan, n, k, math.nan, names, f"n={n} too few for {k} covariates")
    rx, ry = sps.rankdata(xa), sps.rankdata(ya)
    estimate = float(_residual_r(design, rx, ry[None])[0])
    if not math.isfinite(estimate):
        return PartialResult(math.nan, math.nan, math.nan, n, k, math.nan, names, "a side is constant given covariates")
    rng = rng_from(seed)
    codes = pd.factorize(labels)[0]
    permuted = np.tile(ry, (n_perm, 1))
    for level in range(int(codes.max()) + 1):
        idx = np.flatnonzero(codes == level)
        permuted[:, idx] = rng.permuted(permuted[:, idx], axis=1)
    null = _residual_r(design, rx, permuted)
    p_value = (1 + int(np.sum(np.abs(null) >= abs(estimate) - 1e-12))) / (1 + n_perm)
    lo, hi = fisher_z_interval(estimate, n - k, "spearman", confidence)
    return PartialResult(estimate, lo, hi, n, k, p_value, names)
