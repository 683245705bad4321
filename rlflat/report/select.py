"""Which columns the report analyses: pre-declared headline measures and metrics, resolved, varying and distinct.

Choosing columns by how deeply they are nested or where they sit in the table picks arbitrarily between
equals (``force_mag`` over ``length``) and keeps duplicates (``worst_return`` is ``worst_dynamics_return``
when no noise family is evaluated). The headline pairs are therefore declared up front
(:class:`rlflat.report.settings.ReportSettings`), each resolved through a short alias list (the runs table
has used both ``probe.lambda_max`` and ``probe.hessian.lambda_max``), and columns holding identical values are
reported once. Everything else stays in the CSV tables.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd

from rlflat.report.figures.style import split_algo

MEASURE_PREFIX = "probe."
METRIC_PREFIXES = ("robustness.",)
ALIASES: dict[str, tuple[str, ...]] = {
    "probe.lambda_max": ("probe.hessian.lambda_max",),
    "probe.lambda_min": ("probe.hessian.lambda_min",),
    "probe.trace": ("probe.hessian.trace",),
    "probe.kl_sigma0p1": ("probe.kl_reference",),
    "robustness.auc_mean": ("robustness.auc",),
    "robustness.worst_dynamics_return": ("robustness.worst_return",),
    "robustness.collapsed_fraction": ("robustness.frac_collapsed",),
}
# Bookkeeping numbers under probe./robustness. that are not sharpness measures or robustness metrics.
_NOT_A_MEASURE = re.compile(
    r"(stderr|std_err|_se$|_batches$|n_params|n_hvp|hvps|seconds|n_probes|n_samples|episodes|\.seed$|config\.|loss_value"
    r"|^probe\.loss$|^probe\.batches$|^probe\.batch_size$"
    r"|^probe\.(entropy|max_action_prob|log_std)$|^probe\.param_norm\.)"  # confounds: controls, not sharpness
)
_NOT_A_METRIC = re.compile(
    r"(episodes|n_settings|seconds|\.seed$|config\.|ci_low|ci_high|normalization|worst_setting|_std$|within_range"
    r"|deterministic|nominal_return|collapse_frac$|collapse_(low|high)$|max_log_factor|max_level|censored)"
)


def _numeric_with_data(runs: pd.DataFrame, columns: Iterable[str], min_finite: int) -> list[str]:
    keep = []
    for column in columns:
        values = pd.to_numeric(runs[column], errors="coerce") if runs[column].dtype != bool else None
        if values is None or (runs[column].dtype == object and values.isna().all()):
            continue
        if int(np.isfinite(values.to_numpy(dtype=np.float64, na_value=np.nan)).sum()) >= min_finite:
            keep.append(column)
    return keep


def measure_columns(runs: pd.DataFrame, min_finite: int = 2) -> list[str]:
    """Sharpness measures: numeric ``probe.*`` columns with data, bookkeeping (stderr, counts) left out."""
    names = [c for c in runs.columns if str(c).startswith(MEASURE_PREFIX) and not _NOT_A_MEASURE.search(str(c))]
    return _numeric_with_data(runs, names, min_finite)


def metric_columns(runs: pd.DataFrame, min_finite: int = 2) -> list[str]:
    """Robustness metrics: numeric ``robustness.*`` columns with data, bookkeeping left out."""
    names = [c for c in runs.columns if str(c).startswith(METRIC_PREFIXES) and not _NOT_A_METRIC.search(str(c))]
    return _numeric_with_data(runs, names, min_finite)


def first_present(columns: Sequence[str], preferred: Sequence[str]) -> str | None:
    """The first of ``preferred`` (exact name, or a dotted prefix of one) found in ``columns``."""
    for want in preferred:
        for column in columns:
            if column == want or column.startswith(want + "."):
                return column
    return None


def resolve(runs: pd.DataFrame, wanted: Sequence[str]) -> list[str]:
    """Each wanted column, or its first alias present in ``runs``; absent ones are dropped (in order)."""
    out = []
    for name in wanted:
        for candidate in (name, *ALIASES.get(name, ())):
            if candidate in runs.columns:
                out.append(candidate)
                break
    return list(dict.fromkeys(out))


def varying(runs: pd.DataFrame, columns: Iterable[str]) -> list[str]:
    """Columns whose finite values are not all equal (a constant cannot be correlated or compared)."""
    out = []
    for c in columns:
        v = pd.to_numeric(runs[c], errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
        v = v[np.isfinite(v)]
        if v.size >= 2 and np.ptp(v) > 0:
            out.append(c)
    return out


def distinct(runs: pd.DataFrame, columns: Sequence[str]) -> tuple[list[str], dict[str, str]]:
    """Drop a column whose values equal an earlier one's on every run; return (kept, dropped -> kept twin)."""
    kept: list[str] = []
    twins: dict[str, str] = {}
    for c in columns:
        v = pd.to_numeric(runs[c], errors="coerce")
        twin = next((k for k in kept if v.equals(pd.to_numeric(runs[k], errors="coerce"))), None)
        if twin is None:
            kept.append(c)
        else:
            twins[c] = twin
    return kept, twins


def comparison_pairs(algos: Sequence[str]) -> list[tuple[str, str]]:
    """Every flatness variant with its base present: (ppo_sam, ppo), (pg_asam, pg), ..."""
    return [(a, split_algo(a)[0]) for a in algos if split_algo(a)[1] and split_algo(a)[0] in algos]
