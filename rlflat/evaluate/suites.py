"""Which perturbed settings an evaluation runs: one-axis sweeps, 2-D grids, random boxes, noise levels.

Dynamics are perturbed by multiplicative factors of the nominal value within the spec's ``range``, log-spaced,
so every parameter's robustness curve lives on the same |log-factor| scale and includes the nominal point.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from rlflat.errors import RlflatError, bad_choice
from rlflat.tasks import TaskSpec

__all__ = [
    "FAMILIES",
    "Setting",
    "SuiteSpec",
    "build_settings",
    "count_settings",
    "level_count",
    "parse_grids",
    "parse_levels",
    "parse_suite",
    "sweep_factors",
]

NOMINAL, ACTION_NOISE, OBS_NOISE, RANDOM = "nominal", "action_noise", "obs_noise", "random"
MAX_POINTS = 1_000_000
"""Factors or noise levels per axis. A million resolves nothing a thousand do not; the cap keeps a typo from
allocating the grid itself before the memory check (:mod:`rlflat.evaluate.budget`) sees the rollout it implies."""
FAMILIES = (NOMINAL, ACTION_NOISE, OBS_NOISE, RANDOM, "<parameter>", "<a>:<b>")
"""Values of the ``family`` column: a parameter name for its sweep, ``a:b`` for a grid, or a fixed name."""


@dataclass(frozen=True)
class Setting:
    """One row of the robustness table: multiplicative factors per perturbed parameter, and noise levels."""

    family: str
    factors: tuple[tuple[str, float], ...] = ()
    action_noise: float = 0.0
    obs_noise: float = 0.0
    factor: float = math.nan
    """The swept factor for a one-axis sweep (1.0 for nominal); NaN for grids, random samples and noise."""

    def dynamics(self, task: TaskSpec) -> dict[str, float]:
        """Absolute parameter values (only the perturbed ones), as ``make_env``/``rollout_returns`` take them."""
        return {name: task.parameters[name].nominal * f for name, f in self.factors}

    @property
    def key(self) -> tuple[object, ...]:
        """Physics and noise, without the family: settings with equal keys have identical returns."""
        physics = tuple(sorted((n, f) for n, f in self.factors if f != 1.0))
        return physics, self.action_noise, self.obs_noise


@dataclass(frozen=True)
class SuiteSpec:
    """What to evaluate. Empty ``parameters`` with no other family means the task's default suite."""

    parameters: tuple[str, ...] = ()
    grids: tuple[tuple[str, str], ...] = ()
    points: int = 21
    """Log-spaced factors per 1-D sweep. 21 over x0.25..x4 is a step of x1.15: a collapse point is located to
    within that bracket, where 11 (x1.32) or 5 (x2) points put several runs' crossings in one bracket."""
    grid_points: int = 11
    """Log-spaced factors per axis of a 2-D grid (11 x 11 = 121 settings)."""
    severities: tuple[float, ...] = (0.5, 2.0)
    """Declared severities (factors of nominal): every log-spaced sweep includes them (when inside the range), the
    metrics report the normalised return there, and [min, max] is the box of ``collapsed_fraction_box``."""
    random: int = 0
    random_seed: int = 0
    random_parameters: tuple[str, ...] = ()
    """Box for random samples; empty means ``parameters`` (or the default suite when that is empty too)."""
    action_noise: tuple[float, ...] = ()
    obs_noise: tuple[float, ...] = ()
    factors: Mapping[str, Sequence[float]] = field(default_factory=dict)
    """Explicit factors per parameter, replacing the log-spaced grid for that parameter's sweep."""
    protocol: str = "default"
    """How perturbations are applied: ``default`` (MuJoCo-consistent) or ``lee_yoon`` (Lee & Yoon's public
    evaluation code: no ``mj_setConst`` after a model edit, action noise on the clipped action); see
    :data:`rlflat.tasks.spec.PROTOCOLS` and docs/hopper_lee_yoon.md."""

    @property
    def only_default(self) -> bool:
        return not (self.parameters or self.grids or self.random or self.action_noise or self.obs_noise)


