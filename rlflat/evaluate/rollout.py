"""Episode returns of a policy under many dynamics settings at once, one array row per episode.

Every (parameter set k, setting s, episode e) is one row of a batched simulator carrying its own physical
parameters; each step is one policy forward for all rows (``policy.stacked_mode``, a vmap over the K parameter
sets) and finished rows are masked out. Episode ``e`` of every setting starts from ``seed + e``, and every random
draw (observation noise, action noise, stochastic sampling) is shared by all rows with the same episode index
(common random numbers), so settings, policies and perturbed parameter sets are compared on identical
initial states and noise, and the result does not depend on which other settings are in the batch (up to the
float rounding of a batched forward, ~1e-10 relative, which varies with the number of rows).

Classic-control tasks use the numpy simulators of :mod:`rlflat.tasks.sims`; any other task (LunarLander, ...)
goes through :class:`GymRows`, one ``make_env`` env per row, which is slow but exact; being whole envs, those rows
are stepped in passes of whole settings (at most ``budget.GYM_PASS_ROWS`` rows at once). Action selection
(noise, mode or sample) lives in :mod:`rlflat.evaluate.actions`.
"""

from __future__ import annotations

import functools
import importlib.util
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, Protocol

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces
from torch import Tensor
from tqdm.auto import tqdm

from rlflat.errors import RlflatError, bad_choice
from rlflat.evaluate import budget
from rlflat.evaluate.actions import ActionSelector, Layout
from rlflat.policy import FunctionalPolicy, check_spaces
from rlflat.tasks import TaskSpec, dynamics_values, make_env

Backend = Literal["auto", "batched", "gym"]
BACKENDS: tuple[str, ...] = ("auto", "batched", "gym")

__all__ = ["BACKENDS", "GymRows", "Simulator", "check_setting", "rollout_returns", "task_spaces"]

_MAX_STEPS_WITHOUT_LIMIT = 100_000
"""Safety cap for tasks registered without a TimeLimit (none of the shipped ones)."""


class Simulator(Protocol):
    """What the rollout needs from a batched simulator (the interface of :mod:`rlflat.tasks.sims`)."""

    def reset(self, seeds: np.ndarray) -> np.ndarray: ...

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]: ...


class GymRows:
    """The batched-simulator interface over one Gymnasium env per row: the fallback for non-numpy tasks.

    Unlike ``SyncVectorEnv`` it never steps an env whose episode is over (gymnasium 1.x vector envs would
    autoreset it or, with autoreset disabled, step it past termination with a warning); a finished row keeps
    returning its last observation with zero reward.
    """

    def __init__(self, task: TaskSpec, dynamics: Sequence[Mapping[str, float]]) -> None:
        self.envs = [make_env(task, d) for d in dynamics]
        self.discrete = isinstance(self.envs[0].action_space, spaces.Discrete)
        self._done = np.zeros(len(self.envs), dtype=bool)
        self._obs: np.ndarray | None = None

    def reset(self, seeds: np.ndarray) -> np.ndarray:
        self._obs = np.stack([env.reset(seed=int(s))[0] for env, s in zip(self.envs, seeds, strict=True)])
        self._done[:] = False
        return self._obs.copy()

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        assert self._obs is not None, "reset() first"
        n = len(self.envs)
        reward = np.zeros(n)
        terminated = self._done.copy()
        truncated = np.zeros(n, dtype=bool)
        for i in np.flatnonzero(~self._done):
            action = int(actions[i]) if self.discrete else actions[i]
            obs, r, term, trunc, _ = self.envs[i].step(action)
            self._obs[i], reward[i], terminated[i], truncated[i] = obs, r, term, trunc
        self._done |= terminated | truncated
        return self._obs.copy(), reward, terminated, truncated

    def close(self) -> None:
        for env in self.envs:
            env.close()


def task_spaces(task: TaskSpec) -> tuple[spaces.Space, spaces.Space]:
    """Observation and action space of the task at nominal dynamics (one throwaway env)."""
    env = make_env(task)
    try:
        return env.observation_space, env.action_space
    finally:
        env.close()


def check_setting(task: TaskSpec, setting: Mapping[str, float]) -> dict[str, float]:
    """Absolute values of every parameter for ``setting``; each given one must lie within the spec's range."""
    checked = {name: task.check_value(name, value) for name, value in setting.items()}
    return dynamics_values(task, checked)


def _simulator_module() -> Any | None:
    if importlib.util.find_spec("rlflat.tasks.sims") is None:
        return None
    import rlflat.tasks.sims as sims  # type: ignore[import-not-found,unused-ignore]

    return sims


def _gym_rows(task: TaskSpec, backend: str) -> bool:
    """Whether rows step as Gymnasium envs (:class:`GymRows`): asked for, or no numpy simulator for the task."""
    return backend == "gym" or not has_batched_simulator(task)


def has_batched_simulator(task: TaskSpec) -> bool:
    """Whether :mod:`rlflat.tasks.sims` has a numpy simulator for this task's Gymnasium id."""
    sims = _simulator_module()
    return sims is not None and task.id in sims.SIMULATORS


