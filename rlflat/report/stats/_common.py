"""Shared pieces of the report statistics: seeds, argument checks, labels and small numeric helpers."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
import pandas as pd

from rlflat.errors import RlflatError, bad_choice

SeedLike = int | np.random.Generator
FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

POOLED = "pooled"
"""Task label of rows that pool every task (correlations) or aggregate over tasks (comparisons)."""


def rng_from(seed: SeedLike) -> np.random.Generator:
    """Explicit generator from a non-negative int or a Generator; refuse None so results are reproducible."""
    if seed is None or isinstance(seed, bool):
        raise RlflatError(f"seed must be a non-negative int or numpy Generator, got {seed!r}")
    if not isinstance(seed, int | np.integer | np.random.Generator):
        raise RlflatError(f"seed must be a non-negative int or numpy Generator, got {seed!r}")
    if isinstance(seed, int | np.integer) and seed < 0:
        raise RlflatError(f"seed must be a non-negative int, got {seed!r}")
    return np.random.default_rng(seed)


def check_choice(what: str, value: object, choices: Sequence[object]) -> None:
    if value not in choices:
        raise bad_choice(what, value, choices)


def check_count(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise RlflatError(f"{name} must be a positive integer, got {value!r}")


def check_confidence(confidence: float) -> None:
    if not 0.0 < confidence < 1.0:
        raise RlflatError(f"confidence must lie strictly between 0 and 1, got {confidence!r}")


def check_columns(runs: pd.DataFrame, columns: Sequence[str]) -> None:
    missing = [c for c in columns if c not in runs.columns]
    if missing:
        raise RlflatError(f"unknown column(s) {missing!r}; valid choices: {', '.join(map(str, runs.columns))}")


def holm(p_values: npt.ArrayLike) -> FloatArray:
    """Holm (1979) step-down adjusted p-values; NaNs stay NaN and do not count as tests.

    Controls the family-wise error rate for any dependence between the tests (the heatmap's
    measure x metric cells share runs, so they are dependent).
    """
    p = np.asarray(p_values, dtype=np.float64)
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(np.isfinite(p))
    m = ok.size
    if m == 0:
        return out
    order = ok[np.argsort(p[ok], kind="stable")]
    adjusted = np.maximum.accumulate((m - np.arange(m)) * p[order])
    out[order] = np.minimum(adjusted, 1.0)
    return out
