"""One ``train()`` for K learners: PPO's epochs of minibatch updates or PG's full-batch step, per learner exactly
:mod:`rlflat.algos.ppo` / :mod:`rlflat.algos.pg` (SB3's arithmetic), with every learner's update rule
(plain/SAM/ASAM) applied to its own slice.

A learner past its ``target_kl`` stops drawing permutations and taking steps for the rest of the update; it is
masked, not waited for. A learner whose loss or parameters become non-finite fails alone (its error names the
iteration, timestep and minibatch as a single run's would).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch as th

from rlflat.population.learners import Learner
from rlflat.population.network import Params, StackedActorCritic
from rlflat.population.optim import StackedAdam, clip_by_global_norm, sam_perturbation
from rlflat.population.rollout import Rollout
from rlflat.scope import actor_parameter_names

Batch = dict[str, th.Tensor]


@dataclass
class Shared:
    """What every learner of the population shares: the network shape, the rule and the batch layout."""

    net: StackedActorCritic
    base: str
    rule: str
    n_epochs: int
    batch_size: int | None
    normalize_advantage: bool
    perturbed: list[str]

    @classmethod
    def of(cls, net: StackedActorCritic, learner: Learner) -> Shared:
        model = learner.model
        named = [n for n, _ in model.policy.named_parameters()]
        perturbed = named if model.sam_scope == "all" else actor_parameter_names(named)
        ppo = model.rlflat_algorithm.startswith("ppo")
        return cls(
            net,
            "ppo" if ppo else "pg",
            model.update_rule,
            int(model.n_epochs) if ppo else 1,  # type: ignore[attr-defined]
            int(model.batch_size) if ppo else None,  # type: ignore[attr-defined]
            bool(model.normalize_advantage),  # type: ignore[attr-defined]
            perturbed,
        )


def _mse(a: th.Tensor, b: th.Tensor) -> th.Tensor:
    """Row-wise ``F.mse_loss(a, b)`` over ``(K, B)``: mean of (a - b)^2 per learner."""
    return ((a - b) ** 2).mean(dim=1)


CRITIC_PREFIXES = ("mlp_extractor.value_net.", "value_net.")
"""Parameters that only the value loss reads (SB3's MLP extractor keeps the two networks apart)."""


def minibatch_losses(
    shared: Shared, params: Params, batch: Batch, scalars: dict[str, th.Tensor], value_term: th.Tensor | None = None
) -> tuple[th.Tensor, th.Tensor, th.Tensor]:
    """Per-learner loss ``(K,)``, PPO's approx_kl ``(K,)`` (zeros for PG) and the value term ``vf_coef * value
    loss`` (detached) on stacked minibatches.

    With ``value_term`` given, the value network is not evaluated and that term is added instead: SAM's second
    pass, where only actor parameters moved, so the value loss (a function of the critic alone) is the first
    pass's to the bit, and the loss's value and its actor-side gradient are what a full pass would give.
    """
    net = shared.net
    if value_term is None:
        head, values, latent_pi = net.forward(params, batch["observations"])
    else:
        head, latent_pi = net.actor(params, batch["observations"])
    dist = net.distribution(params, head, latent_pi)
    actions = batch["actions"] if net.gaussian else batch["actions"].long().flatten(1)
    log_prob, entropy = net.log_prob_entropy(dist, actions)
    advantages = batch["advantages"]
    if shared.normalize_advantage and advantages.shape[1] > 1:
        advantages = (advantages - advantages.mean(dim=1, keepdim=True)) / (advantages.std(dim=1, keepdim=True) + 1e-8)
    entropy_loss = -th.mean(entropy, dim=1)
    if shared.base == "pg":
        policy_loss = -(advantages * log_prob).mean(dim=1)
        kl = th.zeros_like(policy_loss)
    else:
        ratio = th.exp(log_prob - batch["old_log_prob"])
        low, high = scalars["clip_low"], scalars["clip_high"]
        policy_loss = -th.min(advantages * ratio, advantages * th.clamp(ratio, low, high)).mean(dim=1)
        with th.no_grad():
            log_ratio = log_prob - batch["old_log_prob"]
            kl = th.mean((th.exp(log_ratio) - 1) - log_ratio, dim=1)
    if value_term is None:
        value_term = scalars["vf_coef"] * _value_loss(shared, batch, values, scalars)
    loss = policy_loss + scalars["ent_coef"] * entropy_loss + value_term
    return loss, kl, value_term.detach()


def _value_loss(shared: Shared, batch: Batch, values: th.Tensor, scalars: dict[str, th.Tensor]) -> th.Tensor:
    """``F.mse_loss(returns, values)``, PPO's values clipped around the rollout's where clip_range_vf is set."""
    values_pred = values
    if shared.base == "ppo" and "vf_clip" in scalars:
        old = batch["old_values"]
        clipped = old + th.clamp(values - old, -scalars["vf_clip"], scalars["vf_clip"])
        values_pred = th.where(scalars["vf_clip_on"], clipped, values)
    return _mse(batch["returns"], values_pred)


def _scalars(learners: Sequence[Learner], progress: float) -> dict[str, th.Tensor]:
    """Per-learner float32 columns of the scalar hyperparameters at this progress (schedules evaluated)."""

    def column(values: list[float]) -> th.Tensor:
        return th.tensor(values, dtype=th.float32).view(-1, 1)

    models = [learner.model for learner in learners]
    scalars = {
        "ent_coef": th.tensor([float(m.ent_coef) for m in models], dtype=th.float32),
        "vf_coef": th.tensor([float(m.vf_coef) for m in models], dtype=th.float32),
    }
    if hasattr(models[0], "clip_range"):
        clips = [float(m.clip_range(progress)) for m in models]  # type: ignore[attr-defined]
        scalars["clip_low"] = column([1 - c for c in clips])
        scalars["clip_high"] = column([1 + c for c in clips])
        vf = [None if m.clip_range_vf is None else float(m.clip_range_vf(progress)) for m in models]  # type: ignore[attr-defined]
        if any(v is not None for v in vf):
            scalars["vf_clip"] = column([v if v is not None else 0.0 for v in vf])
            scalars["vf_clip_on"] = th.tensor([v is not None for v in vf]).view(-1, 1)
    return scalars


class Trainer:
    """Holds the stacked parameters and optimiser; ``train`` runs one update of every live learner."""

    def __init__(self, shared: Shared, params: Params, optimizer: StackedAdam, learners: list[Learner]) -> None:
        self.shared = shared
        self.params = params
        self.optimizer = optimizer
        self.learners = learners
        self.names = list(params)
        self.lrs = [0.0] * len(learners)

    def train(self, buffer: Rollout, progress: float) -> None:
        learners = self.learners
        live = [k for k, learner in enumerate(learners) if not learner.failed]
        self.lrs = [float(learners[k].model.lr_schedule(progress)) if k in live else 0.0 for k in range(len(learners))]
        scalars = _scalars(learners, progress)
        data = {
            "observations": buffer.flat("observations"),
            "actions": buffer.flat("actions"),
            "old_values": buffer.flat("values"),
            "old_log_prob": buffer.flat("log_probs"),
            "advantages": buffer.flat("advantages"),
            "returns": buffer.flat("returns"),
        }
        total = data["advantages"].shape[1]
        size = self.shared.batch_size or total
        active = list(live)
        minibatch = {k: 0 for k in live}
        rows = th.arange(len(learners)).unsqueeze(1)
        for _epoch in range(self.shared.n_epochs):
            if not active:
                break
            order = th.zeros((len(learners), total), dtype=th.long)
            for k in active:  # a learner stopped by target_kl draws no more permutations, as in SB3
                order[k] = th.as_tensor(learners[k].numpy_rng.permutation(total))
            entered = list(active)
            for start in range(0, total, size):
                if not active:
                    break
                index = order[:, start : start + size]
                batch = {name: tensor[rows, index] for name, tensor in data.items()}
                stop = self._minibatch(batch, scalars, active, minibatch)
                active = [k for k in active if k not in stop and not learners[k].failed]
            for k in entered:  # SB3 counts the epoch in which a learner stopped early too
                learners[k].n_updates += 1
        for learner in learners:
            if not learner.failed:
                learner.iteration += 1
        self._check_parameters()

    def _minibatch(
        self, batch: Batch, scalars: dict[str, th.Tensor], active: list[int], minibatch: dict[int, int]
    ) -> list[int]:
        """One minibatch step of the active learners; returns those stopping now (approx_kl > 1.5 target_kl)."""
        learners = self.learners
        loss, kl, value_term = minibatch_losses(self.shared, self.params, batch, scalars)
        losses, kls = loss.tolist(), kl.tolist()
        finite = th.isfinite(loss).tolist()
        stop = []
        stepping = []
        for k in active:
            target = getattr(learners[k].model, "target_kl", None)
            if target is not None and kls[k] > 1.5 * target:
                stop.append(k)
            elif not finite[k]:
                self._fail(k, minibatch[k], f"loss is {losses[k]}")
            else:
                stepping.append(k)
        if stepping:
            grads = self._grads(loss, stepping)
            if self.shared.rule != "plain":
                grads = self._sharpness_aware(batch, scalars, grads, stepping, minibatch, value_term)
            if stepping:
                self._apply(grads, stepping)
            for k in stepping:
                minibatch[k] += 1
        return stop

    def _grads(self, loss: th.Tensor, rows: list[int], names: list[str] | None = None) -> Params:
        names = self.names if names is None else names
        values = th.autograd.grad(loss[rows].sum(), [self.params[n] for n in names])
        return dict(zip(names, values, strict=True))

    def _sharpness_aware(
        self,
        batch: Batch,
        scalars: dict[str, th.Tensor],
        grads: Params,
        stepping: list[int],
        minibatch: dict[int, int],
        value_term: th.Tensor,
    ) -> Params:
        """SAM/ASAM: the gradient at each learner's own theta + e, theta restored bit for bit.

        When no critic parameter is perturbed (``sam_scope: actor``), the critic's gradient at theta + e is its
        gradient at theta (the value loss reads only critic parameters, which did not move): it is reused, and
        the second pass evaluates the policy side alone (:func:`minibatch_losses` with ``value_term``)."""
        learners = self.learners
        names = self.shared.perturbed
        rhos = [float(learners[k].model._rule.rho) for k in range(len(learners))]  # type: ignore[attr-defined]
        etas = None
        if self.shared.rule == "asam":
            etas = [float(learners[k].model._rule.eta) for k in range(len(learners))]  # type: ignore[attr-defined]
        with th.no_grad():
            saved = {n: self.params[n].detach().clone() for n in names}
            steps = sam_perturbation([self.params[n] for n in names], [grads[n] for n in names], rhos, etas)
            for n, e in zip(names, steps, strict=True):
                self.params[n].add_(e)
        actor_only = not any(n.startswith(CRITIC_PREFIXES) for n in names)
        critic = [n for n in self.names if n.startswith(CRITIC_PREFIXES)] if actor_only else []
        reused = value_term if actor_only else None
        perturbed_loss, _, _ = minibatch_losses(self.shared, self.params, batch, scalars, reused)
        finite = [k for k in stepping if bool(th.isfinite(perturbed_loss[k]))]
        second = grads
        if finite:
            second = self._grads(perturbed_loss, finite, [n for n in self.names if n not in critic])
            second.update({n: grads[n] for n in critic})
        with th.no_grad():
            for n in names:
                self.params[n].copy_(saved[n])
        for k in stepping:
            if k not in finite:
                rule = learners[k].model.update_rule.upper()
                self._fail(k, minibatch[k], f"loss at the {rule}-perturbed point is {perturbed_loss[k].item()}")
        stepping[:] = finite
        return second

    def _apply(self, grads: Params, stepping: list[int]) -> None:
        learners = self.learners
        clip = [float(learner.model.max_grad_norm) for learner in learners]
        grad_list = [grads[n] for n in self.names]
        clip_by_global_norm(grad_list, clip)
        index = None if len(stepping) == len(learners) else stepping
        self.optimizer.step(self.params, dict(zip(self.names, grad_list, strict=True)),
                            [self.lrs[k] for k in stepping], index)  # fmt: skip

    def _fail(self, k: int, minibatch: int, what: str) -> None:
        learner = self.learners[k]
        model = learner.model
        where = f"at iteration {learner.iteration} (timestep {model.num_timesteps}), minibatch {minibatch}"
        learner.error = f"training diverged {where}: {what}; lower learning_rate or rho"

    def _check_parameters(self) -> None:
        for k, learner in enumerate(self.learners):
            if learner.failed:
                continue
            for name in self.names:
                if not bool(th.isfinite(self.params[name][k]).all()):
                    when = f"at iteration {learner.iteration} (timestep {learner.model.num_timesteps})"
                    learner.error = f"training diverged {when}: parameter {name!r} is not finite"
                    break
