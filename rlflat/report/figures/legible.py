"""Legible figures: colours a colour-blind reader tells apart on white, log axes that always carry labels, and
symmetric-log axes where values span decades.

* :func:`distinct_palette`: one colour per algorithm from the Okabe-Ito set (distinguishable under the common
  colour-vision deficiencies), cool hues for the PPO family and warm ones for policy gradient so a base and its
  flatness variants still read as a family, each darkened until its contrast against white is at least
  :data:`MIN_CONTRAST` (WCAG's 3:1 for graphics). Three shades of one blue, or a beige on white, are what this
  replaces.
* :class:`PlainLogLocator`: ticks at 1-2-5 multiples inside the view, falling back to evenly spaced plain
  numbers when the view spans less than that (a log axis spanning a factor of 3 had no labelled tick), thinned
  so labels never crowd.
* :func:`decade_scale`: ``symlog`` (values of both signs or zero) or ``log`` (all positive) when the magnitudes
  span more than :data:`DECADES` decades, so a few large eigenvalues no longer squeeze the rest into a spike.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
from matplotlib.axes import Axes
from matplotlib.ticker import FuncFormatter, Locator, MaxNLocator, NullFormatter

Colour = tuple[float, float, float]
MIN_CONTRAST = 3.0
DECADES = 2.0
MAX_TICKS = 6
OKABE_ITO = {
    "blue": "#0072B2",
    "bluish_green": "#009E73",
    "sky_blue": "#56B4E9",
    "vermillion": "#D55E00",
    "reddish_purple": "#CC79A7",
    "orange": "#E69F00",
    "black": "#000000",
    "yellow": "#F0E442",
}
_FAMILIES: dict[str, Sequence[str]] = {  # per base algorithm, the hues its update rules take in order
    "ppo": ("blue", "bluish_green", "sky_blue", "black"),
    "pg": ("vermillion", "reddish_purple", "yellow", "orange"),
}
"""Darkened to 3:1, orange sits close to vermillion: it is the last choice of the warm family and of the spares."""
_RULE_ORDER = ("", "sam", "asam", "lysam")
_SPARE = ("black", "yellow", "sky_blue", "reddish_purple", "bluish_green", "vermillion", "blue", "orange")


def _rgb(hex_colour: str) -> Colour:
    value = hex_colour.lstrip("#")
    r, g, b = (int(value[i : i + 2], 16) / 255.0 for i in (0, 2, 4))
    return (r, g, b)


def relative_luminance(colour: Colour) -> float:
    """WCAG 2 relative luminance of an sRGB colour (components in [0, 1])."""

    def linear(c: float) -> float:
        return c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4

    r, g, b = (linear(c) for c in colour)
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def contrast(a: Colour, b: Colour = (1.0, 1.0, 1.0)) -> float:
    """WCAG contrast ratio of two colours (1 to 21)."""
    la, lb = sorted((relative_luminance(a), relative_luminance(b)), reverse=True)
    return (la + 0.05) / (lb + 0.05)


def with_contrast(colour: Colour, minimum: float = MIN_CONTRAST) -> Colour:
    """``colour`` darkened toward black in small steps until its contrast against white reaches ``minimum``."""
    r, g, b = colour
    for step in range(101):
        k = 1.0 - step / 100.0
        candidate = (r * k, g * k, b * k)
        if contrast(candidate) >= minimum:
            return candidate
    return (0.0, 0.0, 0.0)


def distinct_palette(algos: Sequence[str], split: Any) -> dict[str, Colour]:
    """A distinct, contrast-checked colour per algorithm (``split(algo) -> (base, rule)``), stable per name."""
    out: dict[str, Colour] = {}
    used: set[str] = set()
    for algo in sorted(algos, key=lambda a: (split(a)[0], _rank(split(a)[1]))):
        base, rule = split(algo)
        family = _FAMILIES.get(base, ())
        preferred = family[_rank(rule)] if _rank(rule) < len(family) else None
        name = preferred if preferred is not None and preferred not in used else None
        if name is None:
            name = next((n for n in _SPARE if n not in used), None)
        if name is not None:
            used.add(name)
        out[algo] = with_contrast(_rgb(OKABE_ITO[name]) if name is not None else (0.4, 0.4, 0.4))
    return out


def _rank(rule: str) -> int:
    return _RULE_ORDER.index(rule) if rule in _RULE_ORDER else len(_RULE_ORDER)


class _ViewLocator(Locator):
    """A locator whose ticks depend only on the axis' view interval (no ticks before an axis is attached)."""

    def __call__(self) -> Sequence[float]:
        if self.axis is None:
            return []
        lo, hi = sorted(float(v) for v in self.axis.get_view_interval())
        return self.tick_values(lo, hi)


