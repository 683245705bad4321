"""Pendulum-v1, batched numpy port with per-row ``g, m, l, dt, max_speed, max_torque``.

Precision follows ``PendulumEnv.step`` exactly: with float32 actions (what its Box space samples) the torque
terms are float32 arithmetic under NumPy 2 promotion (``3.0 / (m * l**2) * u`` and ``0.001 * u**2``); with
float64 actions everything is float64.
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
    pow2,
    powf2,
    resolve_params,
    seeded_generators,
)

DEFAULTS: dict[str, float] = {"g": 10.0, "m": 1.0, "l": 1.0, "dt": 0.05, "max_speed": 8.0, "max_torque": 2.0}


def angle_normalize(x: FloatArray) -> FloatArray:
    """Wrap to [-pi, pi) with Gymnasium's formula (same float ops, so the cost matches to the bit)."""
    return ((x + np.pi) % (2 * np.pi)) - np.pi


class PendulumSim(EpisodeRows):
    """Batched Pendulum-v1; never terminates, truncated at 200 steps."""

    env_id = "Pendulum-v1"
    max_episode_steps = 200

    def __init__(self, num_rows: int, params: Mapping[str, npt.ArrayLike]) -> None:
        super().__init__(num_rows)
        self.params: dict[str, FloatArray] = resolve_params(self.env_id, DEFAULTS, params, self.num_rows)
        p = self.params
        self._gravity_coef = 3 * p["g"] / (2 * p["l"])
        self._torque_coef = 3.0 / (p["m"] * pow2(p["l"]))
        high = np.array([1.0, 1.0, DEFAULTS["max_speed"]], dtype=np.float32)
        self.observation_space = spaces.Box(low=-high, high=high, dtype=np.float32)
        torque = DEFAULTS["max_torque"]
        self.action_space = spaces.Box(low=-torque, high=torque, shape=(1,), dtype=np.float32)
        self._state = np.zeros((self.num_rows, 2), dtype=np.float64)

    def _obs(self) -> npt.NDArray[np.float32]:
        theta, thetadot = self._state[:, 0], self._state[:, 1]
        return np.stack([np.cos(theta), np.sin(theta), thetadot], axis=1).astype(np.float32)

    def reset(self, seeds: npt.ArrayLike) -> npt.NDArray[np.float32]:
        """Row ``i``: ``np_random(seed).uniform(low=-[pi, 1], high=[pi, 1])`` as ``PendulumEnv.reset``."""
        high = np.array([np.pi, 1.0])
        generators = seeded_generators(seeds, self.num_rows)
        self._state = np.stack([g.uniform(low=-high, high=high) for g in generators])
        return self._begin_episodes(self._obs())

    def step(self, actions: npt.ArrayLike) -> StepResult:
        """Torque clipped per row to ``max_torque``, speed clipped to ``max_speed``; reward is minus the cost."""
        self._require_reset()
        u = continuous_actions(actions, self.num_rows)
        p = self.params
        th, thdot = self._state[:, 0], self._state[:, 1]
        if u.dtype == np.float32:
            limit = p["max_torque"].astype(np.float32)
            u32 = np.clip(np.asarray(u, dtype=np.float32), -limit, limit)
            effort: FloatArray = (np.float32(0.001) * powf2(u32)).astype(np.float64)
            push: FloatArray = (self._torque_coef.astype(np.float32) * u32).astype(np.float64)
        else:
            u64 = np.clip(np.asarray(u, dtype=np.float64), -p["max_torque"], p["max_torque"])
            effort = 0.001 * pow2(u64)
            push = self._torque_coef * u64
        costs = pow2(angle_normalize(th)) + 0.1 * pow2(thdot) + effort
        newthdot = thdot + (self._gravity_coef * np.sin(th) + push) * p["dt"]
        newthdot = np.clip(newthdot, -p["max_speed"], p["max_speed"])
        newth = th + newthdot * p["dt"]
        self._state = np.where(self._done[:, None], self._state, np.stack([newth, newthdot], axis=1))
        return self._finish_step(self._obs(), -costs, np.zeros(self.num_rows, dtype=np.bool_))
