"""Evaluate K runs at once: one batched simulator for K policies x settings x episodes, returns bit-identical.

Each run is evaluated by the unchanged single-run code (:func:`rlflat.evaluate.evaluate_run`: validation, suite,
table, ``robustness.parquet`` and the ``robustness`` block, written exactly as ``python -m rlflat.evaluate RUN``
writes them), one thread per run, and their rollouts meet (:mod:`rlflat.population.rendezvous`): the K calls of
one evaluation step become one simulator of K x settings x episodes rows, stepped by one numpy call per step.

Why the returns are *bit-identical* to evaluating each run alone: the simulators are row-wise (a row's next
state depends on that row only), rows keep the single-run layout inside their member's block (settings x
episodes, the same reset seeds), and each block's actions come from that member's own
:class:`~rlflat.evaluate.actions.ActionSelector` with the single-run seeds, forwarding exactly the rows the
single-run loop forwards (all of them, or only the live ones once most have finished). A single stacked forward
(``vmap`` over K parameter sets) would round differently from the single-run forward (a batched matmul against
a plain one) and change continuous actions in their last bits, so the forward stays one call per member per
step; the simulator step, the per-step loop and the policy-independent inert check are shared.
Tasks without a numpy simulator (MuJoCo, Box2D: one Gymnasium env per row, stepped in worker processes) are not
merged: each member runs its own rollout.
"""

from __future__ import annotations

import copy
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pandas as pd

from rlflat.errors import RlflatError
from rlflat.evaluate import api
from rlflat.evaluate import rollout as single
from rlflat.evaluate.actions import ActionSelector, Layout
from rlflat.policy import FunctionalPolicy, check_spaces
from rlflat.population.rendezvous import Rendezvous, Request, intercepted, run_members
from rlflat.tasks import TaskSpec

__all__ = ["evaluate_runs", "population_rollout"]


def population_rollout(
    policies: Sequence[FunctionalPolicy],
    task: TaskSpec,
    settings: Sequence[Mapping[str, float]],
    action_noise: np.ndarray,
    obs_noise: np.ndarray,
    episodes: int,
    *,
    seed: int = 0,
    deterministic: bool = True,
    rng_seed: int = 0,
    backend: str = "auto",
    workers: int | None = None,
) -> np.ndarray:
    """Returns (K, settings, episodes) of K policies, each block equal bit for bit to its single-run rollout.

    The single-run rollout is :func:`rlflat.evaluate.rollout._rollout` with ``params=None``; the arguments are
    its own. Needs a batched numpy simulator for ``task`` (see the module docstring).
    """
    if not policies:
        raise ValueError("no policies")
    if single._gym_rows(task, backend):
        raise ValueError(f"{task.id}: no batched simulator; evaluate each run alone")
    if isinstance(episodes, bool) or not isinstance(episodes, int | np.integer) or episodes < 1:
        return single._rollout(policies[0], task, settings, action_noise, obs_noise, episodes)  # raises its error
    settings = [single.check_setting(task, s) for s in settings]
    observation_space, action_space = single.task_spaces(task)
    for policy in policies:
        check_spaces(policy, observation_space, action_space)
    single._check_noise_levels(action_noise, obs_noise, isinstance(action_space, gym.spaces.Discrete))
    layout = Layout(k=1, s=len(settings), e=int(episodes))
    k = len(policies)
    sim, _ = single._make_simulator(task, settings, np.tile(layout.row_setting(), k), backend, workers)
    selectors = [
        ActionSelector(p, None, layout, action_space, action_noise, obs_noise, deterministic, rng_seed, task.protocol)
        for p in policies
    ]
    registered = gym.spec(task.id).max_episode_steps
    max_steps = registered if registered is not None else single._MAX_STEPS_WITHOUT_LIMIT
    try:
        returns = _run_blocks(sim, selectors, np.tile(layout.seeds(seed), k), layout.n, max_steps)
    except single._StillRunning:
        raise RlflatError(f"{task.id}: episodes still running after {max_steps} steps") from None
    finally:
        close = getattr(sim, "close", None)
        if callable(close):
            close()
    return returns.reshape(k, layout.s, layout.e)


