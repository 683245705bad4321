"""Acrobot-v1, batched numpy port of ``AcrobotEnv`` (rk4 over one ``dt``, ``wrap``/``bound``, book or nips).

Every expression keeps Gymnasium's left-to-right operation order and its libm ``x**2`` so that rows match
the single env to the bit. Torque noise (``torque_noise_max > 0``) draws from each row's own seeded generator,
in the same order as the env's ``np_random``, pre-drawn in blocks so the step stays vectorised.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import numpy.typing as npt
from gymnasium import spaces

from rlflat.errors import RlflatError
from rlflat.tasks.sims.base import (
    EpisodeRows,
    FloatArray,
    StepResult,
    discrete_actions,
    pow2,
    resolve_params,
    seeded_generators,
)

DEFAULTS: dict[str, float] = {
    "LINK_LENGTH_1": 1.0,
    "LINK_LENGTH_2": 1.0,
    "LINK_MASS_1": 1.0,
    "LINK_MASS_2": 1.0,
    "LINK_COM_POS_1": 0.5,
    "LINK_COM_POS_2": 0.5,
    "LINK_MOI": 1.0,
    "MAX_VEL_1": 4 * np.pi,
    "MAX_VEL_2": 9 * np.pi,
    "torque_noise_max": 0.0,
    "dt": 0.2,
}
AVAIL_TORQUE = np.array([-1.0, 0.0, 1.0])
DYNAMICS = ("book", "nips")
GRAVITY = 9.8
_NOISE_BLOCK = 64


def wrap(x: FloatArray, low: float, high: float) -> FloatArray:
    """Gymnasium's ``wrap``: repeated +/- (high - low), not a modulo (the two round differently)."""
    diff = high - low
    x = x.copy()
    while True:
        above = (x > high) & np.isfinite(x)
        if not above.any():
            break
        x[above] = x[above] - diff
    while True:
        below = (x < low) & np.isfinite(x)
        if not below.any():
            break
        x[below] = x[below] + diff
    return x


