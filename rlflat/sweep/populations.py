"""A population of a study's runs as one job: train them together, then probe and evaluate them together.

A :class:`PopulationJob` is the unit a worker (a pool process or a Ray task) takes when ``--population`` groups
runs (:mod:`rlflat.population.grouping`). It keeps every guarantee of a single run's job
(:func:`rlflat.sweep.pipeline.execute`): completion is read from each run directory, so a killed population
resumes with only its unfinished members (finished learners are skipped, unfinished ones retrain); a member that
fails (diverges in training, or its probe or evaluation raises) gets its ``failure.json`` and the others go on.
The population's output goes to ``logs/population-<id>.log``; each member's own log gets a line pointing there.
"""

from __future__ import annotations

import shutil
import tempfile
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlflat.sweep.pipeline import (
    FAILURE_FILE,
    LOGS_DIR,
    RunJob,
    RunOutcome,
    _captured,
    _record_failure,
    _working_directory,
    log_path,
    pack,
    remaining_stages,
    unpack,
)
from rlflat.sweep.stage_options import evaluate_options

__all__ = ["PopulationJob", "execute_population", "execute_population_shipped", "members_of", "population_units"]


@dataclass(frozen=True)
class PopulationJob:
    """Runs of one shape (equal :func:`rlflat.population.shape_key`) done together; plain data, so it pickles."""

    jobs: tuple[RunJob, ...]

    @property
    def name(self) -> str:
        from rlflat.population import population_id

        return f"population-{population_id(self._members(Path('.')))}"

    def _members(self, root: Path) -> list[Any]:
        from rlflat.population import Member

        return [Member(config=job.config, run_dir=root / job.name) for job in self.jobs]


def members_of(unit: RunJob | PopulationJob) -> list[RunJob]:
    """The run jobs a unit of work stands for."""
    return list(unit.jobs) if isinstance(unit, PopulationJob) else [unit]


StageBatch = Callable[[list[Path], RunJob], list[BaseException | None]]


def _train(paths: list[Path], population: PopulationJob, todo: list[RunJob]) -> list[BaseException | None]:
    from rlflat.population import Member, train_population

    first = todo[0]
    members = [Member(config=job.config, run_dir=path) for job, path in zip(todo, paths, strict=True)]
    results = train_population(members, progress=False, device=first.device)
    return [None if r.status == "ok" else _Failed(r.error or "training failed") for r in results]


def _probe(paths: list[Path], population: PopulationJob, todo: list[RunJob]) -> list[BaseException | None]:
    from rlflat.population.probe import probe_runs

    results = probe_runs(paths, force=True, **todo[0].probe)  # a stage not done: a leftover probe.json is redone
    return [r if isinstance(r, BaseException) else None for r in results]


def _evaluate(paths: list[Path], population: PopulationJob, todo: list[RunJob]) -> list[BaseException | None]:
    from rlflat.population.evaluate import evaluate_runs

    options = evaluate_options(todo[0].evaluate, todo[0].config["task"])
    results = evaluate_runs(paths, force=True, **options)
    return [r if isinstance(r, BaseException) else None for r in results]


class _Failed(Exception):
    """A member's failure reported as a result (training's divergence), not raised."""


STAGES: dict[str, Callable[[list[Path], PopulationJob, list[RunJob]], list[BaseException | None]]] = {
    "train": _train,
    "probe": _probe,
    "evaluate": _evaluate,
}
"""Stage name -> how a population runs it for the members that still need it; tests replace entries."""


