"""Robustness evaluation: returns of a policy under shifted dynamics and noise, batched, and collapse metrics.

``rollout_returns`` is the engine (K parameter sets x settings x episodes in one batch), ``evaluate`` runs a
suite into a table, ``evaluate_run`` does that for a run dir and writes ``robustness.parquet`` and the
``robustness`` block of ``metrics.json``; ``python -m rlflat.evaluate`` is the CLI.
"""

from typing import TYPE_CHECKING

from rlflat.lazy import attributes

if TYPE_CHECKING:
    from rlflat.evaluate.api import METRICS_FILE, TABLE_FILE, evaluate, evaluate_run, resolve_task
    from rlflat.evaluate.metrics import (
        RETURN_FLOORS,
        Collapse,
        collapse_point,
        normalize,
        return_floor,
        robust_auc,
        robustness_block,
    )
    from rlflat.evaluate.rollout import BACKENDS, GymRows, has_batched_simulator, rollout_returns
    from rlflat.evaluate.suites import Setting, SuiteSpec, build_settings, sweep_factors

__getattr__ = attributes(
    __name__,
    {
        "METRICS_FILE": "api",
        "TABLE_FILE": "api",
        "evaluate": "api",
        "evaluate_run": "api",
        "resolve_task": "api",
        "RETURN_FLOORS": "metrics",
        "Collapse": "metrics",
        "collapse_point": "metrics",
        "normalize": "metrics",
        "return_floor": "metrics",
        "robust_auc": "metrics",
        "robustness_block": "metrics",
        "BACKENDS": "rollout",
        "GymRows": "rollout",
        "has_batched_simulator": "rollout",
        "rollout_returns": "rollout",
        "Setting": "suites",
        "SuiteSpec": "suites",
        "build_settings": "suites",
        "sweep_factors": "suites",
    },
)

__all__ = [
    "BACKENDS",
    "METRICS_FILE",
    "RETURN_FLOORS",
    "TABLE_FILE",
    "Collapse",
    "GymRows",
    "Setting",
    "SuiteSpec",
    "build_settings",
    "collapse_point",
    "evaluate",
    "evaluate_run",
    "has_batched_simulator",
    "normalize",
    "resolve_task",
    "return_floor",
    "robust_auc",
    "robustness_block",
    "rollout_returns",
    "sweep_factors",
]
