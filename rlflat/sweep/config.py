"""Study configs (``configs/*.yaml``): the schema, and its expansion into distinct, validated runs.

A study crosses tasks x algorithms x grid points x seeds. Grid keys apply only to the algorithms that accept
them (``rho`` is crossed into ``ppo_sam`` runs, never into plain ``ppo``'s, which would otherwise repeat
three times with identical configs), and per-algorithm ``overrides`` take precedence over the grid (the
overridden key is not a grid axis for that algorithm). Every expanded run is resolved by
:func:`rlflat.train.resolve_run_config` before anything starts, and runs whose resolved configs are identical
are merged by their content hash (the run id).

Every error stops the sweep up front, before anything is written, with one line naming the file: a schema
error (unknown key, wrong type, unknown algorithm or task, a grid or override key no algorithm takes) and a
run that resolve_run_config rejects (``rho: -1``, ``learning_rate: abc``, a bad combination), named by its
algorithm, task, seed and settings. A study that cannot be trained as written is a mistake in the file, not
a result: recording such runs as failed rows would write a study directory for a config that was never valid.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from rlflat.errors import RlflatError
from rlflat.sweep.stage_options import check_options
from rlflat.yaml_files import parse_yaml_mapping, read_yaml_text

STAGES = ("train", "probe", "evaluate")
"""The per-run pipeline, in order; train always runs, probe/evaluate unless the study disables them."""

STAGE_BLOCKS = {"probe": "probe", "evaluate": "robustness"}
"""The metrics.json block whose presence marks a stage as finished (the stage functions write them)."""

_RESERVED_STAGE_KEYS = {
    "probe": ("path", "task", "out", "update_metrics", "force"),
    "evaluate": ("path", "task", "out", "write", "force"),
}
"""Stage arguments the sweep sets itself: the run directory, its task, the output location, writing the
stage's block into ``metrics.json`` (which is how the sweep knows the stage finished), and redoing a stage
that a killed sweep left half done."""

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class StudyConfig(BaseModel):
    """One study. Unknown keys are rejected: a misspelt ``grd:`` must not silently run the default study."""

    model_config = ConfigDict(extra="forbid")

    name: str
    """Directory name under ``results/`` (letters, digits, ``_ . -``)."""
    tasks: list[str] = Field(min_length=1)
    algos: list[str] = Field(min_length=1)
    seeds: int | list[int] = 1
    """A count ``n`` (seeds 0..n-1) or an explicit list of seeds."""
    steps: int | None = None
    """Total environment steps per run; default: the task spec's ``total_timesteps`` for the algorithm."""
    grid: dict[str, list[Any]] | list[dict[str, list[Any]]] = Field(default_factory=dict)
    """Hyperparameter -> values, crossed; a key applies only to the algorithms that accept it. A list of such
    mappings is the union of their crosses (one knob at a time; ``{}`` is the untouched baseline)."""
    overrides: dict[str, dict[str, Any]] = Field(default_factory=dict)
    """Algorithm -> fixed hyperparameters for its runs (beating the grid for the same key)."""
    probe: dict[str, Any] | None = Field(default_factory=dict)
    """Keyword options for ``rlflat.probe.probe_run``; ``false`` skips the probe stage."""
    evaluate: dict[str, Any] | None = Field(default_factory=dict)
    """Keyword options for ``rlflat.evaluate.evaluate_run``; ``false`` skips the evaluate stage."""
    report: dict[str, Any] = Field(default_factory=dict)
    """Settings for the report, validated by :func:`validate_report_settings` (kept here as given)."""
    preregistration: str | None = None
    """Path of a confirmatory study's ``preregistration.yaml``: the sweep locks its hash at the first run and refuses
    a changed body without a dated amendment (:mod:`rlflat.study.lock`); the report runs its registered analysis."""

    @field_validator("name")
    @classmethod
    def _safe_name(cls, value: str) -> str:
        if not _NAME_RE.match(value):
            raise ValueError(f"must be a directory name (letters, digits, _ . -), got {value!r}")
        return value

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, value: int | list[int]) -> int | list[int]:
        if isinstance(value, int):
            if not 1 <= value <= MAX_SEEDS:
                raise ValueError(f"a seed count must be in [1, {MAX_SEEDS}], got {value}")
            return value
        if not value:
            raise ValueError("the seed list is empty")
        if any(s < 0 for s in value) or len(set(value)) != len(value):
            raise ValueError(f"seeds must be distinct non-negative integers, got {value}")
        if len(value) > MAX_SEEDS:
            raise ValueError(f"{len(value)} seeds; at most {MAX_SEEDS}")
        return value

    @field_validator("steps")
    @classmethod
    def _steps(cls, value: int | None) -> int | None:
        if value is not None and value <= 0:
            raise ValueError(f"must be a positive integer, got {value}")
        return value

    @field_validator("grid")
    @classmethod
    def _grid(cls, value: dict[str, list[Any]] | list[dict[str, list[Any]]]) -> Any:
        grids = [value] if isinstance(value, dict) else value
        for i, grid in enumerate(grids):
            for key, values in grid.items():
                if not values:
                    where = f"grid.{key}" if isinstance(value, dict) else f"grid[{i}].{key}"
                    raise ValueError(f"{where} has no values")
        return value

    @field_validator("probe", "evaluate", mode="before")
    @classmethod
    def _stage_switch(cls, value: Any) -> Any:
        """``true``/omitted: run the stage with its defaults; ``false``/``null``: skip it."""
        if value is True:
            return {}
        if value is False:
            return None
        return value

    @field_validator("report")
    @classmethod
    def _report(cls, value: dict[str, Any]) -> dict[str, Any]:
        validate_report_settings(value)
        return value

    @model_validator(mode="after")
    def _bounded(self) -> StudyConfig:
        """At most :data:`MAX_RUNS` candidate runs, counted from the list lengths (nothing is expanded)."""
        seeds = self.seeds if isinstance(self.seeds, int) else len(self.seeds)
        points = sum(math.prod(len(v) for v in grid.values()) for grid in self.grids)
        runs = len(self.tasks) * len(self.algos) * points * seeds
        if runs > MAX_RUNS:
            raise ValueError(
                f"{len(self.tasks)} tasks x {len(self.algos)} algos x {points:,} grid points x {seeds:,} seeds = "
                f"{runs:,} runs, more than the {MAX_RUNS:,} a study may have"
            )
        return self

    @model_validator(mode="after")
    def _overrides_name_study_algos(self) -> StudyConfig:
        for algo in self.overrides:
            if algo not in self.algos:
                raise ValueError(
                    f"overrides names {algo!r}, which is not in algos; valid keys: {', '.join(self.algos)}"
                )
        for stage, keys in _RESERVED_STAGE_KEYS.items():
            options = getattr(self, stage)
            reserved = sorted(set(keys) & set(options or {}))
            if reserved:
                raise ValueError(f"{stage}.{reserved[0]} is set by the sweep for each run; remove it")
        return self

    @property
    def seed_list(self) -> list[int]:
        return list(range(self.seeds)) if isinstance(self.seeds, int) else list(self.seeds)

    @property
    def grids(self) -> list[dict[str, list[Any]]]:
        """The grid as a list of crossed sub-grids (a single mapping is one sub-grid)."""
        return [self.grid] if isinstance(self.grid, dict) else list(self.grid)

    @property
    def stages(self) -> tuple[str, ...]:
        """The requested stages, in pipeline order."""
        return tuple(s for s in STAGES if s == "train" or getattr(self, s) is not None)

    def stage_options(self, stage: str) -> dict[str, Any]:
        return dict(getattr(self, stage) or {}) if stage in STAGE_BLOCKS else {}


