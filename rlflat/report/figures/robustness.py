"""Robustness under shifted dynamics: normalised-return curves per parameter and 2-D dynamics grids."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd
import seaborn as sns

from rlflat.report.figures.style import (
    FigAxes,
    FigureSkipped,
    Palette,
    _algo_ci,
    _factor_axis,
    _grid,
    _legend,
    _ncols,
    _wrap,
    figure_style,
)

# ----------------------------------------------------------------------------- (2) robustness curves


def plot_robustness_curves(
    curves: pd.DataFrame,
    palette: Palette,
    axis_labels: Mapping[tuple[str, str], str],
    *,
    threshold: float = 0.5,
    seed: int = 0,
    n_boot: int = 1000,
) -> FigAxes:
    """Normalised return vs perturbation, mean over runs with a 95% bootstrap CI band, per algorithm.

    ``curves`` is tidy: ``task``, ``panel`` (a dynamics parameter or noise family), ``x`` (factor of
    nominal, or noise level), ``log`` (whether x is a factor), ``algo``, ``run_id``, ``normalized_return``.
    ``axis_labels`` maps (task, panel) to the x-axis label. The dashed line is the collapse threshold
    (the evaluator's ``collapse_frac``, read from the runs table).
    """
    if curves.empty:
        raise FigureSkipped("no robustness.parquet with one-axis sweeps or noise levels")
    panels = list(dict.fromkeys(zip(curves["task"].astype(str), curves["panel"].astype(str), strict=True)))
    tasks = {t for t, _ in panels}
    algos = sorted(curves["algo"].astype(str).unique())
    with figure_style():
        fig, axes = _grid(len(panels), sharey=True)
        for ax, (task, panel) in zip(axes, panels, strict=True):
            sub = curves[(curves["task"].astype(str) == task) & (curves["panel"].astype(str) == panel)]
            sns.lineplot(
                data=sub,
                x="x",
                y="normalized_return",
                estimator="mean",
                marker="o",
                markersize=4,
                markeredgewidth=0,
                linewidth=1.8,
                **_algo_ci(algos, palette, ax, seed=seed, n_boot=n_boot),
            )
            ax.axhline(threshold, color="0.2", linestyle="--", linewidth=1.1)
            if bool(sub["log"].iloc[0]):
                _factor_axis(ax, sub["x"])
                ax.axvline(1.0, color="0.6", linewidth=0.8, zorder=0)
            ax.set_title(f"{task}: {panel}" if len(tasks) > 1 else panel)
            ax.set_xlabel(_wrap(axis_labels.get((task, panel), "factor of nominal"), 36))  # one panel wide
            ax.set_ylabel("normalised return")
        lo = min(0.0, float(np.nanmin(curves["normalized_return"])))
        hi = max(1.1, float(np.nanmax(curves["normalized_return"])))
        axes[0].set_ylim(lo - 0.05, hi + 0.05)
        _legend(fig, algos, palette, markers=False, threshold=threshold)
    return fig, axes


# ----------------------------------------------------------------------------- (3) 2-D dynamics grids


def plot_dynamics_grid(grid: pd.DataFrame, x_label: str, y_label: str, title: str) -> FigAxes:
    """Mean normalised return over a 2-D grid of factors, one heatmap per algorithm, a shared 0-1 scale.

    ``grid`` is tidy: ``algo``, ``fx``, ``fy`` (factors of nominal), ``normalized_return`` (per run;
    averaged here). Larger factors are up and right. Cells are annotated when the grid is small.
    """
    if grid.empty:
        raise FigureSkipped("no 2-D dynamics grid was evaluated")
    algos = sorted(grid["algo"].astype(str).unique())
    mean = grid.groupby(["algo", "fy", "fx"], as_index=False)["normalized_return"].mean()
    nx, ny = mean["fx"].nunique(), mean["fy"].nunique()
    annotate = nx <= 7 and ny <= 7
    side = 1.6 + 0.32 * max(nx, ny)
    ncols = _ncols(len(algos))
    with figure_style():
        fig, axes = _grid(len(algos), ncols=ncols, panel=(side + 0.4, side + 0.5))
        for i, (ax, algo) in enumerate(zip(axes, algos, strict=True)):
            table = mean[mean["algo"] == algo].pivot(index="fy", columns="fx", values="normalized_return")
            table = table.sort_index(ascending=False)
            sns.heatmap(
                table,
                ax=ax,
                vmin=0,
                vmax=1,
                cmap="rocket",
                annot=annotate,
                fmt=".2f",
                annot_kws={"fontsize": 7.5},
                cbar=False,
                square=True,
            )
            ax.set_xticklabels([f"{float(t.get_text()):.2g}" for t in ax.get_xticklabels()], rotation=0)
            ax.set_yticklabels([f"{float(t.get_text()):.2g}" for t in ax.get_yticklabels()], rotation=0)
            ax.set_title(algo)
            ax.set_xlabel(x_label)
            ax.set_ylabel(y_label if i % ncols == 0 else "")
        fig.colorbar(axes[0].collections[0], ax=list(axes), label="normalised return", shrink=0.8)
        fig.suptitle(title, fontweight="bold")
    return fig, axes