def execute_population(
    population: PopulationJob, study_dir: str | Path, *, capture_fds: bool = True
) -> list[RunOutcome]:
    """Do every member's missing stages, stage by stage for the whole population; never raises for a run.

    Returns one outcome per member, in order (``skipped`` for a member that had nothing left to do).
    ``capture_fds`` as for :func:`rlflat.sweep.pipeline.execute`.
    """
    study_dir = Path(study_dir).resolve()
    start = time.perf_counter()
    log = log_path(study_dir, population.name)
    log.parent.mkdir(parents=True, exist_ok=True)
    relative_log = str(log.relative_to(study_dir))
    todo = {job.name: remaining_stages(study_dir / job.name, job.stages) for job in population.jobs}
    failed: dict[str, tuple[str, str]] = {}
    for job in population.jobs:
        if not todo[job.name]:
            continue
        (study_dir / job.name / FAILURE_FILE).unlink(missing_ok=True)  # a retry: the old failure no longer stands
        if "train" in todo[job.name] and (study_dir / job.name).exists():
            shutil.rmtree(study_dir / job.name)  # a failed or foreign training: retrain from an empty place
        _note(study_dir, job.name, f"stages {', '.join(todo[job.name])} in {population.name} (log: {relative_log})")
    with _captured(log, capture_fds) as stream, _working_directory(study_dir):
        print(f"=== {time.strftime('%Y-%m-%d %H:%M:%S')} {population.name}: {len(population.jobs)} runs", file=stream)
        for stage in ("train", "probe", "evaluate"):
            jobs = [j for j in population.jobs if stage in todo[j.name] and j.name not in failed]
            if not jobs:
                continue
            stage_start = time.perf_counter()
            try:
                errors = STAGES[stage]([Path(j.name) for j in jobs], population, jobs)
            except Exception as exc:  # the whole stage failed: every member that needed it fails with it
                print(f"--- {stage} FAILED for the population\n{traceback.format_exc()}", file=stream, flush=True)
                errors = [exc] * len(jobs)
            for job, error in zip(jobs, errors, strict=True):
                if error is not None:
                    text = str(error) if isinstance(error, _Failed) else f"{type(error).__name__}: {error}".strip()
                    failed[job.name] = (stage, text)
                    print(f"--- {stage} FAILED for {job.name}: {text}", file=stream, flush=True)
                    _record_failure(study_dir / job.name, job, stage, text, relative_log)
            print(f"--- {stage} done for {len(jobs)} runs in {time.perf_counter() - stage_start:.1f} s", file=stream)
    seconds = time.perf_counter() - start
    outcomes = []
    for job in population.jobs:
        ran = tuple(todo[job.name])
        if not ran:
            outcomes.append(RunOutcome(job.name, job.run_id, "skipped", log=relative_log))
        elif job.name in failed:
            stage, message = failed[job.name]
            outcomes.append(RunOutcome(job.name, job.run_id, "failed", ran, stage, message, seconds, relative_log))
        else:
            outcomes.append(RunOutcome(job.name, job.run_id, "ok", ran, seconds=seconds, log=relative_log))
    return outcomes


def _note(study_dir: Path, name: str, line: str) -> None:
    """Append one dated line to a member's own log."""
    log = log_path(study_dir, name)
    with open(log, "a") as handle:
        handle.write(f"=== {time.strftime('%Y-%m-%d %H:%M:%S')} {name}: {line}\n")


# -- Ray: a population shipped as one task ------------------------------------------------------------------


def execute_population_shipped(
    population: PopulationJob, existing: dict[str, bytes], logs: dict[str, str]
) -> tuple[list[tuple[RunOutcome, bytes, str]], str]:
    """:func:`execute_population` in a private temporary study directory seeded with the driver's partial runs.

    Returns per member its outcome, packed run directory and log, and the population's log; the driver
    publishes them (:func:`rlflat.sweep.pipeline.publish_shipped`), as for a single shipped run.
    """
    with tempfile.TemporaryDirectory(prefix="rlflat-population-") as tmp:
        root = Path(tmp)
        for name, data in existing.items():
            if data:
                unpack(data, root / name)
        (root / LOGS_DIR).mkdir()
        for name, text in logs.items():
            log_path(root, name).write_text(text)
        outcomes = execute_population(population, root)
        shipped = [(o, pack(root / o.name), log_path(root, o.name).read_text()) for o in outcomes]
        return shipped, log_path(root, population.name).read_text()


def population_logs(study_dir: Path, population: PopulationJob) -> dict[str, str]:
    """The existing logs of a population's members and of the population itself (for shipping)."""
    names = [job.name for job in population.jobs] + [population.name]
    return {name: log_path(study_dir, name).read_text() for name in names if log_path(study_dir, name).exists()}


def population_units(
    jobs: Sequence[RunJob], population: int | str, slots: int, *, available: int | None = None
) -> list[RunJob | PopulationJob]:
    """``jobs`` grouped into populations (:func:`rlflat.population.grouping.plan_populations`); a group of one
    stays a plain run job. Raises a one-line error for a ``population`` K that the runs cannot take."""
    from rlflat.population.grouping import plan_populations

    def stage_options(config: Mapping[str, Any]) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
        job = by_id[id(config)]
        probe = dict(job.probe) if "probe" in job.stages else None
        evaluate = evaluate_options(job.evaluate, job.config["task"]) if "evaluate" in job.stages else None
        return probe, evaluate

    by_id = {id(job.config): job for job in jobs}
    groups = plan_populations(
        [(job.name, job.config) for job in jobs], population, slots=slots, stage_options=stage_options,
        available=available,
    )  # fmt: skip
    return [jobs[g[0]] if len(g) == 1 else PopulationJob(tuple(jobs[i] for i in g)) for g in groups]
