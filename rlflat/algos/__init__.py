"""Algorithms: an SB3 on-policy algorithm + its minibatch loss, stepped by an update rule.

Names compose a base (``ppo``, ``pg``) with a rule (``plain`` is left out of the name, ``sam``, ``asam``):
``ppo``, ``ppo_sam``, ``pg_asam``, ... (:mod:`rlflat.algos.names`). Hyperparameters are validated and resolved
in :mod:`rlflat.algos.hyperparameters`; models are built and loaded in :mod:`rlflat.algos.models`. This module
gathers the public names.
"""

from __future__ import annotations

from rlflat.algos.base import ADAM_EPS, FlatOnPolicyAlgorithm, TrainingDiverged, with_adam_eps
from rlflat.algos.hyperparameters import (
    RUN_KEYS,
    constructor_kwargs,
    effective_hyperparameters,
    merge_overrides,
    parse_override,
    parse_overrides,
    resolve_hyperparameters,
    valid_keys,
    validate_hyperparameters,
)
from rlflat.algos.models import build_model, load_model
from rlflat.algos.names import ALGORITHM_NAMES, BASES, describe_algorithms, parse_algorithm
from rlflat.algos.pg import PG
from rlflat.algos.ppo import RlflatPPO
from rlflat.algos.rules import ASAM, RULES, SAM, UpdateRule

__all__ = [
    "ADAM_EPS",
    "ALGORITHM_NAMES",
    "ASAM",
    "BASES",
    "PG",
    "RULES",
    "RUN_KEYS",
    "SAM",
    "FlatOnPolicyAlgorithm",
    "RlflatPPO",
    "TrainingDiverged",
    "UpdateRule",
    "build_model",
    "constructor_kwargs",
    "describe_algorithms",
    "effective_hyperparameters",
    "load_model",
    "merge_overrides",
    "parse_algorithm",
    "parse_override",
    "parse_overrides",
    "resolve_hyperparameters",
    "valid_keys",
    "validate_hyperparameters",
    "with_adam_eps",
]
