"""How much memory an evaluation needs, from its arguments alone (see :mod:`rlflat.memory`).

A batched rollout holds one simulator row per (parameter set, setting, episode), and each row carries the state,
its physical parameters, the observation and the policy's activations; the table keeps every episode's return per
setting. Per-row constants were measured with ``/proc/self/status`` ``VmHWM`` on 2e5-row CartPole/Pendulum
rollouts of a 64x64 policy (1.39 and 1.50 KiB per row; the formula gives 1.45 KiB) and on Gymnasium-env rows.
"""

from __future__ import annotations

from collections.abc import Sequence

from gymnasium import spaces

from rlflat.memory import format_bytes, require_memory
from rlflat.policy import FunctionalPolicy
from rlflat.tasks import TaskSpec

__all__ = [
    "GRAPH_COPIES",
    "GYM_PASS_ROWS",
    "activation_widths",
    "check_rollout_memory",
    "gym_pass_rows",
    "gym_row_bytes",
    "rollout_bytes",
]

GRAPH_COPIES = 8
"""Float32 copies of each activation per batch row kept by an autograd graph (double backward for HVPs)."""

ROW_OVERHEAD_BYTES = 384
"""Per batched row: returns, alive mask, seeds, noise draws, index arrays (measured remainder)."""
GYM_ROW_BYTES = {"mujoco": 1280 * 2**10, "box2d": 160 * 2**10, "": 8 * 2**10}
"""Per row on the Gymnasium fallback (one env object per row), by the env's entry point; measured: Hopper
1.04 MiB, LunarLander 118 KiB, CartPole 5.1 KiB."""
GYM_PASS_ROWS = 2048
"""Most Gymnasium-fallback rows stepped at once. Each such row is a whole env (a MuJoCo one ~1.25 MiB), so a larger
evaluation runs in passes of whole settings (:func:`rlflat.evaluate.rollout.rollout_returns`); common random
numbers make its returns independent of the split, and the paper-scale Hopper grids (~29k rows, ~36 GiB at once)
fit in ~2.6 GiB."""
SETTING_BYTES = 2048
"""Per setting: its Python objects, dynamics dicts and table row."""
EPISODE_RESULT_BYTES = 64
"""Per (setting, episode): the return in the array, the table's list and its parquet copy."""


def activation_widths(policy: FunctionalPolicy) -> list[int]:
    """Output sizes of the actor's layers: what one row's forward pass allocates (float32 each)."""
    return [int(p.shape[0]) for name, p in policy.params.items() if name in policy.actor_names and p.ndim == 2]


def _dims(task: TaskSpec) -> tuple[int, bool]:
    from rlflat.evaluate.rollout import has_batched_simulator, task_spaces

    observation_space, _ = task_spaces(task)
    shape = observation_space.shape if isinstance(observation_space, spaces.Box) else (1,)
    dim = 1
    for n in shape or (1,):
        dim *= int(n)
    return dim, has_batched_simulator(task)


def gym_row_bytes(task: TaskSpec) -> int:
    import gymnasium

    entry = str(gymnasium.spec(task.id).entry_point)
    return next(size for family, size in GYM_ROW_BYTES.items() if family in entry)


def gym_pass_rows(rows_per_setting: float) -> float:
    """Rows of one Gymnasium-fallback pass: whole settings, at most :data:`GYM_PASS_ROWS` unless one is larger."""
    per_setting = max(1.0, float(rows_per_setting))
    return max(per_setting, (GYM_PASS_ROWS // per_setting) * per_setting)


def rollout_bytes(
    task: TaskSpec,
    rows: float,
    widths: Sequence[int] = (),
    *,
    backend: str = "auto",
    settings: int = 0,
    episodes: int = 0,
    rows_per_setting: float | None = None,
) -> float:
    """Estimated peak bytes of a rollout of ``rows`` rows (plus ``settings`` table rows of ``episodes`` each).

    With ``rows_per_setting`` known, Gymnasium-fallback rows count one pass at a time (:data:`GYM_PASS_ROWS`, but
    never less than one setting's rows); without it, all rows at once."""
    obs_dim, batched = _dims(task)
    if batched and backend != "gym":
        per_row = ROW_OVERHEAD_BYTES + 8 * (4 * obs_dim + len(task.parameters)) + 8 * sum(widths)
    else:
        per_row = gym_row_bytes(task) + 8 * sum(widths)
        if rows_per_setting is not None:
            rows = min(float(rows), gym_pass_rows(rows_per_setting))
    return float(rows) * per_row + float(settings) * (SETTING_BYTES + EPISODE_RESULT_BYTES * float(episodes))


def check_rollout_memory(
    task: TaskSpec,
    settings: int,
    episodes: int,
    widths: Sequence[int] = (),
    *,
    parameter_sets: int = 1,
    backend: str = "auto",
    what: str = "evaluate",
) -> None:
    """Refuse in one line when ``parameter_sets x settings x episodes`` rollout rows would not fit in memory."""
    rows = float(parameter_sets) * float(settings) * float(episodes)
    need = rollout_bytes(
        task,
        rows,
        widths,
        backend=backend,
        settings=settings,
        episodes=episodes,
        rows_per_setting=float(parameter_sets) * float(episodes),
    )
    sets = f"{parameter_sets} parameter sets x " if parameter_sets != 1 else ""
    require_memory(
        need,
        f"{what}: {sets}{settings} settings x {episodes} episodes = {rows:.3g} rollout rows "
        f"(about {format_bytes(need / max(rows, 1))} each)",
    )
