"""Consistent dropout (Hausknecht & Wagener 2022, "Consistent Dropout for Policy Gradient Reinforcement Learning").

Dropout in a policy-gradient learner is only sound if the network that is differentiated in the update is the
network that acted: PPO's ratio ``pi_new(a|s) / pi_old(a|s)`` compares two forward passes, and with a fresh
dropout mask in each the ratio is noise even before the first gradient step (the paper's "naive dropout"). Here a
mask is drawn per transition when the rollout acts, stored with the transition in the rollout buffer, and reused
for that transition's log-probability, value and entropy in every epoch of the update (and by SAM's second
forward pass), so the ratio is exactly 1 before the first step.

Mechanism, chosen so that a model trained with dropout *is* a plain SB3 policy:

* masks multiply the output of every hidden activation of ``mlp_extractor.policy_net`` (rate ``dropout``) and of
  ``mlp_extractor.value_net`` (rate ``critic_dropout``) through forward hooks; inverted dropout (kept units are
  scaled by ``1 / (1 - p)``), so the network without masks is the expected network;
* no module is added and the policy's constructor arguments are unchanged, so the zip holds an ordinary
  ``ActorCriticPolicy``: SB3's own ``PPO.load``, rlflat's safe loader, the probe and the evaluator all rebuild the
  network *without* dropout (the eval-mode policy) with no extra code;
* masks are active only while a rollout forward pass acts (``policy(obs)`` in ``collect_rollouts``) and while a
  stored minibatch is evaluated; everything else (``predict``, the bootstrap values of truncated episodes and of
  the rollout's last state, the probe) sees the network without dropout;
* masks come from the algorithm's own ``torch.Generator`` (seeded from the run's seed), so dropout consumes none
  of the global RNG streams that drive actions and minibatch order, and a run is reproducible.

``consistent=False`` gives the naive variant (fresh masks in the update), kept only to show what consistency
buys; it is not a hyperparameter.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, NamedTuple

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.buffers import RolloutBuffer
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.type_aliases import RolloutBufferSamples
from torch import nn

from rlflat.errors import RlflatError

__all__ = ["ConsistentDropout", "DropoutRolloutBuffer", "DropoutRolloutBufferSamples", "check_rate"]

_NETS = {"pi": "policy_net", "vf": "value_net"}


def check_rate(name: str, value: Any) -> float:
    """A dropout probability in [0, 1): 1 would zero every unit (and divide by zero when rescaling)."""
    if isinstance(value, bool):
        raise RlflatError(f"{name} must be a probability 0 <= p < 1, got {value!r}")
    try:
        rate = float(value)
    except (TypeError, ValueError):
        raise RlflatError(f"{name} must be a probability 0 <= p < 1, got {value!r}") from None
    if not 0.0 <= rate < 1.0:
        raise RlflatError(f"{name} must be a probability 0 <= p < 1, got {value!r}")
    return rate


class DropoutRolloutBufferSamples(NamedTuple):
    """SB3's minibatch fields, in SB3's order, plus each hooked layer's masks (rows match the transitions)."""

    observations: th.Tensor
    actions: th.Tensor
    old_values: th.Tensor
    old_log_prob: th.Tensor
    advantages: th.Tensor
    returns: th.Tensor
    masks: dict[str, th.Tensor]


def _hidden_layers(policy: ActorCriticPolicy, net: str) -> list[tuple[str, nn.Module, int]]:
    """(name, activation module, width) of each hidden layer of ``mlp_extractor.<net>`` (Linear, activation)*."""
    sequential = getattr(policy.mlp_extractor, net)
    layers: list[tuple[str, nn.Module, int]] = []
    width = None
    for index, module in enumerate(sequential):
        if isinstance(module, nn.Linear):
            width = module.out_features
        elif width is not None:
            layers.append((f"{net}.{index}", module, width))
            width = None
    return layers


