"""Which pending runs of a sweep train together, and how many at once.

Runs go into one population only when :func:`rlflat.population.shape_key` says they can share one (same task,
algorithm and every shape-setting hyperparameter); runs of different shapes are never grouped, whatever K is.
``--population auto`` sizes K from the memory estimate below and the parallel slots (a group of N runs on W
workers makes ceil(N / W)-sized populations, so every worker gets one, at most :data:`AUTO_MAX`); ``--population K``
asks for K and is refused, in one line, when the runs cannot share shapes or K learners would not fit;
``--population 1`` is today's pipeline, one SB3 run per process. A group of one is always a plain run.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from rlflat.errors import RlflatError
from rlflat.memory import available_memory, format_bytes

StageOptions = Callable[[Mapping[str, Any]], tuple[Mapping[str, Any] | None, Mapping[str, Any] | None]]
"""A run config -> its (probe, evaluate) options."""

__all__ = ["AUTO", "AUTO_MAX", "MEMORY_SHARE", "learner_bytes", "parse_population", "plan_populations"]

AUTO = "auto"
AUTO_MAX = 32
"""Largest population ``auto`` forms. Batched PPO throughput saturates at K = 8..128 (issue 19's measurements), and
a population's probe and evaluation hold every member's state at once; 32 keeps a 2-core, 64-run study at one
population per core."""
MEMORY_SHARE = 0.5
"""Fraction of the available memory ``auto`` plans to use: the estimates aim at the order of magnitude."""


def parse_population(value: object) -> int | str:
    """``auto`` or an integer >= 1 (as given on the command line or to :func:`rlflat.sweep.run_sweep`)."""
    if isinstance(value, str) and value.strip().lower() == AUTO:
        return AUTO
    if isinstance(value, bool):
        raise RlflatError(f"--population must be auto or an integer >= 1, got {value!r}")
    try:
        k = int(value) if isinstance(value, int | str) else None
    except ValueError:
        k = None
    if k is None or k < 1 or (isinstance(value, str) and value.strip() != str(k)):
        raise RlflatError(f"--population must be auto or an integer >= 1, got {value!r}")
    return k


def _net(config: Mapping[str, Any]) -> tuple[int, int, list[int], list[int], Any]:
    """(obs dim, action outputs, actor widths, critic widths, task) of a run config."""
    from gymnasium import spaces

    from rlflat.tasks import load_task, make_env

    task = load_task(str(config["task"]))
    env = make_env(task)
    try:
        obs_dim = math.prod(env.observation_space.shape or (1,))
        space = env.action_space
        outputs = int(space.n) if isinstance(space, spaces.Discrete) else math.prod(space.shape or (1,))
    finally:
        env.close()
    net_arch = ((config["hyperparameters"].get("policy_kwargs") or {}).get("net_arch", [64, 64])) or []
    pi, vf = (net_arch.get("pi", []), net_arch.get("vf", [])) if isinstance(net_arch, dict) else (net_arch, net_arch)
    return obs_dim, outputs, [int(w) for w in pi], [int(w) for w in vf], task


def learner_bytes(
    config: Mapping[str, Any], probe: Mapping[str, Any] | None = None, evaluate: Mapping[str, Any] | None = None
) -> float:
    """Estimated bytes one learner holds inside a population: training, plus its probe and evaluation.

    The probe and evaluation of a population run all members at once (:mod:`rlflat.population.probe`), so
    their parts add up over K just as training's do. The constants are the single-run estimates'
    (:func:`rlflat.train.check_training_size`, :mod:`rlflat.probe.budget`, :mod:`rlflat.evaluate.budget`);
    ``probe``/``evaluate`` are the stage options as ``probe_run``/``evaluate_run`` take them (None: no stage).
    """
    from rlflat.evaluate.budget import GRAPH_COPIES, gym_row_bytes, rollout_bytes

    obs_dim, outputs, pi, vf, task = _net(config)
    hp = config["hyperparameters"]
    rows = float(hp.get("n_envs", 1)) * float(hp.get("n_steps", 2048))
    actor = _layer_sizes([obs_dim, *pi, outputs])
    n_params = sum(a * b + b for a, b in actor) + sum(a * b + b for a, b in _layer_sizes([obs_dim, *vf, 1]))
    widths = [*pi, outputs]
    need = (
        rows * 4 * (obs_dim + outputs + 8)
        + rows * 4 * GRAPH_COPIES * (obs_dim + sum(pi) + sum(vf))
        + float(hp.get("n_envs", 1)) * gym_row_bytes(task)
        + float(hp.get("total_timesteps", 0)) * 16
        + 4.0 * 4 * n_params  # parameters, gradients and Adam's two moments
    )
    if probe is not None:
        import torch

        from rlflat.probe.budget import probe_bytes
        from rlflat.probe.options import make_options

        names = [f"layer{i}" for i in range(len(actor))]
        stub = SimpleNamespace(  # what probe_bytes reads of a policy: actor widths and the observation space
            params={name: torch.empty(b, a) for name, (a, b) in zip(names, actor, strict=True)},
            actor_names=names,
            observation_space=SimpleNamespace(shape=(obs_dim,)),
        )
        opts = make_options(**{k: v for k, v in probe.items() if k not in ("force", "progress")})
        need += sum(probe_bytes(opts, stub, sum(a * b + b for a, b in actor), task).values())  # type: ignore[arg-type]
    if evaluate is not None:
        from rlflat.evaluate.api import NOMINAL_EPISODES
        from rlflat.evaluate.suites import count_settings

        settings = count_settings(task, evaluate.get("suite"))
        episodes = int(evaluate.get("episodes", 20))
        nominal = int(evaluate.get("nominal_episodes", NOMINAL_EPISODES))
        need += rollout_bytes(task, settings * episodes + nominal, widths, settings=settings, episodes=episodes)
    return need


def _layer_sizes(sizes: Sequence[int]) -> list[tuple[int, int]]:
    return list(itertools.pairwise(sizes))


def plan_populations(
    runs: Sequence[tuple[str, Mapping[str, Any]]],
    population: int | str,
    *,
    slots: int = 1,
    stage_options: StageOptions | None = None,
    available: int | None = None,
) -> list[list[int]]:
    """Indices of ``runs`` (name, resolved config) grouped into populations; a group of one is a plain run.

    ``slots``: populations that run at the same time (workers); ``stage_options`` gives a config's probe and
    evaluate options as ``probe_run`` / ``evaluate_run`` take them (None where the stage does not run). Raises a one-line :class:`RlflatError` for
    ``population`` K > 1 when the runs do not all share one shape, or when K learners (times the populations
    running at once) would not fit in ``available`` memory (default: :func:`rlflat.memory.available_memory`).
    """
    population = parse_population(population)
    if population == 1 or len(runs) < 2:
        return [[i] for i in range(len(runs))]
    groups = _shape_groups(runs)
    if population != AUTO and len(groups) > 1:
        _refuse_mixed(runs, groups, population)
    memory = available_memory() if available is None else available
    plan: list[list[int]] = []
    for group in groups:
        config = runs[group[0]][1]
        per = learner_bytes(config, *(stage_options(config) if stage_options is not None else (None, None)))
        if population == AUTO:
            fit = int(memory * MEMORY_SHARE // max(per * slots, 1.0))
            k = min(AUTO_MAX, fit, math.ceil(len(group) / max(slots, 1)))
        else:
            k = min(int(population), len(group))
            at_once = min(max(slots, 1), math.ceil(len(group) / k))
            if k * per * at_once > memory:
                raise RlflatError(
                    f"--population {population}: {at_once} population(s) of {k} learners like "
                    f"{runs[group[0]][0]} need about {format_bytes(k * per * at_once)} of memory, more than the "
                    f"{format_bytes(memory)} available; use a smaller --population (or auto)"
                )
        plan.extend(_chunks(group, max(k, 1)))
    return plan


def _shape_groups(runs: Sequence[tuple[str, Mapping[str, Any]]]) -> list[list[int]]:
    """Run indices by :func:`shape_key`, groups and members in first-seen order."""
    from rlflat.population import shape_key

    groups: dict[Any, list[int]] = {}
    for i, (_, config) in enumerate(runs):
        groups.setdefault(shape_key(config), []).append(i)
    return list(groups.values())


def _refuse_mixed(runs: Sequence[tuple[str, Mapping[str, Any]]], groups: list[list[int]], k: int | str) -> None:
    from rlflat.population import Member
    from rlflat.population.members import check_members

    a, b = runs[groups[0][0]], runs[groups[1][0]]
    try:
        check_members([Member(dict(a[1]), Path(a[0])), Member(dict(b[1]), Path(b[0]))])
    except RlflatError as exc:
        why = str(exc)
    else:  # pragma: no cover - different shape keys always differ somewhere
        why = f"runs {a[0]} and {b[0]} cannot share a population"
    raise RlflatError(
        f"--population {k}: {why}; the pending runs fall into {len(groups)} shapes: use --population auto "
        "(a population per shape) or 1"
    )


def _chunks(group: list[int], k: int) -> list[list[int]]:
    """``group`` in ceil(len / k) nearly equal consecutive parts (none larger than k)."""
    parts = math.ceil(len(group) / k)
    size, extra = divmod(len(group), parts)
    out, start = [], 0
    for p in range(parts):
        end = start + size + (1 if p < extra else 0)
        out.append(group[start:end])
        start = end
    return out