def sweep_factors(low: float, high: float, points: int, include: Sequence[float] = ()) -> list[float]:
    """``points`` log-spaced factors from ``low`` to ``high``, with 1.0 (nominal) and each of ``include`` inside
    the range inserted when missing (a grid point within 1e-9 of one is snapped to it)."""
    _check_points(points)
    grid = [float(f) for f in np.geomspace(low, high, points)] if high > low else [float(low)]
    grid[0], grid[-1] = float(low), float(high)  # exact ends despite rounding in geomspace
    for anchor in (1.0, *(float(f) for f in include if low <= f <= high)):
        grid = [anchor if math.isclose(f, anchor, rel_tol=1e-9) else f for f in grid]
        if anchor not in grid:
            grid.append(anchor)
    return sorted(set(grid))


def _check_points(points: object) -> None:
    if isinstance(points, bool) or not isinstance(points, int) or not 2 <= points <= MAX_POINTS:
        raise RlflatError(f"points must be an integer in [2, {MAX_POINTS}], got {points!r}")


def level_count(text: str | None, points: int) -> int:
    """How many levels :func:`parse_levels` would give (``lo:hi`` -> ``points``), without making them."""
    if not text:
        return 0
    return max(int(points), 2) if ":" in text else len([v for v in text.split(",") if v.strip()])


def parse_suite(task: TaskSpec, text: str) -> tuple[str, ...]:
    """``length,masspole`` -> parameter names (``default`` = the task's default suite, ``all`` = every one)."""
    names: list[str] = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        if item == "default":
            names.extend(task.default_suite)
        elif item == "all":
            names.extend(task.parameters)
        else:
            task.parameter(item)  # raises listing the task's parameters
            names.append(item)
    if not names:
        raise RlflatError(f"empty suite {text!r}; valid parameters: {', '.join(task.parameters)}")
    return tuple(dict.fromkeys(names))


def parse_grids(task: TaskSpec, texts: Sequence[str]) -> tuple[tuple[str, str], ...]:
    """``["length:masscart", "a:b,c:d"]`` -> parameter pairs for 2-D grids."""
    pairs: list[tuple[str, str]] = []
    for text in texts:
        for item in (part.strip() for part in text.split(",")):
            names = item.split(":")
            if len(names) != 2 or names[0] == names[1]:
                raise RlflatError(f"grid {item!r} must name two different parameters as a:b")
            for name in names:
                task.parameter(name)
            pairs.append((names[0], names[1]))
    return tuple(dict.fromkeys(pairs))


def parse_levels(text: str, points: int, what: str) -> tuple[float, ...]:
    """Noise levels: ``lo:hi`` (``points`` evenly spaced), ``a,b,c`` (explicit) or one number."""
    try:
        if ":" in text:
            _check_points(max(points, 2))
            low, high = (float(v) for v in text.split(":"))
            levels = [float(v) for v in np.linspace(low, high, max(points, 2))]
        else:
            levels = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise RlflatError(f"{what} {text!r} is not lo:hi, a,b,c or a number") from None
    if not levels or any(not math.isfinite(v) or v < 0 for v in levels):
        raise RlflatError(f"{what} levels must be finite and >= 0, got {text!r}")
    return tuple(levels)


def _suite_parameters(task: TaskSpec, suite: SuiteSpec) -> tuple[str, ...]:
    parameters = suite.parameters or (task.default_suite if suite.only_default else ())
    if suite.only_default and not parameters:
        parameters = tuple(task.parameters)
    return tuple(parameters)


