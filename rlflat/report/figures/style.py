"""The report's figures: one style, one colour per algorithm, every axis labelled with its unit.

Each ``plot_*`` function takes tidy data (the runs table or a stacked per-run table), draws with seaborn on
the Agg backend inside :func:`figure_style`, and returns ``(fig, axes)`` (``axes`` a flat numpy array). A
figure whose data is absent raises :class:`FigureSkipped` with the reason, which the report prints as a note
instead of failing. Colours come from :func:`algo_palette`, built once per report and passed to every
figure, so ``ppo_sam`` is the same colour everywhere: every algorithm its own colour-blind-safe hue with contrast
on white (cool for the PPO family, warm for policy gradient) and every update rule its own marker
(:mod:`rlflat.report.figures.legible`).
"""

from __future__ import annotations

import math
import re
import textwrap
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # headless: the report runs on servers and in CI

import matplotlib.pyplot as plt
import numpy as np
import numpy.typing as npt
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import LogLocator

from rlflat.io import write_atomic

Colour = tuple[float, float, float]
Palette = dict[str, Colour]
FigAxes = tuple[Figure, npt.NDArray[Any]]

DPI = 150
PANEL = (3.6, 3.0)
"""Inches per panel: at DPI 150 and a 1000-px page, 10-pt text stays about 12 px on screen."""
MAX_COLS = 3
_RULE_MARKER = {"": "o", "sam": "s", "asam": "^", "lysam": "v"}
RULES = ("sam", "asam", "lysam")

_LABELS: dict[str, str] = {
    "probe.lambda_max": "surrogate Hessian λ_max",
    "probe.fisher_lambda_max": "Fisher λ_max",
    "probe.fisher_trace": "Fisher trace",
    "probe.fisher_rao_norm": "Fisher-Rao norm",
    "probe.fisher_adaptive_lambda_max": "adaptive Fisher λ_max",
    "probe.fisher_adaptive_trace": "adaptive Fisher trace",
    "probe.lambda_min": "Hessian λ_min",
    "probe.trace": "surrogate Hessian trace",
    "probe.lambda_max_over_trace": "λ_max / trace",
    "probe.return_halving_sigma": "return-halving σ",
    "probe.return_drop_adaptive_sigma0p1": "return drop at σ = 0.1 (adaptive)",
    "probe.return_drop_filter_sigma0p1": "return drop at σ = 0.1 (filter)",
    "probe.keskar_sharpness": "Keskar ε-sharpness",
    "probe.magnitude_aware_flatness": "Jiang 1/σ'²",
    "probe.worst_case_adaptive": "worst-case sharpness (adaptive)",
    "probe.worst_case_raw": "worst-case sharpness (raw)",
    "probe.kl_sigma0p1": "KL at σ = 0.1",
    "probe.kl_sigma0p3": "KL at σ = 0.3",
    "probe.action_change_sigma0p1": "action change at σ = 0.1",
    "probe.loss_increase_sigma0p1": "loss increase at σ = 0.1",
    "probe.hessian.lambda_max": "Hessian λ_max",
    "train.sharpness_path.late_adam_ratio": "late λ₁(P⁻¹H) / Adam threshold",
    "train.sharpness_path.max_adam_ratio": "max λ₁(P⁻¹H) / Adam threshold",
    "train.sharpness_path.frac_adam_at_edge": "fraction of updates at Adam's edge",
    "train.sharpness_path.max_preconditioned_sharpness": "max λ₁(P⁻¹H) along training",
    "train.sharpness_path.final_preconditioned_sharpness": "final λ₁(P⁻¹H)",
    "train.sharpness_path.late_gd_ratio": "late λ₁(H) / (2/η)",
    "probe.hessian.lambda_min": "Hessian λ_min",
    "probe.hessian.trace": "Hessian trace",
    "probe.loss": "probe loss",
    "robustness.auc": "robust AUC",
    "robustness.auc_mean": "robust AUC",
    "robustness.worst_return": "worst-case return",
    "robustness.worst_dynamics_return": "worst-dynamics return",
    "robustness.frac_collapsed": "fraction collapsed",
    "robustness.collapse_log_factor_min": "min collapse log-factor",
    "robustness.collapsed_fraction": "fraction collapsed",
    "robustness.nominal_return": "nominal return (eval)",
    "train.return_mean": "nominal return",
}
_UNIT_RULES: tuple[tuple[str, str], ...] = (
    (r"over_trace", "ratio"),
    (r"return_halving_sigma", "σ, × filter norm"),
    (r"return_drop", "fraction of (solved - worst) return"),
    (r"keskar_sharpness", "% of 1 + loss"),
    (r"magnitude_aware_flatness", "1 / σ'²"),
    (r"^probe\.(hessian\.)?(lambda|trace|top)", "loss / param²"),
    (r"^probe\.(perturbation.*)?kl", "nats"),
    (r"^probe\.(perturbation.*)?action_change", "fraction of states"),
    (r"^probe\.loss_increase", "Δ loss"),
    (r"^probe\.perturbation.*(action)", "fraction of states"),
    (r"^probe\.perturbation.*(return)", "episode return"),
    (r"^probe\.perturbation.*(sigma)", "σ, rel. weight norm"),
    (r"^probe\.(perturbation|worst|sam|pgd)", "Δ loss"),
    (r"collapse_log_factor", "|ln factor|"),
    (r"auc", "normalised return"),
    (r"collapse.*(point|factor)", "× nominal"),
    (r"collapse.*log", "|ln factor|"),
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


def algo_palette(algos: Sequence[str]) -> Palette:
    """A fixed, distinct colour per algorithm: Okabe-Ito hues (cool for the PPO family, warm for policy
    gradient), each with contrast >= 3:1 on white (:mod:`rlflat.report.figures.legible`); the update rule also
    has its own marker."""
    from rlflat.report.figures.legible import distinct_palette

    return distinct_palette(algos, split_algo)


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


def _algo_ci(algos: Sequence[str], palette: Palette, ax: Axes, *, seed: int, n_boot: int) -> dict[str, Any]:
    """Seaborn keywords of a per-algorithm estimate with a 95% bootstrap CI: one hue per algorithm in
    ``algos`` order, a seeded bootstrap, and no per-axes legend (the figure gets one from :func:`_legend`)."""
    return {
        "hue": "algo",
        "hue_order": algos,
        "palette": palette,
        "ax": ax,
        "errorbar": ("ci", 95),
        "n_boot": n_boot,
        "seed": seed,
        "legend": False,
    }


def _legend(
    fig: Figure, algos: Sequence[str], palette: Palette, *, markers: bool = True, threshold: float | None = None
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
    if threshold is not None:
        handles.append(plt.Line2D([], [], color="0.2", linestyle="--", linewidth=1.1))
        labels.append(f"collapse threshold ({threshold:g})")
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
    """Log axis labelled 10, 100 rather than 10^1, 10^2: a reader compares magnitudes, not exponents; a view
    spanning less than a 1-2-5 step still gets labelled ticks (:class:`rlflat.report.figures.legible.PlainLogLocator`)."""
    from rlflat.report.figures.legible import plain_log_axis

    plain_log_axis(ax, axis)


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
