"""Learning curves with CI bands across runs."""

from __future__ import annotations

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

# ----------------------------------------------------------------------------- (6) learning curves


def binned_learning_curves(curves: pd.DataFrame, bins: int = 50) -> pd.DataFrame:
    """Each run's episode returns averaged in ``bins`` equal step bins, interpolated over empty bins.

    Runs log episodes at different steps; a common grid (per task, up to the shortest run's last
    step, so every point averages all runs) lets seaborn put a CI band across runs.
    """
    rows = []
    for task, tg in curves.groupby("task", sort=True):
        end = float(tg.groupby("run_id")["timesteps"].max().min())
        if not end > 0:
            continue
        edges = np.linspace(0.0, end, bins + 1)
        centres = (edges[:-1] + edges[1:]) / 2
        for (run_id, algo), rg in tg.groupby(["run_id", "algo"], sort=True):
            steps = rg["timesteps"].to_numpy(dtype=np.float64)
            ret = rg["episode_return"].to_numpy(dtype=np.float64)
            which = np.digitize(steps, edges[1:-1])
            inside = steps <= end
            sums = np.bincount(which[inside], weights=ret[inside], minlength=bins)
            counts = np.bincount(which[inside], minlength=bins)
            ok = counts > 0
            if ok.sum() < 2:
                continue
            means = sums[ok] / counts[ok]
            values = np.interp(centres, centres[ok], means, left=np.nan)
            rows.append(pd.DataFrame({"task": task, "run_id": run_id, "algo": algo, "steps": centres, "ret": values}))
    return pd.concat(rows, ignore_index=True) if rows else pd.DataFrame()


def plot_learning_curves(curves: pd.DataFrame, palette: Palette, *, seed: int = 0, n_boot: int = 1000) -> FigAxes:
    """Episode return vs environment steps: per-algorithm mean over runs with a 95% bootstrap CI band."""
    binned = binned_learning_curves(curves) if not curves.empty else pd.DataFrame()
    if binned.empty:
        raise FigureSkipped("no train.csv with logged episodes")
    tasks = sorted(binned["task"].astype(str).unique())
    algos = sorted(binned["algo"].astype(str).unique())
    with figure_style():
        fig, axes = _grid(len(tasks), ncols=2, panel=(4.8, 3.3))
        for ax, task in zip(axes, tasks, strict=True):
            sns.lineplot(
                data=binned[binned["task"].astype(str) == task],
                x="steps",
                y="ret",
                linewidth=1.8,
                **_algo_ci(algos, palette, ax, seed=seed, n_boot=n_boot),
            )
            ax.xaxis.set_major_formatter(FuncFormatter(_steps_formatter))
            ax.set_xlabel("environment steps")
            ax.set_ylabel("episode return (training, binned)")
            ax.set_title(task)
        _legend(fig, algos, palette, markers=False)
    return fig, axes
