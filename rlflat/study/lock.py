"""The preregistration's hash, locked in each study directory at its first run; changes need a dated amendment.

At a confirmatory study's first sweep the body hash (:func:`rlflat.study.preregistration.body_hash`) and the
number of amendments are written to ``<study>/preregistration.lock.json`` with the time. Every later sweep (and
the report) compares: a changed body is refused unless the file carries more amendments than when it was locked
and the newest names the current body's hash (each with a date and a reason; the schema checks their form), so an
edit after the last amendment is refused too; removing an amendment is refused. Records of
the other registered study directories are checked too, so a study split by task cannot run one task under a
silently edited preregistration.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

from rlflat.errors import RlflatError
from rlflat.io import write_text
from rlflat.study.preregistration import LoadedPreregistration, Preregistration, load_preregistration

LOCK_FILE = "preregistration.lock.json"

__all__ = ["LOCK_FILE", "check_preregistration", "design_mismatch", "read_lock"]


def read_lock(study_dir: str | Path) -> dict[str, Any] | None:
    """The lock record of ``study_dir`` (None when the study has not run under a preregistration)."""
    path = Path(study_dir) / LOCK_FILE
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise RlflatError(f"cannot read {path}: {exc}") from None
    if not isinstance(data, dict) or not {"body_sha256", "amendments", "recorded_at"} <= set(data):
        raise RlflatError(f"{path} is not a preregistration lock (keys body_sha256, amendments, recorded_at)")
    return data


def _refusal(loaded: LoadedPreregistration, where: Path, record: dict[str, Any]) -> str | None:
    amendments = loaded.prereg.amendments
    locked = int(record["amendments"])
    if len(amendments) < locked:
        return (
            f"{loaded.path} has {len(amendments)} amendment(s) but {where} locked it with {locked}: "
            "amendments cannot be removed; restore them"
        )
    if loaded.body_hash == record["body_sha256"]:
        return None
    changed = (
        f"{loaded.path} changed after {where.parent}'s first run ({record['recorded_at']}; body sha256 "
        f"{record['body_sha256'][:12]} then, {loaded.body_hash[:12]} now)"
    )
    new = amendments[locked:]
    if not new:
        return (
            f"{changed}; restore it, or add an amendment (date, reason, changes, body_sha256: {loaded.body_hash}) "
            "under 'amendments'"
        )
    if new[-1].body_sha256 != loaded.body_hash:
        return (
            f"{changed} and differs from its last amendment's body_sha256 {new[-1].body_sha256[:12]}: add an "
            f"amendment for this change (body_sha256: {loaded.body_hash}) or restore it"
        )
    return None


def design_mismatch(prereg: Preregistration, config: Any) -> str | None:
    """Where a sweep config (:class:`rlflat.sweep.config.StudyConfig`) departs from the registered design, or None.

    A config runs one registered task: its algorithms, seeds, grid, per-algorithm overrides and probe/evaluate
    options must be the registered ones, so the runs cannot drift from the registration either.
    """
    registered = {t.task: t for t in prereg.design.tasks}
    if len(config.tasks) != 1 or config.tasks[0] not in registered:
        return f"tasks {config.tasks} must be one registered task; valid choices: {', '.join(registered)}"
    task = registered[config.tasks[0]]
    wanted = {
        "algos": (config.algos, task.algos),
        "seeds": (config.seed_list, prereg.design.seeds),
        "grid": (config.grid, task.levels),
        "overrides": (config.overrides, {a: task.fixed for a in task.algos} if task.fixed else {}),
        "probe": (config.probe, prereg.design.probe),
        "evaluate": (config.evaluate, prereg.design.evaluate),
    }
    for key, (got, registered_value) in wanted.items():
        if got != registered_value:
            return f"{key} {got!r} is not the registered {registered_value!r} ({task.task})"
    return None


def check_preregistration(
    path: str | Path,
    study_dir: str | Path,
    *,
    tasks: list[str] | None = None,
    record: bool = False,
    config: Any = None,
) -> LoadedPreregistration:
    """Validate ``path`` against the locks of ``study_dir`` and of every registered study directory.

    ``tasks``: the sweep's tasks, each of which must be registered. ``config``: the sweep's study config, which
    must be the registered design (:func:`design_mismatch`). ``record``: write (or update, after an amendment) the
    lock of ``study_dir``; a dry run checks without writing. Refusals are one line.
    """
    loaded = load_preregistration(path)
    registered = loaded.prereg.design.task_names
    for task in tasks or []:
        if task not in registered:
            raise RlflatError(
                f"task {task!r} is not registered in {loaded.path}; valid choices: {', '.join(registered)}"
            )
    if config is not None and (why := design_mismatch(loaded.prereg, config)):
        raise RlflatError(f"the study config departs from {loaded.path}: {why}; amend the preregistration or fix it")
    study_dir = Path(study_dir)
    dirs = dict.fromkeys([study_dir, *(Path(t.study_dir) for t in loaded.prereg.design.tasks)])
    for directory in dirs:
        lock = read_lock(directory)
        if lock is not None and (why := _refusal(loaded, directory / LOCK_FILE, lock)):
            raise RlflatError(why)
    if record:
        _record(loaded, study_dir)
    return loaded


def _record(loaded: LoadedPreregistration, study_dir: Path) -> None:
    lock = read_lock(study_dir)
    now = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    entry = {"body_sha256": loaded.body_hash, "amendments": len(loaded.prereg.amendments), "recorded_at": now}
    if lock is None:
        data = {**entry, "first_run_started": now, "preregistration": loaded.path.as_posix(), "history": [entry]}
    elif (lock["body_sha256"], lock["amendments"]) == (entry["body_sha256"], entry["amendments"]):
        return
    else:
        data = {**lock, **entry, "history": [*lock.get("history", []), entry]}
    study_dir.mkdir(parents=True, exist_ok=True)
    write_text(study_dir / LOCK_FILE, json.dumps(data, indent=2) + "\n")
