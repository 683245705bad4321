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


def minibatch_losses(
    shared: Shared, params: Params, batch: Batch, scalars: dict[str, th.Tensor]
) -> tuple[th.Tensor, th.Tensor]:
    """Per-learner loss ``(K,)`` and PPO's approx_kl ``(K,)`` (zeros for PG) on stacked minibatches."""
    net = shared.net
    head, values, latent_pi = net.forward(params, batch["observations"])
    dist = net.distribution(params, head, latent_pi)
    actions = batch["actions"] if net.gaussian else batch["actions"].long().flatten(1)
    log_prob, entropy = net.log_prob_entropy(dist, actions)
    advantages = batch["advantages"]
    if shared.normalize_advantage and advantages.shape[1] > 1:
        advantages = (advantages - advantages.mean(dim=1, keepdim=True)) / (advantages.std(dim=1, keepdim=True) + 1e-8)
    entropy_loss = -th.mean(entropy, dim=1)
    if shared.base == "pg":
        policy_loss = -(advantages * log_prob).mean(dim=1)
        value_loss = _mse(batch["returns"], values)
        kl = th.zeros_like(policy_loss)
    else:
        ratio = th.exp(log_prob - batch["old_log_prob"])
        low, high = scalars["clip_low"], scalars["clip_high"]
        policy_loss = -th.min(advantages * ratio, advantages * th.clamp(ratio, low, high)).mean(dim=1)
        values_pred = values
        if "vf_clip" in scalars:
            old = batch["old_values"]
            clipped = old + th.clamp(values - old, -scalars["vf_clip"], scalars["vf_clip"])
            values_pred = th.where(scalars["vf_clip_on"], clipped, values)
        value_loss = _mse(batch["returns"], values_pred)
        with th.no_grad():
            log_ratio = log_prob - batch["old_log_prob"]
            kl = th.mean((th.exp(log_ratio) - 1) - log_ratio, dim=1)
    loss = policy_loss + scalars["ent_coef"] * entropy_loss + scalars["vf_coef"] * value_loss
    return loss, kl


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
        loss, kl = minibatch_losses(self.shared, self.params, batch, scalars)
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
                grads = self._sharpness_aware(batch, scalars, grads, stepping, minibatch)
            if stepping:
                self._apply(grads, stepping)
            for k in stepping:
                minibatch[k] += 1
        return stop

    def _grads(self, loss: th.Tensor, rows: list[int]) -> Params:
        values = th.autograd.grad(loss[rows].sum(), [self.params[n] for n in self.names])
        return dict(zip(self.names, values, strict=True))

    def _sharpness_aware(
        self, batch: Batch, scalars: dict[str, th.Tensor], grads: Params, stepping: list[int], minibatch: dict[int, int]
    ) -> Params:
        """SAM/ASAM: the gradient at each learner's own theta + e, theta restored bit for bit."""
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
        perturbed_loss, _ = minibatch_losses(self.shared, self.params, batch, scalars)
        finite = [k for k in stepping if bool(th.isfinite(perturbed_loss[k]))]
        second = self._grads(perturbed_loss, finite) if finite else grads
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
