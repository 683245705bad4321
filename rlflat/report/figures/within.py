"""Flatness vs robustness inside each algorithm: one panel per algorithm, one fit per algorithm."""

from __future__ import annotations

import pandas as pd
import seaborn as sns
from scipy import stats as sps

from rlflat.report.figures.style import (
    FigAxes,
    FigureSkipped,
    Palette,
    _grid,
    _ncols,
    _wrap,
    algo_marker,
    column_label,
    figure_style,
)


def plot_within_algorithm(
    runs: pd.DataFrame, measure: str, metric: str, palette: Palette, strata: pd.Series | None = None
) -> FigAxes:
    """Each stratum's runs (measure vs metric) with its own least-squares line; the title gives that stratum's
    Spearman rho and n (the claim is the stratified estimate in the report's table, not these lines). Strata are
    the algorithms unless ``strata`` (one label per run, :mod:`rlflat.report.stats.strata`) is given."""
    data = runs[["algo", measure, metric]].copy()
    data["stratum"] = data["algo"].astype(str) if strata is None else strata.astype(str)
    data[measure] = pd.to_numeric(data[measure], errors="coerce")
    data[metric] = pd.to_numeric(data[metric], errors="coerce")
    data = data.dropna()
    groups = sorted(data["stratum"].unique())
    if not groups:
        raise FigureSkipped(f"no run has both {measure} and {metric}")
    with figure_style():
        fig, axes = _grid(len(groups), ncols=_ncols(len(groups)), sharey=True)
        for ax, group in zip(axes, groups, strict=True):
            sub = data[data["stratum"] == group]
            algo = str(sub["algo"].iloc[0])
            ax.scatter(sub[measure], sub[metric], color=palette[algo], marker=algo_marker(algo), s=36, zorder=3)
            title = f"{group} (n = {len(sub)})"
            if len(sub) >= 3 and sub[measure].nunique() > 1 and sub[metric].nunique() > 1:
                sns.regplot(data=sub, x=measure, y=metric, ax=ax, scatter=False, ci=None, color=palette[algo])
                title += f"\nSpearman ρ = {sps.spearmanr(sub[measure], sub[metric]).statistic:.2f}"
            ax.set_title(title)
            ax.set_xlabel(_wrap(column_label(measure)))
            ax.set_ylabel(_wrap(column_label(metric)))
        return fig, axes
