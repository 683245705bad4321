"""Task specs (``envs/*.yaml``): what a task is, which dynamics can be perturbed, and how to train on it."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from rlflat.errors import RlflatError, bad_choice
from rlflat.tasks.expressions import expression_names

ENVS_DIR = Path(__file__).resolve().parents[2] / "envs"
"""Where the shipped specs live (the repository's top-level ``envs/``)."""

NoiseFamily = Literal["action", "observation"]
NOISE_FAMILIES: tuple[NoiseFamily, ...] = ("action", "observation")

Protocol = Literal["default", "lee_yoon"]
PROTOCOLS: tuple[Protocol, ...] = ("default", "lee_yoon")
"""How perturbations reach the env (docs/hopper_lee_yoon.md): ``default`` is MuJoCo-consistent (``mj_setConst``
after a model edit; action noise on the policy's raw action, clipped once); ``lee_yoon`` is Lee & Yoon's (2025)
public evaluation code (model arrays written alone; action noise on the action already clipped to the bounds,
clipped again)."""


class DynamicsParameter(BaseModel):
    """One perturbable physical quantity of a task.

    ``range`` holds multiplicative factors of ``nominal`` (``[0.25, 4.0]`` means x0.25..x4), so every parameter
    is perturbed on the same log-factor scale and robustness curves of different parameters are comparable.
    ``nominal`` is Gymnasium's own default (a test holds it), because building an env always assigns it.

    How the value reaches the env (``set``):

    - ``attr``: assigned on ``env.unwrapped`` after construction (derived quantities recomputed);
    - ``kwarg``: passed to ``gymnasium.make``;
    - ``model``: entries of the MuJoCo model array ``env.unwrapped.model.<attr>`` (``body_mass``,
      ``geom_friction``, ...), selected by ``index`` (body/geom/joint/actuator names, resolved with MuJoCo's
      name lookup, or ``all``) and, for 2-D arrays, ``column`` (one or several). The selected entries are multiplied by
      ``value / nominal`` relative to Gymnasium's default model (so setting twice, or back to nominal, is exact),
      as are the same rows of every array in ``scale_also`` (e.g. ``body_inertia`` with ``body_mass``), and
      MuJoCo's derived constants are recomputed (``mj_setConst``). When ``index`` is one name the selection must
      be one entry of its first column (give ``column`` for a 2-D array), the value is that entry's absolute value and ``nominal``
      must equal Gymnasium's default (checked when the env is built); when it is ``all`` or a list of names the
      value is a dimensionless scale and ``nominal`` must be 1. Parameters selecting the same entries compose
      multiplicatively.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    nominal: float
    range: tuple[float, float]
    set: Literal["attr", "kwarg", "model"] = "attr"
    """``attr``: on ``env.unwrapped``; ``kwarg``: to ``gymnasium.make``; ``model``: MuJoCo model array entries."""
    attr: str | None = None
    """Attribute, keyword or (``set: model``) MuJoCo model array name; defaults to the parameter's own name."""
    index: str | tuple[str, ...] | None = None
    """``set: model`` only: which rows of the model array: a name, a list of names, or ``all``."""
    column: int | tuple[int, ...] | None = None
    """``set: model`` only: the column(s) of a 2-D model array (``geom_friction`` 0 = sliding); none = every column.
    With several, all scale by the factor and the first holds the parameter's value."""
    set_columns: dict[int, float] = Field(default_factory=dict)
    """``set: model`` only: columns of the selected rows assigned these absolute values whenever the parameter is
    off nominal (Lee & Yoon's foot friction also sets ``geom_friction[2]`` to 0.1); the nominal model is untouched."""
    scale_also: tuple[str, ...] = ()
    """``set: model`` only: further model arrays whose same rows scale by the same factor (``body_inertia``)."""
    description: str = ""

    @field_validator("range")
    @classmethod
    def _factors_bracket_nominal(cls, value: tuple[float, float]) -> tuple[float, float]:
        low, high = value
        if not (0 < low <= 1.0 <= high):
            raise ValueError(f"range factors must satisfy 0 < low <= 1 <= high, got {list(value)}")
        return value

    @field_validator("nominal")
    @classmethod
    def _nonzero(cls, value: float) -> float:
        if value == 0:
            raise ValueError("nominal must be non-zero (ranges are multiplicative factors)")
        return value

    @model_validator(mode="after")
    def _model_fields(self) -> DynamicsParameter:
        model_only = {
            "index": self.index,
            "column": self.column,
            "scale_also": self.scale_also or None,
            "set_columns": self.set_columns or None,
        }
        if self.set != "model":
            given = [key for key, value in model_only.items() if value is not None]
            if given:
                raise ValueError(f"{', '.join(given)} only apply to set: model, not set: {self.set}")
            return self
        if self.attr is None or self.index is None:
            raise ValueError("set: model needs attr (the model array, e.g. body_mass) and index (names or all)")
        columns = [*(self.columns or ()), *self.set_columns]
        if any(c < 0 for c in columns):
            raise ValueError(f"columns must be >= 0, got {columns}")
        if self.columns is not None and (len(set(self.columns)) != len(self.columns) or not self.columns):
            raise ValueError(f"column must list distinct columns, got {list(self.columns)}")
        if set(self.columns or ()) & set(self.set_columns):
            raise ValueError(f"set_columns {sorted(self.set_columns)} overlaps the scaled column(s) {self.column}")
        if not self.single_entry and self.nominal != 1.0:
            raise ValueError(
                f"index {self.index!r} selects several entries, so the value is a scale and nominal must be 1.0, "
                f"got {self.nominal}"
            )
        return self

    @property
    def index_names(self) -> tuple[str, ...]:
        """``index`` as a tuple of names (``("all",)`` for every row); empty unless ``set: model``."""
        if self.index is None:
            return ()
        return (self.index,) if isinstance(self.index, str) else self.index

    @property
    def columns(self) -> tuple[int, ...] | None:
        """``column`` as a tuple (None: every column)."""
        if self.column is None:
            return None
        return (self.column,) if isinstance(self.column, int) else tuple(self.column)

    @property
    def single_entry(self) -> bool:
        """A ``set: model`` parameter naming one row holds that entry's absolute value (else it is a scale)."""
        return isinstance(self.index, str) and self.index != "all"


class ReferenceReturns(BaseModel):
    """Task-level constants of normalised return: ``(R - low) / (ref - low)``, the same scale for every run.

    ``low`` (R_low) is the mean episode return of a uniformly random policy on the nominal task, measured once by
    ``python -m rlflat.tasks.reference_returns`` and recorded with its standard error and episode count, so a
    normalised return of 0 means "no better than acting at random". ``ref`` (R_ref) is the task's maximum return
    where one exists (CartPole: 500) or a cited reference return otherwise (Gymnasium's ``reward_threshold``);
    ``ref_source`` says which. A normalised return above 1 is a return above R_ref: possible only where R_ref is
    a reference rather than a maximum, and never capped.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    low: float
    low_se: float = Field(ge=0)
    low_n: int = Field(ge=1)
    low_source: str
    ref: float
    ref_source: str

    @model_validator(mode="after")
    def _ordered(self) -> ReferenceReturns:
        if not self.ref > self.low:
            raise ValueError(f"ref ({self.ref}) must exceed low ({self.low})")
        return self


SOLVED_Z = 1.959963984540054
"""Two-sided 95% normal quantile of the one unsolved rule (:func:`solved_verdict`)."""
SOLVED_VERDICTS: tuple[str, ...] = ("solved", "borderline", "unsolved")


def solved_verdict(mean: float, se: float | None, threshold: float) -> str:
    """The one unsolved rule, used by training's ``solved``, the runs table and the report.

    A nominal return is a mean over a few episodes, so a run a hair below the threshold may have solved the task:
    ``unsolved`` when even the upper end of the 95% interval mean + 1.96 SE is below the threshold, ``solved``
    when its lower end reaches it, ``borderline`` when the interval holds the threshold (counted as solved, and
    listed as borderline). Without a standard error (None, NaN) the mean alone decides; a NaN mean is unsolved.
    """
    if not math.isfinite(mean):
        return "unsolved"
    half = SOLVED_Z * se if se is not None and math.isfinite(se) else 0.0
    if mean + half < threshold:
        return "unsolved"
    return "solved" if mean - half >= threshold else "borderline"


def returns_standard_error(returns: Any) -> float | None:
    """SE (ddof 1) of the mean of per-episode returns; None for fewer than two."""
    values = np.asarray(returns, dtype=float).reshape(-1)
    return float(values.std(ddof=1) / math.sqrt(len(values))) if len(values) > 1 else None


class TaskSpec(BaseModel):
    """A task: its Gymnasium id, perturbable dynamics, noise families, solved threshold, tuned hyperparameters."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str
    alias: str
    solved_threshold: float
    parameters: dict[str, DynamicsParameter]
    derived: dict[str, str] = Field(default_factory=dict)
    """Quantities Gymnasium precomputes from parameters (name -> arithmetic over parameter names)."""
    noise: tuple[NoiseFamily, ...] = NOISE_FAMILIES
    default_suite: tuple[str, ...] = ()
    requires: str | None = None
    """The rlflat extra the task needs (``box2d``, ``mujoco``), named in the error when it is missing."""
    reference_returns: ReferenceReturns | None = None
    """R_low / R_ref of task-level normalisation (every shipped spec has them; a test holds that)."""
    hyperparameters: dict[str, dict[str, Any]] = Field(default_factory=dict)
    """Per base algorithm (``ppo``, ``pg``); flatness variants (``ppo_sam``) inherit their base's values."""
    protocol: Protocol = "default"
    """How perturbations are applied (:data:`PROTOCOLS`); an evaluation suite sets it (:meth:`with_protocol`)."""

    def with_protocol(self, protocol: str) -> TaskSpec:
        """This task with perturbations applied as ``protocol`` prescribes (one of :data:`PROTOCOLS`)."""
        if protocol not in PROTOCOLS:
            raise bad_choice("protocol", protocol, PROTOCOLS)
        return self if protocol == self.protocol else self.model_copy(update={"protocol": protocol})

    @model_validator(mode="after")
    def _consistent(self) -> TaskSpec:
        for name, expression in self.derived.items():
            unknown = expression_names(expression) - set(self.parameters)
            if unknown:
                raise ValueError(f"derived.{name} reads unknown parameters {sorted(unknown)}")
        for name in self.default_suite:
            if name not in self.parameters:
                raise ValueError(f"default_suite names unknown parameter {name!r}")
        return self

    def verdict(self, nominal_return: float, se: float | None = None) -> str:
        """:func:`solved_verdict` of a mean nominal return (and its SE) against this task's threshold."""
        return solved_verdict(float(nominal_return), se, self.solved_threshold)

    def is_solved(self, nominal_return: float, se: float | None = None) -> bool:
        """Not unsolved by :func:`solved_verdict` (a borderline run counts as solved)."""
        return self.verdict(nominal_return, se) != "unsolved"

    def returns_solved(self, returns: Any) -> bool:
        """:meth:`is_solved` of per-episode returns: their mean and its standard error."""
        return self.is_solved(float(np.mean(returns)), returns_standard_error(returns))

    def parameter(self, name: str) -> DynamicsParameter:
        """The named parameter, or a one-line error listing the task's parameters."""
        if name not in self.parameters:
            raise bad_choice(f"parameter of {self.alias}", name, self.parameters)
        return self.parameters[name]

    def attribute(self, name: str) -> str:
        """Gymnasium's attribute (or keyword) name for parameter ``name``."""
        return self.parameter(name).attr or name

    @property
    def nominal(self) -> dict[str, float]:
        return {name: p.nominal for name, p in self.parameters.items()}

    def check_factor(self, name: str, factor: object) -> float:
        """``factor`` (of the nominal value) as a float, if it lies within parameter ``name``'s ``range``.

        The one range check of rlflat: suites check the factors they sweep, rollouts the absolute values they
        are given (:meth:`check_value`). Bounds are inclusive with a relative slack of 1e-9, so a value
        computed as ``nominal * factor`` at a range end passes despite rounding.
        """
        if not _is_number(factor):
            self.parameter(name)
            raise RlflatError(f"factor for {self.alias} parameter {name} must be a number, got {factor!r}")
        return self._in_range(name, float(factor), f"factor {float(factor):.6g}")  # type: ignore[arg-type]

    def check_value(self, name: str, value: object) -> float:
        """Absolute ``value`` of parameter ``name`` as a float, if its factor of nominal is within ``range``."""
        parameter = self.parameter(name)
        if not _is_number(value):
            raise RlflatError(f"parameter {name!r} of {self.alias} must be a number, got {value!r}")
        number = float(value)  # type: ignore[arg-type]
        factor = number / parameter.nominal
        self._in_range(name, factor, f"value {number!r} (factor {factor:.6g})")
        return number

    def _in_range(self, name: str, factor: float, what: str) -> float:
        parameter = self.parameter(name)
        low, high = parameter.range
        if not (factor > 0 and low * (1 - _RANGE_SLACK) <= factor <= high * (1 + _RANGE_SLACK)):
            ends = sorted([low * parameter.nominal, high * parameter.nominal])
            raise RlflatError(
                f"{what} of {self.alias} parameter {name} (nominal {parameter.nominal}) is outside its range; "
                f"valid factors: [{low}, {high}] (values {ends})"
            )
        return factor


_RANGE_SLACK = 1e-9


def _is_number(value: object) -> bool:
    """A finite real number (numpy scalars included; booleans and NaN are not numbers here)."""
    return (
        isinstance(value, int | float | np.integer | np.floating)
        and not isinstance(value, bool | np.bool_)
        and (math.isfinite(float(value)))
    )


def load_spec_file(path: str | Path) -> TaskSpec:
    """Parse and validate one spec file; errors name the file and the offending key path."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise RlflatError(f"{path}: not valid YAML ({exc})") from None
    if not isinstance(raw, dict):
        raise RlflatError(f"{path}: a task spec must be a mapping, got {type(raw).__name__}")
    try:
        return TaskSpec.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        key = ".".join(str(part) for part in first["loc"]) or "<root>"
        raise RlflatError(f"{path}: key {key!r}: {first['msg']}") from None


def spec_files(directory: Path = ENVS_DIR) -> list[Path]:
    return sorted(directory.glob("*.yaml"))


_CACHE: dict[Path, dict[str, TaskSpec]] = {}


def _index(directory: Path) -> dict[str, TaskSpec]:
    """Alias and id -> spec; two files claiming one name (case-insensitively, as lookups fold case) is an error."""
    if directory not in _CACHE:
        index: dict[str, TaskSpec] = {}
        owner: dict[str, Path] = {}  # folded name -> the file that claimed it
        for path in spec_files(directory):
            spec = load_spec_file(path)
            for name in dict.fromkeys((spec.alias, spec.id)):
                folded = name.lower()
                if owner.setdefault(folded, path) != path:
                    raise RlflatError(
                        f"task name {name!r} is claimed by two spec files: {owner[folded]} and {path} "
                        "(aliases and Gymnasium ids must be unique, case-insensitively)"
                    )
                index[name] = spec
        _CACHE[directory] = index
    return _CACHE[directory]


def list_tasks(directory: Path = ENVS_DIR) -> list[TaskSpec]:
    """Every shipped task, once each, sorted by alias."""
    return sorted({spec.alias: spec for spec in _index(directory).values()}.values(), key=lambda s: s.alias)


def load_task(name: str, directory: Path = ENVS_DIR) -> TaskSpec:
    """Resolve ``CartPole`` and ``CartPole-v1`` alike (case-insensitive) to the task's spec."""
    index = _index(directory)
    if name in index:
        return index[name]
    folded = {key.lower(): spec for key, spec in index.items()}
    if name.lower() in folded:
        return folded[name.lower()]
    raise bad_choice("task", name, [f"{s.alias} ({s.id})" for s in list_tasks(directory)])
