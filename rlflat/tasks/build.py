"""Building Gymnasium envs with given dynamics, derived quantities recomputed.

Gymnasium's CartPole computes ``total_mass`` and ``polemass_length`` once in ``__init__``: assigning ``length``
afterwards silently leaves the physics unchanged (the bug CARL-style ``setattr`` contexts and RLlib users hit).
Every parameter assignment here therefore goes through :func:`env_attributes`, which recomputes them; MuJoCo
model parameters likewise recompute the model's derived constants (:mod:`rlflat.tasks.model_params`).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from typing import Any

import gymnasium as gym

from rlflat.errors import RlflatError
from rlflat.tasks.expressions import evaluate
from rlflat.tasks.model_params import set_model_parameters
from rlflat.tasks.spec import TaskSpec


def dynamics_values(spec: TaskSpec, overrides: Mapping[str, float] | None = None) -> dict[str, float]:
    """Absolute values of every parameter: nominal, with ``overrides`` (by parameter name) applied and checked."""
    values = spec.nominal
    for name, value in (overrides or {}).items():
        spec.parameter(name)  # raises with the list of valid names
        if not isinstance(value, int | float) or value != value:
            raise RlflatError(f"parameter {name!r} of {spec.alias} must be a number, got {value!r}")
        values[name] = float(value)
    return values


def env_attributes(spec: TaskSpec, overrides: Mapping[str, float] | None = None) -> dict[str, float]:
    """Gymnasium attribute name -> value for every ``attr`` parameter, plus every derived quantity."""
    values = dynamics_values(spec, overrides)
    attributes = {spec.attribute(n): v for n, v in values.items() if spec.parameters[n].set == "attr"}
    for name, expression in spec.derived.items():
        attributes[name] = evaluate(expression, values)
    return attributes


def env_kwargs(spec: TaskSpec, overrides: Mapping[str, float] | None = None) -> dict[str, float]:
    """Keyword arguments for ``gymnasium.make`` (parameters set at construction)."""
    values = dynamics_values(spec, overrides)
    return {spec.attribute(n): v for n, v in values.items() if spec.parameters[n].set == "kwarg"}


def make_env(spec: TaskSpec, dynamics: Mapping[str, float] | None = None, **make_kwargs: Any) -> gym.Env:
    """``gymnasium.make`` the task with the given dynamics (absolute values by parameter name).

    Every parameter of the spec is assigned, nominal unless given in ``dynamics`` (``kwarg`` ones at
    construction, the rest by :func:`set_dynamics`), and derived quantities are always recomputed, so an env
    built here follows the physics its parameters describe whatever Gymnasium precomputed.
    """
    if spec.requires and importlib.util.find_spec(_REQUIRES_MODULE.get(spec.requires, spec.requires)) is None:
        raise RlflatError(f"task {spec.alias} needs the {spec.requires!r} extra: pip install 'rlflat[{spec.requires}]'")
    kwargs: dict[str, Any] = {**env_kwargs(spec, dynamics), **make_kwargs}
    env = gym.make(spec.id, **kwargs)
    set_dynamics(env, spec, dynamics)
    return env


def set_dynamics(env: gym.Env, spec: TaskSpec, dynamics: Mapping[str, float] | None = None) -> None:
    """Assign every ``attr`` and ``model`` parameter (nominal unless given) and derived quantities, in place.

    ``attr`` parameters and derived quantities are set on ``env.unwrapped``; ``model`` parameters scale the
    MuJoCo model's arrays (:mod:`rlflat.tasks.model_params`). ``kwarg`` parameters cannot change after
    construction: build a new env with :func:`make_env` for those.
    """
    base = env.unwrapped
    for attribute, value in env_attributes(spec, dynamics).items():
        if not hasattr(base, attribute):
            raise RlflatError(f"{spec.id} has no attribute {attribute!r} (task spec of {spec.alias})")
        setattr(base, attribute, value)
    values = dynamics_values(spec, dynamics)
    set_model_parameters(base, spec, {n: v for n, v in values.items() if spec.parameters[n].set == "model"})


_REQUIRES_MODULE = {"box2d": "Box2D", "mujoco": "mujoco"}
