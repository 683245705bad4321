"""A whole sweep: expand and validate the study, skip what is done, run the rest, rebuild ``runs.parquet``.

Resuming needs no bookkeeping of its own: the run id is the content hash of the resolved config, each run's
directory says which stages are finished (see :mod:`rlflat.sweep.pipeline`), so rerunning the same command
after any interruption does exactly the missing work. A lock file keeps two sweeps out of one study directory
(the lock dies with its process, so ``kill -9`` leaves nothing to clean by hand).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import pandas as pd

from rlflat.errors import RlflatError
from rlflat.io import check_output_dir, remove_stale_staging, write_text
from rlflat.population.grouping import parse_population
from rlflat.sweep.config import (
    LoadedStudy,
    RunSpec,
    check_stage_options,
    expand_runs,
    load_study_config,
    parse_study_config,
)
from rlflat.sweep.executors import check_execution, connect, default_workers, run_jobs
from rlflat.sweep.pipeline import LOGS_DIR, RunJob, RunOutcome, remaining_stages, run_state
from rlflat.sweep.populations import members_of, population_units
from rlflat.sweep.table import RUNS_FILE, STUDY_FILE, build_table, collect, run_directories

RESULTS_DIR = Path("results")
LOCK_FILE = ".sweep.lock"


@dataclass(frozen=True)
class PlannedRun:
    """A run of the study and its state in the study directory before the sweep."""

    spec: RunSpec
    state: str
    """``done``, ``failed``, ``partial`` or ``todo`` (see :func:`rlflat.sweep.pipeline.run_state`)."""
    remaining: tuple[str, ...]


@dataclass
class SweepResult:
    """What a sweep did; ``table`` is the rebuilt ``runs.parquet`` (None for a dry run)."""

    study_dir: Path
    plan: list[PlannedRun]
    outcomes: list[RunOutcome] = field(default_factory=list)
    table: pd.DataFrame | None = None
    seconds: float = 0.0
    stale_table: bool = False
    """Nothing ran and ``runs.parquet`` differs from the run directories; it was left as it is."""
    populations: list[list[str]] = field(default_factory=list)
    """The pending runs' names as the sweep groups them (``--population``): one list per unit of work."""

    @property
    def failed(self) -> list[RunOutcome]:
        return [o for o in self.outcomes if o.status in ("failed", "lost")]

    @property
    def ok(self) -> list[RunOutcome]:
        return [o for o in self.outcomes if o.status == "ok"]

    @property
    def already_done(self) -> int:
        return sum(1 for p in self.plan if p.state == "done")


def default_study_dir(study: LoadedStudy) -> Path:
    return RESULTS_DIR / study.config.name


def plan_sweep(study: LoadedStudy, study_dir: Path) -> list[PlannedRun]:
    """Every run of the study with its current state (reads the directories, writes nothing)."""
    stages = study.config.stages
    plan = []
    for spec in expand_runs(study):
        run_dir = study_dir / spec.name
        plan.append(PlannedRun(spec, run_state(run_dir, stages), remaining_stages(run_dir, stages)))
    return plan


