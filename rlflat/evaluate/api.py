"""Evaluate a policy over a robustness suite: the table (``robustness.parquet``) and the metrics block."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from rlflat.errors import RlflatError
from rlflat.evaluate.budget import activation_widths, check_rollout_memory
from rlflat.evaluate.inert import PROBE_SEQUENCES, PROBE_STEPS, dynamics_fingerprints, dynamics_groups
from rlflat.evaluate.metrics import normalization as make_normalization
from rlflat.evaluate.metrics import robustness_block
from rlflat.evaluate.results import check_accumulates, describe_options, publish_evaluation
from rlflat.evaluate.rollout import Backend, _rollout, episodes_ci
from rlflat.evaluate.suites import ACTION_NOISE, NOMINAL, OBS_NOISE, Setting, SuiteSpec, build_settings, count_settings
from rlflat.io import check_output_dir, read_json_object
from rlflat.policy import FunctionalPolicy, load_policy
from rlflat.tasks import TaskSpec, load_task

__all__ = [
    "METRICS_FILE",
    "TABLE_FILE",
    "default_out",
    "evaluate",
    "evaluate_run",
    "resolve_task",
    "validate_evaluate_options",
]

TABLE_FILE = "robustness.parquet"
METRICS_FILE = "metrics.json"
CONFIG_FILE = "config.json"

NOMINAL_EPISODES = 100
"""Default episodes of the nominal row. Over the 20 runs of the first reference study a 20-episode nominal mean had
a standard error of up to 16.5 (4% of the return) for an unsolved run, larger than the differences compared;
100 episodes bring it to about 7 at the cost of one extra batched setting."""


def evaluate(
    policy: FunctionalPolicy,
    task: TaskSpec,
    suite: SuiteSpec | None = None,
    *,
    episodes: int = 20,
    seed: int = 0,
    deterministic: bool = True,
    rng_seed: int = 0,
    collapse_frac: float = 0.5,
    backend: Backend = "auto",
    progress: bool | None = None,
    normalization: str = "task",
    nominal_episodes: int = NOMINAL_EPISODES,
    detect_inert: bool = True,
    workers: int | None = None,
) -> pd.DataFrame:
    """One row per setting of ``suite`` (default: the task's default suite), all rolled out in one batch.

    Columns: ``family``, ``factor``, the absolute value of every perturbed parameter (nominal where a row
    does not perturb it), ``action_noise``, ``obs_noise``, ``episodes``, ``return_mean``, ``return_std``,
    ``return_ci_low``/``high`` (95% Student-t), ``normalized_return``, ``collapsed`` and the per-episode
    ``returns`` (episode j used seed ``seed + j`` in every row, so rows and runs can be compared pairwise).
    ``deterministic=False`` samples actions per step (gSDE: independent per-step noise, not SB3's exploration
    matrix). ``normalization`` is ``task`` (the spec's R_low / R_ref, comparable across runs) or ``nominal``
    (per run; see :mod:`rlflat.evaluate.metrics`). The nominal row gets ``max(episodes, nominal_episodes)``
    episodes (its first ``episodes`` are the ones every other row uses), because the nominal return decides
    whether a run is ``unsolved`` and, per run, scales every other row. ``detect_inert`` adds the
    ``dynamics_group``, ``inert`` and ``saturated`` columns (:mod:`rlflat.evaluate.inert`). ``workers``:
    processes stepping Gymnasium envs (MuJoCo, Box2D); None = every usable core.
    """
    _check_collapse_frac(collapse_frac)
    _check_nominal_episodes(nominal_episodes)
    validate_evaluate_options({"seed": seed, "rng_seed": rng_seed})
    task = task.with_protocol((suite or SuiteSpec()).protocol)  # how perturbations are applied (suites.py)
    if isinstance(episodes, int) and not isinstance(episodes, bool) and episodes > 0:  # else _rollout says why
        widths = activation_widths(policy)
        check_rollout_memory(task, count_settings(task, suite), episodes, widths, backend=backend)
        check_rollout_memory(task, 1, nominal_episodes, widths, backend=backend, what="evaluate (nominal row)")
    settings = build_settings(task, suite)
    by_key: dict[tuple[object, ...], Setting] = {}  # equal physics and noise -> identical returns: run once
    for setting in settings:
        by_key.setdefault(setting.key, setting)
    index = {key: i for i, key in enumerate(by_key)}
    distinct = list(by_key.values())
    returns = _rollout(
        policy,
        task,
        [s.dynamics(task) for s in distinct],
        np.array([s.action_noise for s in distinct]),
        np.array([s.obs_noise for s in distinct]),
        episodes,
        seed=seed,
        deterministic=deterministic,
        rng_seed=rng_seed,
        backend=backend,
        progress=progress,
        workers=workers,
    )[0]
    per_row = [returns[index[s.key]] for s in settings]
    if nominal_episodes > episodes:  # build_settings puts nominal first; same seeds, so a superset of row 0
        nominal = distinct[index[settings[0].key]]
        per_row[0] = _rollout(
            policy,
            task,
            [nominal.dynamics(task)],
            np.array([nominal.action_noise]),
            np.array([nominal.obs_noise]),
            nominal_episodes,
            seed=seed,
            deterministic=deterministic,
            rng_seed=rng_seed,
            backend=backend,
            progress=False,
            workers=workers,
        )[0, 0]
    table = _table(task, settings, per_row, seed, deterministic, collapse_frac, normalization)
    table.attrs["nominal_episodes"] = len(per_row[0])
    table.attrs["rng_seed"] = int(rng_seed)
    table.attrs["severities"] = [float(f) for f in (suite or SuiteSpec()).severities]
    table.attrs["protocol"] = task.protocol
    if detect_inert:
        _flag_inert(table, task, settings, seed, backend)
    return table


def _flag_inert(table: pd.DataFrame, task: TaskSpec, settings: list[Setting], seed: int, backend: str) -> None:
    """Add ``dynamics_group`` / ``inert`` / ``saturated`` (noise rows: nominal dynamics, never flagged)."""
    physics: list[tuple[tuple[str, float], ...]] = [s.key[0] for s in settings]  # type: ignore[misc]
    unique = list(dict.fromkeys([(), *physics]))  # nominal first, so its group is 0
    by_physics = {p: {name: task.parameters[name].nominal * f for name, f in p} for p in unique}
    groups = dynamics_groups(dynamics_fingerprints(task, list(by_physics.values()), seed=seed, backend=backend))
    group_of = dict(zip(unique, groups, strict=True))
    table["dynamics_group"] = [group_of[p] for p in physics]
    dynamic = ~table["family"].isin([NOMINAL, ACTION_NOISE, OBS_NOISE]).to_numpy()
    table["inert"] = dynamic & np.array([bool(p) and group_of[p] == 0 for p in physics])
    saturated = np.zeros(len(settings), dtype=bool)
    for _, rows in table[dynamic & ~table["inert"].to_numpy()].groupby(["family", "dynamics_group"]):
        if len({physics[i] for i in rows.index}) > 1:
            saturated[rows.index] = True
    table["saturated"] = saturated
    table.attrs["inert_probe"] = {
        "steps": PROBE_STEPS,
        "sequences": PROBE_SEQUENCES,
        "test": "bit-identical observations, rewards and terminations from the nominal start states under fixed "
        "uniform action sequences (each action held 10 steps), the physics stepped past termination",
    }


def _table(
    task: TaskSpec,
    settings: list[Setting],
    per_row: list[np.ndarray],
    seed: int,
    deterministic: bool,
    collapse_frac: float,
    normalization: str = "task",
) -> pd.DataFrame:
    perturbed = {name for s in settings for name, _ in s.factors}
    quantities = [name for name in task.parameters if name in perturbed]
    nominal_return = float(per_row[0].mean())  # build_settings puts nominal first
    scale = make_normalization(task, nominal_return, normalization)
    mean = np.array([r.mean() for r in per_row])
    ci = [episodes_ci(r) for r in per_row]
    low, high = np.array([float(c[0]) for c in ci]), np.array([float(c[1]) for c in ci])
    normalized = scale.apply(mean)
    rows: dict[str, Any] = {
        "family": [s.family for s in settings],
        "factor": [s.factor for s in settings],
    }
    for name in quantities:
        nominal = task.parameters[name].nominal
        rows[name] = [nominal * dict(s.factors).get(name, 1.0) for s in settings]
    rows[ACTION_NOISE] = [s.action_noise for s in settings]
    rows[OBS_NOISE] = [s.obs_noise for s in settings]
    rows.update(
        episodes=[len(r) for r in per_row],
        return_mean=mean,
        return_std=[float(r.std()) for r in per_row],
        return_ci_low=low,
        return_ci_high=high,
        normalized_return=normalized,
        collapsed=np.nan_to_num(normalized, nan=np.inf) < collapse_frac,
        returns=[list(map(float, r)) for r in per_row],
    )
    table = pd.DataFrame(rows)
    table.attrs.update(
        task=task.alias,
        episodes=int(min(len(r) for r in per_row)),
        seed=int(seed),
        deterministic=bool(deterministic),
        return_floor=scale.zero,
        normalization=scale.block(),
        nominal_return=nominal_return,
        collapse_frac=float(collapse_frac),
        quantity_columns=[*quantities, ACTION_NOISE, OBS_NOISE],
    )
    return table


def _check_nominal_episodes(value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise RlflatError(f"nominal_episodes must be a positive integer, got {value!r}")


def _check_collapse_frac(value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not (0 < value <= 1):
        raise RlflatError(f"collapse_frac must be in (0, 1], got {value!r}")


MAX_EPISODES = 100_000
"""Most episodes per setting (the nominal row included): 1000x the default 100-episode nominal row."""


def validate_evaluate_options(options: dict[str, Any]) -> None:
    """Check :func:`evaluate`'s scalar options (a sweep's ``evaluate:`` block, or the CLI's) before any work:
    types, ranges and choices, one line naming the first bad one. Suites are checked by their own builder."""
    from rlflat.evaluate.metrics import NORMALIZATIONS
    from rlflat.evaluate.rollout import BACKENDS

    for name, low, high in (
        ("episodes", 1, MAX_EPISODES),
        ("nominal_episodes", 1, MAX_EPISODES),
        ("seed", 0, 2**31 - 1),
        ("rng_seed", 0, 2**63 - 1),
        ("workers", 1, 4096),
    ):
        value = options.get(name)
        if (value is None and name == "workers") or name not in options:
            continue
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or not low <= value <= high:
            raise RlflatError(f"{name} must be an integer in [{low}, {high}], got {value!r}")
    for name in ("deterministic", "detect_inert"):
        if name in options and not isinstance(options[name], bool):
            raise RlflatError(f"{name} must be true or false, got {options[name]!r}")
    if "collapse_frac" in options:
        _check_collapse_frac(options["collapse_frac"])
    if "normalization" in options and options["normalization"] not in NORMALIZATIONS:
        raise RlflatError(f"normalization must be one of {', '.join(NORMALIZATIONS)}, got {options['normalization']!r}")
    if "backend" in options and options["backend"] not in BACKENDS:
        raise RlflatError(f"backend must be one of {', '.join(BACKENDS)}, got {options['backend']!r}")


def resolve_task(path: str | Path, task: str | TaskSpec | None = None) -> TaskSpec:
    """The task of a run dir (``config.json``'s ``task``) or the given one; a bare zip needs ``task``."""
    path = Path(path)
    if not path.exists():
        raise RlflatError(f"{path} does not exist: give a run directory or an SB3 model .zip")
    config = path / CONFIG_FILE
    recorded: str | None = None
    if path.is_dir() and os.path.lexists(config):
        recorded = read_json_object(config).get("task")  # a folder, bad bytes or deep nesting: one line
    if task is None:
        if recorded is None:
            raise RlflatError(f"{path}: cannot tell the task (no 'task' in {CONFIG_FILE}); pass --task")
        return load_task(str(recorded))
    spec = task if isinstance(task, TaskSpec) else load_task(task)
    if recorded is not None and load_task(str(recorded)).id != spec.id:
        raise RlflatError(f"{path} was trained on {recorded}, not {spec.alias}; drop --task or fix it")
    return spec


def default_out(path: str | Path) -> Path:
    """Where an evaluation of ``path`` writes by default: the run dir, or ``<zip stem>-evaluate/`` beside a zip.

    A bare zip gets a folder of its own (as the probe's ``<stem>-probe/``): two zips in one folder must not
    share, and replace, one ``robustness.parquet``.
    """
    path = Path(path)
    return path if path.is_dir() else path.with_name(f"{path.stem}-evaluate")


def evaluate_run(
    path: str | Path,
    task: str | TaskSpec | None = None,
    out: str | Path | None = None,
    *,
    write: bool = True,
    force: bool = False,
    trust: bool = False,
    vecnormalize: str | Path | None = None,
    **options: Any,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Evaluate a run dir or SB3 zip; write ``robustness.parquet`` and ``metrics.json``'s ``robustness`` block.

    ``options`` are :func:`evaluate`'s (``suite``, ``episodes``, ...). ``out`` defaults to :func:`default_out`.
    Everything is validated and computed before anything is written, so a failure leaves the output folder as
    it was; an earlier evaluation there is added to (rows merged, :mod:`rlflat.evaluate.results`) unless
    ``force``, which replaces it; both files are published as one unit. ``trust`` and ``vecnormalize`` are :func:`rlflat.policy.load_policy`'s (by default nothing is
    unpickled). Returns the table and the robustness block.
    """
    path = Path(path)
    spec = resolve_task(path, task)
    out_dir = check_output_dir(Path(out) if out is not None else default_out(path), published=True) if write else None
    if out_dir is not None:
        check_accumulates(out_dir, options, force)
    policy = load_policy(path, spec, trust=trust, vecnormalize=vecnormalize)
    table = evaluate(policy, spec, **options)

    def make_block(rows: pd.DataFrame) -> dict[str, Any]:
        block = robustness_block(rows, spec, rows.attrs["collapse_frac"])
        block["table"] = TABLE_FILE
        block["policy"] = str(path)
        return block

    if out_dir is None:
        return table, make_block(table)
    provenance = {"options": describe_options(options), "policy": str(path)}
    return publish_evaluation(out_dir, table, spec, make_block, provenance, force)
