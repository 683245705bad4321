"""Loss and return along the straight line and the fitted Bezier curve between two policies (``probe --connect``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from rlflat.report.figures.style import FigAxes, FigureSkipped, _grid, figure_style

__all__ = ["plot_connection"]

_PATHS = {"line": ("straight line", "0.45", "--"), "curve": ("Bezier curve (fitted)", "#1f77b4", "-")}
_PANELS = {
    "loss": ("KL to the nearer end (nats)", True),
    "return": ("episode return (deterministic)", False),
}


def plot_connection(result: Mapping[str, Any], title: str | None = None) -> FigAxes:
    """One panel per quantity (the fitted loss, the episode return) against t, both paths, mean +- 1 SE band.

    ``result`` is :func:`rlflat.probe.connect.connect`'s pooled output; each legend entry carries its barrier.
    """
    t = np.asarray(result.get("t") or [], dtype=float)
    kinds = [k for k in _PANELS if all((result.get(p) or {}).get(k) is not None for p in _PATHS)]
    if t.size < 2 or not kinds:
        raise FigureSkipped("no connect result with values along t")
    with figure_style():
        fig, axes = _grid(len(kinds), panel=(4.6, 3.5))
        for ax, kind in zip(axes, kinds, strict=True):
            label, higher_is_worse = _PANELS[kind]
            for path, (name, colour, style) in _PATHS.items():
                entry = result[path]
                mean = np.asarray(entry[kind], dtype=float)
                se = np.asarray(entry.get(f"{kind}_se") or np.zeros_like(mean), dtype=float)
                barrier, barrier_se = entry.get(f"{kind}_barrier"), entry.get(f"{kind}_barrier_se")
                text = (
                    ""
                    if barrier is None
                    else f"barrier {barrier:.3g}" + ("" if barrier_se is None else f" ± {barrier_se:.2g}")
                )
                ax.plot(t, mean, color=colour, linestyle=style, linewidth=2.0, label=f"{name}: {text}")
                ax.fill_between(t, mean - se, mean + se, color=colour, alpha=0.2, linewidth=0)
            ax.set_xlabel("t (0 = policy A, 1 = policy B)")
            ax.set_ylabel(label)
            ax.set_title(f"{kind} along the paths" + (" (lower is better)" if higher_is_worse else ""))
            ax.legend(frameon=False, loc="best")
        if title:
            fig.suptitle(title)
    return fig, axes