class ConsistentDropout:
    """Dropout masks on an ``ActorCriticPolicy``'s hidden layers, sampled at rollout time and replayed in updates.

    ``rates`` maps ``"pi"`` / ``"vf"`` to the dropout probability of the actor's / critic's hidden layers.
    """

    def __init__(
        self, policy: ActorCriticPolicy, rates: Mapping[str, float], seed: int, *, consistent: bool = True
    ) -> None:
        self.rates = {net: float(rate) for net, rate in rates.items() if rate > 0}
        self.layers: dict[str, tuple[float, int]] = {}
        self._handles: list[Any] = []
        for net, rate in self.rates.items():
            found = _hidden_layers(policy, _NETS[net])
            if not found:
                key = "dropout" if net == "pi" else "critic_dropout"
                raise RlflatError(f"{key}={rate} needs hidden layers in net_arch, but the {net} network has none")
            for name, module, width in found:
                self.layers[name] = (rate, width)
                self._handles.append(module.register_forward_hook(self._apply_hook(name)))
        self._handles.append(policy.register_forward_pre_hook(self._rollout_start))
        self._handles.append(policy.register_forward_hook(self._rollout_end))
        self.generator = th.Generator().manual_seed(int(seed))
        self.consistent = consistent
        self.sampling = False
        """True while a rollout is collected: each ``policy(obs)`` call draws masks for its rows."""
        self.active: dict[str, th.Tensor] | None = None
        self.last: dict[str, th.Tensor] | None = None
        """The masks of the latest rollout forward pass, for the buffer to store with the transitions."""

    def widths(self) -> dict[str, int]:
        return {name: width for name, (_, width) in self.layers.items()}

    def sample(self, rows: int) -> dict[str, th.Tensor]:
        """Fresh inverted-dropout masks, one row per transition: 0 or 1 / (1 - p)."""
        masks = {}
        for name, (rate, width) in self.layers.items():
            keep = th.rand((rows, width), generator=self.generator) >= rate
            masks[name] = keep.float() / (1.0 - rate)
        return masks

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    # -- hooks -------------------------------------------------------------------------------------------------
    def _apply_hook(self, name: str) -> Any:
        def hook(module: nn.Module, inputs: Any, output: th.Tensor) -> th.Tensor | None:
            if self.active is None:
                return None  # no masks: the network without dropout
            return output * self.active[name].to(output)

        return hook

    def _rollout_start(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        if self.sampling:
            obs = args[0]
            rows = obs.shape[0] if isinstance(obs, th.Tensor) else len(next(iter(obs.values())))
            self.active = self.last = self.sample(rows)

    def _rollout_end(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        if self.sampling:
            self.active = None  # the bootstrap values that follow are taken without dropout

    # -- contexts ----------------------------------------------------------------------------------------------
    @contextmanager
    def rollout(self) -> Iterator[None]:
        """While collecting a rollout: each acting forward pass draws the masks its transitions keep."""
        self.sampling, self.active, self.last = True, None, None
        try:
            yield
        finally:
            self.sampling, self.active = False, None

    @contextmanager
    def replay(self, batch: RolloutBufferSamples | DropoutRolloutBufferSamples) -> Iterator[None]:
        """While evaluating a minibatch: its stored masks (naive variant: fresh ones); none for a batch without."""
        masks = getattr(batch, "masks", None)
        if masks is not None and not self.consistent:
            masks = self.sample(len(batch.observations))
        previous, self.active = self.active, masks
        try:
            yield
        finally:
            self.active = previous


class DropoutRolloutBuffer(RolloutBuffer):
    """SB3's rollout buffer that also keeps each transition's dropout masks and hands them out with its minibatch."""

    def __init__(
        self,
        buffer_size: int,
        observation_space: spaces.Space,
        action_space: spaces.Space,
        *,
        dropout: ConsistentDropout,
        **kwargs: Any,
    ) -> None:
        self.dropout = dropout
        super().__init__(buffer_size, observation_space, action_space, **kwargs)

    def reset(self) -> None:
        widths = self.dropout.widths()
        self.masks = {
            name: np.zeros((self.buffer_size, self.n_envs, w), dtype=np.float32) for name, w in widths.items()
        }
        super().reset()

    def add(self, *args: Any, **kwargs: Any) -> None:
        last = self.dropout.last
        if last is None:
            raise RlflatError("dropout masks missing for a rollout transition (collect_rollouts outside rollout())")
        for name, mask in last.items():
            self.masks[name][self.pos] = mask.cpu().numpy()
        super().add(*args, **kwargs)

    def get(self, batch_size: int | None = None) -> Iterator[DropoutRolloutBufferSamples]:  # type: ignore[override]
        if not self.generator_ready:
            self.masks = {name: self.swap_and_flatten(mask) for name, mask in self.masks.items()}
        yield from super().get(batch_size)  # type: ignore[misc]

    def _get_samples(self, batch_inds: np.ndarray, env: Any = None) -> DropoutRolloutBufferSamples:  # type: ignore[override]
        base = super()._get_samples(batch_inds, env)
        masks = {name: self.to_torch(mask[batch_inds]) for name, mask in self.masks.items()}
        return DropoutRolloutBufferSamples(*base, masks=masks)
