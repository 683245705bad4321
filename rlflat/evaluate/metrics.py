"""Collapse metrics: normalised return curves, collapse points, robust AUC, worst case.

Normalisation (``normalization``). By default (``task``) every return is put on the task's own scale,
``(R - R_low) / (R_ref - R_low)`` with the constants recorded in the task spec
(:class:`rlflat.tasks.spec.ReferenceReturns`: R_low a uniformly random policy's mean return, R_ref the task's
maximum or a cited reference return), so the same return scores the same in every run: 0 is acting at random,
1 is the reference, below 0 is worse than random, and above 1 is a return beyond R_ref (possible only where R_ref
is a reference rather than a maximum). Nothing is capped. ``nominal`` is the per-run alternative kept for
comparison with older studies: ``(R - floor) / (R_nominal - floor)``, 1 at the run's own nominal return and 0 at
the task's worst possible return (:data:`RETURN_FLOORS`); it rewards a run below the solved threshold (its ratios
are relative to a low nominal) and is not comparable across runs. ``unsolved`` and ``solved_verdict`` follow the one
rule (:func:`rlflat.tasks.spec.solved_verdict`: the nominal return's upper 95% bound below the spec's
``solved_threshold``) in either mode.

Collapse point. Per parameter, walking outward from nominal on each side separately (factors < 1 and > 1),
the first crossing of ``collapse_frac`` is located by linear interpolation in log-factor between the last
point at or above the threshold and the first below it. ``collapse_factor`` is the nearer of the two sides
(smallest |log-factor|), and both sides are reported; ``None`` (JSON null) with ``collapsed_within_range:
false`` when the curve never falls below the threshold inside the range.

Brackets. The interpolated crossing is a guess between two evaluated factors; each curve carries that bracket
(``collapse_bracket`` as factors, ``collapse_log_factor_bracket_low``/``_high`` as |log factor|), and so does the
run's minimum (``collapse_log_factor_min_bracket_low``/``_high``). The report ranks collapse points by bracket:
two runs whose crossings share a bracket are tied.

Censoring. A curve that never collapses is right-censored at the edge of what was evaluated. Each parameter's
block carries ``collapse_log_factor`` (nearest side, or null), ``collapsed_within_range`` and the bound
``max_log_factor`` (the largest |log factor| evaluated); the block's ``collapse_log_factor_min`` is the smallest
over parameters with never-collapsing ones counted at their bound, ``censored`` true when that minimum is a bound
rather than an observed collapse (so the run ranks as >= it), and ``collapse_log_factor_min_parameter`` names the
parameter. Noise curves carry ``collapse_level``, ``collapsed_within_range`` and ``max_level`` alike.

Counting settings. ``collapsed_fraction`` and ``n_settings`` count each distinct perturbed setting once
(:func:`distinct_settings`): every sweep's factor-1 row and every noise family's level-0 row is a copy of the
nominal point and is not counted, nor is a grid point that repeats a sweep point. Per-family summaries (``grids``,
``random``) describe their own rows, the grid's nominal corner included.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from rlflat.errors import RlflatError
from rlflat.tasks import TaskSpec

__all__ = [
    "NORMALIZATIONS",
    "RETURN_FLOORS",
    "Collapse",
    "Normalization",
    "censored_minimum",
    "collapse_point",
    "distinct_settings",
    "normalization",
    "normalize",
    "return_floor",
    "robust_auc",
    "robustness_block",
    "severity_tag",
]

_PENDULUM_WORST_STEP = math.pi**2 + 0.1 * 8.0**2 + 0.001 * 2.0**2
"""Pendulum's largest per-step cost: angle pi, speed at its clip (8), torque at the policy's bound (2)."""

RETURN_FLOORS: dict[str, float] = {
    "CartPole-v1": 0.0,  # +1 per step, so no episode returns less than 0
    "Acrobot-v1": -500.0,  # -1 per step for the full 500-step time limit
    "MountainCar-v0": -200.0,  # -1 per step for the full 200-step time limit
    "MountainCarContinuous-v0": -0.1 * 999,  # -0.1 a^2 with |a| <= 1 (policy actions are clipped), 999 steps
    "Pendulum-v1": -_PENDULUM_WORST_STEP * 200,  # about -3254.7 over the 200-step limit
}
"""Worst possible episode return per Gymnasium id, the zero point of normalised returns."""


def return_floor(task: TaskSpec, nominal_return: float) -> float | None:
    """The task's worst return; 0 for unknown tasks when the nominal return is positive, else ``None``."""
    if task.id in RETURN_FLOORS:
        return RETURN_FLOORS[task.id]
    return 0.0 if nominal_return > 0 else None


