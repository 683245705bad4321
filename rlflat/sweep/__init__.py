"""Sweeps: a study config (``configs/*.yaml``) -> many runs of train -> probe -> evaluate -> ``runs.parquet``.

``python -m rlflat.sweep configs/smoke.yaml`` runs a study into ``results/<name>/``; rerunning it resumes
(finished runs are skipped by content hash); ``--backend ray`` runs the same runs as Ray tasks.
"""

from typing import TYPE_CHECKING

from rlflat.lazy import attributes

if TYPE_CHECKING:
    from rlflat.sweep.config import (
        STAGES,
        LoadedStudy,
        RunSpec,
        StudyConfig,
        expand_runs,
        load_study_config,
        parse_study_config,
    )
    from rlflat.sweep.executors import BACKENDS
    from rlflat.sweep.pipeline import RunJob, RunOutcome, execute, run_state
    from rlflat.sweep.runner import PlannedRun, SweepResult, plan_sweep, run_sweep
    from rlflat.sweep.table import RUNS_FILE, build_table, collect, read_table, timing_columns

__getattr__ = attributes(
    __name__,
    {
        "STAGES": "config",
        "LoadedStudy": "config",
        "RunSpec": "config",
        "StudyConfig": "config",
        "expand_runs": "config",
        "load_study_config": "config",
        "parse_study_config": "config",
        "BACKENDS": "executors",
        "RunJob": "pipeline",
        "RunOutcome": "pipeline",
        "execute": "pipeline",
        "run_state": "pipeline",
        "PlannedRun": "runner",
        "SweepResult": "runner",
        "plan_sweep": "runner",
        "run_sweep": "runner",
        "RUNS_FILE": "table",
        "build_table": "table",
        "collect": "table",
        "read_table": "table",
        "timing_columns": "table",
    },
)

__all__ = [
    "BACKENDS",
    "RUNS_FILE",
    "STAGES",
    "LoadedStudy",
    "PlannedRun",
    "RunJob",
    "RunOutcome",
    "RunSpec",
    "StudyConfig",
    "SweepResult",
    "build_table",
    "collect",
    "execute",
    "expand_runs",
    "load_study_config",
    "parse_study_config",
    "plan_sweep",
    "read_table",
    "run_state",
    "run_sweep",
    "timing_columns",
]
