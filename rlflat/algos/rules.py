"""Update rules: how one minibatch loss becomes one optimizer step (plain, SAM, ASAM).

A rule is independent of the RL algorithm: it receives the loss at the current parameters and a closure that
recomputes the same minibatch loss at whatever the parameters currently are. SB3 calls ``optimizer.step()``
without a closure, so SAM cannot be an optimizer here; the algorithms' ``train()`` calls a rule instead.

SAM (Foret et al. 2021, "Sharpness-Aware Minimization for Efficiently Improving Generalization") steps with
the gradient taken at the worst-case point ``theta + e`` of a rho-ball, ``e = rho g / ||g||``. ASAM (Kwon et
al. 2021, "ASAM: Adaptive Sharpness-Aware Minimization") makes the ball scale-invariant with the
normalisation operator ``T = |theta| + eta``: ``e = rho T^2 g / ||T g||``, elementwise over every perturbed
tensor, biases included (:func:`rlflat.scope.adaptive_scale`, shared with the probe's adaptive ball).

Invariants the tests pin down:

* the parameters are restored bit-for-bit (saved copies are copied back; subtracting ``e`` would leave
  rounding error that accumulates over thousands of steps);
* the two gradients never accumulate (grads are zeroed in between; the public SAM+PPO code of Lee & Yoon
  2025 accumulates them, so it steps with ``g + g_sam``);
* gradient clipping applies to the gradient the base optimizer steps with, exactly as in the plain rule,
  so plain and SAM runs differ only in where the gradient is taken;
* with ``rho = 0`` SAM reproduces the plain rule;
* a non-finite loss at the perturbed point stops training (:class:`TrainingDiverged`) with theta restored.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import ClassVar

import torch as th

from rlflat.errors import RlflatError
from rlflat.scope import adaptive_scale

Closure = Callable[[], th.Tensor]

SAM_SCOPES = ("actor", "all")
"""``actor``: perturb only the policy network (mlp_extractor.policy_net + action_net), the part whose
flatness the robustness hypothesis is about; ``all``: every parameter, critic and log_std included."""

_NORM_EPS = 1e-12


class TrainingDiverged(RlflatError):
    """A loss or a parameter became non-finite; training stops and nothing is saved."""


def _clip(params: Sequence[th.nn.Parameter], max_grad_norm: float | None) -> None:
    if max_grad_norm is not None:
        th.nn.utils.clip_grad_norm_(params, max_grad_norm)


class UpdateRule:
    """Plain rule: backward, clip, step -- the order of SB3's PPO/A2C ``train()``."""

    name: ClassVar[str] = "plain"
    description: ClassVar[str] = "plain gradient step of the base optimizer"

    def step(
        self,
        optimizer: th.optim.Optimizer,
        loss: th.Tensor,
        closure: Closure,
        params: Sequence[th.nn.Parameter],
        perturbed: Sequence[th.nn.Parameter],
        max_grad_norm: float | None,
    ) -> None:
        """One update. ``params``: all parameters (clipped); ``perturbed``: the ones SAM may move."""
        optimizer.zero_grad()
        loss.backward()
        _clip(params, max_grad_norm)
        optimizer.step()