def normalize(returns: np.ndarray | float, nominal_return: float, floor: float | None) -> np.ndarray:
    """``(R - floor) / (R_nominal - floor)``; NaN when there is no floor or the nominal return sits on it."""
    values = np.asarray(returns, dtype=np.float64)
    if floor is None or not nominal_return - floor > 1e-12:
        return np.full(values.shape, math.nan)
    return (values - floor) / (nominal_return - floor)


NORMALIZATIONS = ("task", "nominal")
"""``task``: the spec's R_low / R_ref, one scale for every run (default); ``nominal``: per run, 1 at its nominal."""


@dataclass(frozen=True)
class Normalization:
    """``(R - zero) / (one - zero)``: the returns that map to 0 and 1, and which mode chose them."""

    mode: str
    zero: float | None
    one: float | None
    source: str

    def apply(self, returns: np.ndarray | float) -> np.ndarray:
        """Normalised returns; NaN everywhere when the scale is undefined (no floor, or one <= zero)."""
        values = np.asarray(returns, dtype=np.float64)
        if self.zero is None or self.one is None or not self.one - self.zero > 1e-12:
            return np.full(values.shape, math.nan)
        return (values - self.zero) / (self.one - self.zero)

    def block(self) -> dict[str, Any]:
        """The ``normalization`` entry of the robustness block (what 0 and 1 mean, and where they come from)."""
        formula = "(R - R_low) / (R_ref - R_low)" if self.mode == "task" else "(R - floor) / (R_nominal - floor)"
        return {
            "mode": self.mode,
            "zero": self.zero,
            "one": self.one,
            "floor": self.zero,
            "formula": formula,
            "source": self.source,
            "above_one": "a return above R_ref (not capped)" if self.mode == "task" else "a return above nominal",
        }


def normalization(task: TaskSpec, nominal_return: float, mode: str = "task") -> Normalization:
    """The normalisation of ``mode`` for ``task`` (a one-line error when the spec lacks its constants)."""
    if mode not in NORMALIZATIONS:
        raise RlflatError(f"normalization must be one of {', '.join(NORMALIZATIONS)}, got {mode!r}")
    if mode == "nominal":
        floor = return_floor(task, nominal_return)
        return Normalization(
            "nominal", floor, nominal_return, "per run: this run's nominal return; floor: worst return"
        )
    ref = task.reference_returns
    if ref is None:
        raise RlflatError(
            f"task {task.alias} records no reference_returns (R_low, R_ref) in its spec: measure R_low with "
            "python -m rlflat.tasks.reference_returns, or use normalization 'nominal'"
        )
    source = f"R_low {ref.low:.6g} +- {ref.low_se:.2g} (n={ref.low_n}; {ref.low_source}); R_ref {ref.ref:.6g} ({ref.ref_source})"
    return Normalization("task", ref.low, ref.ref, source)


@dataclass(frozen=True)
class Collapse:
    """Where a robustness curve first drops below the threshold (factors; ``None`` = never within range).

    ``low_bracket`` / ``high_bracket`` are the two evaluated factors around each crossing (inner: the last at or
    above the threshold, outer: the first below it). The interpolated factor is a guess inside that bracket;
    two runs whose crossings share a bracket are tied as far as the grid can tell.
    """

    low: float | None
    high: float | None
    low_bracket: tuple[float, float] | None = None
    high_bracket: tuple[float, float] | None = None

    @property
    def factor(self) -> float | None:
        """The nearer side in |log-factor| (the low side on a tie)."""
        sides = [f for f in (self.low, self.high) if f is not None]
        return min(sides, key=lambda f: abs(math.log(f))) if sides else None

    @property
    def bracket(self) -> tuple[float, float] | None:
        """The bracket of :attr:`factor`'s side, as (inner, outer) factors."""
        factor = self.factor
        if factor is None:
            return None
        return self.low_bracket if factor == self.low else self.high_bracket

    @property
    def log_distance(self) -> float | None:
        factor = self.factor
        return None if factor is None else abs(math.log(factor))