class AcrobotSim(EpisodeRows):
    """Batched Acrobot-v1 with per-row link geometry, inertia, velocity limits, torque noise and ``dt``."""

    env_id = "Acrobot-v1"
    max_episode_steps = 500

    def __init__(self, num_rows: int, params: Mapping[str, npt.ArrayLike], *, book_or_nips: str = "book") -> None:
        super().__init__(num_rows)
        if book_or_nips not in DYNAMICS:
            raise RlflatError(f"unknown book_or_nips {book_or_nips!r}; valid choices: {', '.join(DYNAMICS)}")
        self.book_or_nips = book_or_nips
        self.params: dict[str, FloatArray] = resolve_params(self.env_id, DEFAULTS, params, self.num_rows)
        p = self.params
        m1, m2, l1 = p["LINK_MASS_1"], p["LINK_MASS_2"], p["LINK_LENGTH_1"]
        lc1, lc2, moi = p["LINK_COM_POS_1"], p["LINK_COM_POS_2"], p["LINK_MOI"]
        # Row constants of _dsdt, grouped exactly as Python evaluates its expressions left to right.
        self._d1_const = m1 * pow2(lc1)
        self._d1_inner = pow2(l1) + pow2(lc2)
        self._d1_cos = 2 * l1 * lc2
        self._lc2_sq = pow2(lc2)
        self._l1_lc2 = l1 * lc2
        self._phi2_coef = m2 * lc2 * GRAVITY
        self._phi1_a = -m2 * l1 * lc2
        self._phi1_b = 2 * m2 * l1 * lc2
        self._phi1_c = (m1 * lc1 + m2 * l1) * GRAVITY
        self._book_coef = m2 * l1 * lc2
        self._denom_const = m2 * self._lc2_sq + moi
        high = np.array([1.0, 1.0, 1.0, 1.0, DEFAULTS["MAX_VEL_1"], DEFAULTS["MAX_VEL_2"]], dtype=np.float32)
        self.observation_space = spaces.Box(low=-high, high=high, dtype=np.float32)
        self.action_space = spaces.Discrete(3)
        self._state = np.zeros((self.num_rows, 4), dtype=np.float64)
        self._noisy = np.flatnonzero(p["torque_noise_max"] > 0)
        self._generators: list[np.random.Generator] = []
        self._noise_buffer = np.zeros((self._noisy.size, 0))
        self._noise_cursor = 0

    def _dsdt(self, s: FloatArray, torque: FloatArray) -> FloatArray:
        """Derivatives of ``(theta1, theta2, dtheta1, dtheta2)``; columns of ``s``, one row per env."""
        m2, moi = self.params["LINK_MASS_2"], self.params["LINK_MOI"]
        theta1, theta2, dtheta1, dtheta2 = s[:, 0], s[:, 1], s[:, 2], s[:, 3]
        cos2, sin2 = np.cos(theta2), np.sin(theta2)
        d1 = self._d1_const + m2 * (self._d1_inner + self._d1_cos * cos2) + moi + moi
        d2 = m2 * (self._lc2_sq + self._l1_lc2 * cos2) + moi
        phi2 = self._phi2_coef * np.cos(theta1 + theta2 - np.pi / 2.0)
        phi1 = (
            self._phi1_a * pow2(dtheta2) * sin2
            - self._phi1_b * dtheta2 * dtheta1 * sin2
            + self._phi1_c * np.cos(theta1 - np.pi / 2)
            + phi2
        )
        denom = self._denom_const - pow2(d2) / d1
        if self.book_or_nips == "nips":
            ddtheta2 = (torque + d2 / d1 * phi1 - phi2) / denom
        else:
            ddtheta2 = (torque + d2 / d1 * phi1 - self._book_coef * pow2(dtheta1) * sin2 - phi2) / denom
        ddtheta1 = -(d2 * ddtheta2 + phi1) / d1
        return np.stack([dtheta1, dtheta2, ddtheta1, ddtheta2], axis=1)

    def _rk4(self, y0: FloatArray, torque: FloatArray) -> FloatArray:
        """One rk4 step over ``[0, dt]``, as Gymnasium's ``rk4`` (torque is the 5th, constant, state entry)."""
        dt = self.params["dt"][:, None]
        dt2 = dt / 2.0
        k1 = self._dsdt(y0, torque)
        k2 = self._dsdt(y0 + dt2 * k1, torque)
        k3 = self._dsdt(y0 + dt2 * k2, torque)
        k4 = self._dsdt(y0 + dt * k3, torque)
        result: FloatArray = y0 + dt / 6.0 * (k1 + 2 * k2 + 2 * k3 + k4)
        return result

    def _obs(self) -> npt.NDArray[np.float32]:
        s = self._state
        return np.stack(
            [np.cos(s[:, 0]), np.sin(s[:, 0]), np.cos(s[:, 1]), np.sin(s[:, 1]), s[:, 2], s[:, 3]], axis=1
        ).astype(np.float32)

    def reset(self, seeds: npt.ArrayLike) -> npt.NDArray[np.float32]:
        """Row ``i``: ``np_random(seed).uniform(-0.1, 0.1, size=4)`` cast to float32, as ``AcrobotEnv.reset``."""
        generators = seeded_generators(seeds, self.num_rows)
        state32 = np.stack([g.uniform(low=-0.1, high=0.1, size=(4,)).astype(np.float32) for g in generators])
        self._state = state32.astype(np.float64)
        self._generators = [generators[i] for i in self._noisy]
        self._noise_buffer = np.zeros((self._noisy.size, 0))
        self._noise_cursor = 0
        # The env builds its first observation from the float32 state, so cos/sin run in float32 here.
        obs = np.stack(
            [
                np.cos(state32[:, 0]),
                np.sin(state32[:, 0]),
                np.cos(state32[:, 1]),
                np.sin(state32[:, 1]),
                state32[:, 2],
                state32[:, 3],
            ],
            axis=1,
        ).astype(np.float32)
        return self._begin_episodes(obs)

    def _torque_noise(self) -> FloatArray:
        """This step's ``np_random.uniform(-t, t)`` for every noisy row (one draw per row per step)."""
        if self._noise_cursor >= self._noise_buffer.shape[1]:
            self._noise_buffer = np.stack([g.random(_NOISE_BLOCK) for g in self._generators])
            self._noise_cursor = 0
        unit = self._noise_buffer[:, self._noise_cursor]
        self._noise_cursor += 1
        t = self.params["torque_noise_max"][self._noisy]
        # numpy's uniform(low, high) is low + (high - low) * next_double
        noise: FloatArray = -t + (t - -t) * unit
        return noise

    def step(self, actions: npt.ArrayLike) -> StepResult:
        """rk4 over ``dt``; angles wrapped to [-pi, pi], velocities bounded; reward -1 until the tip is high."""
        self._require_reset()
        action = discrete_actions(actions, self.num_rows, 3)
        p = self.params
        torque = AVAIL_TORQUE[action]
        if self._noisy.size:
            torque[self._noisy] = torque[self._noisy] + self._torque_noise()
        ns = self._rk4(self._state, torque)
        ns[:, 0] = wrap(ns[:, 0], -np.pi, np.pi)
        ns[:, 1] = wrap(ns[:, 1], -np.pi, np.pi)
        ns[:, 2] = np.minimum(np.maximum(ns[:, 2], -p["MAX_VEL_1"]), p["MAX_VEL_1"])
        ns[:, 3] = np.minimum(np.maximum(ns[:, 3], -p["MAX_VEL_2"]), p["MAX_VEL_2"])
        self._state = np.where(self._done[:, None], self._state, ns)
        terminated = -np.cos(ns[:, 0]) - np.cos(ns[:, 1] + ns[:, 0]) > 1.0
        reward = np.where(terminated, 0.0, -1.0)
        return self._finish_step(self._obs(), reward, terminated)
