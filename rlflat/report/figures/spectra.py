"""Hessian spectra: eigenvalue densities and top eigenvalues per run."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import numpy.typing as npt
import pandas as pd
import seaborn as sns

from rlflat.report.figures.legible import density_symlog
from rlflat.report.figures.style import (
    FigAxes,
    FigureSkipped,
    Palette,
    _algo_ci,
    _grid,
    _legend,
    _ncols,
    _plain_log_axis,
    figure_style,
)
from rlflat.report.probe_data import KEY_DENSITY, KEY_DENSITY_GRID, KEY_TOP_EIGENVALUES

# ----------------------------------------------------------------------------- (4) Hessian spectra


def _density_pair(arrays: Mapping[str, npt.NDArray[np.float64]]) -> tuple[np.ndarray, np.ndarray] | None:
    grid, dens = arrays.get(KEY_DENSITY_GRID), arrays.get(KEY_DENSITY)
    if grid is None or dens is None or grid.ndim != 1 or grid.shape != dens.shape:
        return None
    return grid, dens


def _top_eigenvalues(arrays: Mapping[str, npt.NDArray[np.float64]], k: int) -> np.ndarray | None:
    top = arrays.get(KEY_TOP_EIGENVALUES)
    if top is None or top.ndim != 1:
        return None
    values = np.sort(top[np.isfinite(top)])[::-1]
    return values[:k] if values.size else None


def plot_hessian_density(
    probes: Mapping[str, Mapping[str, npt.NDArray[np.float64]]], run_algo: Mapping[str, str], palette: Palette
) -> FigAxes:
    """Smoothed Hessian eigenvalue density (SLQ or exact eigenvalues, per probe.json), one panel per algorithm, log y.

    One line per run; panels share both axes, so a flatter algorithm's mass sits visibly nearer zero.
    """
    densities = {r: d for r, a in probes.items() if r in run_algo and (d := _density_pair(a)) is not None}
    if not densities:
        raise FigureSkipped("no probe.npz with a spectral density (grid + density)")
    algos = sorted({run_algo[r] for r in densities})
    peak = max(float(np.nanmax(d)) for _, d in densities.values())
    with figure_style():
        fig, axes = _grid(len(algos), ncols=_ncols(len(algos)), panel=(3.4, 2.6), sharex=True, sharey=True)
        for ax, algo in zip(axes, algos, strict=True):
            runs = [r for r in sorted(densities) if run_algo[r] == algo]
            for run in runs:
                grid, dens = densities[run]
                ax.plot(grid, np.where(dens > 0, dens, np.nan), color=palette[algo], linewidth=1.1, alpha=0.8)
            ax.set_yscale("log")
            ax.set_ylim(peak * 1e-7, peak * 3)
            ax.set_title(f"{algo} ({len(runs)} runs)")
            ax.set_xlabel("eigenvalue λ (loss / param²)")
            ax.set_ylabel("density (log scale)")
            ax.label_outer()  # shared axes: label only the outer row and column
        pooled = list(densities.values())
        if density_symlog(axes[0], [g for g, _ in pooled], [d for _, d in pooled]):  # shared x: every panel
            for ax in axes:
                if ax.get_xlabel():
                    ax.set_xlabel("eigenvalue λ (loss / param²)\nsymmetric log scale")
    return fig, axes


def plot_top_eigenvalues(
    probes: Mapping[str, Mapping[str, npt.NDArray[np.float64]]],
    run_algo: Mapping[str, str],
    palette: Palette,
    *,
    top_k: int = 10,
    seed: int = 0,
    n_boot: int = 1000,
) -> FigAxes:
    """Each run's top Hessian eigenvalues by rank (dots) with the per-algorithm mean and 95% CI (bars).

    A flat policy has a lower and faster-decaying top spectrum; the spread of dots is the seed-to-seed
    variation that any claim about one algorithm being flatter has to beat.
    """
    tops = {r: t for r, a in probes.items() if r in run_algo and (t := _top_eigenvalues(a, top_k)) is not None}
    if not tops:
        raise FigureSkipped("no probe.npz with eigenvalues")
    algos = sorted({run_algo[r] for r in tops})
    frame = pd.DataFrame(
        [{"algo": run_algo[r], "rank": j + 1, "eigenvalue": float(v)} for r, t in tops.items() for j, v in enumerate(t)]
    )
    k = int(frame["rank"].max())
    with figure_style():
        fig, axes = _grid(1, panel=(min(9.0, 2.5 + 0.6 * k), 3.4))
        ax = axes[0]
        sns.stripplot(
            data=frame,
            x="rank",
            y="eigenvalue",
            hue="algo",
            hue_order=algos,
            palette=palette,
            dodge=True,
            ax=ax,
            size=3.5,
            alpha=0.55,
            jitter=0.12,
            legend=False,
        )
        sns.pointplot(
            data=frame,
            x="rank",
            y="eigenvalue",
            dodge=0.8 - 0.8 / len(algos),
            markers="_",
            markersize=10,
            linestyle="none",
            **_algo_ci(algos, palette, ax, seed=seed, n_boot=n_boot),
        )
        if (frame["eigenvalue"] > 0).all():
            ax.set_yscale("log")
            _plain_log_axis(ax, "y")
        ax.set_xlabel("eigenvalue rank i (1 = λ_max)")
        ax.set_ylabel("λ_i (loss / param²)")
        ax.set_title(f"top-{k} Hessian eigenvalues per run")
        _legend(fig, algos, palette, markers=False)
    return fig, axes