def _make_simulator(
    task: TaskSpec,
    settings: Sequence[Mapping[str, float]],
    row_setting: np.ndarray,
    backend: str,
    workers: int | None = None,
) -> tuple[Simulator, bool]:
    """The simulator for ``row_setting`` (setting index per row); returns it and whether it is batched.

    Gymnasium rows step in ``workers`` processes (None: :func:`default_workers`; 1: in this process).
    """
    if backend not in BACKENDS:
        raise bad_choice("backend", backend, BACKENDS)
    batched = not _gym_rows(task, backend)
    if backend == "batched" and not batched:
        raise RlflatError(f"no batched simulator for {task.id}; use backend 'gym' or 'auto'")
    if not batched:
        from rlflat.evaluate.workers import ProcessRows, default_workers

        dynamics = [settings[i] for i in row_setting]
        count = default_workers(len(dynamics)) if workers is None else workers
        if count > 1:
            return ProcessRows(task, dynamics, count), False
        return GymRows(task, dynamics), False
    # the simulators take parameters by Gymnasium name and recompute derived quantities themselves
    per_setting = [dynamics_values(task, s) for s in settings]
    params = {
        task.attribute(name): np.array([p[name] for p in per_setting], dtype=np.float64)[row_setting]
        for name in task.parameters
    }
    sims = _simulator_module()
    assert sims is not None
    return sims.make_simulator(task.id, params, len(row_setting)), True


def _check_stacked(policy: FunctionalPolicy, params: Mapping[str, Tensor]) -> int:
    """Validate stacked parameter sets (leading K axis, trailing shapes as the policy's); return K."""
    if not params:
        raise RlflatError("params is empty; pass None to evaluate the policy's own parameters")
    sizes = set()
    for name, value in params.items():
        if name not in policy.params:
            raise bad_choice("policy parameter", name, policy.params)
        expected = tuple(policy.params[name].shape)
        if not isinstance(value, Tensor):
            raise RlflatError(f"params[{name!r}] must be a torch.Tensor, got {type(value).__name__}")
        if value.ndim != len(expected) + 1 or tuple(value.shape[1:]) != expected:
            raise RlflatError(
                f"params[{name!r}] has shape {tuple(value.shape)}; expected (K, {', '.join(map(str, expected))})"
            )
        sizes.add(int(value.shape[0]))
    if len(sizes) != 1 or 0 in sizes:
        raise RlflatError(f"params disagree on or lack the leading K axis: sizes {sorted(sizes)}")
    return sizes.pop()


def rollout_returns(
    policy: FunctionalPolicy,
    task: TaskSpec,
    settings: Sequence[Mapping[str, float]],
    episodes: int,
    seed: int = 0,
    params: dict[str, Tensor] | None = None,
    deterministic: bool = True,
    action_noise: float = 0.0,
    obs_noise: float = 0.0,
    rng_seed: int = 0,
    *,
    backend: Backend = "auto",
    progress: bool | None = False,
    stats: dict[str, int] | None = None,
    workers: int | None = None,
) -> np.ndarray:
    """Episode returns, shaped (K, len(settings), episodes), of K parameter sets under each dynamics setting.

    ``settings`` are absolute parameter values by name (missing names stay nominal). ``params`` stacks K
    parameter sets (every value has a leading K axis; keys missing fall back to the trained values); ``None``
    means K=1 with the policy's own parameters. ``action_noise`` is a Gaussian sigma added to continuous
    actions before clipping, or the probability of a uniformly random action for discrete ones;
    ``obs_noise`` is a Gaussian sigma on the raw observation. ``deterministic=False`` samples each step from
    the policy's action distribution with fresh noise (for gSDE policies that is independent per-step noise,
    not SB3's exploration matrix; see :mod:`rlflat.evaluate.actions`). ``progress=None`` shows a bar on a tty only.
    ``stats``, if given, receives ``rows``, ``steps`` (batched steps) and ``env_steps`` (live row-steps).
    ``workers``: processes stepping Gymnasium rows (tasks without a numpy simulator); None uses every usable
    core, 1 steps them here; returns do not depend on it (:mod:`rlflat.evaluate.workers`).
    """
    settings = list(settings)
    if not settings:
        raise RlflatError("settings is empty; pass at least one (e.g. [{}] for nominal dynamics)")
    return _rollout(
        policy,
        task,
        settings,
        np.full(len(settings), float(action_noise)),
        np.full(len(settings), float(obs_noise)),
        episodes,
        seed=seed,
        params=params,
        deterministic=deterministic,
        rng_seed=rng_seed,
        backend=backend,
        progress=progress,
        stats=stats,
        workers=workers,
    )