def run_sweep(
    study: LoadedStudy | str | Path,
    out: str | Path | None = None,
    *,
    backend: str = "local",
    workers: int | None = None,
    address: str | None = None,
    device: str = "cpu",
    progress: bool = True,
    dry_run: bool = False,
    command: Sequence[str] | None = None,
    force: bool = False,
    population: int | str = "auto",
) -> SweepResult:
    """Run every unfinished run of ``study`` into ``out`` (default ``results/<name>``) and rebuild the table.

    Flags, the config and every resolved run are validated before anything is written, and an existing
    ``study.yaml`` holding a different study is refused. An existing ``study.yaml`` is never rewritten: one that
    differs only where no result changes (the report settings, a stage never run before) is replaced with
    ``force`` and refused without it. A sweep with nothing to do writes nothing (a committed study stays as it
    is). Failed runs do not stop the sweep: they are recorded (see ``SweepResult.failed``) and retried by the
    next sweep.

    ``population``: ``auto`` (default) trains, probes and evaluates pending runs of one shape together
    (:mod:`rlflat.sweep.populations`; K sized from memory and the workers), an integer K asks for populations
    of K (refused in one line when the runs cannot share shapes or K does not fit), 1 runs each alone as before.
    """
    check_execution(backend, workers, address)
    population = parse_population(population)
    loaded = study if isinstance(study, LoadedStudy) else load_study_config(study)
    study_dir = Path(out) if out is not None else default_study_dir(loaded)
    _check_preregistration(loaded, study_dir, record=False)  # before expanding: a refusal costs nothing
    plan = plan_sweep(loaded, study_dir)
    check_stage_options(loaded)
    result = SweepResult(study_dir=study_dir, plan=plan)
    check_output_dir(study_dir)
    _check_compatible(loaded, study_dir, force)  # a dry run refuses what the real run would refuse
    result.populations = _population_plan(loaded, plan, population, backend, workers, device)  # refuses a bad K
    if dry_run:
        return result
    start = time.perf_counter()
    # a refused or unauthenticated Ray cluster: one line, nothing written
    with connect(backend, address), _locked(study_dir):
        if _check_compatible(loaded, study_dir, force):
            write_text(study_dir / STUDY_FILE, loaded.text)
        _remove_leftovers(study_dir, {p.spec.name for p in plan})
        config = loaded.config
        jobs = [
            RunJob(
                config=p.spec.config,
                run_id=p.spec.run_id,
                name=p.spec.name,
                stages=config.stages,
                probe=config.stage_options("probe"),
                evaluate=config.stage_options("evaluate"),
                device=device,
                command=tuple(command) if command is not None else None,
            )
            for p in plan
            if p.state != "done"
        ]
        if jobs:  # the first run of a confirmatory study locks its preregistration's hash
            _check_preregistration(loaded, study_dir, record=True)
        view = _ProgressView(len(plan), len(jobs), loaded.config.name, enabled=progress)

        def on_done(outcome: RunOutcome) -> None:
            result.outcomes.append(outcome)
            view.finished(outcome)

        try:
            with view:
                run_jobs(
                    backend,
                    population_units(jobs, population, _slots(backend, workers)),
                    study_dir,
                    workers=workers,
                    address=address,
                    on_start=view.started,
                    on_done=on_done,
                )
        finally:
            ids = {p.spec.run_id for p in plan}
            if jobs or not (study_dir / RUNS_FILE).exists():
                result.table = collect(study_dir, config.stages, study_ids=ids)
            else:  # nothing ran: only read (a committed table stays byte for byte; --collect rebuilds it)
                result.table = build_table(study_dir, config.stages, ids)
                result.stale_table = not _same_table(result.table, pd.read_parquet(study_dir / RUNS_FILE))
            result.seconds = time.perf_counter() - start
    return result


def _check_preregistration(study: LoadedStudy, study_dir: Path, *, record: bool) -> None:
    """A confirmatory study: refuse a config that is not the registered design, or a preregistration changed
    since the first run without an amendment."""
    config = study.config
    if config.preregistration is None:
        return
    from rlflat.study.lock import check_preregistration

    check_preregistration(config.preregistration, study_dir, tasks=config.tasks, record=record, config=config)


def _slots(backend: str, workers: int | None) -> int:
    """How many populations run at once: the workers (serial: one; Ray: the cluster's CPUs once connected)."""
    if backend == "serial":
        return 1
    if workers is not None:
        return workers
    if backend == "ray":
        import ray

        if ray.is_initialized():
            return max(1, int(ray.cluster_resources().get("CPU", 1)))
    return default_workers()


def _population_plan(
    study: LoadedStudy,
    plan: list[PlannedRun],
    population: int | str,
    backend: str,
    workers: int | None,
    device: str,
) -> list[list[str]]:
    """Group the pending runs as the sweep will (nothing written): a K they cannot take fails here."""
    config = study.config
    pending = [
        RunJob(p.spec.config, p.spec.run_id, p.spec.name, config.stages, config.stage_options("probe"),
               config.stage_options("evaluate"), device, None)
        for p in plan
        if p.state != "done"
    ]  # fmt: skip
    units = population_units(pending, population, _slots(backend, workers))
    return [[job.name for job in members_of(unit)] for unit in units]


