"""MountainCar-v0 and MountainCarContinuous-v0, batched numpy ports with per-row dynamics.

The continuous env mixes precisions: its state is stored as float32 after the first step, and under NumPy 2
promotion a float32 operand combined with a Python float stays float32 (the float is rounded first), while
float32 with a NumPy float64 becomes float64. Clipped actions and speed/position limits are Python floats, so
whether a value is float32, float64 or a "weak" Python float changes per row and per step. We track that
kind per row to reproduce Gymnasium's numbers exactly.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import numpy.typing as npt
from gymnasium import spaces

from rlflat.tasks.sims.base import (
    EpisodeRows,
    FloatArray,
    StepResult,
    continuous_actions,
    discrete_actions,
    pow2,
    resolve_params,
    seeded_generators,
    to_f32,
)

MIN_POSITION = -1.2
MAX_POSITION = 0.6
CAR_DEFAULTS: dict[str, float] = {"force": 0.001, "gravity": 0.0025, "max_speed": 0.07}
CONTINUOUS_DEFAULTS: dict[str, float] = {"power": 0.0015, "max_speed": 0.07}


def _start_positions(seeds: npt.ArrayLike, num_rows: int) -> FloatArray:
    """``np_random(seed).uniform(low=-0.6, high=-0.4)`` per row, as both envs' ``reset``."""
    return np.array([g.uniform(low=-0.6, high=-0.4) for g in seeded_generators(seeds, num_rows)])


def _observation_space(speed: float) -> spaces.Box:
    """(position, velocity) bounds as both envs declare them: the nominal ``max_speed``, not a row's."""
    return spaces.Box(
        np.array([MIN_POSITION, -speed], dtype=np.float32),
        np.array([MAX_POSITION, speed], dtype=np.float32),
        dtype=np.float32,
    )


class MountainCarSim(EpisodeRows):
    """Batched MountainCar-v0 with per-row ``force, gravity, max_speed``; reward -1 per step."""

    env_id = "MountainCar-v0"
    max_episode_steps = 200
    goal_position = 0.5

    def __init__(self, num_rows: int, params: Mapping[str, npt.ArrayLike]) -> None:
        super().__init__(num_rows)
        self.params: dict[str, FloatArray] = resolve_params(self.env_id, CAR_DEFAULTS, params, self.num_rows)
        self.observation_space = _observation_space(CAR_DEFAULTS["max_speed"])
        self.action_space = spaces.Discrete(3)
        self._state = np.zeros((self.num_rows, 2), dtype=np.float64)

    def reset(self, seeds: npt.ArrayLike) -> npt.NDArray[np.float32]:
        """Position uniform in [-0.6, -0.4) from each row's seed, velocity 0."""
        self._state = np.stack([_start_positions(seeds, self.num_rows), np.zeros(self.num_rows)], axis=1)
        return self._begin_episodes(self._state.astype(np.float32))

    def step(self, actions: npt.ArrayLike) -> StepResult:
        """Gymnasium's update: clip speed, clip position, stop at the left wall, terminate at the goal."""
        self._require_reset()
        action = discrete_actions(actions, self.num_rows, 3)
        p = self.params
        position, velocity = self._state[:, 0], self._state[:, 1]
        velocity = velocity + ((action - 1) * p["force"] + np.cos(3 * position) * -p["gravity"])
        velocity = np.clip(velocity, -p["max_speed"], p["max_speed"])
        position = np.clip(position + velocity, MIN_POSITION, MAX_POSITION)
        velocity = np.where((position == MIN_POSITION) & (velocity < 0), 0.0, velocity)
        terminated = (position >= self.goal_position) & (velocity >= 0)
        new_state = np.stack([position, velocity], axis=1)
        self._state = np.where(self._done[:, None], self._state, new_state)
        return self._finish_step(new_state.astype(np.float32), np.full(self.num_rows, -1.0), terminated)