def _rollout(
    policy: FunctionalPolicy,
    task: TaskSpec,
    settings: Sequence[Mapping[str, float]],
    action_noise: np.ndarray,
    obs_noise: np.ndarray,
    episodes: int,
    *,
    seed: int = 0,
    params: Mapping[str, Tensor] | None = None,
    deterministic: bool = True,
    rng_seed: int = 0,
    backend: str = "auto",
    progress: bool | None = False,
    stats: dict[str, int] | None = None,
    workers: int | None = None,
) -> np.ndarray:
    """:func:`rollout_returns` with a noise level per setting (so noise sweeps batch with dynamics sweeps)."""
    if isinstance(episodes, bool) or not isinstance(episodes, int | np.integer) or episodes < 1:
        raise RlflatError(f"episodes must be a positive integer, got {episodes!r}")
    settings = [check_setting(task, s) for s in settings]
    observation_space, action_space = task_spaces(task)
    check_spaces(policy, observation_space, action_space)
    _check_noise_levels(action_noise, obs_noise, isinstance(action_space, spaces.Discrete))
    layout = Layout(k=1 if params is None else _check_stacked(policy, params), s=len(settings), e=int(episodes))
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise RlflatError(f"workers must be a positive integer, got {workers!r}")
    per_pass = int(budget.gym_pass_rows(layout.k * layout.e)) // (layout.k * layout.e)
    if _gym_rows(task, backend) and layout.s > per_pass:
        # one env object per row: whole settings in passes (common random numbers: the split changes nothing)
        parts, totals = [], dict.fromkeys(("rows", "steps", "env_steps"), 0)
        one_pass = functools.partial(
            _rollout, policy, task, seed=seed, params=params, deterministic=deterministic, rng_seed=rng_seed,
            backend=backend, progress=progress, workers=workers,
        )  # fmt: skip
        for start in range(0, layout.s, per_pass):
            part: dict[str, int] = {}
            chunk = slice(start, start + per_pass)
            parts.append(one_pass(settings[chunk], action_noise[chunk], obs_noise[chunk], episodes, stats=part))
            totals = {key: totals[key] + part[key] for key in totals}
        if stats is not None:
            stats.update(totals)
        return np.concatenate(parts, axis=1)
    sim, _ = _make_simulator(task, settings, layout.row_setting(), backend, workers)
    select = ActionSelector(
        policy, params, layout, action_space, action_noise, obs_noise, deterministic, rng_seed, task.protocol
    )
    registered = gym.spec(task.id).max_episode_steps
    max_steps = registered if registered is not None else _MAX_STEPS_WITHOUT_LIMIT
    bar = tqdm(total=max_steps, desc=f"{task.alias} {layout.n} rows", unit="step", disable=_disabled(progress))
    try:
        returns, steps, env_steps = _run_episodes(sim, select, layout.seeds(seed), max_steps, bar.update)
    except _StillRunning:
        raise RlflatError(f"{task.id}: episodes still running after {max_steps} steps") from None
    finally:
        bar.close()
        close = getattr(sim, "close", None)
        if callable(close):
            close()
    if stats is not None:
        stats.update(rows=layout.n, steps=steps, env_steps=env_steps)
    return returns.reshape(layout.k, layout.s, layout.e)


def _check_noise_levels(action_noise: np.ndarray, obs_noise: np.ndarray, discrete: bool) -> None:
    for label, levels in (("action_noise", action_noise), ("obs_noise", obs_noise)):
        if not np.all(np.isfinite(levels)) or np.any(levels < 0):
            raise RlflatError(f"{label} must be finite and >= 0, got {sorted(set(levels.tolist()))}")
    if discrete and np.any(action_noise > 1):
        raise RlflatError(f"discrete action_noise is a probability in [0, 1], got {action_noise.max()}")


class _StillRunning(Exception):
    """Episodes outlived the step cap (only for tasks registered without a time limit)."""


def _run_episodes(
    sim: Simulator,
    select: Callable[[np.ndarray, np.ndarray], np.ndarray],
    seeds: np.ndarray,
    max_steps: int,
    on_step: Callable[[int], object],
) -> tuple[np.ndarray, int, int]:
    """Step every row until all finished; returns per-row returns, batched steps and live row-steps."""
    returns = np.zeros(len(seeds))
    alive = np.ones(len(seeds), dtype=bool)
    step = env_steps = 0
    obs = sim.reset(seeds)
    with torch.inference_mode(), np.errstate(over="ignore", invalid="ignore"):
        for step in range(max_steps + 1):
            if not alive.any():
                break
            if step == max_steps:
                raise _StillRunning
            live = int(alive.sum())
            obs, reward, terminated, truncated = sim.step(select(obs, alive))
            returns += np.where(alive, reward, 0.0)
            env_steps += live
            alive &= ~(np.asarray(terminated) | np.asarray(truncated))
            on_step(1)
    return returns, step, env_steps


def _disabled(progress: bool | None) -> bool | None:
    return None if progress is None else not progress


def episodes_ci(returns: np.ndarray, level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Student-t confidence interval of the mean over the last axis (NaN with a single episode)."""
    from scipy import stats

    n = returns.shape[-1]
    mean = returns.mean(-1)
    if n < 2:
        nan = np.full(mean.shape, math.nan)
        return nan, nan
    half = stats.t.ppf(0.5 + level / 2, n - 1) * returns.std(-1, ddof=1) / math.sqrt(n)
    return mean - half, mean + half
