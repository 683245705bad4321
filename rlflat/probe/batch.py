"""The probe batch: fixed on-policy states, actions, old log-probs and GAE advantages.

Every loss-based measure is a function of this batch, so it is collected once with a fixed seed and saved with the
probe: measures are reproducible, and two probes of the same run (or of runs compared at equal seeds) read the same
kind of data. It is collected as in training: the policy *samples* its actions (not the mode) on the nominal task,
and advantages come from its own critic by GAE (Schulman et al., 2016), with the value of the final state
bootstrapped on time-limit truncation (Pardo et al., 2018) and cut on termination.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields

import numpy as np
import torch
from gymnasium import spaces

from rlflat.errors import RlflatError
from rlflat.policy import FunctionalPolicy, check_spaces
from rlflat.probe.seeding import subseed
from rlflat.tasks import TaskSpec, make_env

__all__ = ["ProbeBatch", "collect_batch", "compute_gae", "subseed"]

DEFAULT_GAMMA = 0.99
DEFAULT_GAE_LAMBDA = 0.95


@dataclass(frozen=True)
class ProbeBatch:
    """N transitions; ``observations`` are raw (the policy's ``preprocess`` normalises them)."""

    observations: np.ndarray
    actions: np.ndarray
    old_log_probs: np.ndarray
    advantages: np.ndarray
    """GAE advantages, normalised to mean 0 / std 1 when collected with ``normalize_advantage`` (as PPO does)."""
    returns: np.ndarray
    """Value targets (unnormalised advantages + values)."""
    values: np.ndarray

    def __len__(self) -> int:
        return int(self.observations.shape[0])

    def arrays(self) -> dict[str, np.ndarray]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray]) -> ProbeBatch:
        missing = [f.name for f in fields(cls) if f.name not in arrays]
        if missing:
            raise RlflatError(f"probe batch arrays lack {missing}")
        return cls(**{f.name: np.asarray(arrays[f.name]) for f in fields(cls)})

    def tensors(self, policy: FunctionalPolicy) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(preprocessed obs, actions, old log-probs, advantages) as float32 tensors."""
        obs = policy.preprocess(self.observations)
        actions = torch.as_tensor(self.actions)
        if not policy.discrete:
            actions = actions.float()
        return obs, actions, torch.as_tensor(self.old_log_probs).float(), torch.as_tensor(self.advantages).float()


def compute_gae(
    rewards: np.ndarray,
    values: np.ndarray,
    next_values: np.ndarray,
    terminated: np.ndarray,
    done: np.ndarray,
    gamma: float,
    gae_lambda: float,
) -> np.ndarray:
    """GAE over (T, n_envs) arrays; ``next_values`` is V(s_{t+1}) of the *same* episode (the final state on
    truncation), zeroed where ``terminated``; the recursion is cut wherever ``done`` (terminated or truncated)."""
    adv = np.zeros_like(rewards, dtype=np.float64)
    last = np.zeros(rewards.shape[1])
    for t in range(rewards.shape[0] - 1, -1, -1):
        delta = rewards[t] + gamma * next_values[t] * (1.0 - terminated[t]) - values[t]
        last = delta + gamma * gae_lambda * (1.0 - done[t]) * last
        adv[t] = last
    return adv


def collect_batch(
    policy: FunctionalPolicy,
    task: TaskSpec,
    size: int = 4096,
    *,
    seed: int = 0,
    gamma: float = DEFAULT_GAMMA,
    gae_lambda: float = DEFAULT_GAE_LAMBDA,
    n_envs: int = 8,
    reward_scaling: tuple[float, float] = (1.0, float("inf")),
    normalize_advantage: bool = True,
) -> ProbeBatch:
    """Run the policy (stochastic sampling) on the nominal task for ``size`` transitions.

    ``n_envs`` Gymnasium envs step in lockstep, seeded from ``seed`` and auto-reset; sampling uses a seeded torch
    generator (inverse CDF / reparameterised Gaussian), so the batch is a pure function of its arguments.
    """
    if size < 2 or n_envs < 1:
        raise RlflatError(f"batch size must be >= 2 and n_envs >= 1, got {size}, {n_envs}")
    if not (0.0 < gamma <= 1.0 and 0.0 <= gae_lambda <= 1.0):
        raise RlflatError(f"need 0 < gamma <= 1 and 0 <= gae_lambda <= 1, got {gamma}, {gae_lambda}")
    envs = [make_env(task) for _ in range(n_envs)]
    check_spaces(policy, envs[0].observation_space, envs[0].action_space)
    steps = -(-size // n_envs)
    gen = torch.Generator().manual_seed(subseed(seed, "batch-sampling"))
    episode_seed = subseed(seed, "batch-episodes")
    scale, clip = reward_scaling
    obs_shape = envs[0].observation_space.shape or ()
    obs_buf = np.zeros((steps, n_envs, *obs_shape), dtype=np.float32)
    act_buf: list[np.ndarray] = []
    logp = np.zeros((steps, n_envs))
    values = np.zeros((steps, n_envs))
    next_values = np.zeros((steps, n_envs))
    rewards = np.zeros((steps, n_envs))
    terminated = np.zeros((steps, n_envs))
    done = np.zeros((steps, n_envs))
    episodes = 0
    obs = np.zeros((n_envs, *obs_shape), dtype=np.float32)
    for i, env in enumerate(envs):
        obs[i] = env.reset(seed=episode_seed + i)[0]
    episodes = n_envs
    try:
        with torch.no_grad():
            for t in range(steps):
                x = policy.preprocess(obs)
                dist = policy.distribution({}, x)
                if isinstance(dist, torch.distributions.Categorical):
                    u = torch.rand(n_envs, 1, generator=gen)
                    action = torch.clamp((dist.probs.cumsum(-1) < u).sum(-1), max=dist.probs.shape[-1] - 1)
                else:
                    assert isinstance(dist, torch.distributions.Normal)
                    action = dist.mean + dist.stddev * torch.randn(dist.mean.shape, generator=gen)
                obs_buf[t] = obs
                act_buf.append(action.numpy())
                logp[t] = policy.log_prob({}, x, action).numpy()
                values[t] = policy.value({}, x).numpy()
                env_actions = policy.postprocess(action)
                final = obs.copy()
                for i, env in enumerate(envs):
                    a = int(env_actions[i]) if policy.discrete else env_actions[i]
                    o, r, term, trunc, _ = env.step(a)
                    rewards[t, i] = np.clip(float(r) * scale, -clip, clip)
                    terminated[t, i], done[t, i] = term, term or trunc
                    final[i] = o
                    if term or trunc:
                        o, _ = env.reset(seed=episode_seed + episodes)
                        episodes += 1
                    obs[i] = o
                next_values[t] = policy.value({}, policy.preprocess(final)).numpy()
    finally:
        for env in envs:
            env.close()
    adv = compute_gae(rewards, values, next_values, terminated, done, gamma, gae_lambda)
    returns = adv + values
    actions = np.stack(act_buf)

    def flat(a: np.ndarray) -> np.ndarray:  # time-major, then the first `size` rows
        return a.reshape(steps * n_envs, *a.shape[2:])[:size]

    adv = flat(adv)
    if normalize_advantage:
        adv = (adv - adv.mean()) / (adv.std() + 1e-8)

    action_dtype = np.int64 if isinstance(policy.action_space, spaces.Discrete) else np.float32
    return ProbeBatch(
        observations=flat(obs_buf),
        actions=flat(actions).astype(action_dtype),
        old_log_probs=flat(logp).astype(np.float32),
        advantages=adv.astype(np.float32),
        returns=flat(returns).astype(np.float32),
        values=flat(values).astype(np.float32),
    )