def _first_crossing(
    x: Sequence[float], y: Sequence[float], threshold: float
) -> tuple[float, tuple[float, float]] | None:
    """Walking along ``x`` (outward from the reference at index 0), the interpolated first y < threshold and the
    bracket (x before, x at) it lies in."""
    for i in range(1, len(x)):
        if y[i] < threshold:
            y0, y1 = y[i - 1], y[i]
            if y0 < threshold:  # the reference point itself is below: collapse at the reference
                return x[i - 1], (x[i - 1], x[i - 1])
            return x[i - 1] + (y0 - threshold) / (y0 - y1) * (x[i] - x[i - 1]), (x[i - 1], x[i])
    return None


def collapse_point(
    factors: Sequence[float], normalized: Sequence[float], collapse_frac: float = 0.5, log: bool = True
) -> Collapse:
    """Collapse factor on each side of 1 (interpolated in log-factor); NaN points are skipped.

    With ``log=False`` the axis is the value itself measured from 0 (noise levels), and only ``high`` is used.
    """
    points = sorted((float(f), float(v)) for f, v in zip(factors, normalized, strict=True) if not math.isnan(float(v)))
    if log and any(f <= 0 for f, _ in points):
        raise RlflatError(f"factors must be > 0 for a log-factor collapse point, got {sorted(factors)}")
    to_x = (lambda f: math.log(f)) if log else (lambda f: f)
    from_x = (lambda x: math.exp(x)) if log else (lambda x: x)
    origin = 0.0
    ref = next((v for f, v in points if math.isclose(to_x(f), origin, abs_tol=1e-12)), 1.0)
    above = [(to_x(f), v) for f, v in points if to_x(f) > origin + 1e-12]
    below = [(-to_x(f), v) for f, v in reversed(points) if to_x(f) < origin - 1e-12]

    def side(pairs: list[tuple[float, float]], sign: float) -> tuple[float, tuple[float, float]] | None:
        if not pairs:
            return None
        x = [0.0] + [p[0] for p in pairs]
        y = [ref] + [p[1] for p in pairs]
        crossing = _first_crossing(x, y, collapse_frac)
        if crossing is None:
            return None
        at, (inner, outer) = crossing
        return from_x(sign * at), (from_x(sign * inner), from_x(sign * outer))

    low = side(below, -1.0) if log else None
    high = side(above, 1.0)
    return Collapse(
        low=None if low is None else low[0],
        high=None if high is None else high[0],
        low_bracket=None if low is None else low[1],
        high_bracket=None if high is None else high[1],
    )


def robust_auc(factors: Sequence[float], normalized: Sequence[float], log: bool = True) -> float:
    """Mean normalised return over the range: trapezoidal area in (log-)factor divided by the range's width."""
    points = sorted(
        (math.log(f) if log else float(f), float(v))
        for f, v in zip(factors, normalized, strict=True)
        if not math.isnan(float(v))
    )
    if not points:
        return math.nan
    if len(points) == 1:
        return points[0][1]
    x = np.array([p[0] for p in points])
    y = np.array([p[1] for p in points])
    return float(np.sum((y[1:] + y[:-1]) / 2 * np.diff(x)) / (x[-1] - x[0]))


def _acting(rows: pd.DataFrame, axis: str) -> tuple[pd.DataFrame, list[float], list[float]]:
    """The sweep's rows where the perturbation acts: inert rows (equal to nominal) go, and each saturated run of
    factors (identical dynamics) keeps only its factor nearest nominal; returns (rows, inert, merged) factors."""
    if "inert" not in rows or "dynamics_group" not in rows:
        return rows, [], []
    inert = rows["inert"].astype(bool) & (rows[axis] != 1.0)
    kept = rows[~inert]
    distance = np.abs(np.log(kept[axis].astype(float)))
    nearest = kept.assign(_d=distance).sort_values("_d").drop_duplicates("dynamics_group", keep="first")
    merged = kept[~kept.index.isin(nearest.index)]
    return nearest.drop(columns="_d"), sorted(map(float, rows.loc[inert, axis])), sorted(map(float, merged[axis]))


