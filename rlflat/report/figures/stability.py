"""Sharpness along training against the stability thresholds (Cohen et al. 2021, 2022)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.ticker import FuncFormatter

from rlflat.report.figures.style import (
    FigAxes,
    FigureSkipped,
    Palette,
    _algo_ci,
    _grid,
    _legend,
    _steps_formatter,
    figure_style,
)

PANELS = (
    ("sharpness", "gd_threshold", "top Hessian eigenvalue λ₁(H)", "2/η"),
    ("preconditioned_sharpness", "adam_threshold", "preconditioned λ₁(P⁻¹H)", "2(1+β₁)/((1−β₁)η)"),
)
"""(value column, threshold column, y label, threshold label) of the figure's two rows."""


def _lr_order(settings: pd.Series) -> list[str]:
    """Learning-rate settings in increasing numeric order where they are numbers, text order otherwise."""

    def key(text: str) -> tuple[float, str]:
        try:
            return float(text), text
        except ValueError:
            return math.inf, text

    return sorted(settings.astype(str).unique(), key=key)


def plot_sharpness_paths(paths: pd.DataFrame, palette: Palette, *, seed: int = 0, n_boot: int = 1000) -> FigAxes:
    """Sharpness (top row) and Adam-preconditioned sharpness (bottom row) vs environment steps, one column per
    learning-rate setting: a thin line per run, the per-algorithm mean with a 95% bootstrap CI band, and the
    stability threshold (dashed; mean over the panel's runs, so a schedule's rising threshold shows). Log y axis:
    the values span decades."""
    if paths.empty or "sharpness" not in paths:
        raise FigureSkipped("no run was trained with track_sharpness")
    lrs = _lr_order(paths["lr_setting"])
    algos = sorted(paths["algo"].astype(str).unique())
    with figure_style():
        fig, axes = _grid(len(PANELS) * len(lrs), ncols=len(lrs), panel=(4.2, 3.2), sharex="col", sharey="row")
        for row, (value, threshold, ylabel, tlabel) in enumerate(PANELS):
            for col, lr in enumerate(lrs):
                ax = axes[row * len(lrs) + col]
                data = paths[(paths["lr_setting"].astype(str) == lr) & (paths[value] > 0)]
                for (algo, _), run in data.groupby(["algo", "run_id"], sort=True):
                    ax.plot(run["timesteps"], run[value], color=palette[str(algo)], alpha=0.25, linewidth=0.7)
                if not data.empty:
                    sns.lineplot(
                        data=data,
                        x="timesteps",
                        y=value,
                        linewidth=1.8,
                        **_algo_ci(algos, palette, ax, seed=seed, n_boot=n_boot),
                    )
                    edge = data.groupby("timesteps")[threshold].mean()
                    ax.plot(edge.index, edge.to_numpy(), color="0.15", linestyle="--", linewidth=1.2)
                    ax.annotate(tlabel, (0.02, 0.97), xycoords="axes fraction", va="top", fontsize=8, color="0.15")
                ax.set_yscale("log")
                ax.xaxis.set_major_formatter(FuncFormatter(_steps_formatter))
                ax.set_xlabel("environment steps")
                ax.set_ylabel(ylabel if col == 0 else "")
                if row == 0:
                    ax.set_title(f"learning rate {lr}")
        _legend(fig, algos, palette, markers=False)
    return fig, np.asarray(axes)
