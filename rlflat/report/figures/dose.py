"""A measure against a dose (the minibatch size of the flatness-roads study): per-run points, per-dose means
with their standard errors, and the fitted line on log2(dose) with its slope's interval in the title."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from rlflat.report.figures.style import FigAxes, FigureSkipped, _grid, column_label, figure_style

__all__ = ["plot_dose_response"]


def plot_dose_response(
    points: Mapping[str, pd.DataFrame], fits: pd.DataFrame, metrics: Sequence[str], dose_label: str = "batch size"
) -> FigAxes:
    """One panel per (task, metric). ``points[task]`` has a ``dose`` column and one column per metric; ``fits`` is
    :func:`rlflat.report.roads.dose_response`'s table (slope per doubling and its interval)."""
    panels = [(t, m) for t in sorted(points) for m in metrics if m in points[t].columns]
    if not panels:
        raise FigureSkipped("no runs with a dose and a measure")
    with figure_style():
        fig, axes = _grid(len(panels), ncols=min(3, len(panels)), panel=(4.2, 3.3))
        for ax, (task, metric) in zip(axes, panels, strict=True):
            frame = points[task][["dose", metric]].apply(pd.to_numeric, errors="coerce").dropna()
            x, y = np.log2(frame["dose"].to_numpy(float)), frame[metric].to_numpy(float)
            ax.scatter(x, y, s=12, color="0.55", alpha=0.7, linewidths=0)
            grouped = frame.groupby("dose")[metric]
            doses = np.log2(np.asarray(grouped.mean().index, dtype=float))
            se = grouped.std(ddof=1) / np.sqrt(grouped.count())
            ax.errorbar(doses, grouped.mean(), yerr=se.fillna(0), fmt="o-", color="#1f77b4", capsize=3, linewidth=1.5)
            row = fits[(fits["task"] == task) & (fits["metric"] == metric)]
            title = task
            if not row.empty and np.isfinite(row["slope"].iloc[0]):
                r = row.iloc[0]
                fit = np.polyfit(x, y, 1)
                grid = np.linspace(x.min(), x.max(), 20)
                ax.plot(grid, np.polyval(fit, grid), color="#d62728", linewidth=1.2, linestyle="--")
                title = f"{task}: slope {r['slope']:.3g} [{r['slope_low']:.3g}, {r['slope_high']:.3g}] per doubling"
            ax.set_xticks(doses, [f"{round(2**d)}" for d in doses])
            ax.set_xlabel(dose_label)
            ax.set_ylabel(column_label(metric))
            ax.set_title(title, fontsize=9)
    return fig, axes
