"""The report's figures: one style, one colour per algorithm, every axis labelled with its unit.

Each ``plot_*`` function takes tidy data (the runs table or a stacked per-run table), draws with seaborn on
the Agg backend inside :func:`figure_style`, and returns ``(fig, axes)`` (``axes`` a flat numpy array). A
figure whose data is absent raises :class:`FigureSkipped` with the reason, which the report prints as a note
instead of failing. Colours come from :func:`algo_palette`, built once per report and passed to every
figure, so ``ppo_sam`` is the same blue everywhere: a base algorithm keeps one hue, its plain variant lighter,
SAM full and ASAM darker, so a flatness variant always sits next to its base in the legend and in colour.
"""

from __future__ import annotations

import math
import re
import textwrap
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # headless: the report runs on servers and in CI

import matplotlib.pyplot as plt
import numpy as np
import numpy.typing as npt
import pandas as pd
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter

from rlflat.io import write_atomic
from rlflat.report.study import COLLAPSE_THRESHOLD, find_array

Colour = tuple[float, float, float]
Palette = dict[str, Colour]
FigAxes = tuple[Figure, npt.NDArray[Any]]

DPI = 150
PANEL = (3.6, 3.0)
"""Inches per panel: at DPI 150 and a 1000-px page, 10-pt text stays about 12 px on screen."""
MAX_COLS = 3
_RULE_SHADE = {"": 0.62, "sam": 0.0, "asam": -0.4}  # plain far lighter: base vs SAM must read apart
"""Mix toward white (>0) or black (<0) per update rule: plain light, SAM full, ASAM dark."""
_RULE_MARKER = {"": "o", "sam": "s", "asam": "^"}
RULES = ("sam", "asam")

_LABELS: dict[str, str] = {
    "probe.lambda_max": "Hessian λ_max",
    "probe.lambda_min": "Hessian λ_min",
    "probe.trace": "Hessian trace",
    "probe.lambda_max_over_trace": "λ_max / trace",
    "probe.critical_sigma": "critical σ",
    "probe.worst_case_adaptive": "worst-case sharpness (adaptive)",
    "probe.worst_case_raw": "worst-case sharpness (raw)",
    "probe.hessian.lambda_max": "Hessian λ_max",
    "probe.hessian.lambda_min": "Hessian λ_min",
    "probe.hessian.trace": "Hessian trace",
    "probe.loss": "probe loss",
    "robustness.auc": "robust AUC",
    "robustness.auc_mean": "robust AUC",
    "robustness.worst_return": "worst-case return",
    "robustness.worst_dynamics_return": "worst-dynamics return",
    "robustness.frac_collapsed": "fraction collapsed",
    "robustness.collapsed_fraction": "fraction collapsed",
    "robustness.nominal_return": "nominal return (eval)",
    "train.return_mean": "nominal return",
}
_UNIT_RULES: tuple[tuple[str, str], ...] = (
    (r"over_trace", "ratio"),
    (r"critical_sigma", "σ, × filter norm"),
    (r"^probe\.(hessian\.)?(lambda|trace|top)", "loss / param²"),
    (r"^probe\.perturbation.*(kl)", "nats"),
    (r"^probe\.perturbation.*(action)", "fraction of states"),
    (r"^probe\.perturbation.*(return)", "episode return"),
    (r"^probe\.perturbation.*(sigma)", "σ, rel. weight norm"),
    (r"^probe\.(perturbation|worst|sam|pgd)", "Δ loss"),
    (r"collapse_log_factor", "|log factor|"),
    (r"auc", "normalised return"),
    (r"collapse.*(point|factor)", "× nominal"),
    (r"collapse.*log", "|log factor|"),
    (r"(frac|fraction)", "fraction of settings"),
    (r"normalized_return", "normalised return"),
    (r"return", "episode return"),
)


class FigureSkipped(Exception):
    """A figure's data is missing; the message says what, and the report prints it as a note."""


# ----------------------------------------------------------------------------- style and labels


