"""``set: model`` parameters: scaling entries of a MuJoCo model's arrays (body masses, geom friction, ...).

Gymnasium's MuJoCo envs (Hopper, HalfCheetah, Walker2d) read their physics from ``env.unwrapped.model``, a
compiled ``mujoco.MjModel``; each ``gym.make`` compiles its own, so changing one env's model touches no other.
A parameter selects rows of one array by name (MuJoCo's own name lookup, ``mj_name2id``) or ``all``, and a
column for 2-D arrays, and multiplies them by ``value / nominal``. Factors are applied to Gymnasium's default
arrays, captured the first time an env is touched, so repeated or reverted settings are exact.

Two MuJoCo facts the task specs rely on:

- Derived constants (subtree masses, the constraint solver's inverse weights ``dof_invweight0``, ...) are
  computed when the model compiles; after changing masses they are stale unless ``mj_setConst`` runs (the
  MuJoCo analogue of CartPole's stale ``polemass_length``). It runs here on a scratch ``MjData``, so the env's
  own state is not touched.
- A contact's friction is the larger of the two geoms' (equal priorities): lowering one geom's friction below
  its partner's changes nothing further.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Mapping
from typing import Any

import numpy as np

from rlflat.errors import RlflatError, bad_choice
from rlflat.tasks.spec import DynamicsParameter, TaskSpec

__all__ = ["model_entries", "set_model_parameters"]

_PRISTINE: weakref.WeakKeyDictionary[Any, dict[str, np.ndarray]] = weakref.WeakKeyDictionary()
"""Per unwrapped env: Gymnasium's default copy of every model array rlflat has scaled."""

_OBJECT_TYPES = {"body_": "mjOBJ_BODY", "geom_": "mjOBJ_GEOM", "jnt_": "mjOBJ_JOINT", "actuator_": "mjOBJ_ACTUATOR"}
"""Which MuJoCo object's names index an array, by the array's prefix."""

_NOMINAL_RTOL = 1e-9


def _model_of(env: Any, spec: TaskSpec) -> Any:
    model = getattr(env, "model", None)
    if model is None or not hasattr(model, "body_mass"):
        raise RlflatError(f"{spec.id} has no MuJoCo model; 'set: model' parameters of {spec.alias} need one")
    return model


def _array(model: Any, spec: TaskSpec, name: str) -> np.ndarray:
    array = getattr(model, name, None)
    if not isinstance(array, np.ndarray) or array.dtype.kind != "f":
        raise RlflatError(f"{spec.id}'s MuJoCo model has no float array {name!r} (task spec of {spec.alias})")
    return array


def _rows(model: Any, spec: TaskSpec, name: str, parameter: DynamicsParameter) -> np.ndarray:
    """Row indices selected by ``parameter.index`` in model array ``parameter.attr``."""
    import mujoco

    attr = parameter.attr or name
    size = _array(model, spec, attr).shape[0]
    if parameter.index_names == ("all",):
        return np.arange(size)
    prefix = next((p for p in _OBJECT_TYPES if attr.startswith(p)), None)
    if prefix is None:
        raise RlflatError(
            f"{spec.alias} parameter {name}: {attr} is not indexed by names ({', '.join(_OBJECT_TYPES)}*); "
            "use index: all"
        )
    kind = getattr(mujoco.mjtObj, _OBJECT_TYPES[prefix])
    rows = []
    for label in parameter.index_names:
        row = mujoco.mj_name2id(model, kind, label)
        if row < 0:
            names = [mujoco.mj_id2name(model, kind, i) for i in range(size)]
            raise bad_choice(f"{prefix[:-1]} name in {spec.alias} parameter {name}", label, [n for n in names if n])
        rows.append(row)
    return np.array(rows)


def model_entries(env: Any, spec: TaskSpec, name: str) -> np.ndarray:
    """The current entries of ``env``'s model selected by ``set: model`` parameter ``name`` (a copy)."""
    parameter = spec.parameter(name)
    model = _model_of(env.unwrapped, spec)
    array = _array(model, spec, parameter.attr or name)
    rows = _rows(model, spec, name, parameter)
    columns = parameter.columns
    selected = array[rows] if columns is None else array[rows, columns[0]]
    return np.array(selected, copy=True)


def set_model_parameters(env: Any, spec: TaskSpec, values: Mapping[str, float]) -> None:
    """Scale the model arrays of ``env`` (unwrapped) for every ``set: model`` parameter in ``values``.

    Each selected entry becomes ``default * value / nominal`` (defaults: Gymnasium's arrays, captured on the
    first call for this env), the rows of each ``scale_also`` array likewise; off nominal, ``set_columns``
    assigns its fixed values; then ``mj_setConst``, except under the ``lee_yoon`` protocol, which reproduces
    Lee & Yoon's evaluation code: MuJoCo's derived constants (``body_subtreemass``, ``body_invweight0``,
    ``dof_invweight0``, ``dof_M0``) keep the values compiled for the nominal model.
    """
    parameters = {n: spec.parameters[n] for n in values if spec.parameters[n].set == "model"}
    if not parameters:
        return  # before importing mujoco: classic-control tasks must not need it
    import mujoco

    model = _model_of(env, spec)
    pristine = _PRISTINE.setdefault(env, {})
    fields = {f for p_name, p in parameters.items() for f in (p.attr or p_name, *p.scale_also)}
    for field in sorted(fields):
        if field not in pristine:
            pristine[field] = _array(model, spec, field).copy()
    scaled = {field: pristine[field].copy() for field in fields}
    for name, parameter in parameters.items():
        attr = parameter.attr or name
        rows = _rows(model, spec, name, parameter)
        _check_nominal(spec, name, parameter, pristine[attr], rows)
        factor = values[name] / parameter.nominal
        columns = parameter.columns
        if columns is None:
            scaled[attr][rows] *= factor
        else:
            scaled[attr][np.ix_(rows, np.array(columns))] *= factor
        if factor != 1.0:
            for column, fixed in parameter.set_columns.items():
                scaled[attr][rows, column] = fixed
        for extra in parameter.scale_also:
            scaled[extra][rows] *= factor
    for field, array in scaled.items():
        getattr(model, field)[...] = array
    if spec.protocol != "lee_yoon":  # Lee & Yoon's code writes the arrays alone: derived constants stay nominal
        mujoco.mj_setConst(model, mujoco.MjData(model))


def _check_nominal(spec: TaskSpec, name: str, parameter: DynamicsParameter, default: np.ndarray, rows: Any) -> None:
    """A one-name parameter must select one entry whose Gymnasium default is the spec's nominal."""
    if not parameter.single_entry:
        return
    columns = parameter.columns
    selected = default[rows] if columns is None else default[rows, columns[0]]
    if selected.size != 1:
        raise RlflatError(
            f"{spec.alias} parameter {name} selects {selected.size} entries of {parameter.attr}; give a column"
        )
    actual = float(selected.reshape(()))
    if not math.isclose(actual, parameter.nominal, rel_tol=_NOMINAL_RTOL):
        raise RlflatError(
            f"{spec.alias} parameter {name}: nominal {parameter.nominal!r} but Gymnasium's {spec.id} model has "
            f"{actual!r} ({parameter.attr}[{parameter.index}]); fix the task spec"
        )
