"""Shared plumbing of the batched simulators: the protocol, parameter/seed/action checks, episode bookkeeping.

Each row of a batched simulator is meant to be indistinguishable from ``gym.make(env_id)`` with the same
attributes (set as Python floats, as :func:`rlflat.tasks.set_dynamics` does) and ``reset(seed=...)``: same
observations bit for bit, same rewards and flags. That is why the numerics below copy Gymnasium's operation
order and precision rules (NumPy 2 scalar promotion, libm ``pow`` for ``x**2``) instead of simplifying them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt
from gymnasium import spaces
from gymnasium.utils import seeding

from rlflat.errors import RlflatError

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]
StepResult = tuple[npt.NDArray[np.float32], FloatArray, BoolArray, BoolArray]


@runtime_checkable
class BatchedSimulator(Protocol):
    """``num_rows`` independent episodes of one Gymnasium task, each with its own dynamics parameters."""

    @property
    def env_id(self) -> str:
        """Gymnasium id of the simulated task."""
        ...

    @property
    def num_rows(self) -> int:
        """Number of independent episodes stepped together."""
        ...

    @property
    def max_episode_steps(self) -> int:
        """TimeLimit of the registered env: rows are truncated after this many steps."""
        ...

    @property
    def observation_space(self) -> spaces.Space[Any]:
        """The single env's observation space."""
        ...

    @property
    def action_space(self) -> spaces.Space[Any]:
        """The single env's action space."""
        ...

    def __init__(self, num_rows: int, params: Mapping[str, npt.ArrayLike]) -> None: ...

    def reset(self, seeds: npt.ArrayLike) -> npt.NDArray[np.float32]:
        """Start every row as ``gym.make(env_id).reset(seed=seeds[i])`` would; return ``(num_rows, obs_dim)``."""
        ...

    def step(self, actions: npt.ArrayLike) -> StepResult:
        """Advance every row one step: ``(obs, reward, terminated, truncated)``; no autoreset.

        Rows already finished are frozen (last obs, reward 0, the flags they finished with). Continuous
        actions keep float32 arithmetic when given as float32, like the env; other dtypes act as float64.
        """
        ...


def pow2(x: FloatArray) -> FloatArray:
    """``x**2`` as Gymnasium's scalar code computes it (libm ``pow``, which is not always ``x*x`` to the bit)."""
    return np.float_power(x, 2.0)


