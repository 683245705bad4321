"""The training envs of K learners behind one interface: ``reset()`` and ``step(actions)`` for all of them.

:class:`VecEnvGroup` steps each learner's own SB3 VecEnv (DummyVecEnv of Monitor-wrapped Gymnasium envs, with
VecNormalize when the run normalises): the single run's env by construction, for any task. :class:`CartPoleGroup`
steps all ``K * n_envs`` CartPole rows in one batched simulator call (:class:`rlflat.tasks.sims.CartPoleSim`,
tested bit-exact against Gymnasium) and reproduces what DummyVecEnv + Monitor + TimeLimit add: each row's
generator seeded ``seed + i`` on the first reset and continued on every autoreset, the terminal observation and
``TimeLimit.truncated`` of a finished episode, float32 rewards and the episode's return and length.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MethodType
from typing import Any

import numpy as np
from stable_baselines3.common.vec_env import DummyVecEnv, VecEnv

from rlflat.tasks.sims.base import seeded_generators
from rlflat.tasks.sims.cartpole import CartPoleSim


@dataclass
class Step:
    """One step of every learner: arrays ``(K, n_envs, ...)``; per learner, the truncated rows' terminal
    observations and the finished episodes' (return, length)."""

    obs: list[np.ndarray]
    rewards: list[np.ndarray]
    dones: list[np.ndarray]
    truncated: list[list[tuple[int, np.ndarray]]] = field(default_factory=list)
    episodes: list[list[tuple[float, int]]] = field(default_factory=list)


class VecEnvGroup:
    """Each learner's own SB3 VecEnv, stepped one after another (rows of failed learners are skipped).

    DummyVecEnv returns a deep copy of its info dicts every step (Hopper: a tenth of the env's time); the engine
    only reads them before the next step replaces them, so each learner's DummyVecEnv gets a ``step_wait``
    that returns them as they are. Nothing else changes: observations, rewards, resets and VecNormalize's
    statistics are the env's own.
    """

    def __init__(self, envs: list[VecEnv]) -> None:
        self.envs = envs
        for env in envs:
            inner = env.unwrapped
            if isinstance(inner, DummyVecEnv):
                inner.step_wait = MethodType(_step_wait_shared_infos, inner)  # type: ignore[method-assign]

    def step(self, actions: np.ndarray, live: list[bool]) -> Step:
        out = Step([], [], [], [], [])
        for k, env in enumerate(self.envs):
            if not live[k]:
                out.obs.append(np.zeros(0))
                out.rewards.append(np.zeros(0))
                out.dones.append(np.zeros(0, dtype=bool))
                out.truncated.append([])
                out.episodes.append([])
                continue
            obs, rewards, dones, infos = env.step(actions[k])
            out.obs.append(np.asarray(obs))
            out.rewards.append(rewards)
            out.dones.append(dones)
            out.truncated.append(
                [
                    (i, info["terminal_observation"])
                    for i, (done, info) in enumerate(zip(dones, infos, strict=True))
                    if done and info.get("terminal_observation") is not None and info.get("TimeLimit.truncated", False)
                ]
            )
            out.episodes.append(
                [(float(info["episode"]["r"]), int(info["episode"]["l"])) for info in infos if "episode" in info]
            )
        return out


def _step_wait_shared_infos(self: DummyVecEnv) -> Any:
    """``DummyVecEnv.step_wait`` (SB3 2.9) without the deep copy of the info dicts."""
    for env_idx in range(self.num_envs):
        obs, self.buf_rews[env_idx], terminated, truncated, self.buf_infos[env_idx] = self.envs[env_idx].step(
            self.actions[env_idx]
        )
        self.buf_dones[env_idx] = terminated or truncated
        self.buf_infos[env_idx]["TimeLimit.truncated"] = truncated and not terminated
        if self.buf_dones[env_idx]:
            self.buf_infos[env_idx]["terminal_observation"] = obs
            obs, self.reset_infos[env_idx] = self.envs[env_idx].reset()
        self._save_obs(env_idx, obs)
    return self._obs_from_buf(), np.copy(self.buf_rews), np.copy(self.buf_dones), list(self.buf_infos)


class CartPoleGroup:
    """``K * n_envs`` CartPole-v1 rows (learner-major) on one batched simulator, with SB3's autoreset."""

    def __init__(self, seeds: list[int], n_envs: int) -> None:
        self.k, self.n_envs = len(seeds), n_envs
        rows = self.k * n_envs
        self.sim = CartPoleSim(rows, {})
        row_seeds = np.array([seed + i for seed in seeds for i in range(n_envs)], dtype=np.int64)
        self.generators = seeded_generators(row_seeds, rows)
        self.sim.reset(row_seeds)  # starts the bookkeeping; the rows are redrawn from our own generators
        self.sim.restart(np.ones(rows, dtype=bool), self.generators)
        self.returns = np.zeros(rows)
        self.lengths = np.zeros(rows, dtype=np.int64)
        self.max_steps = CartPoleSim.max_episode_steps

    def reset(self) -> np.ndarray:
        """The observations of the first reset (the rows as ``reset(seed=seed + i)`` leaves them)."""
        return self.sim._require_reset().reshape(self.k, self.n_envs, -1).copy()

    def step(self, actions: np.ndarray, live: list[bool]) -> Step:
        obs, reward, terminated, truncated = self.sim.step(np.asarray(actions).reshape(-1).astype(np.int64))
        self.returns += reward
        self.lengths += 1
        done = terminated | truncated
        time_limit = truncated & ~terminated
        out = Step([], [], [], [], [])
        if np.any(done):
            terminal = obs.copy()
            obs = obs.copy()
            obs[done] = self.sim.restart(done, self.generators)
        rewards = reward.astype(np.float32).reshape(self.k, self.n_envs)
        dones = done.reshape(self.k, self.n_envs)
        obs_k = obs.reshape(self.k, self.n_envs, -1)
        for k in range(self.k):
            rows = slice(k * self.n_envs, (k + 1) * self.n_envs)
            out.obs.append(obs_k[k])
            out.rewards.append(rewards[k].copy())
            out.dones.append(dones[k].copy())
            ended = np.flatnonzero(done[rows])
            out.truncated.append([(int(i), terminal[k * self.n_envs + i]) for i in ended if time_limit[rows][i]])
            out.episodes.append(
                [
                    (round(float(self.returns[k * self.n_envs + i]), 6), int(self.lengths[k * self.n_envs + i]))
                    for i in ended
                ]
            )
        self.returns[done] = 0.0
        self.lengths[done] = 0
        return out
