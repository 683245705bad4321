"""PPO (Schulman et al. 2017) as SB3 trains it, with each minibatch's loss stepped by an update rule.

With the plain rule this trains exactly like ``stable_baselines3.PPO`` (same seed and hyperparameters give
the same parameters): same minibatch order, same loss arithmetic, same backward/clip/step order, target_kl
early stop before the step, ``_n_updates`` counted per epoch, and the same ``train/*`` log keys. It is a
subclass of SB3's PPO, so its zip also loads with ``stable_baselines3.PPO.load``.

gSDE: SB3 2.9 resamples the exploration matrix only when collecting rollouts, not in ``train()``; the noise
does not enter ``evaluate_actions``' log-probabilities, so a reset here would only consume RNG and break the
equality with SB3. None is done, and SAM's closure therefore never touches the noise either.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch as th
from stable_baselines3 import PPO
from stable_baselines3.common.type_aliases import RolloutBufferSamples
from stable_baselines3.common.utils import explained_variance
from torch.nn import functional as F

from rlflat.algos.base import FlatOnPolicyAlgorithm


class RlflatPPO(FlatOnPolicyAlgorithm, PPO):
    """SB3 PPO whose minibatch updates go through an update rule (plain / SAM / ASAM).

    Extra keyword arguments beyond SB3's PPO: ``update_rule``, ``rho``, ``sam_scope``, ``asam_eta``,
    ``weight_decay``, ``swa_start``, ``dropout`` and ``critic_dropout`` (consistent dropout,
    :mod:`rlflat.algos.dropout`; see :mod:`rlflat.algos`).
    """

    base_name = "ppo"

    def __init__(
        self,
        policy: Any,
        env: Any,
        *,
        update_rule: str = "plain",
        rho: float | None = None,
        sam_scope: str = "actor",
        asam_eta: float | None = None,
        weight_decay: float = 0.0,
        swa_start: float | None = None,
        dropout: float = 0.0,
        critic_dropout: float = 0.0,
        **kwargs: Any,
    ) -> None:
        kwargs["policy_kwargs"] = self._init_flatness(
            update_rule, rho, sam_scope, asam_eta, weight_decay, swa_start, kwargs.get("policy_kwargs")
        )
        self._init_dropout(dropout, critic_dropout)
        super().__init__(policy, env, **kwargs)

    def _setup_model(self) -> None:
        super()._setup_model()
        self._setup_flatness()

    def minibatch_loss(
        self,
        batch: RolloutBufferSamples,
        clip_range: float,
        clip_range_vf: float | None,
        with_stats: bool = True,
    ) -> tuple[th.Tensor, dict[str, float]]:
        """Clipped-surrogate PPO loss of one minibatch, and (at theta only) the statistics SB3 logs."""
        terms = self._loss_terms(batch, clip_range, clip_range_vf)
        loss, policy_loss, value_loss, entropy_loss = terms[:4]
        if not with_stats:
            return loss, {}
        log_prob, ratio = terms[4:]
        with th.no_grad():
            log_ratio = log_prob - batch.old_log_prob
            approx_kl = th.mean((th.exp(log_ratio) - 1) - log_ratio).item()  # Schulman's k3 estimator
            clip_fraction = th.mean((th.abs(ratio - 1) > clip_range).float()).item()
        stats = {
            "policy_gradient_loss": policy_loss.item(),
            "value_loss": value_loss.item(),
            "entropy_loss": entropy_loss.item(),
            "clip_fraction": clip_fraction,
            "approx_kl": approx_kl,
        }
        return loss, stats

    def _loss_terms(
        self, batch: RolloutBufferSamples, clip_range: float, clip_range_vf: float | None
    ) -> tuple[th.Tensor, ...]:
        """Loss, clipped policy surrogate, value loss, entropy loss, log-probs and ratios of one minibatch."""
        values, log_prob, entropy, advantages = self._evaluate(batch, self.normalize_advantage)
        ratio = th.exp(log_prob - batch.old_log_prob)
        surrogate = advantages * ratio
        clipped = advantages * th.clamp(ratio, 1 - clip_range, 1 + clip_range)
        policy_loss = -th.min(surrogate, clipped).mean()
        if clip_range_vf is None:
            values_pred = values
        else:  # the OpenAI-baselines value clipping, relative to the rollout's value estimates
            values_pred = batch.old_values + th.clamp(values - batch.old_values, -clip_range_vf, clip_range_vf)
        value_loss = F.mse_loss(batch.returns, values_pred)
        # without an analytic entropy (e.g. squashed Gaussians), -E[log p] estimates it
        entropy_loss = -th.mean(-log_prob) if entropy is None else -th.mean(entropy)
        loss = policy_loss + self.ent_coef * entropy_loss + self.vf_coef * value_loss
        return loss, policy_loss, value_loss, entropy_loss, log_prob, ratio

    def objective_terms(self, batch: RolloutBufferSamples) -> dict[str, th.Tensor]:
        """The loss ``train()`` minimises on ``batch`` now (clip ranges at the current progress), and the policy
        surrogate alone; see :meth:`FlatOnPolicyAlgorithm.objective_terms`."""
        progress = self._current_progress_remaining
        clip_range = self.clip_range(progress)  # type: ignore[operator]
        clip_range_vf = None if self.clip_range_vf is None else self.clip_range_vf(progress)  # type: ignore[operator]
        loss, policy_loss = self._loss_terms(batch, clip_range, clip_range_vf)[:2]
        return {"loss": loss, "surrogate": policy_loss}

    def train(self) -> None:
        """n_epochs passes of minibatch updates over the rollout, stopping early past 1.5 * target_kl."""
        self.policy.set_training_mode(True)
        self._update_learning_rate(self.policy.optimizer)
        clip_range = self.clip_range(self._current_progress_remaining)  # type: ignore[operator]
        clip_range_vf = None
        if self.clip_range_vf is not None:
            clip_range_vf = self.clip_range_vf(self._current_progress_remaining)  # type: ignore[operator]

        history: dict[str, list[float]] = {
            k: [] for k in ("policy_gradient_loss", "value_loss", "entropy_loss", "clip_fraction")
        }
        approx_kls: list[float] = []
        loss_value = float("nan")
        minibatch = 0
        stop = False
        for epoch in range(self.n_epochs):
            approx_kls = []  # SB3 logs the last epoch's mean
            for batch in self.rollout_buffer.get(self.batch_size):
                loss, stats = self.minibatch_loss(batch, clip_range, clip_range_vf)
                for key, series in history.items():
                    series.append(stats[key])
                approx_kls.append(stats["approx_kl"])
                loss_value = loss.item()
                if self.target_kl is not None and stats["approx_kl"] > 1.5 * self.target_kl:
                    stop = True
                    if self.verbose >= 1:
                        print(f"Early stopping at step {epoch} due to reaching max kl: {stats['approx_kl']:.2f}")
                    break
                self._check_loss(loss_value, minibatch, stats)

                def closure(batch: RolloutBufferSamples = batch) -> th.Tensor:
                    return self.minibatch_loss(batch, clip_range, clip_range_vf, with_stats=False)[0]

                self._step(loss, closure, minibatch)
                minibatch += 1
            self._n_updates += 1
            if stop:
                break

        buffer = self.rollout_buffer
        record = self.logger.record
        record("train/entropy_loss", np.mean(history["entropy_loss"]))
        record("train/policy_gradient_loss", np.mean(history["policy_gradient_loss"]))
        record("train/value_loss", np.mean(history["value_loss"]))
        record("train/approx_kl", np.mean(approx_kls))
        record("train/clip_fraction", np.mean(history["clip_fraction"]))
        record("train/loss", loss_value)
        record("train/explained_variance", explained_variance(buffer.values.flatten(), buffer.returns.flatten()))
        if hasattr(self.policy, "log_std"):
            record("train/std", th.exp(self.policy.log_std).mean().item())
        record("train/n_updates", self._n_updates, exclude="tensorboard")
        record("train/clip_range", clip_range)
        if clip_range_vf is not None:
            record("train/clip_range_vf", clip_range_vf)
        self._after_train()
