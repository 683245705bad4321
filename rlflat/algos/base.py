"""What every rlflat algorithm adds to an SB3 on-policy algorithm: an update rule and the flatness knobs.

An algorithm is an SB3 on-policy algorithm plus its minibatch loss; ``train()`` hands each minibatch's loss
and a closure recomputing it to the update rule (``rules.py``). The other flatness knobs are ordinary
hyperparameters handled here: ``weight_decay`` (AdamW, Loshchilov & Hutter 2019) and ``swa_start``
(stochastic weight averaging, Izmailov et al. 2018). Divergence is an error, never a silently saved NaN model.
"""

from __future__ import annotations

import contextlib
import io
import math
import pathlib
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.buffers import RolloutBuffer
from stable_baselines3.common.on_policy_algorithm import OnPolicyAlgorithm
from stable_baselines3.common.type_aliases import RolloutBufferSamples
from torch.optim.swa_utils import AveragedModel

from rlflat.algos.dropout import ConsistentDropout, DropoutRolloutBuffer, check_rate
from rlflat.algos.rules import RULE_DEFAULTS, RULES, SAM_SCOPES, TrainingDiverged, UpdateRule, make_rule
from rlflat.errors import RlflatError, bad_choice
from rlflat.scope import actor_parameter_names

__all__ = ["ADAM_EPS", "FlatOnPolicyAlgorithm", "TrainingDiverged"]

ADAM_EPS = 1e-5
"""SB3's Adam eps. SB3 sets it only for Adam and only when no optimizer_kwargs are given; rlflat gives it to
Adam and AdamW whenever the user's optimizer_kwargs do not name an eps (see :func:`with_adam_eps`)."""


def with_adam_eps(policy_kwargs: dict[str, Any] | None) -> dict[str, Any] | None:
    """``policy_kwargs`` with ``eps=ADAM_EPS`` in the optimizer kwargs of an Adam or AdamW optimizer.

    SB3 gives Adam its eps of 1e-5 only when ``optimizer_kwargs`` is absent, and never gives it to AdamW, so
    asking for ``amsgrad`` or weight decay would silently change eps to torch's 1e-8. An eps the user names is kept.
    """
    if not policy_kwargs:
        return policy_kwargs
    optimizer = policy_kwargs.get("optimizer_class", th.optim.Adam)
    kwargs = policy_kwargs.get("optimizer_kwargs")
    if not (isinstance(optimizer, type) and issubclass(optimizer, th.optim.Adam | th.optim.AdamW)):
        return policy_kwargs
    if (kwargs is None and optimizer is th.optim.Adam) or "eps" in (kwargs or {}):
        return policy_kwargs  # SB3 sets eps itself, or the user chose one
    return {**policy_kwargs, "optimizer_kwargs": {"eps": ADAM_EPS, **(kwargs or {})}}


