"""The preregistration file: its schema, loading with one-line errors, and the hash of what it registers.

A preregistration (Nosek et al. 2018, "The preregistration revolution") fixes the hypotheses, design, exclusions
and analysis before the data exist. Here it is a YAML file the code reads: the sweep refuses to run a study whose
registered body changed after its first run (:mod:`rlflat.study.lock`), and the report runs exactly the tests it
names (:mod:`rlflat.study.analysis`). Everything but ``amendments`` is the *body*; its hash is what is locked, so
an amendment (dated, with a reason) is the only way to change a registered study once it has started.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from rlflat.errors import RlflatError
from rlflat.yaml_files import parse_yaml_mapping, read_yaml_text

SCHEMA = "rlflat-preregistration/1"
AMENDMENTS = "amendments"
"""The one top-level key outside the hashed body."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TaskDesign(_Strict):
    """One task of the design: its own study config and directory (split by task, each resumable)."""

    task: str
    config: str
    """The sweep config that trains it (``configs/confirmatory_<task>.yaml``)."""
    study_dir: str
    algos: list[str] = Field(min_length=1)
    suite: list[str] = Field(min_length=1)
    """The robustness suite's parameters: the task spec's ``default_suite`` (checked by a test)."""
    solved_threshold: float
    minibatch: str
    """The hyperparameter that sets the minibatch: ``batch_size``, or ``n_steps`` where the buffer is one batch."""
    levels: dict[str, list[Any]]
    """Hyperparameter -> registered values (the sweep config's grid must equal it)."""
    fixed: dict[str, Any] = Field(default_factory=dict)
    """Hyperparameters set for every run beside the spec's (the config's overrides for each algorithm)."""
    pg: str
    """Whether PG was included on this task, and the evidence for the choice."""


class Design(_Strict):
    seeds: list[int] = Field(min_length=8)
    """Fresh seeds: none appears in a committed study (checked by a test against ``results/*/runs.parquet``)."""
    factors: list[str] = Field(min_length=3)
    """Granulated-Kendall factors (column names); the plain algorithm counts as SAM radius 0."""
    strata: list[str] = Field(min_length=2)
    """Columns whose combination is one configuration: task x algorithm x every hyperparameter that varies."""
    cells: list[str] = Field(min_length=1)
    """Columns that match a SAM configuration with its plain one (H3): the strata minus algorithm and radius."""
    tasks: list[TaskDesign] = Field(min_length=1)
    probe: dict[str, Any]
    """The probe options of every config (the headline stage)."""
    evaluate: dict[str, Any]
    """The evaluate options of every config (each task's default suite)."""

    @field_validator("seeds")
    @classmethod
    def _distinct(cls, value: list[int]) -> list[int]:
        if len(set(value)) != len(value) or min(value) < 0:
            raise ValueError(f"seeds must be distinct non-negative integers, got {value}")
        return value

    @property
    def task_names(self) -> list[str]:
        return [t.task for t in self.tasks]


class UnsolvedRule(_Strict):
    """Unsolved when nominal_return + z * nominal_return_se < solved_threshold (the mean alone without an SE)."""

    statement: str
    z: float = Field(gt=0.0)
    nominal_return: str
    nominal_return_se: str
    solved_threshold: str


class Hypothesis(_Strict):
    id: str
    statement: str
    test: Literal["within_correlation", "matched_difference"]
    metric: str
    direction: Literal["negative", "positive"]
    """negative: the registered statistic is below 0 (a correlation) ; positive: above 0 (treatment - control)."""
    scope: Literal["pooled", "per_task"]
    """pooled: one test over every task (tasks are strata); per_task: one test per task."""
    family: str
    runs: Literal["solved", "all"]
    """Which runs enter: ``solved`` (the unsolved rule excludes) or ``all`` (every run that produced a policy)."""
    reason: str
    measure: str | None = None
    treatment: str | None = None
    control: str | None = None
    requires: dict[str, str] = Field(default_factory=dict)
    """Column -> value a run must hold to enter (e.g. the exact Fisher trace route)."""

    @model_validator(mode="after")
    def _fields_for_test(self) -> Hypothesis:
        if self.test == "within_correlation" and not self.measure:
            raise ValueError(f"hypothesis {self.id}: a within_correlation needs a measure")
        if self.test == "matched_difference" and not (self.treatment and self.control):
            raise ValueError(f"hypothesis {self.id}: a matched_difference needs treatment and control")
        return self


