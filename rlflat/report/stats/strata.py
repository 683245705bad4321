"""The strata of every "within" statistic: configurations, not algorithm labels.

An algorithm run at two SAM radii (or three learning rates) is two (three) configurations, and a within-algorithm
coefficient that pools them lets a radius that moves both sharpness and robustness pass for variation among
seeds. A stratum is therefore the task x algorithm x every hyperparameter (``hp.*`` column) that takes more than
one value inside some algorithm of the study; one definition serves the within-stratum correlations, the partial
correlations, the within figure and the power sentences. A stratum of fewer than :data:`MIN_STRATUM_RUNS` runs
is reported and left out of the pooled within estimate: a 3-run Spearman is one of 6 orderings (|rho| 1 or 0.5),
it adds weight but no degrees of freedom to Fisher's z (n - 3 = 0).
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

__all__ = ["MIN_STRATUM_RUNS", "configuration_columns", "configuration_labels", "strata_sentence", "strata_table"]

MIN_STRATUM_RUNS = 4
"""Fewest runs (complete pairs) for a stratum to enter a pooled within estimate."""
SEPARATOR = "\x1f"
"""Between the task and the configuration in a stratum key (never in a task or algorithm name)."""


def configuration_columns(runs: pd.DataFrame, algo_col: str = "algo") -> list[str]:
    """The ``hp.*`` columns that take more than one value (NaN counted as a value) inside some algorithm."""
    if algo_col not in runs or runs.empty:
        return []
    columns = [c for c in runs.columns if str(c).startswith("hp.")]
    by_algo = runs.groupby(runs[algo_col].astype(str))
    return [c for c in columns if (by_algo[c].nunique(dropna=False) > 1).any()]


def _value(value: object) -> str:
    return (
        "—"
        if value is None or (isinstance(value, float) and value != value)
        else f"{value:g}"
        if isinstance(value, float)
        else str(value)
    )


def configuration_labels(
    runs: pd.DataFrame, columns: Sequence[str], *, algo_col: str = "algo", task_col: str | None = "task"
) -> pd.Series:
    """Per run, its configuration: ``algo`` then ``name=value`` for each of ``columns`` (``hp.`` dropped), the task
    (and :data:`SEPARATOR`) in front when ``task_col`` is given, so strata never span tasks."""
    labels = runs[algo_col].astype(str)
    for column in columns:
        labels = labels + f", {str(column).removeprefix('hp.')}=" + runs[column].map(_value)
    if task_col is not None:
        labels = runs[task_col].astype(str) + SEPARATOR + labels
    return labels


def strata_table(labels: pd.Series, complete: pd.Series | None = None) -> pd.DataFrame:
    """One row per stratum: ``task``, ``configuration``, ``runs`` (complete ones where ``complete`` is given) and
    ``entered`` (at least :data:`MIN_STRATUM_RUNS`)."""
    counted = labels if complete is None else labels[complete.to_numpy(dtype=bool)]
    sizes = counted.value_counts().reindex(pd.unique(labels), fill_value=0).sort_index()
    split = [str(k).split(SEPARATOR, 1) if SEPARATOR in str(k) else ["", str(k)] for k in sizes.index]
    return pd.DataFrame(
        {
            "task": [s[0] for s in split],
            "configuration": [s[1] for s in split],
            "runs": sizes.to_numpy(dtype=int),
            "entered": sizes.to_numpy() >= MIN_STRATUM_RUNS,
        }
    )


def strata_sentence(table: pd.DataFrame, columns: Sequence[str]) -> str:
    """Which strata entered the within estimates and which were left out, in one sentence."""
    by = "algorithm" + "".join(f" x {str(c).removeprefix('hp.')}" for c in columns)

    def listed(rows: pd.DataFrame) -> str:
        return ", ".join(f"{r.configuration} ({r.runs})" for r in rows.itertuples()) or "none"

    left = table[~table["entered"]]
    return (
        f"Within strata are configurations ({by}; task apart): entered (runs) {listed(table[table['entered']])}; "
        f"left out (fewer than {MIN_STRATUM_RUNS} runs) {listed(left)}."
    )