@dataclass(frozen=True)
class LoadedStudy:
    """A validated config plus where it came from (errors name the file; ``study.yaml`` keeps the text)."""

    config: StudyConfig
    source: str
    """The file name for messages (``<string>`` when built in memory)."""
    text: str
    """The config exactly as given, copied to ``<study>/study.yaml``."""


@dataclass(frozen=True)
class RunSpec:
    """One distinct run of a study: its resolved config (what train_run takes) and where it lives."""

    config: dict[str, Any]
    run_id: str
    name: str
    """Directory name: ``<algo>-<task>-s<seed>-<run_id>``."""
    overrides: dict[str, Any] = field(default_factory=dict)
    """What the study set for this run (grid point + per-algorithm overrides), for listings."""

    @property
    def label(self) -> str:
        settings = " ".join(f"{k}={v}" for k, v in sorted(self.overrides.items()))
        return f"{self.name} {settings}".strip()


MAX_SEEDS = 10_000
MAX_RUNS = 100_000
"""Most runs one study may expand to (tasks x algos x grid points x seeds), checked from the list lengths before any
run is built: a grid of 1e10 points is refused at once, not after minutes of expansion."""


def load_study_config(path: str | Path) -> LoadedStudy:
    """Read and validate ``path``; every problem is one :class:`RlflatError` line naming the file and key."""
    path = Path(path)
    return parse_study_config(read_yaml_text(path, "study config"), source=str(path))


