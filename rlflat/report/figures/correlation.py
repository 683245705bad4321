"""Sharpness against robustness: per-run scatter with the rank correlation, and the measures x metrics heatmap."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import seaborn as sns

from rlflat.report.document import estimate_ci
from rlflat.report.figures.style import (
    MAX_COLS,
    FigAxes,
    FigureSkipped,
    Palette,
    _grid,
    _legend,
    _plain_log_axis,
    _wrap,
    algo_marker,
    column_label,
    figure_style,
)
from rlflat.report.orientation import direction_word
from rlflat.report.stats.correlation import ACROSS

# ----------------------------------------------------------------------------- (1) sharpness vs robustness


def _corr_lookup(corr: pd.DataFrame, task: str, measure: str, metric: str) -> str:
    rows = corr[(corr["task"] == task) & (corr["measure"] == measure) & (corr["metric"] == metric)]
    rows = rows[(rows["method"] == "spearman") & (rows.get("scope", ACROSS) == ACROSS)]
    if rows.empty:
        return "ρ n/a"
    r = rows.iloc[0]
    return f"ρ = {estimate_ci(float(r['estimate']), float(r['ci_low']), float(r['ci_high']), '.2f')}"


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
    """One panel per (task, sharpness measure): each run a point with a horizontal error bar of +- one standard
    error of its measure over the probe's replicate batches (the ``<measure>_se`` column, when the runs table
    has it), a regression line with its 95% CI band.

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
            se_column = f"{measure}_se"
            columns = ["algo", measure, metric] + ([se_column] if se_column in runs.columns else [])
            sub = runs[runs["task"].astype(str) == task][columns].copy()
            for column in columns[1:]:
                sub[column] = pd.to_numeric(sub[column], errors="coerce")
            sub = sub.dropna(subset=[measure, metric])
            logx = len(sub) > 0 and _positive_wide(sub[measure])
            for algo, g in sub.groupby("algo", sort=True):
                if se_column in g and g[se_column].notna().any():
                    ax.errorbar(
                        g[measure],
                        g[metric],
                        xerr=g[se_column].fillna(0.0).to_numpy(),
                        fmt="none",
                        ecolor=palette[str(algo)],
                        elinewidth=1.0,
                        alpha=0.7,
                        zorder=2,
                    )
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


def _oriented(column: str) -> str:
    word = direction_word(column)
    return f"{column_label(column, unit=False)} ({word})" if word else column_label(column, unit=False)


def plot_correlation_heatmap(correlations: pd.DataFrame, *, method: str = "spearman", alpha: float = 0.05) -> FigAxes:
    """Measures x metrics grid of rank correlations (across runs), one panel per task scope, estimate [CI].

    Bold cells have a Holm-adjusted permutation p < ``alpha`` over the panel's measure x metric tests (the
    ``p_holm`` column); the others are compatible with no association once multiplicity is counted. Tick
    labels carry the orientation (↑ sharper / ↑ flatter, ↑ more / less robust) a reader needs to read a sign.
    """
    data = correlations[(correlations["method"] == method) & (correlations.get("scope", ACROSS) == ACROSS)]
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
            padj = sub.pivot(index="measure", columns="metric", values="p_holm").reindex(
                index=measures, columns=metrics
            )
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
                    p_adj = float(padj.loc[m, k])
                    excludes_zero = bool(np.isfinite(p_adj) and p_adj < alpha)
                    ci = f"\n[{a:.2f}, {b:.2f}]" if np.isfinite(a) and np.isfinite(b) else "\n(no CI)"
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
            ax.set_xticklabels([_wrap(_oriented(k), 16) for k in metrics], rotation=0)
            ax.set_yticklabels([_wrap(_oriented(m), 26) for m in measures], rotation=0)
            ax.set_xlabel("robustness metric")
            ax.set_ylabel("sharpness measure")
            ax.set_title("pooled over tasks (within-task ranks)" if scope == "pooled" else scope)
    return fig, axes