def _run_blocks(
    sim: single.Simulator, selectors: Sequence[ActionSelector], seeds: np.ndarray, m: int, max_steps: int
) -> np.ndarray:
    """:func:`rlflat.evaluate.rollout._run_episodes` with K blocks of ``m`` rows, each acting on its own.

    A block whose episodes are all over is no longer asked for actions (alone, its loop would have ended); its
    rows keep their last actions, which the row-wise simulator applies to finished rows only.
    """
    import torch

    k = len(selectors)
    returns = np.zeros(len(seeds))
    alive = np.ones(len(seeds), dtype=bool)
    obs = sim.reset(seeds)
    actions: list[np.ndarray | None] = [None] * k
    with torch.inference_mode(), np.errstate(over="ignore", invalid="ignore"):
        for step in range(max_steps + 1):
            if not alive.any():
                break
            if step == max_steps:
                raise single._StillRunning
            for b, select in enumerate(selectors):
                block = slice(b * m, (b + 1) * m)
                if alive[block].any() or actions[b] is None:
                    actions[b] = select(obs[block], alive[block])
            obs, reward, terminated, truncated = sim.step(np.concatenate(actions))  # type: ignore[arg-type]
            returns += np.where(alive, reward, 0.0)
            alive &= ~(np.asarray(terminated) | np.asarray(truncated))
    return returns


# -- the single-run evaluator, K at a time ---------------------------------------------------------------------


def _frozen(value: Any) -> Hashable:
    """A hashable, exact form of a call argument (dicts, lists and arrays of numbers)."""
    if isinstance(value, np.ndarray):
        return (value.dtype.str, value.shape, value.tobytes())
    if isinstance(value, Mapping):
        return tuple(sorted((str(k), _frozen(v)) for k, v in value.items()))
    if isinstance(value, list | tuple):
        return tuple(_frozen(v) for v in value)
    return value if isinstance(value, Hashable) else repr(value)


def _task_key(task: TaskSpec) -> Hashable:
    return (task.id, task.alias, task.protocol, _frozen({name: p.nominal for name, p in task.parameters.items()}))


def _rollout_key(
    policy: FunctionalPolicy,
    task: TaskSpec,
    settings: Sequence[Mapping[str, float]],
    action_noise: np.ndarray,
    obs_noise: np.ndarray,
    episodes: int,
    **options: Any,
) -> Hashable | None:
    """Calls that may share one simulator: equal everything but the policy; own parameters only; numpy sims."""
    if options.get("params") is not None or options.get("stats") is not None:
        return None
    backend = options.get("backend", "auto")
    if backend not in single.BACKENDS or single._gym_rows(task, backend):
        return None
    fixed = {key: options.get(key, default) for key, default in _ROLLOUT_DEFAULTS.items()}
    return (_task_key(task), _frozen(list(settings)), _frozen(action_noise), _frozen(obs_noise), episodes,
            _frozen(fixed))  # fmt: skip


_ROLLOUT_DEFAULTS: dict[str, Any] = {
    "seed": 0,
    "deterministic": True,
    "rng_seed": 0,
    "backend": "auto",
    "workers": None,
}


def _batched_rollouts(requests: Sequence[Request]) -> list[np.ndarray]:
    first = requests[0]
    _, task, settings, action_noise, obs_noise, episodes = first.args
    options = {key: first.kwargs.get(key, default) for key, default in _ROLLOUT_DEFAULTS.items()}
    policies = [r.args[0] for r in requests]
    out = population_rollout(policies, task, settings, action_noise, obs_noise, episodes, **options)
    return [out[i : i + 1] for i in range(len(requests))]  # each as its own (1, S, E) call returns


def _fingerprint_key(task: TaskSpec, settings: Sequence[Mapping[str, float]], **options: Any) -> Hashable:
    return (_task_key(task), _frozen(list(settings)), _frozen(options))


def _shared_fingerprints(requests: Sequence[Request]) -> list[Any]:
    """The inert check does not depend on the policy: identical calls are computed once."""
    from rlflat.evaluate.inert import dynamics_fingerprints

    result = dynamics_fingerprints(*requests[0].args, **requests[0].kwargs)
    return [copy.deepcopy(result) for _ in requests]


def evaluate_runs(
    paths: Sequence[str | Path], **options: Any
) -> list[tuple[pd.DataFrame, dict[str, Any]] | BaseException]:
    """:func:`rlflat.evaluate.evaluate_run` for every path (same ``options``), their rollouts batched.

    Returns per path what ``evaluate_run`` returns, or the exception it raised (one failing run does not stop
    the others). Files are written per run exactly as ``evaluate_run`` writes them.
    """
    options.setdefault("progress", False)
    rendezvous = Rendezvous(len(paths))
    work = [lambda p=path: api.evaluate_run(p, **options) for path in paths]
    with (
        intercepted(rendezvous, api, "_rollout", _rollout_key, _batched_rollouts),
        intercepted(rendezvous, api, "dynamics_fingerprints", _fingerprint_key, _shared_fingerprints),
    ):
        return run_members(rendezvous, work)
