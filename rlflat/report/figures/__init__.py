"""The report's figures, one module per kind; see :mod:`rlflat.report.figures.style` for the shared look.

* :mod:`.correlation`: sharpness vs robustness scatter, correlation heatmap;
* :mod:`.robustness`: robustness curves, 2-D dynamics grids;
* :mod:`.spectra`: Hessian densities, top eigenvalues;
* :mod:`.landscapes`: 1-D (loss and return) and 2-D landscapes;
* :mod:`.training`: learning curves;
* :mod:`.stability`: sharpness along training against the stability thresholds.
"""

from rlflat.report.figures.correlation import plot_correlation_heatmap, plot_sharpness_vs_robustness
from rlflat.report.figures.landscapes import (
    LANDSCAPE_KINDS,
    landscape_1d,
    landscape_2d,
    plot_landscape_1d,
    plot_landscape_2d,
)
from rlflat.report.figures.robustness import plot_dynamics_grid, plot_robustness_curves
from rlflat.report.figures.spectra import plot_hessian_density, plot_top_eigenvalues
from rlflat.report.figures.stability import plot_sharpness_paths
from rlflat.report.figures.style import (
    FigAxes,
    FigureSkipped,
    Palette,
    algo_marker,
    algo_palette,
    column_label,
    factor_ticks,
    figure_style,
    save_figure,
    split_algo,
)
from rlflat.report.figures.training import binned_learning_curves, plot_learning_curves

__all__ = [
    "LANDSCAPE_KINDS",
    "FigAxes",
    "FigureSkipped",
    "Palette",
    "algo_marker",
    "algo_palette",
    "binned_learning_curves",
    "column_label",
    "factor_ticks",
    "figure_style",
    "landscape_1d",
    "landscape_2d",
    "plot_correlation_heatmap",
    "plot_dynamics_grid",
    "plot_hessian_density",
    "plot_landscape_1d",
    "plot_landscape_2d",
    "plot_learning_curves",
    "plot_robustness_curves",
    "plot_sharpness_paths",
    "plot_sharpness_vs_robustness",
    "plot_top_eigenvalues",
    "save_figure",
    "split_algo",
]