class FlatOnPolicyAlgorithm(OnPolicyAlgorithm):
    """Mixin for SB3 on-policy algorithms: update rule, AdamW, SWA, divergence checks.

    Concrete classes call :meth:`_init_flatness` before SB3's ``__init__`` (so the attributes exist when
    ``_setup_model`` runs) and :meth:`_setup_flatness` at the end of ``_setup_model``. Every knob is a plain
    attribute, so SB3's zip stores it and ``load`` restores it before ``_setup_model``.
    """

    base_name = "?"
    update_rule: str
    rho: float | None
    sam_scope: str
    asam_eta: float | None
    weight_decay: float
    swa_start: float | None
    rlflat_algorithm: str
    _rule: UpdateRule
    _perturbed: list[th.nn.Parameter]
    _all_params: list[th.nn.Parameter]
    _swa_model: AveragedModel | None
    dropout: float = 0.0
    critic_dropout: float = 0.0
    _dropout: ConsistentDropout | None = None
    update_observer: Callable[[FlatOnPolicyAlgorithm], None] | None = None
    """Called at the end of every ``train()`` (after the parameter check), e.g. to track sharpness along
    training; it must not change the parameters, the optimizer, the buffer or any RNG. Not saved."""

    def _init_flatness(
        self,
        update_rule: str,
        rho: float | None,
        sam_scope: str,
        asam_eta: float | None,
        weight_decay: float,
        swa_start: float | None,
        policy_kwargs: dict[str, Any] | None,
    ) -> dict[str, Any] | None:
        """Store the knobs; return policy_kwargs switched to AdamW when weight_decay > 0, with Adam's eps kept."""
        if update_rule not in RULES:
            raise bad_choice("update rule", update_rule, RULES)
        if sam_scope not in SAM_SCOPES:
            raise bad_choice("sam_scope", sam_scope, SAM_SCOPES)
        if not weight_decay >= 0:
            raise RlflatError(f"weight_decay must be >= 0, got {weight_decay!r}")
        if swa_start is not None and not 0.0 <= swa_start < 1.0:
            raise RlflatError(f"swa_start must be a fraction 0 <= swa_start < 1 (or null), got {swa_start!r}")
        defaults = RULE_DEFAULTS[update_rule]
        self.update_rule = update_rule
        self.rho = rho if rho is not None else defaults.get("rho")  # type: ignore[assignment]
        self.sam_scope = sam_scope
        self.asam_eta = asam_eta if asam_eta is not None else defaults.get("asam_eta")  # type: ignore[assignment]
        self.weight_decay = float(weight_decay)
        self.swa_start = swa_start
        self.rlflat_algorithm = self.base_name if update_rule == "plain" else f"{self.base_name}_{update_rule}"
        self._swa_model = None
        self._iteration = 0
        self.swa_n_averaged = 0
        if self.weight_decay > 0:
            policy_kwargs = dict(policy_kwargs or {})
            policy_kwargs["optimizer_class"] = th.optim.AdamW
            policy_kwargs["optimizer_kwargs"] = {
                **(policy_kwargs.get("optimizer_kwargs") or {}),
                "weight_decay": self.weight_decay,
            }
        return with_adam_eps(policy_kwargs)

    def _setup_flatness(self) -> None:
        """Build the rule and the parameter lists it acts on (after the policy exists)."""
        self._rule = make_rule(self.update_rule, self.rho, self.asam_eta)
        self._all_params = list(self.policy.parameters())
        if self.sam_scope == "all":
            self._perturbed = list(self._all_params)
        else:
            named = dict(self.policy.named_parameters())
            self._perturbed = [named[name] for name in actor_parameter_names(named)]
        self._rule.bind(dict(self.policy.named_parameters()), self.sam_scope)
        self._swa_model = None
        self._setup_dropout()

    # -- consistent dropout (rlflat.algos.dropout) -----------------------------------------------------------

    def _init_dropout(self, dropout: float, critic_dropout: float) -> None:
        """Store the actor's and the critic's dropout rates (0: no dropout, SB3's network exactly)."""
        self.dropout = check_rate("dropout", dropout)
        self.critic_dropout = check_rate("critic_dropout", critic_dropout)

    def _setup_dropout(self) -> None:
        """With a rate > 0: mask hooks on the policy, and a rollout buffer that stores each transition's masks."""
        if self._dropout is not None:
            self._dropout.remove()
            self._dropout = None
        if not (self.dropout > 0 or self.critic_dropout > 0):
            return
        if type(self.rollout_buffer) is not RolloutBuffer:
            raise RlflatError("dropout needs SB3's plain RolloutBuffer (no dict observations, no custom buffer)")
        seed = int(np.random.SeedSequence([0 if self.seed is None else self.seed, 0xD0]).generate_state(1)[0])
        self._dropout = ConsistentDropout(self.policy, {"pi": self.dropout, "vf": self.critic_dropout}, seed)
        self.rollout_buffer = DropoutRolloutBuffer(
            self.n_steps,
            self.observation_space,
            self.action_space,
            dropout=self._dropout,
            device=self.device,
            gamma=self.gamma,
            gae_lambda=self.gae_lambda,
            n_envs=self.n_envs,
        )

    def collect_rollouts(self, *args: Any, **kwargs: Any) -> bool:
        """SB3's rollout; with dropout each acting forward pass draws the masks stored with its transitions."""
        if self._dropout is None:
            return bool(super().collect_rollouts(*args, **kwargs))
        with self._dropout.rollout():
            return bool(super().collect_rollouts(*args, **kwargs))

    def _excluded_save_params(self) -> list[str]:
        excluded = ["_rule", "_perturbed", "_all_params", "_swa_model", "update_observer", "_dropout"]
        return [*super()._excluded_save_params(), *excluded]

    def objective_terms(self, batch: RolloutBufferSamples) -> dict[str, th.Tensor]:
        """``{"loss": ..., "surrogate": ...}``: the loss ``train()`` minimises on ``batch`` at the current
        parameters and schedules, and the policy surrogate alone (no value or entropy terms)."""
        raise NotImplementedError

    # -- one update -------------------------------------------------------------------------------------

    def _step(self, loss: th.Tensor, closure: Callable[[], th.Tensor], minibatch: int = 0) -> None:
        """Apply the update rule to one minibatch loss (closure recomputes it at the current parameters)."""
        try:
            self._rule.step(self.policy.optimizer, loss, closure, self._all_params, self._perturbed, self.max_grad_norm)
        except TrainingDiverged as exc:  # the rule knows the loss, the algorithm knows where it happened
            raise TrainingDiverged(
                f"training diverged {self._where(minibatch)}: {exc}; lower learning_rate or rho"
            ) from None

    def _where(self, minibatch: int) -> str:
        return f"at iteration {self._iteration} (timestep {self.num_timesteps}), minibatch {minibatch}"

    def _check_loss(self, loss: float, minibatch: int, parts: dict[str, float]) -> None:
        if not math.isfinite(loss):
            detail = ", ".join(f"{k}={v:.4g}" for k, v in parts.items())
            raise TrainingDiverged(
                f"training diverged {self._where(minibatch)}: loss is {loss} ({detail}); lower learning_rate or rho"
            )

    def check_parameters(self, when: str) -> None:
        """Raise :class:`TrainingDiverged` naming the first non-finite parameter; ``when`` says at what point."""
        for name, param in self.policy.named_parameters():
            if not bool(th.isfinite(param).all()):
                raise TrainingDiverged(f"training diverged {when}: parameter {name!r} is not finite")

    def _evaluate(self, batch: RolloutBufferSamples, normalize: bool) -> tuple[th.Tensor, ...]:
        """Values, log-probs, entropy (or None) and (optionally normalised) advantages of a minibatch."""
        actions = batch.actions
        if isinstance(self.action_space, spaces.Discrete):
            actions = actions.long().flatten()
        with self._dropout.replay(batch) if self._dropout is not None else contextlib.nullcontext():
            values, log_prob, entropy = self.policy.evaluate_actions(batch.observations, actions)
        advantages = batch.advantages
        if normalize and len(advantages) > 1:
            advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
        return values.flatten(), log_prob, entropy, advantages  # type: ignore[return-value]

    def _after_train(self) -> None:
        """End of one ``train()``: parameters must be finite; SWA averages them once past ``swa_start``."""
        self._iteration += 1
        self.check_parameters(f"at iteration {self._iteration} (timestep {self.num_timesteps})")
        if self.update_observer is not None:
            self.update_observer(self)
        if self.swa_start is not None and 1.0 - self._current_progress_remaining >= self.swa_start:
            # average a container of the parameters: deep-copying the policy fails on its cached distribution
            current = th.nn.ParameterList(self._all_params)
            if self._swa_model is None:
                self._swa_model = AveragedModel(current, use_buffers=False)
            self._swa_model.update_parameters(current)

    # -- learn / save -----------------------------------------------------------------------------------

    def learn(self, *args: Any, **kwargs: Any) -> Any:
        """SB3's learn; with ``swa_start`` the averaged parameters replace the policy's at the end."""
        self._swa_model = None
        # parameters set from outside (a loaded or hand-edited model) would otherwise fail inside rollout
        # collection as a torch distribution ValueError, not as divergence
        self.check_parameters(f"before learning (timestep {self.num_timesteps})")
        result = super().learn(*args, **kwargs)
        if self._swa_model is not None:
            with th.no_grad():
                averaged = self._swa_model.module.parameters()
                for param, mean in zip(self.policy.parameters(), averaged, strict=True):
                    param.copy_(mean)
            self.swa_n_averaged = int(self._swa_model.n_averaged.item())
            self._swa_model = None
            self.check_parameters("after stochastic weight averaging")
        return result

    def save(
        self,
        path: str | pathlib.Path | io.BufferedIOBase,
        exclude: Iterable[str] | None = None,
        include: Iterable[str] | None = None,
    ) -> None:
        """SB3's save, refused for a model with non-finite parameters."""
        self.check_parameters("before saving (refusing to save)")
        super().save(path, exclude=exclude, include=include)