def parse_study_config(text: str, source: str = "<string>") -> LoadedStudy:
    """Validate YAML text as a study config (``source`` names it in error messages)."""
    data = parse_yaml_mapping(text, source, "study config", StudyConfig.model_fields)
    try:
        config = StudyConfig.model_validate(data)
    except ValidationError as exc:
        raise RlflatError(f"{source}: {_describe(exc)}") from None
    return LoadedStudy(config=config, source=source, text=text)


def validate_report_settings(block: dict[str, Any]) -> None:
    """Validate the ``report:`` block with the report's own model, :class:`rlflat.report.settings.ReportSettings`.

    The report owns the fields; the sweep checks them up front so a misspelt key fails before hours of training,
    not when the report is drawn. Errors name the key path (``report.n_boot``) and, for unknown keys, the valid ones.
    """
    from rlflat.report.settings import ReportSettings

    try:
        ReportSettings.model_validate(block)
    except ValidationError as exc:
        valid = ", ".join(ReportSettings.model_fields)
        raise ValueError(_describe(exc, prefix="report.", valid=valid)) from None


def _describe(exc: ValidationError, prefix: str = "", valid: str | None = None) -> str:
    """Pydantic's errors as one line: the key path, what is wrong, and for unknown keys the valid ones."""
    valid_keys = valid if valid is not None else ", ".join(StudyConfig.model_fields)
    problems = []
    for error in exc.errors():
        path = prefix + ".".join(str(part) for part in error["loc"]) if error["loc"] else "(top level)"
        if error["type"] == "extra_forbidden":
            problems.append(f"unknown key {path!r}; valid keys: {valid_keys}")
        elif error["type"] == "missing":
            problems.append(f"missing required key {path!r}")
        else:
            message = str(error["msg"]).removeprefix("Value error, ")
            # a nested model's message (the report settings) already names the full key path
            named = not error["loc"] or message.startswith(("unknown key ", f"{path}."))
            problems.append(message if named else f"{path}: {message}")
    # int | list[int] reports one error per union member; keep each message once
    return "; ".join(dict.fromkeys(problems))


def _valid_keys(algo: str) -> list[str]:
    from rlflat import algos

    return algos.valid_keys(algo)


def _applicable(grid: dict[str, list[Any]], study: StudyConfig, algo: str) -> dict[str, list[Any]]:
    """The axes of ``grid`` for ``algo``: keys it accepts, minus the ones its overrides fix."""
    valid = set(_valid_keys(algo))
    fixed = set(study.overrides.get(algo, {}))
    return {k: v for k, v in grid.items() if k in valid and k not in fixed}


def _iter_candidates(study: StudyConfig) -> Iterator[tuple[str, str, int, dict[str, Any]]]:
    for task in study.tasks:
        for algo in study.algos:
            for grid in study.grids:
                axes = _applicable(grid, study, algo)
                for point in itertools.product(*axes.values()):
                    settings = {**dict(zip(axes, point, strict=True)), **study.overrides.get(algo, {})}
                    for seed in study.seed_list:
                        yield task, algo, seed, settings


