"""One run of a study: train -> probe -> evaluate, resumable stage by stage, its output captured in a log.

Completion is read from the run directory itself, never from a separate ledger, so whatever killed a sweep
(Ctrl-C, ``kill -9``, a lost machine) the next sweep sees exactly what is finished:

* train is done when ``metrics.json`` exists with ``status: ok`` (train_run publishes the whole directory
  atomically from a hidden staging directory, so a killed training leaves no run directory at all);
* probe / evaluate are done when their block (``probe`` / ``robustness``) is in ``metrics.json`` (the stage
  functions write it last, atomically).

A failure is recorded as ``failure.json`` in the run directory (created if training never produced one), with
the stage, the error and the log's path. Failed runs are retried by the next sweep; their log is appended to.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import sys
import tarfile
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rlflat.io import read_json, staging_dir, write_json, write_text
from rlflat.sweep.config import STAGE_BLOCKS, STAGES
from rlflat.sweep.stage_options import evaluate_options

FAILURE_FILE = "failure.json"
LOGS_DIR = "logs"

StageFunction = Callable[[Path, "RunJob"], None]


@dataclass(frozen=True)
class RunJob:
    """Everything a worker needs for one run; plain data, so it pickles to a process pool or a Ray task."""

    config: dict[str, Any]
    run_id: str
    name: str
    stages: tuple[str, ...] = STAGES
    probe: dict[str, Any] = field(default_factory=dict)
    evaluate: dict[str, Any] = field(default_factory=dict)
    device: str = "cpu"
    command: tuple[str, ...] | None = None


@dataclass
class RunOutcome:
    """What happened to one run in this sweep (the table is rebuilt from the directories, not from these)."""

    name: str
    run_id: str
    status: str
    """``ok``, ``failed`` or ``skipped`` (everything was already done)."""
    ran: tuple[str, ...] = ()
    stage: str | None = None
    error: str | None = None
    seconds: float = 0.0
    log: str | None = None
    """The log's path relative to the study directory."""


# -- state of a run directory ----------------------------------------------------------------------------


def read_metrics(run_dir: Path) -> dict[str, Any] | None:
    """``metrics.json`` or None when missing or unreadable (a crash never leaves it half-written)."""
    try:
        data = read_json(run_dir / "metrics.json")
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def remaining_stages(run_dir: Path, stages: Sequence[str]) -> tuple[str, ...]:
    """The requested stages still to do, in order; training a run again redoes everything after it."""
    metrics = read_metrics(run_dir)
    if metrics is None or metrics.get("status") != "ok" or "train" not in metrics:
        return tuple(stages)
    return tuple(s for s in stages if s != "train" and STAGE_BLOCKS.get(s, s) not in metrics)


def run_state(run_dir: Path, stages: Sequence[str]) -> str:
    """``done``, ``failed`` (recorded failure), ``partial`` (trained, a later stage missing) or ``todo``."""
    if (run_dir / FAILURE_FILE).exists():
        return "failed"
    metrics = read_metrics(run_dir)
    if metrics is not None and metrics.get("status") == "failed":
        return "failed"
    remaining = remaining_stages(run_dir, stages)
    if not remaining:
        return "done"
    return "todo" if "train" in remaining else "partial"


# -- stages ------------------------------------------------------------------------------------------------


def _train(run_dir: Path, job: RunJob) -> None:
    from rlflat.train import train_run

    train_run(job.config, out=run_dir, device=job.device, progress=False, command=job.command)


def _probe(run_dir: Path, job: RunJob) -> None:
    probe_run = stage_function("probe")
    probe_run(run_dir, force=True, **job.probe)  # the stage is not done: a leftover probe.json is redone


def _evaluate(run_dir: Path, job: RunJob) -> None:
    evaluate_run = stage_function("evaluate")
    evaluate_run(run_dir, force=True, **evaluate_options(job.evaluate, job.config["task"]))


STAGE_RUNNERS: dict[str, StageFunction] = {"train": _train, "probe": _probe, "evaluate": _evaluate}
"""Stage name -> how the sweep runs it; tests replace entries (with the in-process ``serial`` backend)."""


def stage_function(stage: str) -> Callable[..., Any]:
    """The library function behind a stage, imported lazily (so a worker imports only what it runs)."""
    if stage == "probe":
        from rlflat.probe import probe_run

        return probe_run  # type: ignore[no-any-return]
    if stage == "evaluate":
        from rlflat.evaluate import evaluate_run

        return evaluate_run  # type: ignore[no-any-return]
    if stage == "train":
        from rlflat.train import train_run

        return train_run
    raise KeyError(stage)


# -- one run -----------------------------------------------------------------------------------------------


def log_path(study_dir: Path, name: str) -> Path:
    return study_dir / LOGS_DIR / f"{name}.log"