def _curve(rows: pd.DataFrame, axis: str, collapse_frac: float, log: bool) -> dict[str, Any]:
    inert: list[float] = []
    merged: list[float] = []
    if log:
        rows, inert, merged = _acting(rows, axis)
    rows = rows.sort_values(axis)
    factors = rows[axis].to_list()
    normalized = rows["normalized_return"].to_list()
    collapse = collapse_point(factors, normalized, collapse_frac, log=log)
    block: dict[str, Any] = {
        ("factors" if log else "levels"): factors,
        "return_mean": rows["return_mean"].to_list(),
        "normalized_return": normalized,
    }
    if log:
        block.update(collapse_factor=collapse.factor, collapse_low=collapse.low, collapse_high=collapse.high)
        block["collapse_log_factor"] = collapse.log_distance
        bracket = collapse.bracket
        block["collapse_bracket"] = None if bracket is None else list(bracket)
        logs = None if bracket is None else sorted(abs(math.log(f)) for f in bracket)
        block["collapse_log_factor_bracket_low"] = None if logs is None else logs[0]
        block["collapse_log_factor_bracket_high"] = None if logs is None else logs[1]
        block["max_log_factor"] = max((abs(math.log(f)) for f in factors), default=0.0)
        block["inert_factors"] = inert
        block["saturated_factors"] = merged
        block["inert"] = len(factors) <= 1 and bool(inert or merged)
    else:
        block["collapse_level"] = collapse.high
        block["max_level"] = max(factors, default=0.0)
    block["collapsed_within_range"] = collapse.low is not None or collapse.high is not None
    block["auc"] = robust_auc(factors, normalized, log=log)
    return block


def severity_tag(factor: float) -> str:
    """``0.5 -> "x0p5"``, ``2 -> "x2"``: a column-safe name for a declared severity."""
    return "x" + f"{factor:g}".replace(".", "p").replace("-", "m")


def _at_severities(rows: pd.DataFrame, severities: Sequence[float]) -> dict[str, float | None]:
    """Normalised return of a sweep at each declared severity: the row at that factor (the evaluator always includes
    them), else interpolated in log-factor between its neighbours; None outside the evaluated range."""
    points = rows[["factor", "normalized_return"]].dropna().sort_values("factor")
    x = np.log(points["factor"].to_numpy(dtype=np.float64))
    y = points["normalized_return"].to_numpy(dtype=np.float64)
    out: dict[str, float | None] = {}
    for factor in severities:
        inside = x.size > 0 and x[0] - 1e-12 <= math.log(factor) <= x[-1] + 1e-12
        out[f"severity_return_{severity_tag(factor)}"] = float(np.interp(math.log(factor), x, y)) if inside else None
    return out


def _family_blocks(table: pd.DataFrame, collapse_frac: float) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """Per-parameter sweep curves, per-grid summaries and noise curves, each over its own family's rows."""
    from rlflat.evaluate.suites import ACTION_NOISE, NOMINAL, OBS_NOISE, RANDOM

    parameters: dict[str, Any] = {}
    grids: dict[str, Any] = {}
    noise: dict[str, Any] = {}
    for family, rows in table.groupby("family", sort=False):
        family = str(family)
        if family in (NOMINAL, RANDOM):
            continue
        if family in (ACTION_NOISE, OBS_NOISE):
            noise[family] = _curve(rows, family, collapse_frac, log=False)
        elif ":" in family:
            grids[family] = _summary(rows)
        else:
            parameters[family] = _curve(rows, "factor", collapse_frac, log=True)
            parameters[family].update(_at_severities(rows, table.attrs.get("severities") or ()))
    return parameters, grids, noise


def _summary(rows: pd.DataFrame) -> dict[str, Any]:
    return {
        "mean_normalized_return": float(rows["normalized_return"].mean()),
        "collapsed_fraction": float(rows["collapsed"].mean()),
        "worst_return": float(rows["return_mean"].min()),
    }