@contextmanager
def _locked(study_dir: Path) -> Any:
    """Create ``study_dir`` and hold ``<study>/.sweep.lock`` (an flock, released by the kernel even on kill -9)."""
    study_dir.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # not POSIX: no protection against two sweeps in one directory
        yield
        return
    with open(study_dir / LOCK_FILE, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RlflatError(f"another sweep is running in {study_dir}; wait for it or use another --out") from None
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _same_table(a: pd.DataFrame, b: pd.DataFrame) -> bool:
    """Whether two runs tables hold the same columns and values (row order by run id)."""
    if list(a.columns) != list(b.columns) or a.shape != b.shape:
        return False
    key = "run_id" if "run_id" in a.columns else None
    a, b = (t.sort_values(key).reset_index(drop=True) if key else t for t in (a, b))
    try:
        pd.testing.assert_frame_equal(a, b, check_dtype=False)
    except AssertionError:
        return False
    return True


def _check_compatible(study: LoadedStudy, study_dir: Path, force: bool = False) -> bool:
    """Refuse a study directory whose ``study.yaml`` holds a different study; True when it must be written.

    The run id covers training only, so changed probe/evaluate settings would mix results in one table; a
    changed grid, seed list or name would silently turn the directory into another study: both are refused even
    with ``force``. What changes no result (the report settings; a stage switched off before, ``probe: false``,
    now switched on) is refused too unless ``force``: a command that only resumes a study must not rewrite it
    (a committed study's ``report:`` block would be lost). The same study written differently (comments,
    order) is left as it is.
    """
    path = study_dir / STUDY_FILE
    if not path.exists():
        return True
    try:
        previous = parse_study_config(path.read_text(), source=str(path)).config
    except RlflatError as exc:
        raise RlflatError(f"{exc}; the study there cannot be compared: use another --out") from None
    for stage in ("probe", "evaluate"):
        before, now = getattr(previous, stage), getattr(study.config, stage)
        if before is None:  # the stage never ran: enabling it later (train first, probe later) mixes nothing
            continue
        if before != now:
            raise RlflatError(
                f"{study_dir} was run with {stage}: {before}, {study.source} asks {stage}: {now}; finished runs "
                f"would mix settings: use another --out (or restore the setting)"
            )
    checked = {"report", "probe", "evaluate"}  # the stages were compared above
    before_dump, now_dump = previous.model_dump(exclude=checked), study.config.model_dump(exclude=checked)
    for key, value in before_dump.items():
        if now_dump[key] != value:
            raise RlflatError(
                f"{path} holds a different study ({key}: {value!r}, {study.source} has {now_dump[key]!r}); "
                f"use another --out (or restore {key})"
            )
    differences = [
        f"{key}: {_short(getattr(previous, key))} there, {_short(getattr(study.config, key))} in {study.source}"
        for key in ("report", "probe", "evaluate")
        if getattr(previous, key) != getattr(study.config, key)
    ]
    if differences and not force:
        raise RlflatError(
            f"{path} differs from {study.source} ({'; '.join(differences)}); the sweep does not rewrite it: "
            f"pass --force to replace it, or use another --out"
        )
    return bool(differences)


def _short(value: Any, limit: int = 120) -> str:
    """A setting's value for a one-line message (pydantic models as their non-default fields)."""
    if hasattr(value, "model_dump"):
        value = value.model_dump(exclude_defaults=True)
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _remove_leftovers(study_dir: Path, names: set[str]) -> None:
    """Staging directories and temp files of killed sweeps (we hold the lock: nobody is writing).

    Only what a sweep itself leaves: the marked staging folders of this study's runs or of published run
    directories (:func:`rlflat.io.remove_stale_staging`), and ``.<study file>.*.tmp`` files; any other hidden
    entry is someone else's and stays.
    """
    runs = names | {path.name for path in run_directories(study_dir)}
    for name in runs:
        remove_stale_staging(study_dir / name)
    files = (STUDY_FILE, RUNS_FILE)
    for path in study_dir.iterdir():
        if not path.name.startswith(".") or path.name == LOCK_FILE:
            continue
        if path.is_dir():
            continue  # staging folders went above, marked ones only (issue 23: a user's .<run>.backup stays)
        if path.name.endswith(".tmp") and _staging_of(path.name, files):
            path.unlink(missing_ok=True)


def _staging_of(hidden: str, names: set[str] | tuple[str, ...]) -> bool:
    """Whether ``hidden`` is ``.<name>.<something>`` for one of ``names``."""
    return any(hidden.startswith(f".{name}.") and len(hidden) > len(name) + 2 for name in names)


class _ProgressView:
    """One overall view: runs done / failed / running and an ETA; a line per run when not on a terminal."""

    def __init__(self, total: int, todo: int, name: str, enabled: bool, stream: IO[str] | None = None) -> None:
        self.total, self.todo, self.name = total, todo, name
        self.enabled = enabled
        self.stream = stream or sys.stderr
        self.done = self.failed = self.running = 0
        self.skipped = 0
        self._progress: Any = None
        self._task: Any = None

    def __enter__(self) -> _ProgressView:
        if self.enabled and self.stream.isatty() and self.todo:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self._progress = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[state]}"),
                TimeElapsedColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                console=Console(file=self.stream),
            )
            self._progress.start()
            self._task = self._progress.add_task(self.name, total=self.todo, state=self._state())
        elif self.enabled:
            print(f"{self.name}: {self.todo} of {self.total} runs to do", file=self.stream, flush=True)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()

    def _state(self) -> str:
        return f"ok {self.done}  failed {self.failed}  running {self.running}"

    def started(self, job: RunJob) -> None:
        self.running += 1
        self._refresh(advance=0)

    def finished(self, outcome: RunOutcome) -> None:
        self.running = max(0, self.running - 1)
        if outcome.status in ("failed", "lost"):
            self.failed += 1
        elif outcome.status == "skipped":
            self.skipped += 1
        else:
            self.done += 1
        self._refresh(advance=1)
        if self.enabled:
            count = self.done + self.failed + self.skipped
            detail = f" ({outcome.stage}: {outcome.error})" if outcome.error else ""
            line = f"[{count}/{self.todo}] {outcome.status} {outcome.name} {outcome.seconds:.1f} s{detail}"
            if self._progress is not None:  # above the bar, where it stays when the bar closes
                self._progress.console.print(line, markup=False, highlight=False)
            else:
                print(line, file=self.stream, flush=True)

    def _refresh(self, advance: int) -> None:
        if self._progress is not None:
            self._progress.update(self._task, advance=advance, state=self._state())