@contextmanager
def figure_style() -> Iterator[None]:
    """The one style of every report figure, applied locally so importing this module changes nothing global."""
    rc: dict[str, Any] = {}
    rc.update(sns.axes_style("whitegrid"))
    rc.update(sns.plotting_context("paper", font_scale=1.25))
    rc.update(
        {
            "figure.dpi": DPI,
            "savefig.dpi": DPI,
            "axes.titlesize": 11,
            "axes.titleweight": "bold",
            "axes.labelsize": 10.5,
            "legend.fontsize": 9.5,
            "legend.title_fontsize": 10,
            "xtick.labelsize": 9,
            "ytick.labelsize": 9,
            "figure.constrained_layout.use": True,
            "axes.spines.top": False,
            "axes.spines.right": False,
        }
    )
    with plt.rc_context(rc):  # type: ignore[arg-type]
        yield


def split_algo(algo: str) -> tuple[str, str]:
    """``ppo_sam`` -> (``ppo``, ``sam``); an algorithm without a known rule suffix is its own base."""
    base, _, rule = algo.rpartition("_")
    return (base, rule) if base and rule in RULES else (algo, "")


def _mix(colour: Colour, amount: float) -> Colour:
    target = 1.0 if amount > 0 else 0.0
    a = abs(amount)
    r, g, b = colour
    return (r + (target - r) * a, g + (target - g) * a, b + (target - b) * a)


def algo_palette(algos: Sequence[str]) -> Palette:
    """A fixed colour per algorithm: one hue per base algorithm, shaded by update rule (see module doc)."""
    bases = sorted({split_algo(a)[0] for a in algos}, key=lambda b: (b not in ("ppo", "pg"), b))
    hues = sns.color_palette("colorblind", max(10, len(bases)))
    out: Palette = {}
    for algo in sorted(algos):
        base, rule = split_algo(algo)
        hue = tuple(float(c) for c in hues[bases.index(base) % len(hues)])
        out[algo] = _mix((hue[0], hue[1], hue[2]), _RULE_SHADE.get(rule, 0.0))
    return out


def algo_marker(algo: str) -> str:
    return _RULE_MARKER.get(split_algo(algo)[1], "D")


def column_label(column: str, unit: bool = True) -> str:
    """Human axis label of a runs-table column, with its unit in parentheses."""
    name = _LABELS.get(column)
    if name is None:
        parts = column.split(".")
        body = [p for p in parts[1:] if p not in ("hessian", "parameters")] or parts
        name = " ".join(body).replace("_", " ")
        if column.startswith("probe.hessian"):
            name = "Hessian " + name
    if not unit:
        return name
    for pattern, text in _UNIT_RULES:
        if re.search(pattern, column):
            return f"{name} ({text})"
    return name


def _wrap(text: str, width: int = 34) -> str:
    return "\n".join(textwrap.wrap(text, width)) if len(text) > width else text


def _ncols(n: int) -> int:
    """Columns for ``n`` per-algorithm panels: 2 x 2 for four (the usual base x rule study), else up to 3."""
    return 2 if n == 4 else min(MAX_COLS, n)


def _grid(n: int, ncols: int = MAX_COLS, panel: tuple[float, float] = PANEL, **kw: Any) -> FigAxes:
    """``n`` panels wrapped into rows of at most ``ncols``; unused axes are hidden."""
    ncols = max(1, min(ncols, n))
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(panel[0] * ncols, panel[1] * nrows), squeeze=False, **kw)
    flat = axes.ravel()
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat[:n]