def censored_minimum(parameters: dict[str, Any]) -> dict[str, Any]:
    """The smallest collapse distance over parameters, counting a never-collapsing one at its range bound.

    A parameter that never collapsed contributes ``max_log_factor`` (the largest |log factor| evaluated) as a
    lower bound. ``censored`` says the minimum is such a bound (every parameter that reaches it never collapsed),
    i.e. the true value is >= it; a run with ``censored`` true ranks at or above every run whose minimum is an
    observed collapse no larger than the bound.
    """
    candidates = [
        (curve["collapse_log_factor"] if curve["collapsed_within_range"] else curve["max_log_factor"], name, curve)
        for name, curve in parameters.items()
        if not curve.get("inert")  # a parameter that never changed the dynamics says nothing about robustness
    ]
    if not candidates:
        return {
            "collapse_log_factor_min": None,
            "collapse_log_factor_min_parameter": None,
            "collapse_log_factor_min_bracket_low": None,
            "collapse_log_factor_min_bracket_high": None,
            "censored": None,
        }
    value = min(c[0] for c in candidates)
    at_min = [(name, curve) for v, name, curve in candidates if v == value]
    observed = [name for name, curve in at_min if curve["collapsed_within_range"]]
    chosen = (observed or [at_min[0][0]])[0]
    return {
        "collapse_log_factor_min": value,
        "collapse_log_factor_min_parameter": chosen,
        **{
            f"collapse_log_factor_min_bracket_{end}": parameters[chosen].get(f"collapse_log_factor_bracket_{end}")
            if observed
            else None
            for end in ("low", "high")
        },
        "censored": not observed,
    }


def distinct_settings(table: pd.DataFrame) -> pd.DataFrame:
    """The perturbed settings of ``table``, each once: rows equal to the nominal point or to an earlier row go.

    Sweeps, grids and noise families each repeat the nominal point (factor 1, level 0), and a grid repeats its
    axes' sweep points; those copies have identical returns and count once in suite-wide fractions. Rows are
    compared on their perturbed quantities and noise levels (absolute values, computed identically). With the
    evaluator's ``dynamics_group`` column, rows are compared on what the dynamics *do* instead: an inert row is
    the nominal point and a saturated run of factors is one setting.
    """
    columns = list(table.attrs.get("quantity_columns") or [c for c in table.columns if c not in _RESULT_COLUMNS])
    if "dynamics_group" in table.columns:
        noise = [c for c in columns if c in ("action_noise", "obs_noise")]
        columns = ["dynamics_group", *noise]
    nominal = table.loc[table["family"] == "nominal", columns]
    distinct = table.drop_duplicates(subset=columns)
    if len(nominal):
        distinct = distinct[~(distinct[columns] == nominal.iloc[0]).all(axis=1)]
    return distinct


_RESULT_COLUMNS = frozenset(
    {"family", "factor", "episodes", "return_mean", "return_std", "return_ci_low", "return_ci_high"}
    | {"normalized_return", "collapsed", "returns", "dynamics_group", "inert", "saturated"}
)