def summary_lines(result: SweepResult) -> list[str]:
    """The end-of-sweep report: counts, where the failed runs' logs are, where the table is."""
    rows = 0 if result.table is None else len(result.table)
    ran = len(result.outcomes)
    lines = [
        f"{result.study_dir}: {len(result.plan)} runs, {result.already_done} already done, {ran} run now "
        f"({len(result.ok)} ok, {len(result.failed)} failed) in {result.seconds:.1f} s",
        f"table: {result.study_dir / RUNS_FILE} ({rows} rows)",
    ]
    if result.table is not None and "unsolved" in result.table and rows:
        unsolved = int(result.table["unsolved"].fillna(False).astype(bool).sum())
        lines.append(
            f"solved: {rows - unsolved} of {rows} runs ({unsolved} unsolved: the report leaves them out of correlations)"
        )
    if result.stale_table:
        lines.append(
            f"note: {RUNS_FILE} differs from what the run directories give now; left as it is "
            f"(python -m rlflat.sweep --collect {result.study_dir} rebuilds it)"
        )
    if result.failed:
        lines.append(f"{len(result.failed)} failed runs (rerun the same command to retry them):")
        for outcome in result.failed:
            log = result.study_dir / (outcome.log or f"{LOGS_DIR}/{outcome.name}.log")
            lines.append(f"  {outcome.name}: {outcome.stage or outcome.status}: {outcome.error}  [log: {log}]")
    return lines
