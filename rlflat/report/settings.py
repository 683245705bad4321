"""The ``report:`` block of a study config: which columns are the headline, which algorithms are compared.

Declaring the headline pairs before looking at the data keeps the number of tests fixed (the heatmap's Holm
correction counts them) and stops the report from picking among equals by column order. The sweep validates a
study config's ``report:`` block with :class:`ReportSettings`; the report reads it from ``<study>/study.yaml``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from rlflat.errors import RlflatError

DEFAULT_MEASURES = [
    "probe.fisher_lambda_max",
    "probe.fisher_trace",
    "probe.lambda_max",
    "probe.trace",
    "probe.return_halving_sigma",
    "probe.return_drop_adaptive_sigma0p1",
    "probe.worst_case_adaptive",
    "probe.kl_sigma0p1",
]
DEFAULT_METRICS = [
    "robustness.auc_mean",
    "robustness.collapse_log_factor_min",
    "robustness.worst_dynamics_return",
    "robustness.collapsed_fraction",
]


class ReportSettings(BaseModel):
    """Settings of one report; every field has a default, so ``report: {}`` is valid."""

    model_config = ConfigDict(extra="forbid")

    headline_measures: list[str] = Field(default_factory=lambda: list(DEFAULT_MEASURES))
    """Sharpness columns analysed, in order (an absent or constant one is noted and skipped)."""
    headline_metrics: list[str] = Field(default_factory=lambda: list(DEFAULT_METRICS))
    """Robustness columns analysed, in order; ``collapse_log_factor_min`` is derived (censored) if absent."""
    comparisons: list[tuple[str, str]] | None = None
    """``[algo, baseline]`` pairs; None: every flatness variant with its base (ppo_sam vs ppo, ...)."""
    n_boot: int = Field(default=2000, ge=1)
    """Resamples of the descriptive IQM intervals and the figures' bands."""
    n_perm: int = Field(default=9999, ge=99)
    """Random permutations of a correlation's p-value (exact enumeration up to 8 runs)."""
    seed: int = Field(default=0, ge=0)
    """Seed of every resampling and permutation."""
    collapse_frac: float | None = Field(default=None, gt=0.0, lt=1.0)
    """Collapse threshold drawn on the curves; None: the evaluator's ``robustness.collapse_frac`` from the data."""


def _describe(exc: ValidationError) -> str:
    return "; ".join(f"{'.'.join(map(str, e['loc'])) or 'report'}: {e['msg']}" for e in exc.errors())


def parse_report_settings(block: Any, source: str = "report") -> ReportSettings:
    """Validate a ``report:`` mapping; a bad key or value is one :class:`RlflatError` line naming it."""
    if block is None:
        block = {}
    if not isinstance(block, dict):
        raise RlflatError(f"{source}: the report block must be a mapping, got {type(block).__name__}")
    try:
        return ReportSettings.model_validate(block)
    except ValidationError as exc:
        raise RlflatError(f"{source}: {_describe(exc)}") from None


def load_report_settings(study_dirs: Sequence[str | Path], file: str = "study.yaml") -> ReportSettings:
    """The ``report:`` block of the first study's ``study.yaml`` that has one; defaults otherwise."""
    for directory in study_dirs:
        path = Path(directory) / file
        if not path.exists():
            continue
        try:
            data = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise RlflatError(f"cannot read {path}: {exc}") from None
        if isinstance(data, dict) and data.get("report"):
            return parse_report_settings(data["report"], f"{path} report")
    return ReportSettings()
