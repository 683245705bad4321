"""Loss and return landscapes along filter-normalised random directions, one representative run per algorithm."""

from __future__ import annotations

from collections.abc import Mapping

import matplotlib.pyplot as plt
import numpy as np
import numpy.typing as npt
from matplotlib.ticker import MaxNLocator

from rlflat.report.figures.style import FigAxes, FigureSkipped, Palette, _grid, _ncols, figure_style
from rlflat.report.probe_data import KEY_ALPHAS, KEY_ALPHAS_2D

LANDSCAPE_KINDS = ("loss", "return")


def landscape_1d(
    arrays: Mapping[str, npt.NDArray[np.float64]], kind: str = "loss"
) -> tuple[np.ndarray, np.ndarray] | None:
    """(alphas, values (directions, n)) of a run's 1-D ``kind`` landscape along the filter direction, or None.

    Keys as documented by rlflat.probe: ``landscape_alphas`` and ``landscape_1d_filter_{loss,return}``; the
    random filter-normalised direction is used (the eigenvector slice is the sharpest by construction).
    """
    alphas, values = arrays.get(KEY_ALPHAS), arrays.get(f"landscape_1d_filter_{kind}")
    if alphas is None or values is None or values.shape[-1] != alphas.size:
        return None
    return alphas, np.atleast_2d(values)


def landscape_2d(
    arrays: Mapping[str, npt.NDArray[np.float64]], kind: str = "loss"
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(alphas, betas, values (n_alpha, n_beta)) of a run's 2-D ``kind`` landscape (filter plane), or None.

    rlflat.probe writes one coordinate vector for both axes (``landscape_alphas_2d``).
    """
    coords, z = arrays.get(KEY_ALPHAS_2D), arrays.get(f"landscape_2d_filter_{kind}")
    if coords is None or z is None or z.shape != (coords.size, coords.size):
        return None
    return coords, coords, z


def _centre(alphas: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Values minus the value at the point nearest alpha = 0, so curves of different runs overlay."""
    return values - values[..., [int(np.argmin(np.abs(alphas)))]]


def plot_landscape_1d(
    curves: Mapping[str, Mapping[str, tuple[np.ndarray, np.ndarray]]], run_labels: Mapping[str, str], palette: Palette
) -> FigAxes:
    """Change of loss and of return along a random filter-normalised direction, one representative run per algo.

    ``curves`` maps kind ("loss", "return") -> algo -> (alphas, values (directions, n)); one panel per kind,
    side by side. A flatter policy has a shallower loss bowl and a wider return plateau.
    """
    kinds = [k for k in LANDSCAPE_KINDS if curves.get(k)]
    if not kinds:
        raise FigureSkipped("no probe.npz with a 1-D landscape")
    algos = sorted({a for k in kinds for a in curves[k]})
    with figure_style():
        fig, axes = _grid(len(kinds), panel=(4.6, 3.5))
        for ax, kind in zip(axes, kinds, strict=True):
            for algo in sorted(curves[kind]):
                alphas, values = curves[kind][algo]
                delta = _centre(alphas, values)
                for row in delta:
                    ax.plot(alphas, row, color=palette[algo], linewidth=0.7, alpha=0.35)
                ax.plot(alphas, delta.mean(axis=0), color=palette[algo], linewidth=2.2)
            ax.axvline(0.0, color="0.6", linewidth=0.8, zorder=0)
            ax.set_xlabel("step α along direction (× filter norm)")
            ax.set_ylabel(f"Δ {kind} vs trained policy" + (" (episode return)" if kind == "return" else ""))
            ax.set_title(f"1-D {kind} landscape")
        handles = [plt.Line2D([], [], color=palette[a], linewidth=2.2) for a in algos]
        fig.legend(
            handles,
            [run_labels.get(a, a) for a in algos],
            title="algorithm (run)",
            frameon=False,
            loc="outside lower center",
            ncols=min(len(algos), 4),
        )
    return fig, axes


def plot_landscape_2d(
    surfaces: Mapping[str, tuple[np.ndarray, np.ndarray, np.ndarray]], run_labels: Mapping[str, str], kind: str = "loss"
) -> FigAxes:
    """Filled contours of the 2-D ``kind`` landscape (change from the centre), one panel per algorithm, shared levels."""
    if not surfaces:
        raise FigureSkipped(f"no probe.npz with a 2-D {kind} landscape")
    algos = sorted(surfaces)
    deltas = {}
    for a in algos:
        xs, ys, z = surfaces[a]
        i0, j0 = int(np.argmin(np.abs(xs))), int(np.argmin(np.abs(ys)))
        deltas[a] = z - z[i0, j0]
    stacked = np.concatenate([d.ravel() for d in deltas.values()])
    lo, hi = np.nanpercentile(stacked, [1, 99])
    levels = np.linspace(min(lo, 0.0), max(hi, 1e-12), 15)
    cmap = "mako_r" if kind == "loss" else "mako"
    with figure_style():
        ncols = _ncols(len(algos))
        fig, axes = _grid(len(algos), ncols=ncols, panel=(3.3, 3.0), sharex=True, sharey=True)
        mappable = None
        for ax, algo in zip(axes, algos, strict=True):
            xs, ys, _ = surfaces[algo]
            mappable = ax.contourf(xs, ys, deltas[algo].T, levels=levels, cmap=cmap, extend="both")
            ax.contour(xs, ys, deltas[algo].T, levels=levels[::3], colors="white", linewidths=0.5, alpha=0.6)
            ax.plot([0], [0], marker="*", color="white", markeredgecolor="black", markersize=10)
            ax.set_title(run_labels.get(algo, algo))
            ax.set_xlabel("α (direction 1)")
            ax.set_ylabel("β (direction 2)" if list(axes).index(ax) % ncols == 0 else "")
            ax.xaxis.set_major_locator(MaxNLocator(5))
            ax.yaxis.set_major_locator(MaxNLocator(5))
            ax.set_aspect("equal", adjustable="box")
        assert mappable is not None  # at least one panel was drawn
        fig.colorbar(mappable, ax=list(axes), label=f"Δ {kind} from centre", shrink=0.85)
        fig.supxlabel(
            "steps along two filter-normalised random directions (units of the weights' filter norms)", fontsize=9.5
        )
    return fig, axes
