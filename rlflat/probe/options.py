"""The probe's options: every knob in one frozen dataclass, recorded in ``probe.json['config']``.

:func:`make_options` builds them from keywords (the CLI's flags, a sweep's ``probe:`` block) and validates them;
:func:`validate_probe_options` is the check alone, for callers (the sweep) that reject bad options before any
run starts. Errors are one-line :class:`~rlflat.errors.RlflatError` naming the bad value and the valid choices.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import Any

from rlflat.errors import RlflatError, bad_choice
from rlflat.probe.directions import KINDS
from rlflat.probe.losses import LOSSES, SCOPES

DEVIATIONS: tuple[str, ...] = ("action_change", "kl")
"""Deviations the magnitude-aware sigma' can be searched against (:mod:`rlflat.probe.literature`)."""
RETURN_SCALES: tuple[str, ...] = ("task", "solved_threshold")
"""Divisors of return drops (:mod:`rlflat.probe.return_sharpness`)."""

__all__ = ["DEFAULT_MEASURES", "MEASURES", "QUICK", "ProbeOptions", "make_options", "validate_probe_options"]

MEASURES: tuple[str, ...] = (
    "hessian",
    "trace",
    "density",
    "fisher",
    "perturbation",
    "worst_case",
    "return_sharpness",
    "cliff",
    "keskar",
    "magnitude_aware",
    "landscape",
)
DEFAULT_MEASURES: tuple[str, ...] = tuple(m for m in MEASURES if m != "landscape")
"""Every measure but the landscapes (grids of returns: slow, and figures rather than numbers)."""

_POSITIVE_INTS = (
    "batches",
    "batch",
    "batch_envs",
    "top_k",
    "n_directions",
    "episodes",
    "density_probes",
    "density_steps",
    "ascent_steps",
    "landscape_points",
    "landscape_points_2d",
    "landscape_episodes",
    "interpolation_steps",
    "return_directions",
    "return_episodes",
    "keskar_iterations",
    "magnitude_aware_samples",
    "magnitude_aware_depth",
)
_NON_NEGATIVE_FLOATS = ("rho", "adaptive_rho", "eta", "landscape_span", "interpolation_margin", "magnitude_aware_eps")
_POSITIVE_FLOATS = ("cliff_span", "keskar_eps", "magnitude_aware_target", "magnitude_aware_upper")


MAX_SIGMAS = 100
"""Most values in one sigma list: each costs a rollout batch per direction (the defaults have 2-6)."""
MAX_KESKAR_EPS = 10.0
"""Largest Keskar box: beyond it the box dwarfs the weights and the ascent's numbers overflow (1e308 did)."""


