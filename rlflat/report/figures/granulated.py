"""Granulated Kendall per factor, one panel per task (and one for the pooled estimate): psi_i with its CI."""

from __future__ import annotations

import math

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from rlflat.report.figures.style import FigAxes, FigureSkipped, column_label, figure_style
from rlflat.report.stats._common import POOLED

__all__ = ["plot_granulated_kendall"]


def plot_granulated_kendall(summary: pd.DataFrame) -> FigAxes:
    """Horizontal psi bars per factor (rows) and measure (colours), 95% CI whiskers; one panel per task.

    ``summary``: :func:`rlflat.report.stats.granulated_summary.granulated_summary`'s table. A pooled panel comes
    last with Cochran's Q p-value and I^2 in its title (how much the tasks disagree).
    """
    if summary.empty or not np.isfinite(summary["psi"].to_numpy(dtype=float)).any():
        raise FigureSkipped("no defined granulated Kendall coefficient")
    tasks = [t for t in dict.fromkeys(summary["task"]) if t != POOLED] + (
        [POOLED] if (summary["task"] == POOLED).any() else []
    )
    measures = list(dict.fromkeys(summary["measure"]))
    factors = list(dict.fromkeys(summary["factor"]))
    height = 0.8 / max(len(measures), 1)
    with figure_style():
        fig, axes = plt.subplots(1, len(tasks), figsize=(3.2 * len(tasks), 0.55 * len(factors) * len(measures) + 1.6),
                                 sharex=True, sharey=True, squeeze=False)  # fmt: skip
        colours = plt.get_cmap("tab10")
        for ax, task in zip(axes[0], tasks, strict=True):
            part = summary[summary["task"] == task]
            for m, measure in enumerate(measures):
                rows = part[part["measure"] == measure].set_index("factor").reindex(factors)
                y = np.arange(len(factors)) + (m - (len(measures) - 1) / 2) * height
                psi = rows["psi"].to_numpy(dtype=float)
                lo = np.clip(np.nan_to_num(psi - rows["ci_low"].to_numpy(dtype=float)), 0.0, None)
                hi = np.clip(np.nan_to_num(rows["ci_high"].to_numpy(dtype=float) - psi), 0.0, None)
                ax.barh(
                    y, np.nan_to_num(psi), height=height * 0.9, color=colours(m), label=column_label(measure, False)
                )
                ax.errorbar(psi, y, xerr=np.vstack([lo, hi]), fmt="none", ecolor="black", elinewidth=1, capsize=2)
            ax.axvline(0.0, color="grey", linewidth=0.8)
            ax.set_xlim(-1.05, 1.05)
            ax.set_yticks(np.arange(len(factors)), [f.removeprefix("hp.") for f in factors])
            title = task
            if task == POOLED:
                head = part.dropna(subset=["q_p"])
                if len(head):
                    r = head.iloc[0]
                    i2 = "n/a" if not math.isfinite(r["i2"]) else f"{100 * r['i2']:.0f}%"
                    title = f"pooled ({int(r['k'])} tasks)\nQ p={r['q_p']:.2g}, I²={i2}"
            ax.set_title(title)
            ax.set_xlabel("ψ (granulated Kendall)")
        axes[0][0].invert_yaxis()
        handles, labels = axes[0][0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="outside lower center", ncols=max(1, len(measures)), frameon=False)
    return fig, axes[0]
