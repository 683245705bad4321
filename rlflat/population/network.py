"""K SB3 actor-critic MLPs of one shape as one: parameters stacked on a leading K axis.

Matrix products run per learner with ``nn.Linear``'s own kernels (:class:`StackedLinear`: one ``addmm`` per
learner and layer, and ``mm`` for its gradients), so a learner's numbers equal SB3's bit for bit and do not
depend on its population; everything elementwise or per row (activations, distributions, losses, clipping,
Adam) runs once for all K. ``torch.func.vmap`` over ``functional_call`` was slower (16.5 ms against 10.8 ms
for batched matmuls at K = 16 on CartPole's 64x64 nets, forward + backward) and its batched kernels have the
same K-dependent rounding as ``bmm`` (see :class:`StackedLinear`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch as th
from stable_baselines3.common.distributions import (
    CategoricalDistribution,
    DiagGaussianDistribution,
    StateDependentNoiseDistribution,
)
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.torch_layers import FlattenExtractor

from rlflat.errors import RlflatError

Params = dict[str, th.Tensor]


class StackedLinear(th.autograd.Function):
    """``y[k] = x[k] @ W[k]^T + b[k]`` computed slice by slice with ``nn.Linear``'s own kernels, both ways.

    ``baddbmm``/``bmm`` over the K axis would be one call, but its kernel choice depends on the batch count
    (a 64 -> 1 value head rounded differently at K = 2 than at K = 1, where it equals ``addmm``) and its
    backward computes the weight gradient as ``x^T @ g`` where ``nn.Linear`` computes ``g^T @ x``. Either
    would make a learner's last bits depend on its population and differ from SB3. So forward and backward
    call, per learner, exactly what ``nn.Linear`` calls (``addmm``; ``mm`` for the gradients); what the
    population batches is everything else (activations, distributions, losses, clipping, Adam).
    """

    @staticmethod
    def forward(ctx: Any, x: th.Tensor, weight: th.Tensor, bias: th.Tensor) -> th.Tensor:  # type: ignore[override]
        out = x.new_empty((x.shape[0], x.shape[1], weight.shape[1]))
        for k in range(x.shape[0]):
            th.addmm(bias[k], x[k], weight[k].t(), out=out[k])
        ctx.save_for_backward(x, weight)
        return out

    @staticmethod
    def backward(ctx: Any, grad: th.Tensor) -> tuple[th.Tensor | None, ...]:  # type: ignore[override]
        x, weight = ctx.saved_tensors
        grad_x = grad_w = grad_b = None
        k_count = grad.shape[0]
        if ctx.needs_input_grad[0]:
            grad_x = x.new_empty(x.shape)
            for k in range(k_count):
                th.mm(grad[k], weight[k], out=grad_x[k])
        if ctx.needs_input_grad[1]:
            grad_w = weight.new_empty(weight.shape)
            for k in range(k_count):
                th.mm(grad[k].t(), x[k], out=grad_w[k])
        if ctx.needs_input_grad[2]:
            grad_b = weight.new_empty((k_count, weight.shape[1]))
            for k in range(k_count):
                th.sum(grad[k], 0, out=grad_b[k])
        return grad_x, grad_w, grad_b


def linear_layers(module: th.nn.Module, prefix: str) -> list[tuple[str, str]]:
    """``(weight name, bias name)`` of every ``nn.Linear`` in ``module`` (a Sequential), in order."""
    layers = []
    for name, child in module.named_children():
        if isinstance(child, th.nn.Linear):
            layers.append((f"{prefix}.{name}.weight", f"{prefix}.{name}.bias"))
        elif not isinstance(child, th.nn.Module) or any(True for _ in child.parameters()):
            raise RlflatError(f"population engine: unsupported layer {type(child).__name__} in {prefix}")
    return layers


def check_policy(policy: ActorCriticPolicy) -> str | None:
    """Why ``policy`` cannot be stacked (None if it can): flat observations, MLPs, categorical or Gaussian."""
    if not isinstance(policy.features_extractor, FlattenExtractor):
        return f"features extractor {type(policy.features_extractor).__name__}"
    dist = policy.action_dist
    if not isinstance(dist, CategoricalDistribution | DiagGaussianDistribution | StateDependentNoiseDistribution):
        return f"action distribution {type(dist).__name__}"
    if isinstance(dist, StateDependentNoiseDistribution) and (
        not dist.full_std or dist.use_expln or dist.learn_features or dist.bijector is not None
    ):
        return "gSDE with full_std false, use_expln, learn_features or squashed actions"
    if policy.squash_output:
        return "squashed actions"
    for module in (policy.mlp_extractor.policy_net, policy.mlp_extractor.value_net):
        for child in module.children():
            if not isinstance(child, th.nn.Linear) and any(True for _ in child.parameters()):
                return f"layer {type(child).__name__}"
    return None


class StackedActorCritic:
    """The shape of one SB3 ``ActorCriticPolicy`` and functions of K stacked parameter sets of that shape."""

    def __init__(self, policy: ActorCriticPolicy) -> None:
        self.names = [name for name, _ in policy.named_parameters()]
        self.pi_layers = linear_layers(policy.mlp_extractor.policy_net, "mlp_extractor.policy_net")
        self.vf_layers = linear_layers(policy.mlp_extractor.value_net, "mlp_extractor.value_net")
        self.activation = policy.activation_fn()
        self.sde = isinstance(policy.action_dist, StateDependentNoiseDistribution)
        self.gaussian = self.sde or isinstance(policy.action_dist, DiagGaussianDistribution)
        self.sde_epsilon = float(getattr(policy.action_dist, "epsilon", 0.0))

    @staticmethod
    def stack(policies: Sequence[ActorCriticPolicy]) -> Params:
        """Leaf tensors ``(K, *shape)`` copied from each policy's parameters (named_parameters order)."""
        named = [dict(p.named_parameters()) for p in policies]
        return {name: th.stack([n[name].detach() for n in named]).clone() for name in named[0]}

    @staticmethod
    def unstack_into(params: Params, policies: Sequence[ActorCriticPolicy], index: Sequence[int]) -> None:
        """Copy slice ``index[i]`` of ``params`` into ``policies[i]`` (bit for bit)."""
        with th.no_grad():
            for policy, k in zip(policies, index, strict=True):
                for name, param in policy.named_parameters():
                    param.copy_(params[name][k])

    def _mlp(self, params: Params, x: th.Tensor, layers: list[tuple[str, str]]) -> th.Tensor:
        for weight, bias in layers:
            x = self.activation(StackedLinear.apply(x, params[weight], params[bias]))
        return x

    @staticmethod
    def _linear(params: Params, x: th.Tensor, prefix: str) -> th.Tensor:
        return StackedLinear.apply(x, params[f"{prefix}.weight"], params[f"{prefix}.bias"])  # type: ignore[no-any-return]

    def forward(self, params: Params, obs: th.Tensor) -> tuple[th.Tensor, th.Tensor, th.Tensor]:
        """``obs (K, B, obs_dim)`` -> (action logits or Gaussian means ``(K, B, A)``, values ``(K, B)``, the
        policy latent ``(K, B, L)`` that gSDE's noise and variance read)."""
        obs = obs.float()
        latent_pi = self._mlp(params, obs, self.pi_layers)
        latent_vf = self._mlp(params, obs, self.vf_layers)
        head = self._linear(params, latent_pi, "action_net")
        return head, self._linear(params, latent_vf, "value_net")[..., 0], latent_pi

    def actor(self, params: Params, obs: th.Tensor) -> tuple[th.Tensor, th.Tensor]:
        """The policy side alone: (head ``(K, B, A)``, policy latent ``(K, B, L)``)."""
        latent_pi = self._mlp(params, obs.float(), self.pi_layers)
        return self._linear(params, latent_pi, "action_net"), latent_pi

    def values(self, params: Params, obs: th.Tensor) -> th.Tensor:
        """Values only ``(K, B)``."""
        latent_vf = self._mlp(params, obs.float(), self.vf_layers)
        return self._linear(params, latent_vf, "value_net")[..., 0]

    def distribution(self, params: Params, head: th.Tensor, latent_pi: th.Tensor) -> th.distributions.Distribution:
        """SB3's action distribution over ``(K, B)`` from the head's output: categorical, Gaussian with a
        state-independent log_std, or gSDE's Gaussian with variance ``latent^2 @ std^2`` (per learner ``mm``)."""
        if self.sde:
            std = params["log_std"].exp()
            latent = latent_pi.detach() ** 2
            variance = th.stack([th.mm(latent[k], std[k] ** 2) for k in range(head.shape[0])])
            return th.distributions.Normal(head, th.sqrt(variance + self.sde_epsilon), validate_args=False)
        if self.gaussian:
            std = th.ones_like(head) * params["log_std"].exp().unsqueeze(1)
            return th.distributions.Normal(head, std, validate_args=False)
        return th.distributions.Categorical(logits=head, validate_args=False)

    def log_prob_entropy(self, dist: th.distributions.Distribution, actions: th.Tensor) -> tuple[th.Tensor, th.Tensor]:
        """Log-probabilities and entropies ``(K, B)`` as SB3 sums them over action dimensions."""
        if self.gaussian:
            return dist.log_prob(actions).sum(dim=-1), dist.entropy().sum(dim=-1)
        return dist.log_prob(actions), dist.entropy()

    def value_single(self, params: Params, k: int, obs: th.Tensor) -> th.Tensor:
        """Learner k's value of one observation ``(1, obs_dim)`` through ``nn.Linear``'s own kernel, as SB3's
        ``predict_values`` computes the bootstrap value of a truncated episode (a batch of one)."""
        x = obs.float()
        for weight, bias in self.vf_layers:
            x = self.activation(th.nn.functional.linear(x, params[weight][k], params[bias][k]))
        return th.nn.functional.linear(x, params["value_net.weight"][k], params["value_net.bias"][k]).flatten()
