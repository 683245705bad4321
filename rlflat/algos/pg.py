"""Vanilla policy gradient: REINFORCE (Williams 1992) with a learned value baseline and GAE advantages.

One gradient step per rollout on the full batch, no ratio clipping, no replay of the data: the simplest
on-policy learner, so a flatness effect seen with it cannot come from PPO's clipping or its many epochs.
Loss = -mean(A * log pi(a|s)) + vf_coef * value_loss - ent_coef * entropy. Adam (SB3's default, eps 1e-5)
rather than A2C's RMSprop. Built on SB3's ``OnPolicyAlgorithm``, so it saves and loads like any SB3 model.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch as th
from gymnasium import spaces
from stable_baselines3.common.buffers import RolloutBuffer
from stable_baselines3.common.policies import (
    ActorCriticCnnPolicy,
    ActorCriticPolicy,
    BasePolicy,
    MultiInputActorCriticPolicy,
)
from stable_baselines3.common.type_aliases import RolloutBufferSamples
from stable_baselines3.common.utils import explained_variance
from torch.nn import functional as F

from rlflat.algos.base import FlatOnPolicyAlgorithm


class PG(FlatOnPolicyAlgorithm):
    """Vanilla policy gradient with a value baseline; one (plain / SAM / ASAM) step per rollout.

    Defaults: 256-step rollouts, Adam at learning rate 1e-3, no entropy bonus (``ent_coef`` 0), gamma 0.99 and
    GAE lambda 0.95 (PPO's), vf_coef 0.5 and max_grad_norm 0.5 (A2C's). The task specs set their own.
    """

    base_name = "pg"
    policy_aliases: ClassVar[dict[str, type[BasePolicy]]] = {
        "MlpPolicy": ActorCriticPolicy,
        "CnnPolicy": ActorCriticCnnPolicy,
        "MultiInputPolicy": MultiInputActorCriticPolicy,
    }

    def __init__(
        self,
        policy: str | type[ActorCriticPolicy],
        env: Any,
        learning_rate: Any = 1e-3,
        n_steps: int = 256,
        gamma: float = 0.99,
        gae_lambda: float = 0.95,
        ent_coef: float = 0.0,
        vf_coef: float = 0.5,
        max_grad_norm: float = 0.5,
        normalize_advantage: bool = True,
        use_sde: bool = False,
        sde_sample_freq: int = -1,
        rollout_buffer_class: type[RolloutBuffer] | None = None,
        rollout_buffer_kwargs: dict[str, Any] | None = None,
        stats_window_size: int = 100,
        tensorboard_log: str | None = None,
        policy_kwargs: dict[str, Any] | None = None,
        verbose: int = 0,
        seed: int | None = None,
        device: th.device | str = "auto",
        _init_setup_model: bool = True,
        *,
        update_rule: str = "plain",
        rho: float | None = None,
        sam_scope: str = "actor",
        asam_eta: float | None = None,
        weight_decay: float = 0.0,
        swa_start: float | None = None,
        dropout: float = 0.0,
        critic_dropout: float = 0.0,
    ) -> None:
        policy_kwargs = self._init_flatness(
            update_rule, rho, sam_scope, asam_eta, weight_decay, swa_start, policy_kwargs
        )
        self._init_dropout(dropout, critic_dropout)
        super().__init__(
            policy,
            env,
            learning_rate=learning_rate,
            n_steps=n_steps,
            gamma=gamma,
            gae_lambda=gae_lambda,
            ent_coef=ent_coef,
            vf_coef=vf_coef,
            max_grad_norm=max_grad_norm,
            use_sde=use_sde,
            sde_sample_freq=sde_sample_freq,
            rollout_buffer_class=rollout_buffer_class,
            rollout_buffer_kwargs=rollout_buffer_kwargs,
            stats_window_size=stats_window_size,
            tensorboard_log=tensorboard_log,
            policy_kwargs=policy_kwargs,
            verbose=verbose,
            seed=seed,
            device=device,
            _init_setup_model=False,
            supported_action_spaces=(spaces.Box, spaces.Discrete, spaces.MultiDiscrete, spaces.MultiBinary),
        )
        self.normalize_advantage = normalize_advantage
        if _init_setup_model:
            self._setup_model()

    def _setup_model(self) -> None:
        super()._setup_model()
        self._setup_flatness()

    def minibatch_loss(
        self, batch: RolloutBufferSamples, with_stats: bool = True
    ) -> tuple[th.Tensor, dict[str, float]]:
        """REINFORCE-with-baseline loss of the whole rollout, and (at theta only) its parts for logging."""
        loss, policy_loss, value_loss, entropy_loss = self._loss_terms(batch)
        if not with_stats:
            return loss, {}
        stats = {
            "policy_loss": policy_loss.item(),
            "value_loss": value_loss.item(),
            "entropy_loss": entropy_loss.item(),
        }
        return loss, stats

    def _loss_terms(self, batch: RolloutBufferSamples) -> tuple[th.Tensor, th.Tensor, th.Tensor, th.Tensor]:
        """Loss, policy-gradient surrogate, value loss and entropy loss of a batch."""
        values, log_prob, entropy, advantages = self._evaluate(batch, self.normalize_advantage)
        policy_loss = -(advantages * log_prob).mean()
        value_loss = F.mse_loss(batch.returns, values)
        entropy_loss = -th.mean(-log_prob) if entropy is None else -th.mean(entropy)
        loss = policy_loss + self.ent_coef * entropy_loss + self.vf_coef * value_loss
        return loss, policy_loss, value_loss, entropy_loss

    def objective_terms(self, batch: RolloutBufferSamples) -> dict[str, th.Tensor]:
        """The loss ``train()`` minimises on ``batch`` and the policy-gradient surrogate alone."""
        loss, policy_loss = self._loss_terms(batch)[:2]
        return {"loss": loss, "surrogate": policy_loss}

    def train(self) -> None:
        """One update on the full rollout (batch_size=None yields it as a single batch)."""
        self.policy.set_training_mode(True)
        self._update_learning_rate(self.policy.optimizer)
        stats: dict[str, float] = {}
        loss_value = float("nan")
        for batch in self.rollout_buffer.get(batch_size=None):
            loss, stats = self.minibatch_loss(batch)
            loss_value = loss.item()
            self._check_loss(loss_value, 0, stats)

            def closure(batch: RolloutBufferSamples = batch) -> th.Tensor:
                return self.minibatch_loss(batch, with_stats=False)[0]

            self._step(loss, closure)
        self._n_updates += 1

        buffer = self.rollout_buffer
        record = self.logger.record
        record("train/n_updates", self._n_updates, exclude="tensorboard")
        record("train/explained_variance", explained_variance(buffer.values.flatten(), buffer.returns.flatten()))
        for key, value in stats.items():
            record(f"train/{key}", value)
        record("train/loss", loss_value)
        if hasattr(self.policy, "log_std"):
            record("train/std", th.exp(self.policy.log_std).mean().item())
        self._after_train()

    def learn(self, *args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("tb_log_name", "PG")
        return super().learn(*args, **kwargs)