def robustness_block(table: pd.DataFrame, task: TaskSpec, collapse_frac: float = 0.5) -> dict[str, Any]:
    """The ``robustness`` block of ``metrics.json`` from a table made by :func:`rlflat.evaluate.evaluate`."""
    from rlflat.evaluate.suites import ACTION_NOISE, NOMINAL, OBS_NOISE, RANDOM

    nominal = table[table["family"] == NOMINAL]
    if len(nominal) != 1:
        raise RlflatError(f"robustness table needs exactly one nominal row, found {len(nominal)}")
    nominal_return = float(nominal["return_mean"].iloc[0])
    nominal_se = _standard_error(nominal["returns"].iloc[0]) if "returns" in table else None
    parameters, grids, noise = _family_blocks(table, collapse_frac)
    others = table[table["family"] != NOMINAL]
    distinct = distinct_settings(table)
    dynamics = others[~others["family"].isin([ACTION_NOISE, OBS_NOISE])]
    worst = others.iloc[int(np.argmin(others["return_mean"].to_numpy()))] if len(others) else nominal.iloc[0]
    aucs = [p["auc"] for p in parameters.values() if not (math.isnan(p["auc"]) or p.get("inert"))]
    random_rows = table[table["family"] == RANDOM]
    block: dict[str, Any] = {
        "task": task.alias,
        "collapse_frac": collapse_frac,
        "collapse_side": "nearest of the low (factor < 1) and high (factor > 1) crossings, each interpolated "
        "in log-factor walking outward from nominal",
        "normalization": table.attrs.get("normalization")
        or {"floor": table.attrs.get("return_floor"), "formula": "(R - floor) / (R_nominal - floor)"},
        "episodes": table.attrs.get("episodes"),
        "nominal_episodes": int(nominal["episodes"].iloc[0]) if "episodes" in table else table.attrs.get("episodes"),
        "seed": table.attrs.get("seed"),
        "deterministic": table.attrs.get("deterministic"),
        "nominal_return": nominal_return,
        "nominal_return_std": float(nominal["return_std"].iloc[0]) if "return_std" in table else None,
        "nominal_return_se": nominal_se,
        "nominal_normalized_return": float(nominal["normalized_return"].iloc[0]),
        "solved_threshold": task.solved_threshold,
        "solved_verdict": task.verdict(nominal_return, nominal_se),
        "unsolved": not task.is_solved(nominal_return, nominal_se),
        "parameters": parameters,
        **censored_minimum(parameters),
        "auc_mean": float(np.mean(aucs)) if aucs else None,
        "worst_return": float(worst["return_mean"]),
        "worst_setting": {"family": str(worst["family"]), **_setting_values(worst, table)},
        "worst_dynamics_return": float(dynamics["return_mean"].min()) if len(dynamics) else nominal_return,
        "collapsed_fraction": float(distinct["collapsed"].mean()) if len(distinct) else 0.0,
        "n_settings": len(distinct),
        "settings_counted": "distinct perturbed settings, each once: the nominal point and its copies in every "
        "sweep, grid and noise family are excluded, a grid point equal to a sweep point counts once, an inert "
        "setting is the nominal point and a saturated run of factors is one setting",
        **_severity_summary(table, parameters, task),
        "inert_settings": int(table["inert"].sum()) if "inert" in table else None,
        "saturated_settings": int(table["saturated"].sum()) if "saturated" in table else None,
    }
    if grids:
        block["grids"] = grids
    if noise:
        block["noise"] = noise
    if len(random_rows):
        block["random"] = {"samples": len(random_rows), **_summary(random_rows)}
    return block


def _severity_summary(table: pd.DataFrame, parameters: dict[str, Any], task: TaskSpec) -> dict[str, Any]:
    """Run-level severity metrics: the mean over (acting) parameters of the normalised return at each declared
    severity, and the collapsed fraction of the distinct dynamics settings inside the severity box."""
    severities = [float(f) for f in table.attrs.get("severities") or ()]
    if not severities:
        return {}
    out: dict[str, Any] = {}
    for factor in severities:
        key = f"severity_return_{severity_tag(factor)}"
        values = [p[key] for p in parameters.values() if not p.get("inert") and p.get(key) is not None]
        out[key] = float(np.mean(values)) if values else None
    low, high = min([*severities, 1.0]), max([*severities, 1.0])
    from rlflat.evaluate.suites import ACTION_NOISE, NOMINAL, OBS_NOISE

    rows = distinct_settings(table)
    rows = rows[~rows["family"].isin([NOMINAL, ACTION_NOISE, OBS_NOISE])]
    inside = np.ones(len(rows), dtype=bool)
    for name in (c for c in rows.columns if c in task.parameters):
        factor = rows[name].to_numpy(dtype=np.float64) / task.parameters[name].nominal
        inside &= (factor >= low * (1 - 1e-9)) & (factor <= high * (1 + 1e-9))
    boxed = rows[inside]
    out["severity_box"] = [low, high]
    out["n_settings_box"] = len(boxed)
    out["collapsed_fraction_box"] = float(boxed["collapsed"].mean()) if len(boxed) else None
    return out


def _standard_error(returns: Sequence[float] | None) -> float | None:
    """Standard error (ddof 1) of a row's mean return from its per-episode returns; None with fewer than 2."""
    values = np.asarray(list(returns) if returns is not None else [], dtype=np.float64)
    return float(values.std(ddof=1) / math.sqrt(values.size)) if values.size >= 2 else None


def _setting_values(row: pd.Series, table: pd.DataFrame) -> dict[str, float]:
    """The row's perturbed quantities (absolute values differing from nominal, noise levels > 0)."""
    nominal = table[table["family"] == "nominal"].iloc[0]
    columns = table.attrs.get("quantity_columns", [])
    return {c: float(row[c]) for c in columns if not math.isclose(float(row[c]), float(nominal[c]))}
