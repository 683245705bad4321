"""Power of a rank-correlation test: which |rho| can n runs detect, and how likely is a design to detect a given one?

Large-sample approximation on Fisher's z scale, with the same variance the intervals use (Bonett & Wright 2000:
(1 + rho^2/2) / (n - 3) for Spearman; Fieller et al. 1957: 0.437 / (n - 4) for Kendall): a two-sided test at
level alpha rejects when |atanh(r)| / se > z_{1 - alpha/2}, so its power at rho is about
Phi(|atanh(rho)| / se(rho) - z_{1 - alpha/2}). For strata (within-algorithm correlations) n is the equivalent n of
the pooled coefficient (:func:`rlflat.report.stats.correlation.equivalent_n`), so a design of four algorithms
of seven runs has far less power than 28 runs in one stratum. ``tests/test_report_stats.py`` checks the
approximation against simulated bivariate-normal samples.
"""

from __future__ import annotations

import math

import numpy.typing as npt
from scipy import optimize as spo
from scipy import stats as sps

from rlflat.report.stats.correlation import equivalent_n

__all__ = ["correlation_power", "min_detectable_rho", "stratified_power"]

POWER = 0.8
ALPHA = 0.05


def _se(rho: float, n: float, method: str) -> float:
    offset = 3.0 if method == "spearman" else 4.0
    if n <= offset:
        return math.inf
    return math.sqrt(((1.0 + rho * rho / 2.0) if method == "spearman" else 0.437) / (n - offset))


def correlation_power(rho: float, n: float, method: str = "spearman", alpha: float = ALPHA) -> float:
    """Approximate power of the two-sided test of no association at true coefficient ``rho`` with ``n`` runs."""
    se = _se(rho, n, method)
    if not math.isfinite(se):
        return math.nan
    z = math.atanh(min(abs(rho), 0.999)) / se
    crit = float(sps.norm.ppf(1.0 - alpha / 2.0))
    return float(sps.norm.cdf(z - crit) + sps.norm.cdf(-z - crit))


def min_detectable_rho(n: float, method: str = "spearman", power: float = POWER, alpha: float = ALPHA) -> float:
    """The smallest |rho| that ``n`` runs detect with ``power`` (NaN when even |rho| = 0.999 is not enough)."""
    if not (math.isfinite(n) and correlation_power(0.999, n, method, alpha) >= power):
        return math.nan
    return float(spo.brentq(lambda r: correlation_power(r, n, method, alpha) - power, 1e-9, 0.999))


def stratified_power(rho: float, sizes: npt.ArrayLike, method: str = "spearman", alpha: float = ALPHA) -> float:
    """Power of the within-strata (pooled) test at ``rho`` for strata of ``sizes`` runs."""
    return correlation_power(rho, equivalent_n(method, sizes), method, alpha)