class Analysis(_Strict):
    method: Literal["spearman"]
    alpha: float = Field(gt=0.0, lt=1.0)
    correction: Literal["holm"]
    families: dict[str, str] = Field(min_length=1)
    """Family name -> what it holds; Holm runs within each family only."""
    n_perm: int = Field(ge=999)
    seed: int = Field(ge=0)
    confidence: float = Field(gt=0.0, lt=1.0)
    min_stratum: int = Field(ge=3)
    """Strata with fewer eligible runs are listed and left out of the within-configuration statistic."""
    statistic: str
    interval: str
    difference: str


class PowerRow(_Strict):
    hypothesis: str
    scope: str
    effect: float
    solve_rate: float
    strata: int
    per_stratum: int
    alpha_per_test: float
    analytic: float
    simulated: float | None = None


class Power(_Strict):
    method: str
    seed: int
    replicates: int
    n_perm: int
    rows: list[PowerRow] = Field(min_length=1)


class Amendment(_Strict):
    """A dated change to a registered study, bound to the body it produces (so later edits need a new one)."""

    date: dt.date
    reason: str = Field(min_length=10)
    changes: str = Field(min_length=3)
    body_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    """The body hash after this change (``python -m rlflat.study check`` prints it)."""


class Preregistration(_Strict):
    schema_: str = Field(alias="schema")
    name: str
    title: str
    registered: dt.date
    question: str
    status: Literal["registered"]
    hypotheses: list[Hypothesis] = Field(min_length=1)
    measures: dict[str, str]
    probe_version: str
    robustness: str
    design: Design
    unsolved_rule: UnsolvedRule
    exclusions: list[str] = Field(min_length=1)
    analysis: Analysis
    power: Power
    stopping_rule: str
    exploratory: str
    deviations_from_issue: list[str] = Field(default_factory=list)
    amendments: list[Amendment] = Field(default_factory=list)

    @field_validator("schema_")
    @classmethod
    def _schema(cls, value: str) -> str:
        if value != SCHEMA:
            raise ValueError(f"schema must be {SCHEMA!r}, got {value!r}")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Preregistration:
        ids = [h.id for h in self.hypotheses]
        if len(set(ids)) != len(ids):
            raise ValueError(f"hypothesis ids must be distinct, got {ids}")
        for h in self.hypotheses:
            if h.family not in self.analysis.families:
                valid = ", ".join(self.analysis.families)
                raise ValueError(f"hypothesis {h.id}: unknown family {h.family!r}; valid choices: {valid}")
        for row in self.power.rows:
            if row.hypothesis not in ids:
                raise ValueError(f"power row names unknown hypothesis {row.hypothesis!r}; valid choices: {ids}")
        dates = [a.date for a in self.amendments]
        if any(d < self.registered for d in dates) or dates != sorted(dates):
            raise ValueError("amendments must be dated on or after the registration, in date order")
        return self

    def hypothesis(self, hid: str) -> Hypothesis:
        for h in self.hypotheses:
            if h.id == hid:
                return h
        raise RlflatError(f"unknown hypothesis {hid!r}; valid choices: {', '.join(h.id for h in self.hypotheses)}")


@dataclass(frozen=True)
class LoadedPreregistration:
    prereg: Preregistration
    path: Path
    body_hash: str
    """sha256 of the registered body (every key but ``amendments``), canonical JSON of the parsed YAML."""
    text: str


def body_hash(data: dict[str, Any]) -> str:
    """sha256 of the parsed YAML without ``amendments``: comments and layout do not count, content does."""
    body = {k: v for k, v in data.items() if k != AMENDMENTS}
    canonical = json.dumps(body, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def parse_preregistration(text: str, source: str = "<string>") -> tuple[Preregistration, str]:
    """Validate YAML text; returns the model and the body hash. Every problem is one line naming ``source``."""
    data = parse_yaml_mapping(text, source, "preregistration", _keys())
    try:
        prereg = Preregistration.model_validate(data)
    except ValidationError as exc:
        raise RlflatError(f"{source}: {_describe(exc)}") from None
    return prereg, body_hash(data)


def load_preregistration(path: str | Path) -> LoadedPreregistration:
    path = Path(path)
    text = read_yaml_text(path, "preregistration")
    prereg, digest = parse_preregistration(text, str(path))
    return LoadedPreregistration(prereg, path, digest, text)


def _keys() -> list[str]:
    return [f.alias or name for name, f in Preregistration.model_fields.items()]


def _describe(exc: ValidationError) -> str:
    problems = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error["loc"]) or "(top level)"
        if error["type"] == "extra_forbidden":
            problems.append(f"unknown key {where!r}")
        elif error["type"] == "missing":
            problems.append(f"missing required key {where!r}")
        else:
            problems.append(f"{where}: {str(error['msg']).removeprefix('Value error, ')}")
    return "; ".join(dict.fromkeys(problems))
