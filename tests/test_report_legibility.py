"""Figures a reader can read: distinct colour-blind-safe colours with contrast on white, labelled log axes,
symmetric-log spectra where the mass sits near zero, and no text drawn over other text at the default size
(checked on matplotlib's own renderer: the bounding boxes of tick labels, axis labels and titles)."""

from __future__ import annotations

import itertools

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from rlflat.report import figures as F
from rlflat.report.figures.legible import (
    MAX_TICKS,
    PlainLogLocator,
    contrast,
    relative_luminance,
    spans_decades,
    with_contrast,
)
from rlflat.report.probe_data import KEY_DENSITY, KEY_DENSITY_GRID, KEY_TOP_EIGENVALUES

ALGO_SETS = [
    ["ppo", "ppo_sam", "ppo_asam"],  # the Hopper study: three near-identical blues before
    ["pg", "pg_sam", "ppo", "ppo_sam"],
    ["pg", "pg_asam", "pg_sam", "ppo", "ppo_asam", "ppo_lysam", "ppo_sam"],
]


def test_luminance_and_contrast_match_wcag_reference_values() -> None:
    assert relative_luminance((1.0, 1.0, 1.0)) == pytest.approx(1.0)
    assert contrast((0.0, 0.0, 0.0)) == pytest.approx(21.0)
    assert contrast((0.4627, 0.4627, 0.4627)) == pytest.approx(4.54, abs=0.02)  # #767676: WCAG's 4.5:1 grey
    assert contrast(with_contrast((0.94, 0.89, 0.26))) >= 3.0  # Okabe-Ito yellow, darkened until legible


@pytest.mark.parametrize("algos", ALGO_SETS, ids=lambda a: ",".join(a))
def test_palette_is_distinct_and_legible_on_white(algos: list[str]) -> None:
    palette = F.algo_palette(algos)
    assert set(palette) == set(algos)
    for colour in palette.values():
        assert contrast(colour) >= 3.0
    for a, b in itertools.combinations(algos, 2):
        distance = float(np.linalg.norm(np.subtract(palette[a], palette[b])))
        assert distance > 0.2, (a, b, palette[a], palette[b])
    assert F.algo_palette(list(reversed(algos))) == palette  # one colour per name, whatever the order


@pytest.mark.parametrize(("lo", "hi"), [(3.2, 8.0), (0.9, 1.6), (1e-6, 1e4), (0.4, 1.6), (2.0, 2.5)])
def test_log_axes_always_have_at_least_two_and_at_most_max_labelled_ticks(lo: float, hi: float) -> None:
    ticks = PlainLogLocator().tick_values(lo, hi)
    assert 2 <= len(ticks) <= MAX_TICKS and all(lo <= t <= hi for t in ticks)


def test_spans_decades() -> None:
    assert spans_decades([0.01, 0.1, 5.0, 30.0] * 5)
    assert not spans_decades([1.0, 2.0, 5.0, 9.0])


def _overlaps(fig: Figure) -> list[tuple[str, str]]:
    """Pairs of visible texts (tick labels, axis labels, titles) whose rendered boxes intersect."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()  # type: ignore[attr-defined]
    texts = []
    for ax in fig.axes:
        labels = [ax.xaxis.label, ax.yaxis.label, ax.title]
        for axis in (ax.xaxis, ax.yaxis):  # ticks matplotlib draws: inside the view, label switched on
            lo, hi = sorted(axis.get_view_interval())
            labels += [tick.label1 for tick in axis.get_major_ticks() if lo <= tick.get_loc() <= hi]
        texts += [t for t in labels if t.get_visible() and t.get_text().strip()]
    boxes = [(t.get_text(), t.get_window_extent(renderer).expanded(1.0, 1.0)) for t in texts]
    found = []
    for (na, a), (nb, b) in itertools.combinations(boxes, 2):
        inter_w = min(a.x1, b.x1) - max(a.x0, b.x0)
        inter_h = min(a.y1, b.y1) - max(a.y0, b.y0)
        if inter_w > 1.0 and inter_h > 1.0:  # more than a pixel of shared area
            found.append((na, nb))
    return found


def _hopper_curves() -> tuple[pd.DataFrame, dict[tuple[str, str], str]]:
    rows = []
    panels = {
        "torso_mass": "torso_mass factor (1 = 3.66519 inertia unchanged)",
        "foot_friction": "foot_friction factor (1 = 2 sliding + torsional x f, rolling 0.1)",
        "friction_scale": "friction_scale factor (1 = 1)",
    }
    rng = np.random.default_rng(0)
    for panel in panels:
        for algo in ("ppo", "ppo_sam", "ppo_asam"):
            for seed in range(3):
                for x in np.geomspace(0.4, 1.6, 11):
                    rows.append(
                        {
                            "task": "Hopper",
                            "panel": panel,
                            "x": x,
                            "log": True,
                            "algo": algo,
                            "run_id": f"{algo}{seed}",
                            "normalized_return": 0.25 + 0.02 * rng.normal(),
                        }
                    )
    return pd.DataFrame(rows), {("Hopper", p): text for p, text in panels.items()}


def test_robustness_curves_with_long_axis_labels_do_not_overlap() -> None:
    curves, labels = _hopper_curves()
    fig, _ = F.plot_robustness_curves(curves, F.algo_palette(["ppo", "ppo_sam", "ppo_asam"]), labels, n_boot=50)
    try:
        assert _overlaps(fig) == []
    finally:
        plt.close(fig)


def _spectra(top_span: float) -> dict[str, dict[str, np.ndarray]]:
    grid = np.linspace(-5.0, 2000.0, 400)
    probes = {}
    for i, algo in enumerate(("ppo", "ppo", "pg", "pg")):
        density = np.exp(-0.5 * (grid / 0.5) ** 2) + 1e-4 * np.exp(-0.5 * ((grid - 1500.0 - 50 * i) / 20.0) ** 2)
        top = np.linspace(20.0, 20.0 / top_span, 5) * (1 + 0.1 * i)
        probes[f"{algo}-{i}"] = {KEY_DENSITY_GRID: grid, KEY_DENSITY: density, KEY_TOP_EIGENVALUES: top}
    return probes


def test_hessian_density_uses_symlog_when_mass_sits_near_zero_and_text_does_not_overlap() -> None:
    probes = _spectra(top_span=3.0)
    run_algo = {run: run.split("-")[0] for run in probes}
    fig, axes = F.plot_hessian_density(probes, run_algo, F.algo_palette(["ppo", "pg"]))
    try:
        assert axes[0].get_xscale() == "symlog"
        assert _overlaps(fig) == []
    finally:
        plt.close(fig)


def test_top_eigenvalues_spanning_less_than_a_decade_still_have_y_tick_labels() -> None:
    probes = _spectra(top_span=2.0)  # 10 .. 22: the smoke report's panel had no y labels
    run_algo = {run: run.split("-")[0] for run in probes}
    fig, axes = F.plot_top_eigenvalues(probes, run_algo, F.algo_palette(["ppo", "pg"]), top_k=5, n_boot=50)
    try:
        fig.canvas.draw()
        shown = [t.get_text() for t in axes[0].get_yticklabels() if t.get_visible() and t.get_text()]
        assert len(shown) >= 2
        assert _overlaps(fig) == []
    finally:
        plt.close(fig)