class SAM(UpdateRule):
    """Sharpness-aware step (Foret et al. 2021) around any base optimizer."""

    name: ClassVar[str] = "sam"
    description: ClassVar[str] = "SAM (Foret et al. 2021): gradient at theta + rho g/||g||"

    def __init__(self, rho: float) -> None:
        if not rho >= 0:
            raise RlflatError(f"rho must be >= 0, got {rho!r}")
        self.rho = rho

    def perturbation(self, params: Sequence[th.Tensor], grads: Sequence[th.Tensor]) -> list[th.Tensor]:
        """The ascent step ``e`` for each parameter (SAM: rho g/||g||, the first-order worst case)."""
        norm = th.linalg.vector_norm(th.stack([th.linalg.vector_norm(g) for g in grads]))
        scale = self.rho / (norm + _NORM_EPS)
        return [g * scale for g in grads]

    def step(
        self,
        optimizer: th.optim.Optimizer,
        loss: th.Tensor,
        closure: Closure,
        params: Sequence[th.nn.Parameter],
        perturbed: Sequence[th.nn.Parameter],
        max_grad_norm: float | None,
    ) -> None:
        optimizer.zero_grad()
        loss.backward()
        with th.no_grad():
            moved = [p for p in perturbed if p.grad is not None]
            saved = [p.detach().clone() for p in moved]
            if moved:
                grads = [p.grad for p in moved if p.grad is not None]
                for p, e in zip(moved, self.perturbation(moved, grads), strict=True):
                    p.add_(e)
        optimizer.zero_grad()  # the step uses the perturbed gradient alone, never g + g_sam
        perturbed_loss = closure()
        finite = bool(th.isfinite(perturbed_loss))
        if finite:
            perturbed_loss.backward()
        with th.no_grad():
            for p, original in zip(moved, saved, strict=True):
                p.copy_(original)  # exact restore
        if not finite:
            optimizer.zero_grad()
            raise TrainingDiverged(
                f"loss at the {self.name.upper()}-perturbed point is {perturbed_loss.item()} "
                f"(rho={self.rho}; the loss at theta was {loss.item():.4g})"
            )
        _clip(params, max_grad_norm)
        optimizer.step()


class ASAM(SAM):
    """Adaptive SAM (Kwon et al. 2021): the rho-ball is measured relative to each weight's magnitude.

    ``T = |theta| + eta`` for every tensor, biases included, as the paper defines the operator (Kwon et al.'s
    reference code leaves biases at ``T = 1``; scaling them is what makes the ball invariant to per-neuron
    rescaling). The scale is :func:`rlflat.scope.adaptive_scale`, the probe's too.
    """

    name: ClassVar[str] = "asam"
    description: ClassVar[str] = "ASAM (Kwon et al. 2021): e = rho T^2 g/||T g||, T = |theta| + eta"

    def __init__(self, rho: float, eta: float = 0.01) -> None:
        super().__init__(rho)
        if not eta > 0:
            raise RlflatError(f"asam_eta must be > 0, got {eta!r}")
        self.eta = eta

    def perturbation(self, params: Sequence[th.Tensor], grads: Sequence[th.Tensor]) -> list[th.Tensor]:
        scales = [adaptive_scale(p, self.eta) for p in params]
        scaled = [t * g for t, g in zip(scales, grads, strict=True)]
        norm = th.linalg.vector_norm(th.stack([th.linalg.vector_norm(s) for s in scaled]))
        factor = self.rho / (norm + _NORM_EPS)
        return [t * s * factor for t, s in zip(scales, scaled, strict=True)]


RULES: dict[str, type[UpdateRule]] = {"plain": UpdateRule, "sam": SAM, "asam": ASAM}

RULE_DEFAULTS: dict[str, dict[str, object]] = {
    "plain": {},
    # Foret et al.'s default radius. SAM's perturbation has norm rho whatever the gradient scale, and the
    # CartPole actor's weights have norm ~10, so 0.05 is a ~0.5% move, the regime SAM was tuned in.
    "sam": {"rho": 0.05, "sam_scope": "actor"},
    # Kwon et al. use rho ~10x SAM's (0.5 with eta 0.01 for CIFAR): T-scaling shrinks the step by ~|theta|.
    "asam": {"rho": 0.5, "sam_scope": "actor", "asam_eta": 0.01},
}

RULE_KEYS: dict[str, tuple[str, ...]] = {rule: tuple(keys) for rule, keys in RULE_DEFAULTS.items()}


def make_rule(name: str, rho: float | None = None, asam_eta: float | None = None) -> UpdateRule:
    """Instantiate a rule by name, filling its defaults."""
    defaults = RULE_DEFAULTS[name]
    if name == "plain":
        return UpdateRule()
    radius = float(rho if rho is not None else defaults["rho"])  # type: ignore[arg-type]
    if name == "sam":
        return SAM(radius)
    eta = float(asam_eta if asam_eta is not None else defaults["asam_eta"])  # type: ignore[arg-type]
    return ASAM(radius, eta)