class MountainCarContinuousSim(EpisodeRows):
    """Batched MountainCarContinuous-v0 with per-row ``power, max_speed``; +100 at the goal, -0.1 a^2 per step."""

    env_id = "MountainCarContinuous-v0"
    max_episode_steps = 999
    goal_position = 0.45

    def __init__(self, num_rows: int, params: Mapping[str, npt.ArrayLike]) -> None:
        super().__init__(num_rows)
        self.params: dict[str, FloatArray] = resolve_params(self.env_id, CONTINUOUS_DEFAULTS, params, self.num_rows)
        self.observation_space = _observation_space(CONTINUOUS_DEFAULTS["max_speed"])
        self.action_space = spaces.Box(low=-1.0, high=1.0, shape=(1,), dtype=np.float32)
        self._state = np.zeros((self.num_rows, 2), dtype=np.float64)
        # Gymnasium's state is float64 right after reset and float32 once stepped.
        self._state_is_f32 = False

    def reset(self, seeds: npt.ArrayLike) -> npt.NDArray[np.float32]:
        """Position uniform in [-0.6, -0.4) from each row's seed, velocity 0 (held as float64, as the env)."""
        self._state = np.stack([_start_positions(seeds, self.num_rows), np.zeros(self.num_rows)], axis=1)
        self._state_is_f32 = False
        return self._begin_episodes(self._state.astype(np.float32))

    def step(self, actions: npt.ArrayLike) -> StepResult:
        """Gymnasium's update with its exact mixed float32/float64/Python-float arithmetic, row by row kind."""
        self._require_reset()
        a = continuous_actions(actions, self.num_rows)
        a64 = a.astype(np.float64)
        p = self.params
        s32 = self._state_is_f32
        position, velocity = self._state[:, 0], self._state[:, 1]

        # force = min(max(a, -1.0), 1.0): a clipped force is a Python float, otherwise a NumPy scalar.
        clipped = (a64 < -1.0) | (a64 > 1.0)
        force = np.clip(a64, -1.0, 1.0)
        three_p = to_f32(3 * position) if s32 else 3 * position
        slope = 0.0025 * np.cos(three_p)
        inc = force * p["power"] - slope
        inc_f32 = ~clipped if a.dtype == np.float32 else np.zeros(self.num_rows, dtype=np.bool_)
        inc_f64 = ~clipped & ~inc_f32
        if inc_f32.any():
            a32 = a.astype(np.float32)
            exact32 = a32 * p["power"].astype(np.float32) - slope.astype(np.float32)
            inc = np.where(inc_f32, exact32.astype(np.float64), inc)

        # velocity += inc
        if s32:
            v_f64 = inc_f64
            velocity = np.where(v_f64, velocity + inc, _f32_add(velocity, inc))
        else:
            v_f64 = np.ones(self.num_rows, dtype=np.bool_)
            velocity = velocity + inc
        # Speed/position limits: a float32 value equal to float32(limit) compares differently in float32 than
        # exactly, but either way ends up as float32(limit), so exact comparisons give the same numbers. A
        # clipped value is a Python float, though, which turns a later float32 + float64 sum into float32.
        speed = p["max_speed"]
        over_speed = (velocity > speed) | (velocity < -speed)
        velocity = np.clip(velocity, -speed, speed)
        v_f64 = v_f64 & ~over_speed

        # position += velocity
        if s32:
            p_f32 = ~v_f64
            position = np.where(p_f32, _f32_add(position, velocity), position + velocity)
        else:
            p_f32 = np.zeros(self.num_rows, dtype=np.bool_)
            position = position + velocity
        out = (position > MAX_POSITION) | (position < MIN_POSITION)
        position = np.clip(position, MIN_POSITION, MAX_POSITION)
        p_f32 = p_f32 & ~out

        # The goal test does differ: float32(0.45) >= 0.45 holds in float32 only.
        at_wall = position == MIN_POSITION
        velocity = np.where(at_wall & (velocity < 0), 0.0, velocity)
        goal = np.where(p_f32, position >= np.float32(self.goal_position), position >= self.goal_position)
        terminated = goal & (velocity >= 0)
        reward = np.where(terminated, 100.0, 0.0) - pow2(a64) * 0.1

        new_state = to_f32(np.stack([position, velocity], axis=1))
        self._state = np.where(self._done[:, None], self._state, new_state)
        self._state_is_f32 = True
        return self._finish_step(new_state.astype(np.float32), reward, terminated)


def _f32_add(x: FloatArray, y: FloatArray) -> FloatArray:
    """``np.float32 + y`` where ``y`` is float32 or a Python float (rounded to float32 first, NumPy 2 rules)."""
    return (x.astype(np.float32) + y.astype(np.float32)).astype(np.float64)