def count_settings(task: TaskSpec, suite: SuiteSpec | None = None, extra_levels: int = 0) -> int:
    """An upper bound on ``len(build_settings(task, suite))`` (+ ``extra_levels`` noise levels not yet parsed),
    computed without building anything, so a size check can come before the allocation."""
    suite = suite or SuiteSpec()
    points = suite.points if isinstance(suite.points, int) and suite.points > 0 else 2
    grid_points = suite.grid_points if isinstance(suite.grid_points, int) and suite.grid_points > 0 else 2
    anchors = 1 + len(suite.severities)  # nominal and the declared severities, inserted when missing

    def n_factors(name: str, axis_points: int = points) -> int:
        return len(suite.factors[name]) + 1 if name in suite.factors else axis_points + anchors

    random = suite.random if isinstance(suite.random, int) and suite.random > 0 else 0
    levels = sum(len(levels) + 1 for levels in (suite.action_noise, suite.obs_noise) if levels)
    return (
        1
        + sum(n_factors(name) for name in _suite_parameters(task, suite))
        + sum(n_factors(a, grid_points) * n_factors(b, grid_points) for a, b in suite.grids)
        + random
        + levels
        + extra_levels
    )


def build_settings(task: TaskSpec, suite: SuiteSpec | None = None) -> list[Setting]:
    """The suite's settings: nominal first, then sweeps, grids, random samples, noise levels (in that order)."""
    suite = suite or SuiteSpec()
    task.with_protocol(suite.protocol)  # refuses an unknown protocol, naming the valid ones
    for name in suite.factors:
        task.parameter(name)
    parameters = _suite_parameters(task, suite)
    for name in parameters:
        task.parameter(name)
    if isinstance(suite.random, bool) or not isinstance(suite.random, int) or suite.random < 0:
        raise RlflatError(f"random must be a non-negative integer, got {suite.random!r}")

    _check_severities(suite.severities)

    def factors_of(name: str, points: int) -> list[float]:
        if name in suite.factors:
            given = sorted({task.check_factor(name, f) for f in suite.factors[name]})
            return given if 1.0 in given else sorted([*given, 1.0])
        return sweep_factors(*task.parameters[name].range, points, include=suite.severities)

    settings = [Setting(NOMINAL, factor=1.0)]
    for name in parameters:
        settings += [Setting(name, ((name, f),), factor=f) for f in factors_of(name, suite.points)]
    for a, b in suite.grids:
        pairs = [(fa, fb) for fa in factors_of(a, suite.grid_points) for fb in factors_of(b, suite.grid_points)]
        settings += [Setting(f"{a}:{b}", ((a, fa), (b, fb))) for fa, fb in pairs]
    if suite.random:
        box = suite.random_parameters or parameters or task.default_suite or tuple(task.parameters)
        rng = np.random.default_rng(suite.random_seed)
        for name in box:
            task.parameter(name)
        logs = [np.log(task.parameters[n].range) for n in box]
        samples = np.exp([rng.uniform(lo, hi, suite.random) for lo, hi in logs]).T
        settings += [Setting(RANDOM, tuple(zip(box, map(float, row), strict=True))) for row in samples]
    _check_noise_families(task, suite)
    for family, levels in ((ACTION_NOISE, suite.action_noise), (OBS_NOISE, suite.obs_noise)):
        for level in sorted({0.0, *map(float, levels)}) if levels else ():  # 0 = the reference point
            if not math.isfinite(level) or level < 0:
                raise RlflatError(f"{family} level {level!r} must be finite and >= 0")
            noisy = Setting(family, action_noise=level) if family == ACTION_NOISE else Setting(family, obs_noise=level)
            settings.append(noisy)
    return settings


def _check_severities(severities: Sequence[float]) -> None:
    for factor in severities:
        if (
            isinstance(factor, bool)
            or not isinstance(factor, int | float)
            or not (factor > 0 and math.isfinite(factor))
        ):
            raise RlflatError(f"severities are factors of nominal (finite, > 0), got {list(severities)!r}")


def _check_noise_families(task: TaskSpec, suite: SuiteSpec) -> None:
    """Noise families must be ones the task spec declares (``noise: [action, observation]``)."""
    for requested, family in ((suite.action_noise, "action"), (suite.obs_noise, "observation")):
        if requested and family not in task.noise:
            raise bad_choice(f"noise family of {task.alias}", family, task.noise)