def _legend(
    fig: Figure, algos: Sequence[str], palette: Palette, *, markers: bool = True, threshold: bool = False
) -> None:
    """One legend for the whole figure, below the panels, so no panel's data is hidden under it."""
    handles = [
        plt.Line2D(
            [],
            [],
            color=palette[a],
            marker=algo_marker(a) if markers else None,
            linestyle="-" if not markers else "",
            markersize=7,
            linewidth=2.5,
        )
        for a in algos
    ]
    labels = list(algos)
    if threshold:
        handles.append(plt.Line2D([], [], color="0.2", linestyle="--", linewidth=1.1))
        labels.append(f"collapse threshold ({COLLAPSE_THRESHOLD:g})")
    fig.legend(handles, labels, loc="outside lower center", ncols=min(len(labels), 6), title="algorithm", frameon=False)


def factor_ticks(lo: float, hi: float) -> list[float]:
    """Readable ticks for a factor range: powers of two up to 64x wide (0.25 .. 4), else 1-2-5 per decade."""
    if hi / lo <= 64:
        powers = 2.0 ** np.arange(math.floor(math.log2(lo) + 1e-9), math.ceil(math.log2(hi) - 1e-9) + 1)
        ticks = [float(t) for t in powers if lo * (1 - 1e-6) <= t <= hi * (1 + 1e-6)]
    else:
        decades = range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1)
        ticks = [
            m * 10.0**d for d in decades for m in (1.0, 2.0, 5.0) if lo * (1 - 1e-6) <= m * 10.0**d <= hi * (1 + 1e-6)
        ]
        if len(ticks) > 7:
            ticks = [t for t in ticks if f"{t:g}".lstrip("0.").startswith("1")]
    return ticks


def _plain_log_axis(ax: Axes, axis: str = "x") -> None:
    """Log axis labelled 10, 100 rather than 10^1, 10^2: a reader compares magnitudes, not exponents."""
    target = ax.xaxis if axis == "x" else ax.yaxis
    target.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    target.set_minor_formatter(NullFormatter())


def _factor_axis(ax: Axes, values: npt.ArrayLike) -> None:
    """Log x-axis with plain-number ticks (0.25, 1, 4), the natural reading of a multiplicative factor."""
    v = np.asarray(values, dtype=np.float64)
    ax.set_xscale("log")
    ticks = factor_ticks(float(v.min()), float(v.max()))
    if len(ticks) >= 2:
        ax.set_xticks(ticks)
    else:
        ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    _plain_log_axis(ax)


def _steps_formatter(v: float, _: object) -> str:
    if abs(v) >= 1e6:
        return f"{v / 1e6:g}M"
    if abs(v) >= 1e3:
        return f"{v / 1e3:g}k"
    return f"{v:g}"


def save_figure(fig: Figure, path: Path) -> Path:
    """Write ``fig`` as PNG atomically, then close it (figures are many; memory is not)."""
    try:
        return write_atomic(path, lambda p: fig.savefig(p, format="png", dpi=DPI, bbox_inches="tight", pad_inches=0.08))
    finally:
        plt.close(fig)


def _fmt_ci(est: float, lo: float, hi: float) -> str:
    if not math.isfinite(est):
        return "n/a"
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return f"{est:.2f}"
    return f"{est:.2f} [{lo:.2f}, {hi:.2f}]"


# ----------------------------------------------------------------------------- (1) sharpness vs robustness


def _corr_lookup(corr: pd.DataFrame, task: str, measure: str, metric: str) -> str:
    rows = corr[(corr["task"] == task) & (corr["measure"] == measure) & (corr["metric"] == metric)]
    rows = rows[rows["method"] == "spearman"]
    if rows.empty:
        return "ρ n/a"
    r = rows.iloc[0]
    return f"ρ = {_fmt_ci(float(r['estimate']), float(r['ci_low']), float(r['ci_high']))}"


def _positive_wide(values: pd.Series) -> bool:
    """Use a log axis when every value is positive and they span more than 1.5 decades."""
    v = values.to_numpy(dtype=np.float64)
    return bool(np.all(v > 0) and v.max() / v.min() > 10**1.5)