@dataclass(frozen=True)
class ProbeOptions:
    """Every knob of a probe, recorded in ``probe.json['config']``; defaults are the fast CartPole demo set."""

    measures: tuple[str, ...] = DEFAULT_MEASURES
    loss: str = "surrogate"
    scope: str = "actor"
    seed: int = 0
    # probe batches: every measure is computed on each of `batches` independent batches and reported as the mean
    # with its standard error (rlflat.probe.pooling)
    batches: int = 4
    batch: int = 1000
    """Transitions per batch (at least; whole episodes are kept, see ``whole_episodes``). 4 x 1000 is the old single
    4,096-transition batch split into independent parts; 1000 is two full-length (500-step) CartPole episodes,
    one per env."""
    batch_envs: int = 2
    whole_episodes: bool = True
    gamma: float | None = None
    """None: the run's ``hyperparameters.gamma`` (0.99 for a bare zip)."""
    gae_lambda: float | None = None
    normalize_advantage: bool = True
    # Hessian
    top_k: int = 5
    exact_threshold: int = 1_000
    """Dense Hessian + full spectrum up to this many parameters; above, matrix-free (ARPACK, Hutchinson, SLQ): the
    dense route on a 64x64 CartPole actor (4,610) costs ~4,600 HVPs per batch, the matrix-free one ~300."""
    trace_probes: int = 30
    density_probes: int = 2
    density_steps: int = 90
    density_grid: int = 1000
    # average-case perturbation
    directions: str = "filter"
    ignore_1d: bool = True
    """Filter/layer directions: zero 1-D tensors (biases, log-std) as Li et al. (2018); False normalises them."""
    n_directions: int = 4
    sigmas: tuple[float, ...] = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0)
    reference_sigmas: tuple[float, ...] = (0.1, 0.3)
    """Fixed sigmas at which the mean KL, action change and loss increase are also reported as single numbers
    (``metrics.json`` keys ``kl_sigma0p1`` ...), comparable across probes with different grids."""
    episodes: int = 3
    # worst case
    rho: float = 0.05
    adaptive_rho: float = 0.5
    eta: float = 0.01
    ascent_steps: int = 10
    # return-based sharpness (rlflat.probe.return_sharpness) and the cliff test (rlflat.probe.cliff)
    return_sigmas: tuple[float, ...] = (0.05, 0.1, 0.2)
    return_directions: int = 4
    return_episodes: int = 4
    """Episodes per perturbed policy (return sharpness and the cliff line). Per replicate 4 directions x 4 episodes
    (1 + 2 x 3 x 4 policies = 100 rollouts), over the default 4 replicates 16 directions and 16 episodes: the SE
    comes from the replicates."""
    return_scale: str = "task"
    """Divisor of return drops: 'task' = R_ref - R_low of the spec (as the evaluator normalises); 'solved_threshold'
    = the spec's solved threshold minus the task's worst return."""
    cliff_points: int = 20
    cliff_span: float = 1.0
    """The cliff line: ``cliff_points`` alphas from 0 to ``cliff_span`` (filter-normalised gradient units)."""
    # published definitions (rlflat.probe.literature)
    keskar_eps: float = 1e-3
    keskar_iterations: int = 10
    magnitude_aware_deviation: str = "action_change"
    magnitude_aware_target: float = 0.1
    magnitude_aware_eps: float = 1e-3
    magnitude_aware_samples: int = 10
    magnitude_aware_depth: int = 15
    magnitude_aware_upper: float = 5.0
    # landscapes
    landscape_points: int = 21
    landscape_points_2d: int = 11
    landscape_span: float = 1.0
    landscape_episodes: int = 3
    # interpolation
    interpolate: str | None = None
    interpolation_steps: int = 20
    interpolation_margin: float = 0.25
    update_metrics: bool = True

    def validate(self) -> None:
        """One-line errors naming the bad value and the valid choices; nothing is computed or written before."""
        self._validate_choices()
        for name in _POSITIVE_INTS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise RlflatError(f"{name} must be a positive integer, got {value!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise RlflatError(f"seed must be an integer >= 0, got {self.seed!r}")
        if self.batch < 2 or self.trace_probes < 2 or self.density_grid < 2:
            raise RlflatError("batch, trace_probes and density_grid must be >= 2")
        for name in _NON_NEGATIVE_FLOATS:
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
                raise RlflatError(f"{name} must be a finite number >= 0, got {value!r}")
        for name in _POSITIVE_FLOATS:
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise RlflatError(f"{name} must be a finite number > 0, got {value!r}")
        if self.keskar_eps > MAX_KESKAR_EPS:
            raise RlflatError(
                f"keskar_eps must be in (0, {MAX_KESKAR_EPS:g}] (Keskar et al. 2017 use 1e-3 and 5e-4: the box is "
                f"eps x (|theta| + 1)), got {self.keskar_eps!r}"
            )
        if self.cliff_points < 10:
            raise RlflatError(
                f"cliff_points must be >= 10 (the cliff test reads the 10th point), got {self.cliff_points}"
            )
        self._validate_sigmas()

    def _validate_choices(self) -> None:
        if not self.measures:
            raise RlflatError(f"no measures selected; valid: {', '.join(MEASURES)}")
        for m in self.measures:
            if m not in MEASURES:
                raise bad_choice("measure", m, MEASURES)
        if self.loss not in LOSSES:
            raise bad_choice("loss", self.loss, LOSSES)
        if self.scope not in SCOPES:
            raise bad_choice("parameter scope", self.scope, SCOPES)
        if self.directions not in KINDS:
            raise bad_choice("direction kind", self.directions, KINDS)
        if self.return_scale not in RETURN_SCALES:
            raise bad_choice("return scale", self.return_scale, RETURN_SCALES)
        if self.magnitude_aware_deviation not in DEVIATIONS:
            raise bad_choice("magnitude-aware deviation", self.magnitude_aware_deviation, DEVIATIONS)

    def _validate_sigmas(self) -> None:
        for name in ("sigmas", "reference_sigmas", "return_sigmas"):
            values = getattr(self, name)
            if len(values) > MAX_SIGMAS:
                raise RlflatError(f"{name} has {len(values)} values; at most {MAX_SIGMAS}")
            if any(not (isinstance(s, int | float) and math.isfinite(s) and s > 0) for s in values):
                raise RlflatError(f"{name} must be positive finite numbers, got {list(values)}")
            if list(values) != sorted(set(values)):
                raise RlflatError(f"{name} must be ascending without repeats, got {list(values)}")
        if not self.sigmas:
            raise RlflatError("sigmas must not be empty")


QUICK: dict[str, Any] = {
    "batch": 512,
    "trace_probes": 30,
    "n_directions": 4,
    "sigmas": (0.03, 0.3, 1.0, 3.0),
    "episodes": 2,
    "ascent_steps": 5,
    "landscape_points": 11,
    "landscape_points_2d": 7,
    "landscape_episodes": 1,
    "exact_threshold": 0,
    "measures": ("hessian", "trace", "fisher", "perturbation", "worst_case"),
}
"""``--quick``: smaller sizes and the matrix-free spectrum, ~10 s for a 64x64 CartPole policy (explicit options
still win)."""


def make_options(**options: Any) -> ProbeOptions:
    """Options from keywords, rejecting unknown names in one line; sequences become tuples (hashable, JSON-able).

    ``quick=True`` starts from :data:`QUICK`; ``measures`` may be a comma-separated string; ``None`` values mean
    "the default" (except ``interpolate``, where None means no interpolation). Raises :class:`RlflatError`.
    """
    names = [f.name for f in fields(ProbeOptions)]
    quick = bool(options.pop("quick", False))
    for key in options:
        if key not in names:
            raise bad_choice("probe option", key, [*names, "quick"])
    merged = {**(QUICK if quick else {}), **{k: v for k, v in options.items() if v is not None or k == "interpolate"}}
    if isinstance(merged.get("measures"), str):
        merged["measures"] = tuple(m.strip() for m in merged["measures"].split(",") if m.strip())
    for key in ("measures", "sigmas", "reference_sigmas", "return_sigmas"):
        if key in merged:
            try:
                merged[key] = tuple(merged[key])
            except TypeError:
                raise RlflatError(f"{key} must be a list, got {merged[key]!r}") from None
    if merged.get("interpolate") is not None:
        merged["interpolate"] = str(merged["interpolate"])
    opts = replace(ProbeOptions(), **merged)
    opts.validate()
    return opts


def validate_probe_options(options: dict[str, Any]) -> None:
    """Check a probe options dict (as a sweep's ``probe:`` block or ``probe_run``'s keywords) without running
    anything; raises :class:`RlflatError` naming the first bad option. The dict is not modified."""
    if not isinstance(options, dict):
        raise RlflatError(f"probe options must be a mapping, got {type(options).__name__}")
    make_options(**dict(options))