def expand_runs(study: StudyConfig | LoadedStudy, *, with_duplicates: bool = False) -> list[RunSpec]:
    """Every distinct run of the study, resolved, in task/algo/grid/seed order.

    Raises :class:`RlflatError` for a schema error (an unknown algorithm or task, a grid or override key that
    the algorithms do not take) and for the first run that resolve_run_config rejects, naming it and how many
    more are rejected. Runs with equal run ids are merged (the first kept) unless ``with_duplicates``.
    """
    from rlflat.train import default_run_dir, resolve_run_config, run_id

    loaded = study if isinstance(study, LoadedStudy) else None
    config = study.config if isinstance(study, LoadedStudy) else study
    source = loaded.source if loaded else "<study>"
    _check_names(config, source)
    runs: list[RunSpec] = []
    seen: set[str] = set()
    rejected: list[str] = []
    for task, algo, seed, settings in _iter_candidates(config):
        try:
            resolved = resolve_run_config(algo, task, seed=seed, steps=config.steps, overrides=settings)
        except RlflatError as exc:
            shown = " ".join(f"{k}={v!r}" for k, v in sorted(settings.items()))
            rejected.append(f"run {algo} {task} seed {seed}{' ' + shown if shown else ''}: {exc}")
            continue
        identity = run_id(resolved)
        if identity in seen and not with_duplicates:
            continue
        seen.add(identity)
        name = default_run_dir(resolved, Path(".")).name
        runs.append(RunSpec(config=resolved, run_id=identity, name=name, overrides=settings))
    if rejected:
        more = f" (and {len(rejected) - 1} more rejected runs)" if len(rejected) > 1 else ""
        raise RlflatError(f"{source}: {rejected[0]}{more}; nothing was run or written")
    return runs


def _check_names(config: StudyConfig, source: str) -> None:
    """Schema checks that need the registries: algorithms, tasks, grid and override keys."""
    from rlflat import algos
    from rlflat.tasks import load_task

    for algo in config.algos:
        if algo not in algos.ALGORITHM_NAMES:
            raise RlflatError(
                f"{source}: algos: unknown algorithm {algo!r}; valid choices: {', '.join(algos.ALGORITHM_NAMES)}"
            )
    for task in config.tasks:
        try:
            load_task(task)
        except RlflatError as exc:
            raise RlflatError(f"{source}: tasks: {exc}") from None
    for i, grid in enumerate(config.grids):
        for key in grid:
            if not any(key in _valid_keys(algo) for algo in config.algos):
                valid = sorted({k for algo in config.algos for k in _valid_keys(algo)})
                where = f"grid.{key}" if isinstance(config.grid, dict) else f"grid[{i}].{key}"
                raise RlflatError(
                    f"{source}: {where} is not a hyperparameter of any of {', '.join(config.algos)}; "
                    f"valid keys: {', '.join(valid)}"
                )
    for algo, fixed in config.overrides.items():
        for key in fixed:
            if key not in _valid_keys(algo):
                raise RlflatError(
                    f"{source}: overrides.{algo}.{key} is not a hyperparameter of {algo}; "
                    f"valid keys: {', '.join(_valid_keys(algo))}"
                )


def check_stage_options(study: StudyConfig | LoadedStudy) -> None:
    """Reject bad probe/evaluate options (unknown keys, bad suites) before any run starts."""
    loaded = study if isinstance(study, LoadedStudy) else None
    config = study.config if isinstance(study, LoadedStudy) else study
    source = loaded.source if loaded else "<study>"
    for stage in config.stages:
        if stage == "train":
            continue
        try:
            check_options(stage, config.stage_options(stage), config.tasks)
        except ImportError as exc:
            raise RlflatError(
                f"{source}: the {stage} stage is unavailable ({exc}); set '{stage}: false' to skip it"
            ) from None
        except RlflatError as exc:
            raise RlflatError(f"{source}: {stage}: {exc}") from None