def plot_sharpness_vs_robustness(
    runs: pd.DataFrame,
    measures: Sequence[str],
    metric: str,
    correlations: pd.DataFrame,
    palette: Palette,
    *,
    seed: int = 0,
    n_boot: int = 1000,
) -> FigAxes:
    """One panel per (task, sharpness measure): each run a point, a regression line with its 95% CI band.

    The regression (over all runs of the task, pooled across algorithms) is a visual guide; the
    claim is the Spearman rho [bootstrap CI] in the title, taken from ``correlations`` (same task
    label, ``method == spearman``). A measure spanning decades is drawn, and regressed, on log x.
    """
    if not measures:
        raise FigureSkipped("no sharpness measure (probe.* column) has data")
    tasks = sorted(runs["task"].astype(str).unique())
    panels = [(t, m) for t in tasks for m in measures]
    with figure_style():
        fig, axes = _grid(len(panels), ncols=min(MAX_COLS, len(measures)) if len(tasks) == 1 else len(measures))
        algos = sorted(runs["algo"].astype(str).unique())
        for ax, (task, measure) in zip(axes, panels, strict=True):
            sub = runs[runs["task"].astype(str) == task][["algo", measure, metric]].copy()
            sub[measure] = pd.to_numeric(sub[measure], errors="coerce")
            sub[metric] = pd.to_numeric(sub[metric], errors="coerce")
            sub = sub.dropna()
            logx = len(sub) > 0 and _positive_wide(sub[measure])
            for algo, g in sub.groupby("algo", sort=True):
                ax.scatter(
                    g[measure],
                    g[metric],
                    color=palette[str(algo)],
                    marker=algo_marker(str(algo)),
                    s=36,
                    edgecolor="white",
                    linewidth=0.6,
                    zorder=3,
                )
            if len(sub) >= 3 and sub[measure].nunique() > 1:
                sns.regplot(
                    data=sub,
                    x=measure,
                    y=metric,
                    ax=ax,
                    scatter=False,
                    logx=logx,
                    ci=95,
                    n_boot=n_boot,
                    seed=seed,
                    color="0.3",
                    line_kws={"linewidth": 1.5},
                )
            if logx:
                ax.set_xscale("log")
                _plain_log_axis(ax)
            where = f"{task}: " if len(tasks) > 1 else ""
            ax.set_title(
                _wrap(f"{where}{column_label(measure, unit=False)}")
                + f"\n{_corr_lookup(correlations, task, measure, metric)}"
            )
            ax.set_xlabel(_wrap(column_label(measure), 40))
            ax.set_ylabel(column_label(metric))
        _legend(fig, algos, palette)
    return fig, axes


# ----------------------------------------------------------------------------- correlation heatmap


