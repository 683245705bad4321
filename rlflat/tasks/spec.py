"""Task specs (``envs/*.yaml``): what a task is, which dynamics can be perturbed, and how to train on it."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from rlflat.errors import RlflatError, bad_choice
from rlflat.tasks.expressions import expression_names

ENVS_DIR = Path(__file__).resolve().parents[2] / "envs"
"""Where the shipped specs live (the repository's top-level ``envs/``)."""

NoiseFamily = Literal["action", "observation"]
NOISE_FAMILIES: tuple[NoiseFamily, ...] = ("action", "observation")


class DynamicsParameter(BaseModel):
    """One perturbable physical quantity of a task.

    ``range`` holds multiplicative factors of ``nominal`` (``[0.25, 4.0]`` means x0.25..x4), so every parameter
    is perturbed on the same log-factor scale and robustness curves of different parameters are comparable.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    nominal: float
    range: tuple[float, float]
    set: Literal["attr", "kwarg"] = "attr"
    """``attr``: assigned on ``env.unwrapped`` after construction; ``kwarg``: passed to ``gymnasium.make``."""
    attr: str | None = None
    """Attribute or keyword name in Gymnasium; defaults to the parameter's own name."""
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
    hyperparameters: dict[str, dict[str, Any]] = Field(default_factory=dict)
    """Per base algorithm (``ppo``, ``pg``); flatness variants (``ppo_sam``) inherit their base's values."""

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
    if directory not in _CACHE:
        index: dict[str, TaskSpec] = {}
        for path in spec_files(directory):
            spec = load_spec_file(path)
            index[spec.alias] = spec
            index[spec.id] = spec
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