def execute(job: RunJob, study_dir: str | Path, *, capture_fds: bool = True) -> RunOutcome:
    """Do the stages of ``job`` still missing in ``study_dir/<name>``; never raises for a failing run.

    ``capture_fds`` redirects file descriptors 1 and 2 into the log (a worker process: catches C-level and
    subprocess output too); in-process runs capture Python's streams only, leaving the terminal alone.
    """
    study_dir = Path(study_dir).resolve()
    run_dir = study_dir / job.name
    log = log_path(study_dir, job.name)
    log.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    todo = remaining_stages(run_dir, job.stages)
    relative_log = str(log.relative_to(study_dir))
    if not todo:
        return RunOutcome(job.name, job.run_id, "skipped", log=relative_log)
    (run_dir / FAILURE_FILE).unlink(missing_ok=True)  # a retry: the old failure no longer stands
    if "train" in todo and run_dir.exists():
        shutil.rmtree(run_dir)  # a failed or foreign training: train_run wants an empty place
    current = todo[0]
    with _captured(log, capture_fds) as stream:
        print(f"=== {time.strftime('%Y-%m-%d %H:%M:%S')} {job.name}: stages {', '.join(todo)}", file=stream, flush=True)
        try:
            for current in todo:
                stage_start = time.perf_counter()
                with _working_directory(study_dir):  # stages record the run's path relative to its study
                    STAGE_RUNNERS[current](Path(job.name), job)
                print(f"--- {current} done in {time.perf_counter() - stage_start:.1f} s", file=stream, flush=True)
        except Exception as exc:  # a failing run is data, not a crash of the sweep
            error = f"{type(exc).__name__}: {exc}".strip()
            print(f"--- {current} FAILED\n{traceback.format_exc()}", file=stream, flush=True)
            _record_failure(run_dir, job, current, error, relative_log)
            return RunOutcome(
                job.name, job.run_id, "failed", todo, current, error, time.perf_counter() - start, relative_log
            )
    return RunOutcome(job.name, job.run_id, "ok", todo, seconds=time.perf_counter() - start, log=relative_log)


def _record_failure(run_dir: Path, job: RunJob, stage: str, error: str, log: str) -> None:
    """Write ``failure.json``; when training left no directory, publish one holding the config and failure."""
    failure = {"status": "failed", "stage": stage, "error": error, "log": log}
    if run_dir.exists():
        write_json(run_dir / FAILURE_FILE, failure)
        return
    _publish_failure(run_dir, job, failure)


def _publish_failure(run_dir: Path, job: RunJob, failure: dict[str, Any]) -> None:
    """Publish (or replace) ``run_dir`` as just the run's config and its failure record."""
    with staging_dir(run_dir) as staging:
        write_json(staging / "config.json", {**job.config, "run_id": job.run_id, "device": job.device})
        write_json(staging / FAILURE_FILE, failure)


@contextlib.contextmanager
def _working_directory(path: Path) -> Iterator[None]:
    """``contextlib.chdir`` for Python 3.10."""
    previous = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(previous)


@contextlib.contextmanager
def _captured(log: Path, capture_fds: bool) -> Iterator[io.TextIOBase]:
    """Send stdout/stderr (and warnings, tracebacks, tqdm bars) to ``log``, appending."""
    with open(log, "a", buffering=1) as handle:
        if not capture_fds:
            with contextlib.redirect_stdout(handle), contextlib.redirect_stderr(handle):
                yield handle
            return
        sys.stdout.flush()
        sys.stderr.flush()
        saved = os.dup(1), os.dup(2)
        try:
            os.dup2(handle.fileno(), 1)
            os.dup2(handle.fileno(), 2)
            with contextlib.redirect_stdout(handle), contextlib.redirect_stderr(handle):
                yield handle
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


# -- shipping a run directory (Ray workers need not share the driver's file system) -------------------------


def pack(directory: Path) -> bytes:
    """A gzip'd tar of ``directory``'s contents (empty bytes when it does not exist)."""
    if not directory.exists():
        return b""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        archive.add(directory, arcname=".")
    return buffer.getvalue()


def unpack(data: bytes, directory: Path) -> None:
    """Extract :func:`pack`'s bytes into ``directory`` (created), refusing paths that escape it."""
    directory.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as archive:
        archive.extractall(directory, filter="data")


def execute_shipped(job: RunJob, existing: bytes, log_text: str) -> tuple[RunOutcome, bytes, str]:
    """Run ``job`` in a private temporary study directory seeded with the driver's partial run.

    Returns the outcome, the packed run directory and the log; the driver publishes them. This is what a Ray
    task calls, so results land in the driver's study directory whether or not the cluster shares its disk.
    """
    with tempfile.TemporaryDirectory(prefix="rlflat-sweep-") as tmp:
        root = Path(tmp)
        if existing:
            unpack(existing, root / job.name)
        log = log_path(root, job.name)
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text(log_text)
        outcome = execute(job, root)
        return outcome, pack(root / job.name), log.read_text()


def publish_shipped(study_dir: Path, name: str, data: bytes, log_text: str) -> None:
    """Put a shipped run directory in place (via a hidden staging directory) and its log beside the others."""
    log = log_path(study_dir, name)
    log.parent.mkdir(parents=True, exist_ok=True)
    write_text(log, log_text)
    if not data:
        return
    # replacing an existing run dir takes two renames: a crash in between leaves none, so the run is redone
    with staging_dir(study_dir / name) as staging:
        unpack(data, staging)