def plot_correlation_heatmap(correlations: pd.DataFrame, *, method: str = "spearman") -> FigAxes:
    """Measures x metrics grid of rank correlations, one panel per task scope, annotated with estimate [CI].

    Bold cells have a 95% CI that excludes zero; the others are compatible with no association.
    """
    data = correlations[correlations["method"] == method]
    data = data[np.isfinite(data["estimate"].to_numpy(dtype=np.float64))]
    if data.empty:
        raise FigureSkipped(f"no defined {method} correlation (too few runs with both a measure and a metric)")
    scopes = list(dict.fromkeys(data["task"].astype(str)))
    measures = list(dict.fromkeys(data["measure"]))
    metrics = list(dict.fromkeys(data["metric"]))
    cell_w, cell_h = 1.55, 0.62
    panel = (2.6 + cell_w * len(metrics), 1.4 + cell_h * len(measures))
    with figure_style():
        fig, axes = _grid(len(scopes), ncols=1 if len(metrics) > 3 else 2, panel=panel)
        for ax, scope in zip(axes, scopes, strict=True):
            sub = data[data["task"].astype(str) == scope]
            est = sub.pivot(index="measure", columns="metric", values="estimate").reindex(
                index=measures, columns=metrics
            )
            lo = sub.pivot(index="measure", columns="metric", values="ci_low").reindex(index=measures, columns=metrics)
            hi = sub.pivot(index="measure", columns="metric", values="ci_high").reindex(index=measures, columns=metrics)
            sns.heatmap(
                est,
                ax=ax,
                vmin=-1,
                vmax=1,
                cmap="vlag",
                annot=False,
                linewidths=0.8,
                linecolor="white",
                cbar_kws={"label": f"{'Spearman ρ' if method == 'spearman' else 'Kendall τ'}", "shrink": 0.8},
            )
            for i, m in enumerate(measures):
                for j, k in enumerate(metrics):
                    e, a, b = est.loc[m, k], lo.loc[m, k], hi.loc[m, k]
                    if not np.isfinite(e):
                        ax.text(j + 0.5, i + 0.5, "n/a", ha="center", va="center", fontsize=8, color="0.4")
                        continue
                    excludes_zero = bool(np.isfinite(a) and np.isfinite(b) and (a > 0 or b < 0))
                    ci = f"\n[{a:.2f}, {b:.2f}]" if np.isfinite(a) and np.isfinite(b) else ""
                    ax.text(
                        j + 0.5,
                        i + 0.5,
                        f"{e:.2f}{ci}",
                        ha="center",
                        va="center",
                        fontsize=8.5,
                        fontweight="bold" if excludes_zero else "normal",
                        color="white" if abs(e) > 0.6 else "black",
                    )
            ax.set_xticklabels([_wrap(column_label(k, unit=False), 16) for k in metrics], rotation=0)
            ax.set_yticklabels([_wrap(column_label(m, unit=False), 26) for m in measures], rotation=0)
            ax.set_xlabel("robustness metric")
            ax.set_ylabel("sharpness measure")
            ax.set_title("pooled over tasks (within-task ranks)" if scope == "pooled" else scope)
    return fig, axes


# ----------------------------------------------------------------------------- (2) robustness curves


def plot_robustness_curves(
    curves: pd.DataFrame,
    palette: Palette,
    axis_labels: Mapping[tuple[str, str], str],
    *,
    seed: int = 0,
    n_boot: int = 1000,
) -> FigAxes:
    """Normalised return vs perturbation, mean over runs with a 95% bootstrap CI band, per algorithm.

    ``curves`` is tidy: ``task``, ``panel`` (a dynamics parameter or noise family), ``x`` (factor of
    nominal, or noise level), ``log`` (whether x is a factor), ``algo``, ``run_id``, ``normalized_return``.
    ``axis_labels`` maps (task, panel) to the x-axis label. The dashed line is the collapse threshold.
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
                hue="algo",
                hue_order=algos,
                palette=palette,
                ax=ax,
                errorbar=("ci", 95),
                n_boot=n_boot,
                seed=seed,
                estimator="mean",
                marker="o",
                markersize=4,
                markeredgewidth=0,
                linewidth=1.8,
                legend=False,
            )
            ax.axhline(COLLAPSE_THRESHOLD, color="0.2", linestyle="--", linewidth=1.1)
            if bool(sub["log"].iloc[0]):
                _factor_axis(ax, sub["x"])
                ax.axvline(1.0, color="0.6", linewidth=0.8, zorder=0)
            ax.set_title(f"{task}: {panel}" if len(tasks) > 1 else panel)
            ax.set_xlabel(axis_labels.get((task, panel), "factor of nominal"))
            ax.set_ylabel("normalised return")
        lo = min(0.0, float(np.nanmin(curves["normalized_return"])))
        hi = max(1.1, float(np.nanmax(curves["normalized_return"])))
        axes[0].set_ylim(lo - 0.05, hi + 0.05)
        _legend(fig, algos, palette, markers=False, threshold=True)
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


# ----------------------------------------------------------------------------- (4) Hessian spectra


def _density_pair(arrays: Mapping[str, npt.NDArray[np.float64]]) -> tuple[np.ndarray, np.ndarray] | None:
    grid_key = find_array(
        dict(arrays), r"(density|spectral|spectrum).*grid", r"grid.*(density|spectral)", r"^grid$", ndim=1
    )
    dens_key = find_array(
        {k: v for k, v in arrays.items() if k != grid_key and "grid" not in k}, r"spectral_density", r"density", ndim=1
    )
    if grid_key is None or dens_key is None or arrays[grid_key].shape != arrays[dens_key].shape:
        return None
    return arrays[grid_key], arrays[dens_key]


def _top_eigenvalues(arrays: Mapping[str, npt.NDArray[np.float64]], k: int) -> np.ndarray | None:
    key = find_array(dict(arrays), r"top_eigenvalues$", r"^(hessian_)?eigenvalues$", ndim=1)
    if key is None:
        return None
    values = np.sort(arrays[key][np.isfinite(arrays[key])])[::-1]
    return values[:k] if values.size else None


def plot_hessian_density(
    probes: Mapping[str, Mapping[str, npt.NDArray[np.float64]]], run_algo: Mapping[str, str], palette: Palette
) -> FigAxes:
    """Smoothed Hessian eigenvalue density (stochastic Lanczos quadrature), one panel per algorithm, log y.

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
            hue="algo",
            hue_order=algos,
            palette=palette,
            dodge=0.8 - 0.8 / len(algos),
            ax=ax,
            errorbar=("ci", 95),
            n_boot=n_boot,
            seed=seed,
            markers="_",
            markersize=10,
            linestyle="none",
            legend=False,
        )
        if (frame["eigenvalue"] > 0).all():
            ax.set_yscale("log")
            _plain_log_axis(ax, "y")
        ax.set_xlabel("eigenvalue rank i (1 = λ_max)")
        ax.set_ylabel("λ_i (loss / param²)")
        ax.set_title(f"top-{k} Hessian eigenvalues per run")
        _legend(fig, algos, palette, markers=False)
    return fig, axes


