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


def _next_values(policy: FunctionalPolicy, rows: Mapping[str, np.ndarray]) -> np.ndarray:
    """V(s_{t+1}) of each step's own episode: the next step's value, or V(final state) where an episode ended
    (one batched critic call for those; the next step's row then belongs to a new episode)."""
    nxt = np.zeros_like(rows["value"])
    nxt[:-1] = rows["value"][1:]
    ended = rows["done"].astype(bool)
    ended[-1] = True  # the last step: bootstrap from its final state
    if ended.any():
        with torch.no_grad():
            nxt[ended] = policy.value({}, policy.preprocess(rows["final"][ended])).numpy()
    return nxt


def collect_batch(
    policy: FunctionalPolicy,
    task: TaskSpec,
    size: int = 1024,
    *,
    seed: int = 0,
    gamma: float = DEFAULT_GAMMA,
    gae_lambda: float = DEFAULT_GAE_LAMBDA,
    n_envs: int = 2,
    reward_scaling: tuple[float, float] = (1.0, float("inf")),
    normalize_advantage: bool = True,
    whole_episodes: bool = True,
) -> ProbeBatch:
    """Run the policy (stochastic sampling) on the nominal task for at least ``size`` transitions.

    ``n_envs`` Gymnasium envs step in lockstep, each episode seeded from ``seed``; sampling uses a seeded torch
    generator (inverse CDF / reparameterised Gaussian), so the batch is a pure function of its arguments. With
    ``whole_episodes`` (the default) an env starts a new episode only while fewer than ``size`` transitions are
    collected and every episode runs to its end, so the batch is whole episodes (at most one episode per env more
    than ``size``): episodes are the sampling unit, and no batch ends on a cut-off, bootstrapped episode.
    Without it the batch is exactly ``size`` transitions, the last episode of each env cut (as a PPO rollout).
    """
    if size < 2 or n_envs < 1:
        raise RlflatError(f"batch size must be >= 2 and n_envs >= 1, got {size}, {n_envs}")
    if not (0.0 < gamma <= 1.0 and 0.0 <= gae_lambda <= 1.0):
        raise RlflatError(f"need 0 < gamma <= 1 and 0 <= gae_lambda <= 1, got {gamma}, {gae_lambda}")
    envs = [make_env(task) for _ in range(n_envs)]
    check_spaces(policy, envs[0].observation_space, envs[0].action_space)
    fixed_steps = -(-size // n_envs)
    gen = torch.Generator().manual_seed(subseed(seed, "batch-sampling"))
    episode_seed = subseed(seed, "batch-episodes")
    scale, clip = reward_scaling
    obs_shape = envs[0].observation_space.shape or ()
    keys = ("obs", "act", "logp", "value", "final", "rew", "term", "done")
    rows: dict[str, list[np.ndarray]] = {k: [] for k in keys}
    live: list[np.ndarray] = []
    obs = np.zeros((n_envs, *obs_shape), dtype=np.float32)
    for i, env in enumerate(envs):
        obs[i] = env.reset(seed=episode_seed + i)[0]
    episodes, collected = n_envs, 0
    active = np.ones(n_envs, dtype=bool)
    try:
        with torch.no_grad():
            t = 0
            while active.any() if whole_episodes else t < fixed_steps:
                x = policy.preprocess(obs)
                dist = policy.distribution({}, x)
                if isinstance(dist, torch.distributions.Categorical):
                    u = torch.rand(n_envs, 1, generator=gen)
                    action = torch.clamp((dist.probs.cumsum(-1) < u).sum(-1), max=dist.probs.shape[-1] - 1)
                else:
                    assert isinstance(dist, torch.distributions.Normal)
                    action = dist.mean + dist.stddev * torch.randn(dist.mean.shape, generator=gen)
                logp = dist.log_prob(action) if policy.discrete else dist.log_prob(action).sum(-1)
                live.append(active.copy())
                rows["obs"].append(obs.copy())
                rows["act"].append(action.numpy())
                rows["logp"].append(logp.numpy())
                rows["value"].append(policy.value({}, x).numpy())
                env_actions = policy.postprocess(action)
                final = obs.copy()
                rew, term, done = np.zeros(n_envs), np.ones(n_envs), np.ones(n_envs)
                collected += int(active.sum())
                for i, env in enumerate(envs):
                    if not active[i]:
                        continue
                    a = int(env_actions[i]) if policy.discrete else env_actions[i]
                    o, r, terminated, truncated, _ = env.step(a)
                    rew[i] = np.clip(float(r) * scale, -clip, clip)
                    term[i], done[i] = terminated, terminated or truncated
                    final[i] = o
                    if terminated or truncated:
                        if whole_episodes and collected >= size:
                            active[i] = False
                            continue
                        o, _ = env.reset(seed=episode_seed + episodes)
                        episodes += 1
                    obs[i] = o
                rows["rew"].append(rew)
                rows["term"].append(term)
                rows["done"].append(done)
                rows["final"].append(final)
                t += 1
    finally:
        for env in envs:
            env.close()
    stacked = {k: np.stack(v) for k, v in rows.items()}
    stacked["next"] = _next_values(policy, stacked)
    adv = compute_gae(
        stacked["rew"], stacked["value"], stacked["next"], stacked["term"], stacked["done"], gamma, gae_lambda
    )
    returns = adv + stacked["value"]
    mask = np.stack(live)

    def flat(a: np.ndarray) -> np.ndarray:  # time-major rows of live envs (the first `size` without whole episodes)
        out = a[mask]
        return out if whole_episodes else out[:size]

    adv = flat(adv)
    if normalize_advantage:
        adv = (adv - adv.mean()) / (adv.std() + 1e-8)

    action_dtype = np.int64 if isinstance(policy.action_space, spaces.Discrete) else np.float32
    return ProbeBatch(
        observations=flat(stacked["obs"]),
        actions=flat(stacked["act"]).astype(action_dtype),
        old_log_probs=flat(stacked["logp"]).astype(np.float32),
        advantages=adv.astype(np.float32),
        returns=flat(returns).astype(np.float32),
        values=flat(stacked["value"]).astype(np.float32),
    )
