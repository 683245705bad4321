"""CartPole-v1, batched, on top of Gymnasium's own ``CartPoleVectorEnv`` (its physics, not a re-implementation).

The vector env broadcasts its physics attributes, so per-row arrays give per-row dynamics; the derived
``total_mass`` and ``polemass_length`` are recomputed here per row (Gymnasium only computes them in
``__init__``). Its next-step autoreset (Gymnasium 1.x) would redraw a finished row's state from the vector
env's own RNG and zero its reward; we clear ``prev_done`` before every step so that never happens, and restore
finished rows' state ourselves.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
from gymnasium import spaces
from gymnasium.envs.classic_control.cartpole import CartPoleVectorEnv

from rlflat.tasks.sims.base import (
    EpisodeRows,
    FloatArray,
    StepResult,
    discrete_actions,
    resolve_params,
    seeded_generators,
)

DEFAULTS: dict[str, float] = {
    "gravity": 9.8,
    "masscart": 1.0,
    "masspole": 0.1,
    "length": 0.5,
    "force_mag": 10.0,
    "tau": 0.02,
}


class CartPoleSim(EpisodeRows):
    """Batched CartPole-v1 with per-row ``gravity, masscart, masspole, length, force_mag, tau``."""

    env_id = "CartPole-v1"
    max_episode_steps = 500

    def __init__(self, num_rows: int, params: Mapping[str, npt.ArrayLike]) -> None:
        super().__init__(num_rows)
        self.params: dict[str, FloatArray] = resolve_params(self.env_id, DEFAULTS, params, self.num_rows)
        # Our own truncation lives in EpisodeRows; keep the vector env's limit out of reach.
        self._env = CartPoleVectorEnv(num_envs=self.num_rows, max_episode_steps=np.iinfo(np.int32).max)
        p = self.params
        env: Any = self._env
        for name, value in p.items():
            setattr(env, name, value)
        env.total_mass = p["masspole"] + p["masscart"]
        env.polemass_length = p["masspole"] * p["length"]
        self.observation_space: spaces.Box = self._env.single_observation_space  # type: ignore[assignment]
        self.action_space: spaces.Discrete = self._env.single_action_space  # type: ignore[assignment]

    def reset(self, seeds: npt.ArrayLike) -> npt.NDArray[np.float32]:
        """Each row draws its start state from ``seeding.np_random(seed)`` exactly as ``CartPoleEnv.reset``."""
        generators = seeded_generators(seeds, self.num_rows)
        state = np.stack([g.uniform(low=-0.05, high=0.05, size=(4,)) for g in generators], axis=1)
        env: Any = self._env
        env.reset(seed=0)  # initialises steps/prev_done; its own draw is overwritten below
        env.state = state
        return self._begin_episodes(state.T.astype(np.float32))

    def restart(
        self, rows: npt.NDArray[np.bool_], generators: Sequence[np.random.Generator]
    ) -> npt.NDArray[np.float32]:
        """Autoreset for training: ``rows`` start new episodes drawn from their own ``generators`` (one per row),
        as ``CartPoleEnv.reset()`` without a seed continues the env's generator. Returns their observations."""
        picked = np.flatnonzero(rows)
        state = np.stack([generators[int(i)].uniform(low=-0.05, high=0.05, size=(4,)) for i in picked], axis=1)
        env: Any = self._env
        env.state[:, picked] = state
        obs = state.T.astype(np.float32)
        self._restart_rows(rows, obs)
        return obs

    def step(self, actions: npt.ArrayLike) -> StepResult:
        """One Gymnasium vector step with autoreset disabled; finished rows are restored afterwards."""
        self._require_reset()
        action = discrete_actions(actions, self.num_rows, 2)
        env: Any = self._env
        before = np.array(env.state, dtype=np.float64, copy=True)
        env.prev_done = np.zeros(self.num_rows, dtype=np.bool_)
        obs, reward, terminated, _, _ = self._env.step(action)
        frozen = self._done
        if np.any(frozen):
            env.state[:, frozen] = before[:, frozen]
        return self._finish_step(obs, np.asarray(reward, dtype=np.float64), np.asarray(terminated))
