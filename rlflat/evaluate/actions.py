"""Choosing every row's action each step: observation noise, the policy's mode or a sample, action noise.

Rows are laid out (parameter set k, setting s, episode e) in C order. Every random draw is made once per episode
index and shared by all rows with that index (common random numbers across settings and parameter sets), from
three independent seeded streams, so switching one kind of randomness on does not shift the others.

Stochastic actions are drawn from the policy's per-step action distribution (:meth:`FunctionalPolicy.distribution`)
with fresh noise every step. For gSDE policies that is a Gaussian with gSDE's state-dependent std, not SB3's
exploration matrix held for ``sde_sample_freq`` steps: a gSDE policy's stochastic returns here are those of
independent per-step noise.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import torch
from gymnasium import spaces
from torch import Tensor

from rlflat.policy import FunctionalPolicy

__all__ = ["ActionSelector", "Layout"]

_COMPACT_BELOW = 0.75
"""Forward only the live rows once fewer than this fraction are live (the indexing costs less than the MLP)."""


@dataclass(frozen=True)
class Layout:
    """Rows in (parameter set k, setting s, episode e) C order: ``n = k * m`` rows, ``m = s * e`` per set."""

    k: int
    s: int
    e: int

    @property
    def m(self) -> int:
        return self.s * self.e

    @property
    def n(self) -> int:
        return self.k * self.m

    def row_setting(self) -> np.ndarray:
        return np.tile(np.repeat(np.arange(self.s), self.e), self.k)

    def seeds(self, seed: int) -> np.ndarray:
        """Episode ``e`` of every setting and parameter set resets with ``seed + e``."""
        return np.tile(np.arange(self.e) + int(seed), self.k * self.s)


class ActionSelector:
    """Env actions for every row from its observation: observation noise, the policy, action noise.

    Holds the three seeded noise streams (independent, so switching one kind of randomness on does not shift
    the others); each draw is made once per episode index and shared by all settings and parameter sets.
    """

    def __init__(
        self,
        policy: FunctionalPolicy,
        params: Mapping[str, Tensor] | None,
        layout: Layout,
        action_space: spaces.Space,
        action_noise: np.ndarray,
        obs_noise: np.ndarray,
        deterministic: bool,
        rng_seed: int,
        protocol: str = "default",
    ) -> None:
        self.policy, self.layout, self.deterministic = policy, layout, deterministic
        self.bounds = _noise_bounds(action_space, protocol)
        self.stacked = None if params is None else {name: v.detach() for name, v in params.items()}
        self.discrete = isinstance(action_space, spaces.Discrete)
        self.n_actions = int(action_space.n) if isinstance(action_space, spaces.Discrete) else 0
        self.action_shape = () if self.discrete else tuple(action_space.shape or ())
        # noise levels per row within one parameter set, broadcast over the K sets
        self.obs_sigma = np.repeat(obs_noise, layout.e)[:, None]
        self.act_level = np.repeat(action_noise, layout.e)
        self.use_obs_noise, self.use_act_noise = bool(np.any(obs_noise > 0)), bool(np.any(action_noise > 0))
        streams = np.random.SeedSequence(rng_seed).spawn(3)
        self.obs_rng, self.act_rng, self.sample_rng = (np.random.default_rng(c) for c in streams)
        self.own_mode = _own_mode(policy)

    def __call__(self, obs: np.ndarray, alive: np.ndarray) -> np.ndarray:
        """Actions for all rows; finished rows hold their last observation and their actions are ignored."""
        layout = self.layout
        seen = obs
        if self.use_obs_noise:
            z = _per_episode(self.obs_rng.standard_normal((layout.e, *obs.shape[1:])), layout.s, 1) * self.obs_sigma
            seen = seen + _per_episode(z, layout.k, 1)
        raw = self._policy_actions(seen, alive)
        if self.use_act_noise:
            if self.bounds is not None:  # lee_yoon: noise on the in-bound action (their mean is max_action*tanh)
                raw = np.clip(raw, *self.bounds)
            raw = _action_noise(
                raw, self.act_rng, self.act_level, layout.e, layout.s, layout.k, self.discrete, self.n_actions
            )
        return self.policy.postprocess(torch.as_tensor(raw))

    def _policy_actions(self, seen: np.ndarray, alive: np.ndarray) -> np.ndarray:
        """Raw network actions: the mode (one forward, or only live rows once most finished) or a sample."""
        layout, policy = self.layout, self.policy
        if self.deterministic and self.stacked is None and alive.sum() < _COMPACT_BELOW * layout.n:
            # most rows finished: forward only the live ones (dead rows get action 0, never used)
            rows = np.flatnonzero(alive)
            raw = np.zeros((layout.n, *self.action_shape), dtype=np.int64 if self.discrete else np.float32)
            raw[rows] = self.own_mode(policy.preprocess(seen[rows])).numpy()
            return raw
        x = policy.preprocess(seen).reshape(layout.k, layout.m, -1)
        if self.deterministic:
            out = self.own_mode(x[0]) if self.stacked is None else policy.stacked_mode(self.stacked, x)
            return out.reshape(layout.n, *self.action_shape).numpy()
        return _sample(policy, self.stacked, x, self.sample_rng, layout.e, layout.s, self.discrete, self.action_shape)


def _noise_bounds(action_space: spaces.Space, protocol: str) -> tuple[np.ndarray, np.ndarray] | None:
    """Box bounds to clip to before action noise (``lee_yoon`` protocol, continuous actions), else None.

    Lee & Yoon's Gaussian policy bounds its mean (``max_action * tanh``) and their evaluation adds
    N(0, sigma) to that in-bound action, then clips; an SB3 mean is unbounded, so the ``default`` protocol
    adds the noise to the raw mean and clips once (rows whose mean is outside the bounds differ).
    """
    if protocol == "default" or not isinstance(action_space, spaces.Box):
        return None
    return action_space.low, action_space.high


def _own_mode(policy: FunctionalPolicy) -> Callable[[Tensor], Tensor]:
    """``policy.mode`` at its own parameters; the live module when it still holds them (no reparametrisation).

    ``functional_call`` re-binds every parameter on each call, about 100 us per step for a small MLP, which is
    a third of a batched CartPole step; the module's own forward is the same computation.
    """
    module = policy._heads
    named = dict(module.policy.named_parameters())
    if named.keys() != policy.params.keys() or not all(torch.equal(named[k], v) for k, v in policy.params.items()):
        return lambda x: policy.mode({}, x)

    def mode(x: Tensor) -> Tensor:
        output, _ = module(x, "actor")
        return output.argmax(-1) if policy.discrete else output

    return mode


def _per_episode(draw: np.ndarray, s: int, k: int) -> np.ndarray:
    """Tile a draw made per episode index (leading axis E) over settings and parameter sets (row order)."""
    reps = (s * k,) + (1,) * (draw.ndim - 1)
    return np.tile(draw, reps)


def _sample(
    policy: FunctionalPolicy,
    stacked: Mapping[str, Tensor] | None,
    x: Tensor,
    rng: np.random.Generator,
    e: int,
    s: int,
    discrete: bool,
    action_shape: tuple[int, ...],
) -> np.ndarray:
    """Stochastic actions from seeded numpy draws (inverse CDF / reparameterised Gaussian), shared per episode.

    One draw per episode index serves every setting and parameter set, so they differ only by the policy.
    """
    draw = _per_episode(rng.random(e) if discrete else rng.standard_normal((e, *action_shape)), s, 1)
    outs = []
    for i in range(x.shape[0]):  # K is small; distributions do not vmap
        p = {} if stacked is None else {name: v[i] for name, v in stacked.items()}
        dist = policy.distribution(p, x[i])
        if isinstance(dist, torch.distributions.Categorical):
            cdf = dist.probs.cumsum(-1).numpy()
            outs.append(np.minimum((cdf < draw[:, None]).sum(-1), cdf.shape[-1] - 1))
        else:
            assert isinstance(dist, torch.distributions.Normal)
            noise = torch.as_tensor(draw, dtype=dist.mean.dtype)
            outs.append((dist.mean + dist.stddev * noise).numpy())
    return np.concatenate(outs)


def _action_noise(
    raw: np.ndarray,
    rng: np.random.Generator,
    level: np.ndarray,
    e: int,
    s: int,
    k: int,
    discrete: bool,
    n_actions: int,
) -> np.ndarray:
    """Discrete: with probability ``level`` a uniform random action; continuous: + N(0, level^2) per dim."""
    if discrete:
        u = _per_episode(rng.random(e), s, k)
        random_action = _per_episode(rng.integers(0, n_actions, e), s, k)
        return np.where(u < np.tile(level, k), random_action, raw)
    z = _per_episode(rng.standard_normal((e, *raw.shape[1:])), s, k)
    sigma = np.tile(level, k).reshape(-1, *([1] * (raw.ndim - 1)))
    return raw + sigma * z