def powf2(x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """``x**2`` of float32 scalars as NumPy's scalar power does (libm ``powf``); no vectorised equivalent exists."""
    return np.fromiter((v**2 for v in x), dtype=np.float32, count=x.size)


def to_f32(x: FloatArray) -> FloatArray:
    """Round to float32 and back: the value a float32 variable would hold."""
    return x.astype(np.float32).astype(np.float64)


def resolve_params(
    env_id: str, defaults: Mapping[str, float], params: Mapping[str, npt.ArrayLike], num_rows: int
) -> dict[str, FloatArray]:
    """Per-row float64 arrays for every parameter; missing ones take Gymnasium's default."""
    unknown = [name for name in params if name not in defaults]
    if unknown:
        raise RlflatError(f"unknown parameter {unknown[0]!r} for {env_id}; valid choices: {', '.join(defaults)}")
    resolved: dict[str, FloatArray] = {}
    for name, default in defaults.items():
        raw = params.get(name, default)
        try:
            value = np.asarray(raw, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise RlflatError(f"parameter {name!r} of {env_id} must be numeric, got {raw!r}") from exc
        if value.shape not in ((), (num_rows,)):
            raise RlflatError(
                f"parameter {name!r} of {env_id} has shape {value.shape}; expected a scalar or ({num_rows},)"
            )
        if not np.all(np.isfinite(value)):
            raise RlflatError(f"parameter {name!r} of {env_id} must be finite, got {raw!r}")
        resolved[name] = np.broadcast_to(value, (num_rows,)).copy()
    return resolved


def check_num_rows(num_rows: int) -> int:
    """Reject non-positive or non-integer row counts early, with the bad value."""
    if isinstance(num_rows, bool) or not isinstance(num_rows, int | np.integer) or num_rows < 1:
        raise RlflatError(f"num_rows must be a positive integer, got {num_rows!r}")
    return int(num_rows)


def seeded_generators(seeds: npt.ArrayLike, num_rows: int) -> list[np.random.Generator]:
    """One generator per row, exactly the one ``Env.reset(seed=s)`` creates (``gymnasium.utils.seeding``)."""
    array = np.asarray(seeds)
    if array.shape != (num_rows,) or array.dtype.kind not in "iu":
        raise RlflatError(
            f"seeds must be an integer array of shape ({num_rows},), got dtype {array.dtype} shape {array.shape}"
        )
    if np.any(array < 0):
        raise RlflatError(f"seeds must be non-negative, got {int(array.min())}")
    return [seeding.np_random(int(seed))[0] for seed in array]


def discrete_actions(actions: npt.ArrayLike, num_rows: int, n: int) -> npt.NDArray[np.int64]:
    """Validate a batch of ``Discrete(n)`` actions (integers in ``[0, n)``), as the env's assert would."""
    array = np.asarray(actions)
    if array.shape != (num_rows,) or array.dtype.kind not in "iu":
        raise RlflatError(
            f"actions must be integers of shape ({num_rows},), got dtype {array.dtype} shape {array.shape}"
        )
    bad = (array < 0) | (array >= n)
    if np.any(bad):
        raise RlflatError(f"invalid action {array[bad][0].item()!r}; valid choices: {', '.join(map(str, range(n)))}")
    return array.astype(np.int64)


def continuous_actions(actions: npt.ArrayLike, num_rows: int) -> npt.NDArray[np.float32] | FloatArray:
    """Flatten ``(num_rows,)`` or ``(num_rows, 1)`` actions, keeping float32 (Gymnasium's arithmetic depends on it)."""
    array = np.asarray(actions)
    if array.shape not in ((num_rows,), (num_rows, 1)) or array.dtype.kind not in "iuf":
        raise RlflatError(
            f"actions must be numbers of shape ({num_rows},) or ({num_rows}, 1), "
            f"got dtype {array.dtype} shape {array.shape}"
        )
    array = array.reshape(num_rows)
    if array.dtype == np.float32:
        return array.astype(np.float32, copy=True)
    return array.astype(np.float64)


class EpisodeRows:
    """Per-row episode bookkeeping: TimeLimit truncation and freezing rows that already finished.

    A finished row keeps its last observation, earns reward 0 and keeps reporting the flags it finished with,
    so stepping it is harmless (the evaluator masks it anyway) and never touches its state or RNG.
    """

    env_id: ClassVar[str]
    max_episode_steps: ClassVar[int]

    def __init__(self, num_rows: int) -> None:
        self.num_rows = check_num_rows(num_rows)
        self._elapsed = np.zeros(self.num_rows, dtype=np.int64)
        self._done = np.zeros(self.num_rows, dtype=np.bool_)
        self._last_obs: npt.NDArray[np.float32] | None = None
        self._last_terminated = np.zeros(self.num_rows, dtype=np.bool_)
        self._last_truncated = np.zeros(self.num_rows, dtype=np.bool_)

    def _begin_episodes(self, obs: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """Record a fresh reset; returns ``obs`` for chaining."""
        self._elapsed[:] = 0
        self._done[:] = False
        self._last_terminated[:] = False
        self._last_truncated[:] = False
        self._last_obs = obs.copy()
        return obs

    def _restart_rows(self, rows: BoolArray, obs: npt.NDArray[np.float32]) -> None:
        """Begin new episodes in ``rows`` (an autoreset, for training) whose first observations are ``obs``."""
        last_obs = self._require_reset()
        self._elapsed[rows] = 0
        self._done[rows] = False
        self._last_terminated[rows] = False
        self._last_truncated[rows] = False
        last_obs[rows] = obs

    def _require_reset(self) -> npt.NDArray[np.float32]:
        if self._last_obs is None:
            raise RlflatError(f"{self.env_id} simulator: call reset(seeds) before step(actions)")
        return self._last_obs

    @property
    def done(self) -> BoolArray:
        """Rows whose episode has terminated or been truncated (copy)."""
        return self._done.copy()

    def _finish_step(self, obs: npt.NDArray[np.float32], reward: FloatArray, terminated: BoolArray) -> StepResult:
        """Apply the time limit, freeze rows that were already done, and remember the outcome."""
        last_obs = self._require_reset()
        was_done = self._done
        self._elapsed += ~was_done
        truncated = self._elapsed >= self.max_episode_steps
        obs = np.where(was_done[:, None], last_obs, obs).astype(np.float32)
        reward = np.where(was_done, 0.0, reward)
        terminated = np.where(was_done, self._last_terminated, terminated)
        truncated = np.where(was_done, self._last_truncated, truncated)
        self._last_obs = obs
        self._last_terminated = terminated
        self._last_truncated = truncated
        self._done = was_done | terminated | truncated
        return obs.copy(), reward, terminated.copy(), truncated.copy()