# ----------------------------------------------------------------------------- (5) landscapes


def _landscape_values(
    arrays: Mapping[str, npt.NDArray[np.float64]], dims: str, ndim: int
) -> tuple[str, npt.NDArray[np.float64]] | None:
    """The landscape of ``dims`` ("1d"/"2d"): loss before return, random filter direction before eigenvector."""
    sub = {k: v for k, v in arrays.items() if re.search(rf"landscape_{dims}|{dims}_landscape", k) and v.ndim >= ndim}
    key = find_array(sub, r"filter.*loss", r"loss", r"filter.*return", r"return", r"value")
    return None if key is None else (key, sub[key])


def landscape_1d(arrays: Mapping[str, npt.NDArray[np.float64]]) -> tuple[np.ndarray, np.ndarray, str] | None:
    """(alphas, values (directions, n), kind) of a run's 1-D landscape, or None.

    rlflat.probe writes ``landscape_alphas`` and ``landscape_1d_{filter,eigen}_{loss,return}``; the
    filter-normalised random direction is preferred (the eigenvector slice is the sharpest by construction).
    """
    found = _landscape_values(arrays, "1d", 1)
    if found is None:
        return None
    key, values = found
    coords = {k: v for k, v in arrays.items() if v.ndim == 1 and v.size == values.shape[-1]}
    coord = find_array(coords, r"^landscape_alphas$", r"landscape.*1d.*(alpha|coord|grid)", r"landscape_alphas")
    if coord is None:
        return None
    return coords[coord], np.atleast_2d(values), "return" if "return" in key else "loss"


def landscape_2d(
    arrays: Mapping[str, npt.NDArray[np.float64]],
) -> tuple[np.ndarray, np.ndarray, np.ndarray, str] | None:
    """(alphas, betas, values (n_alpha, n_beta), kind) of a run's 2-D landscape, or None.

    rlflat.probe writes one coordinate vector for both axes (``landscape_alphas_2d``).
    """
    found = _landscape_values(arrays, "2d", 2)
    if found is None or found[1].ndim != 2:
        return None
    key, z = found
    coords = {k: v for k, v in arrays.items() if v.ndim == 1 and "landscape" in k}
    a_key = find_array(coords, r"alphas_2d$", r"2d.*alpha", r"2d.*(_x|coord)")
    b_key = find_array(coords, r"2d.*beta", r"2d.*_y") or a_key
    if a_key is None or b_key is None or z.shape != (coords[a_key].size, coords[b_key].size):
        return None
    return coords[a_key], coords[b_key], z, "return" if "return" in key else "loss"