class PlainLogLocator(_ViewLocator):
    """Major ticks of a log axis at 1-2-5 multiples in view (at most :data:`MAX_TICKS`, thinned by decade),
    or evenly spaced plain numbers when the view holds fewer than two such multiples."""

    def tick_values(self, vmin: float, vmax: float) -> Sequence[float]:
        lo, hi = sorted((vmin, vmax))
        if not (lo > 0 and math.isfinite(lo) and math.isfinite(hi)):
            return []
        decades = range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1)
        ticks = [m * 10.0**d for d in decades for m in (1.0, 2.0, 5.0) if lo <= m * 10.0**d <= hi]
        if len(ticks) > MAX_TICKS:
            ticks = [t for t in ticks if f"{t:.0e}".startswith("1")]
            stride = math.ceil(len(ticks) / MAX_TICKS)
            ticks = ticks[::stride]
        if len(ticks) < 2:
            ticks = [t for t in MaxNLocator(nbins=4).tick_values(lo, hi) if lo <= t <= hi and t > 0]
        return ticks


def plain_log_axis(ax: Axes, axis: str = "x") -> None:
    """Log-axis ticks from :class:`PlainLogLocator`, labelled 0.5, 10, 100 (not 10^1); minor ticks unlabelled."""
    target = ax.xaxis if axis == "x" else ax.yaxis
    target.set_major_locator(PlainLogLocator())
    target.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    target.set_minor_formatter(NullFormatter())


class SymlogLocator(_ViewLocator):
    """Ticks of a symlog axis: 0 and signed powers of ten in view, thinned to at most :data:`MAX_TICKS` (the
    default locator labels every decade on both sides, and the labels collide)."""

    def __init__(self, linthresh: float) -> None:
        self.linthresh = linthresh

    def tick_values(self, vmin: float, vmax: float) -> Sequence[float]:
        lo, hi = sorted((vmin, vmax))
        start = math.floor(math.log10(self.linthresh)) + 1  # a decade clear of 0: labels need the room
        positive = [10.0**d for d in range(start, math.floor(math.log10(hi)) + 1)] if hi > 0 else []
        negative = [-(10.0**d) for d in range(start, math.floor(math.log10(-lo)) + 1)] if lo < 0 else []
        sides = [[t for t in positive if t <= hi], [t for t in negative if t >= lo]]
        room = max(1, (MAX_TICKS - 1) // max(1, sum(1 for s in sides if s)))
        thinned = [side[:: math.ceil(len(side) / room)] if len(side) > room else side for side in sides]
        return sorted([0.0, *thinned[0], *thinned[1]])


def spans_decades(values: npt.ArrayLike, decades: float = DECADES) -> bool:
    """Whether the nonzero magnitudes of ``values`` span more than ``decades`` decades (5th to 100th percentile)."""
    v = np.abs(np.asarray(values, dtype=np.float64))
    v = v[np.isfinite(v) & (v > 0)]
    if len(v) < 2:
        return False
    return bool(math.log10(float(v.max()) / float(np.percentile(v, 5))) > decades)


def decade_scale(ax: Axes, values: npt.ArrayLike, axis: str = "x") -> str:
    """Set a log (all positive) or symlog (zero or negative present) scale on ``axis`` when ``values`` span
    decades; the scale chosen (``linear`` when left alone)."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if not spans_decades(v):
        return "linear"
    setter = ax.set_xscale if axis == "x" else ax.set_yscale
    if (v > 0).all():
        setter("log")
        plain_log_axis(ax, axis)
        return "log"
    magnitudes = np.abs(v[v != 0])
    linthresh = float(np.percentile(magnitudes, 5)) if len(magnitudes) else 1.0
    setter("symlog", linthresh=max(linthresh, 1e-12))
    return "symlog"


def density_symlog(ax: Axes, grids: Sequence[npt.ArrayLike], densities: Sequence[npt.ArrayLike]) -> bool:
    """Symlog x for spectral densities whose mass sits near zero while their support reaches decades further
    (the linear axis showed one spike at 0 and an empty rest); True when applied. The linear range is the
    median magnitude of the pooled density mass."""
    xs, ws = [], []
    for grid, density in zip(grids, densities, strict=True):
        g, d = np.asarray(grid, dtype=np.float64), np.asarray(density, dtype=np.float64)
        keep = np.isfinite(g) & np.isfinite(d) & (d > 0)
        xs.append(np.abs(g[keep]))
        ws.append(d[keep])
    x, w = np.concatenate(xs) if xs else np.array([]), np.concatenate(ws) if ws else np.array([])
    if len(x) < 2 or w.sum() <= 0:
        return False
    order = np.argsort(x)
    cumulative = np.cumsum(w[order]) / w.sum()
    median = float(x[order][np.searchsorted(cumulative, 0.5)])
    reach = float(x.max())
    if median <= 0 or reach / median < 10.0**DECADES:
        return False
    ax.set_xscale("symlog", linthresh=median)
    ax.xaxis.set_major_locator(SymlogLocator(median))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    return True
