"""The ``report:`` block of a study config: which columns are the headline, which algorithms are compared.

Declaring the headline pairs before looking at the data keeps the number of tests fixed (the heatmap's Holm
correction counts them) and stops the report from picking among equals by column order. The sweep validates a
study config's ``report:`` block with :class:`ReportSettings`; the report reads it from ``<study>/study.yaml``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from rlflat.errors import RlflatError

DEFAULT_MEASURES = [
    "probe.fisher_adaptive_lambda_max",
    "probe.fisher_adaptive_trace",
    "probe.fisher_rao_norm",
    "probe.kl_sigma0p1",
]
"""Headline sharpness measures, chosen by test-retest reliability (:func:`rlflat.report.reliability.headline_choice`
on ``results/cartpole_v2/probe_reliability*.csv``: 42 CartPole policies of ppo, ppo_sam, pg and pg_sam, each
probed twice; ICC(2,1) >= 0.9 pooled and >= 0.8 inside each algorithm family), most reliable first. The surrogate
Hessian, worst-case, Keskar and return-based measures stay in the exploratory table: their ICC was below 0.8 in
at least one family (a test keeps this list equal to the table's choice, less :data:`QUALIFIED_NOT_DECLARED`)."""
QUALIFIED_NOT_DECLARED = {
    "probe.fisher_trace": (
        "passes the bars since its rows were re-probed with the exact trace (ICC 0.999 pooled, 0.874 inside pg; "
        "docs/corrections.md); not added: the list is declared before an analysis (the first entry is the primary "
        "test, the confirmatory studies take it), and the committed studies hold Hutchinson traces (ICC 0.66 in pg)"
    ),
}
"""Measures the committed table lets headline that the declared list leaves out, each with the reason; adding one
changes every report's primary test and Holm family, a decision taken apart from a table's re-run."""
DEFAULT_METRICS = [
    "robustness.auc_mean",
    "robustness.collapse_log_factor_min",
    "robustness.severity_return_x0p5",
    "robustness.severity_return_x2",
    "robustness.collapsed_fraction_box",
]
"""Headline robustness metrics (all on the task-level normalised scale). ``worst_dynamics_return`` is not one: at
the range's edge it measures the physics (a longer pole falls more slowly) more than the policy; it stays in the
tables."""
DEFAULT_CONFOUNDS = ["probe.entropy"]
"""Per-run confounds partialled out of the flatness-vs-robustness correlation, when the runs table has them."""


def parse_setting(text: str) -> tuple[str, float]:
    """``nominal`` -> (``nominal``, 1.0); ``action_noise=0.2`` / ``torso_mass=1.5`` -> (family, level)."""
    if text.strip() == "nominal":
        return "nominal", 1.0
    family, sep, level = text.partition("=")
    try:
        value = float(level)
    except ValueError:
        value = math.nan
    if not sep or not family.strip() or not math.isfinite(value):
        raise ValueError(f"setting {text!r} must be nominal, action_noise=<sigma> or <parameter>=<factor>")
    return family.strip(), value


class PublishedRow(BaseModel):
    """One published setting: ``nominal``, ``action_noise=0.2`` or ``<parameter>=<factor>``, and values by algo."""

    model_config = ConfigDict(extra="forbid")

    setting: str
    values: dict[str, float]

    @field_validator("setting")
    @classmethod
    def _setting(cls, value: str) -> str:
        parse_setting(value)
        return value


class Published(BaseModel):
    """Someone else's numbers to set beside ours, per setting of the robustness suite (same protocol)."""

    model_config = ConfigDict(extra="forbid")

    source: str
    """Who measured them and how (seeds, episodes, version), printed above the table."""
    rows: list[PublishedRow] = Field(min_length=1)


class ReportSettings(BaseModel):
    """Settings of one report; every field has a default, so ``report: {}`` is valid."""

    model_config = ConfigDict(extra="forbid")

    headline_measures: list[str] = Field(default_factory=lambda: list(DEFAULT_MEASURES))
    """Sharpness columns analysed, in order (an absent or constant one is noted and skipped)."""
    headline_metrics: list[str] = Field(default_factory=lambda: list(DEFAULT_METRICS))
    """Robustness columns analysed, in order; ``collapse_log_factor_min`` is derived (censored) if absent."""
    confounds: list[str] = Field(default_factory=lambda: list(DEFAULT_CONFOUNDS))
    """Columns partialled out (beside the algorithm) in the partial Spearman; absent ones are skipped and named."""
    include_unsolved: bool = False
    """Keep runs below the task's solved threshold in the sharpness-robustness correlations (default: left out)."""
    comparisons: list[tuple[str, str]] | None = None
    """``[algo, baseline]`` pairs; None: every flatness variant with its base (ppo_sam vs ppo, ...)."""
    n_boot: int = Field(default=2000, ge=1, le=100_000)  # 50x the default; 1e9 ran for ever (issue 23)
    """Resamples of the descriptive IQM intervals and the figures' bands."""
    n_perm: int = Field(default=9999, ge=99, le=1_000_000)  # ~100x the default
    """Random permutations of a correlation's p-value (exact enumeration up to 8 runs)."""
    seed: int = Field(default=0, ge=0, le=2**32 - 1)
    """Seed of every resampling and permutation."""
    collapse_frac: float | None = Field(default=None, gt=0.0, lt=1.0)
    """Collapse threshold drawn on the curves; None: the evaluator's ``robustness.collapse_frac`` from the data."""
    published: Published | None = None
    """Published returns at settings of the suite; the report sets ours (mean over seeds, t interval) beside them."""


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