def _centre(alphas: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Values minus the value at the point nearest alpha = 0, so curves of different runs overlay."""
    return values - values[..., [int(np.argmin(np.abs(alphas)))]]


def plot_landscape_1d(
    curves: Mapping[str, tuple[np.ndarray, np.ndarray, str]], run_labels: Mapping[str, str], palette: Palette
) -> FigAxes:
    """Change of loss (or return) along random filter-normalised directions, one representative run per algo.

    ``curves`` maps algo -> (alphas, values (directions, n), kind); thin lines are directions, the thick
    line their mean. A flatter policy has a shallower bowl.
    """
    if not curves:
        raise FigureSkipped("no probe.npz with a 1-D landscape")
    algos = sorted(curves)
    kind = next(iter(curves.values()))[2]
    with figure_style():
        fig, axes = _grid(1, panel=(5.6, 3.6))
        ax = axes[0]
        for algo in algos:
            alphas, values, _ = curves[algo]
            delta = _centre(alphas, values)
            for row in delta:
                ax.plot(alphas, row, color=palette[algo], linewidth=0.7, alpha=0.35)
            ax.plot(alphas, delta.mean(axis=0), color=palette[algo], linewidth=2.2, label=run_labels.get(algo, algo))
        ax.axvline(0.0, color="0.6", linewidth=0.8, zorder=0)
        ax.set_xlabel("step α along direction (× filter norm)")
        ax.set_ylabel(f"Δ {kind} vs trained policy" + (" (episode return)" if kind == "return" else ""))
        ax.set_title(f"1-D {kind} landscape")
        fig.legend(title="algorithm (run)", frameon=False, loc="outside right center")
    return fig, axes


def plot_landscape_2d(
    surfaces: Mapping[str, tuple[np.ndarray, np.ndarray, np.ndarray, str]], run_labels: Mapping[str, str]
) -> FigAxes:
    """Filled contours of the 2-D landscape (change from the centre), one panel per algorithm, shared levels."""
    if not surfaces:
        raise FigureSkipped("no probe.npz with a 2-D landscape")
    algos = sorted(surfaces)
    deltas = {}
    for a in algos:
        xs, ys, z, _ = surfaces[a]
        i0, j0 = int(np.argmin(np.abs(xs))), int(np.argmin(np.abs(ys)))
        deltas[a] = z - z[i0, j0]
    kind = next(iter(surfaces.values()))[3]
    stacked = np.concatenate([d.ravel() for d in deltas.values()])
    lo, hi = np.nanpercentile(stacked, [1, 99])
    levels = np.linspace(min(lo, 0.0), max(hi, 1e-12), 15)
    cmap = "mako_r" if kind == "loss" else "mako"
    with figure_style():
        ncols = _ncols(len(algos))
        fig, axes = _grid(len(algos), ncols=ncols, panel=(3.3, 3.0), sharex=True, sharey=True)
        mappable = None
        for ax, algo in zip(axes, algos, strict=True):
            xs, ys, _, _ = surfaces[algo]
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
                hue="algo",
                hue_order=algos,
                palette=palette,
                ax=ax,
                errorbar=("ci", 95),
                n_boot=n_boot,
                seed=seed,
                linewidth=1.8,
                legend=False,
            )
            ax.xaxis.set_major_formatter(FuncFormatter(_steps_formatter))
            ax.set_xlabel("environment steps")
            ax.set_ylabel("episode return (training, binned)")
            ax.set_title(task)
        _legend(fig, algos, palette, markers=False)
    return fig, axes
