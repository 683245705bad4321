"""Rollout collection for K learners with one batched forward per step, and their GAE, as SB3 computes them.

Per learner this is ``OnPolicyAlgorithm.collect_rollouts`` + ``RolloutBuffer.compute_returns_and_advantage``:
actions sampled from the learner's own generator (one ``multinomial``/``normal_`` call per learner, the call SB3
makes), Box actions clipped to the action space, a truncated episode's reward bootstrapped with the value of its
terminal observation (computed on a batch of one, as SB3 does), and GAE in float32 with the same operation
order. Envs are each learner's own SB3 VecEnv (VecNormalize included), so observations, rewards, resets and
normalisation statistics are the single run's.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch as th
from gymnasium import spaces

from rlflat.population.envs import CartPoleGroup, VecEnvGroup
from rlflat.population.learners import Learner, now
from rlflat.population.network import Params, StackedActorCritic


@dataclass
class Rollout:
    """Stacked rollout buffers ``(K, n_steps, n_envs, ...)`` (float32, SB3's dtypes) and GAE outputs."""

    observations: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    episode_starts: np.ndarray
    values: np.ndarray
    log_probs: np.ndarray
    advantages: np.ndarray
    returns: np.ndarray

    @classmethod
    def empty(cls, k: int, n_steps: int, n_envs: int, obs_dim: int, act_dim: int) -> Rollout:
        def zeros(*shape: int) -> np.ndarray:
            return np.zeros((k, n_steps, n_envs, *shape), dtype=np.float32)

        return cls(zeros(obs_dim), zeros(act_dim), zeros(), zeros(), zeros(), zeros(), zeros(), zeros())

    def flat(self, name: str) -> th.Tensor:
        """``(K, n_envs * n_steps, ...)`` in SB3's ``swap_and_flatten`` order (env-major), as a torch tensor."""
        array = getattr(self, name)
        k, steps, envs = array.shape[:3]
        swapped = array.swapaxes(1, 2).reshape(k, envs * steps, *array.shape[3:])
        return th.tensor(swapped)


def sample_actions(
    net: StackedActorCritic, params: Params, head: th.Tensor, latent_pi: th.Tensor, learners: list[Learner]
) -> tuple[th.Tensor, th.Tensor]:
    """Each live learner's actions from its own generator; (actions ``(K, n, ...)``, log-probs ``(K, n)``)."""
    dist = net.distribution(params, head, latent_pi)
    if net.sde:  # gSDE: mean + latent @ exploration matrix (one per env when there are as many), SB3's get_noise
        noise = th.zeros_like(head)
        for k, learner in enumerate(learners):
            if learner.failed:
                continue
            latent = latent_pi[k].detach()
            single, per_env = learner.exploration
            if len(latent) == 1 or len(latent) != len(per_env):
                noise[k] = th.mm(latent, single)
            else:
                noise[k] = th.bmm(latent.unsqueeze(dim=1), per_env).squeeze(dim=1)
        actions = dist.mean + noise
    elif net.gaussian:
        loc, scale = dist.mean, dist.stddev
        noise = th.zeros_like(loc)
        for k, learner in enumerate(learners):
            if not learner.failed:
                noise[k] = th.empty(loc.shape[1:], dtype=loc.dtype).normal_(generator=learner.torch_rng)
        actions = loc + noise * scale
    else:
        probs = dist.probs  # type: ignore[attr-defined]
        actions = th.zeros(probs.shape[:2], dtype=th.long)
        for k, learner in enumerate(learners):
            if not learner.failed:
                actions[k] = th.multinomial(probs[k], 1, True, generator=learner.torch_rng).T.reshape(-1)
    log_prob, _ = net.log_prob_entropy(dist, actions)
    return actions, log_prob


def reset_noise(params: Params, learners: list[Learner], n_envs: int) -> None:
    """gSDE's ``sample_weights``: each learner draws its exploration matrices from its own generator."""
    with th.no_grad():
        for k, learner in enumerate(learners):
            if learner.failed:
                continue
            std = params["log_std"][k].exp()
            single = th.zeros_like(std) + th.empty(std.shape).normal_(generator=learner.torch_rng) * std
            per_env = th.zeros_like(std) + th.empty((n_envs, *std.shape)).normal_(generator=learner.torch_rng) * std
            learner.exploration = (single, per_env)


def collect(
    net: StackedActorCritic,
    params: Params,
    learners: list[Learner],
    envs: VecEnvGroup | CartPoleGroup,
    n_steps: int,
    start: float,
    buffer: Rollout,
) -> None:
    """Fill ``buffer`` with ``n_steps`` steps of every live learner's envs, then its advantages and returns."""
    box = isinstance(learners[0].model.action_space, spaces.Box)
    live = [not learner.failed for learner in learners]
    n_envs = learners[0].model.n_envs
    sample_freq = int(learners[0].model.sde_sample_freq)
    if net.sde:
        reset_noise(params, learners, n_envs)
    for step in range(n_steps):
        if net.sde and sample_freq > 0 and step % sample_freq == 0:
            reset_noise(params, learners, n_envs)
        obs = th.as_tensor(np.stack([_obs(learner) for learner in learners]))
        with th.no_grad():
            head, values, latent_pi = net.forward(params, obs)
            actions, log_probs = sample_actions(net, params, head, latent_pi, learners)
        actions_np = actions.numpy()
        env_actions = actions_np
        if box:
            space = learners[0].model.action_space
            env_actions = np.clip(actions_np, space.low, space.high)  # type: ignore[attr-defined]
        result = envs.step(env_actions, live)
        for k, learner in enumerate(learners):
            if learner.failed:
                continue
            model = learner.model
            model.num_timesteps += model.n_envs
            elapsed = now() - start
            learner.curve += [(model.num_timesteps, r, n, elapsed) for r, n in result.episodes[k]]
            rewards = result.rewards[k]
            for idx, terminal in result.truncated[k]:
                terminal_obs = th.as_tensor(terminal).reshape(1, -1)
                with th.no_grad():
                    terminal_value = net.value_single(params, k, terminal_obs)
                rewards[idx] += model.gamma * terminal_value
            buffer.observations[k, step] = np.array(learner.last_obs).reshape(buffer.observations.shape[2:])
            buffer.actions[k, step] = np.array(actions_np[k]).reshape(buffer.actions.shape[2:])
            buffer.rewards[k, step] = np.array(rewards)
            buffer.episode_starts[k, step] = np.array(learner.last_episode_starts)
            buffer.values[k, step] = values[k].clone().numpy().flatten()
            buffer.log_probs[k, step] = log_probs[k].clone().numpy()
            learner.last_obs = result.obs[k]
            learner.last_episode_starts = result.dones[k]
    obs = th.as_tensor(np.stack([_obs(learner) for learner in learners]))
    with th.no_grad():
        last_values = net.values(params, obs).numpy()
    dones = np.stack([np.asarray(learner.last_episode_starts) for learner in learners])
    gae(buffer, learners, last_values, dones)


def _obs(learner: Learner) -> np.ndarray:
    return np.asarray(learner.last_obs, dtype=np.float32)


def gae(buffer: Rollout, learners: list[Learner], last_values: np.ndarray, dones: np.ndarray) -> None:
    """SB3's ``compute_returns_and_advantage`` for every learner at once (per-learner gamma and lambda)."""
    gamma = np.array([[learner.model.gamma] for learner in learners], dtype=np.float32)
    gamma_lambda = np.array([[learner.model.gamma * learner.model.gae_lambda] for learner in learners], np.float32)
    n_steps = buffer.rewards.shape[1]
    last_gae = np.zeros_like(buffer.rewards[:, 0])
    for step in reversed(range(n_steps)):
        if step == n_steps - 1:
            next_non_terminal = 1.0 - dones.astype(np.float32)
            next_values = last_values.astype(np.float32)
        else:
            next_non_terminal = 1.0 - buffer.episode_starts[:, step + 1]
            next_values = buffer.values[:, step + 1]
        delta = buffer.rewards[:, step] + gamma * next_values * next_non_terminal - buffer.values[:, step]
        last_gae = delta + gamma_lambda * next_non_terminal * last_gae
        buffer.advantages[:, step] = last_gae
    buffer.returns[:] = buffer.advantages + buffer.values
