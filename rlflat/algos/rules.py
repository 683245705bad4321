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

``lysam`` is the step Lee & Yoon's (2025) public training script applies (:class:`LeeYoonSAM`); it is not
Foret's SAM but a finite-difference gradient-norm penalty, kept beside it so the two can be compared.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import ClassVar

import torch as th

from rlflat.errors import RlflatError
from rlflat.scope import actor_parameter_names, adaptive_scale

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


def _backward_at_moved_point(
    optimizer: th.optim.Optimizer,
    closure: Closure,
    moved: Sequence[th.nn.Parameter],
    saved: Sequence[th.Tensor],
    loss: th.Tensor,
    label: str,
    rho: float | None,
) -> None:
    """Gradients of ``closure`` at the moved parameters (fresh, never added to those at theta), then ``moved``
    restored bit for bit from ``saved``; a non-finite loss there stops training with theta restored."""
    optimizer.zero_grad()
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
            f"loss at the {label}-perturbed point is {perturbed_loss.item()} "
            f"(rho={rho}; the loss at theta was {loss.item():.4g})"
        )


class UpdateRule:
    """Plain rule: backward, clip, step -- the order of SB3's PPO/A2C ``train()``."""

    name: ClassVar[str] = "plain"
    description: ClassVar[str] = "plain gradient step of the base optimizer"

    def bind(self, named: Mapping[str, th.nn.Parameter], scope: str) -> None:
        """Told the policy's parameters by name once they exist; only rules that group them need it."""

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
        # the step uses the perturbed gradient alone, never g + g_sam
        _backward_at_moved_point(optimizer, closure, moved, saved, loss, self.name.upper(), self.rho)
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


CRITIC_PREFIXES = ("mlp_extractor.value_net.", "value_net.")
"""Name prefixes of SB3's critic; every other parameter (log_std included) is the policy network's."""


class LeeYoonSAM(UpdateRule):
    """The step of Lee & Yoon's (ICLR 2025) public SAM+PPO training code (``sam_ppo_continuous_efficient.py``).

    Per network, with ``g`` the minibatch gradient, ``s = rho / (||g|| + 1e-12)`` and ``e = s g`` (norm rho):
    the gradient handed to the base optimizer is ``g + (g(theta + e) - g) / s``. The difference quotient is
    ``H g + O(rho)``, so the step follows ``grad(L + ||grad L||^2 / 2)``, a gradient-norm penalty of weight one
    (Drucker & LeCun 1992; Barrett & Dherin 2021): rho sets only the finite-difference step, not the strength
    of the penalty, unlike Foret's SAM where rho is the radius of the worst case. Their code applies it to the
    actor and, with its own SAM optimiser and the same rho, to the critic: with ``sam_scope: all`` (the
    default) the policy network (every parameter outside the critic, ``log_std`` included) and the critic are
    two groups, each with its own ``s``; with ``actor``, the actor scope (:mod:`rlflat.scope`) is the one
    group and the critic steps plainly. The groups are independent only for separate actor and critic
    networks (SB3's default); with shared layers each group's perturbation moves the other's loss.

    Two departures from their code, both rlflat invariants: theta is restored by copying (they subtract
    ``e``, which leaves rounding), and ``max_grad_norm`` clips the final gradient as in the plain rule (their
    SAM path does not clip).
    """

    name: ClassVar[str] = "lysam"
    description: ClassVar[str] = "Lee & Yoon (2025)'s step: g + (g(theta + e) - g)/s, e = s g, s = rho/||g||"

    def __init__(self, rho: float) -> None:
        if not rho > 0:
            raise RlflatError(f"rho must be > 0 for lysam (the finite-difference step), got {rho!r}")
        self.rho = rho
        self.groups: list[list[th.nn.Parameter]] | None = None

    def bind(self, named: Mapping[str, th.nn.Parameter], scope: str) -> None:
        if scope == "all":
            critic = [p for n, p in named.items() if n.startswith(CRITIC_PREFIXES)]
            policy = [p for n, p in named.items() if not n.startswith(CRITIC_PREFIXES)]
            self.groups = [g for g in (policy, critic) if g]
        else:
            self.groups = [[named[n] for n in actor_parameter_names(named)]]

    def step(
        self,
        optimizer: th.optim.Optimizer,
        loss: th.Tensor,
        closure: Closure,
        params: Sequence[th.nn.Parameter],
        perturbed: Sequence[th.nn.Parameter],
        max_grad_norm: float | None,
    ) -> None:
        """``perturbed`` is the one group unless :meth:`bind` gave the policy's groups; every other parameter
        steps with its gradient at theta (their critic and actor have separate optimisers)."""
        optimizer.zero_grad()
        loss.backward()
        groups = self.groups if self.groups is not None else [list(perturbed)]
        with th.no_grad():
            at_theta = [None if p.grad is None else p.grad.detach().clone() for p in params]
            scale_of: dict[int, th.Tensor] = {}
            for group in groups:
                live = [p for p in group if p.grad is not None]
                if live:
                    norm = th.linalg.vector_norm(th.stack([th.linalg.vector_norm(p.grad) for p in live]))  # type: ignore[arg-type]
                    scale_of.update({id(p): self.rho / (norm + _NORM_EPS) for p in live})
            moved = [p for p in params if id(p) in scale_of]
            saved = [p.detach().clone() for p in moved]
            for p in moved:
                p.add_(p.grad * scale_of[id(p)])  # type: ignore[operator]
        _backward_at_moved_point(optimizer, closure, moved, saved, loss, "LYSAM", self.rho)
        with th.no_grad():
            for p, g in zip(params, at_theta, strict=True):
                if g is None or id(p) not in scale_of:
                    p.grad = g
                else:
                    at_e = p.grad if p.grad is not None else th.zeros_like(g)
                    p.grad = g + (at_e - g) / scale_of[id(p)]
        _clip(params, max_grad_norm)
        optimizer.step()


RULES: dict[str, type[UpdateRule]] = {"plain": UpdateRule, "sam": SAM, "asam": ASAM, "lysam": LeeYoonSAM}

RULE_DEFAULTS: dict[str, dict[str, object]] = {
    "plain": {},
    # Foret et al.'s default radius. SAM's perturbation has norm rho whatever the gradient scale, and the
    # CartPole actor's weights have norm ~10, so 0.05 is a ~0.5% move, the regime SAM was tuned in.
    "sam": {"rho": 0.05, "sam_scope": "actor"},
    # Kwon et al. use rho ~10x SAM's (0.5 with eta 0.01 for CIFAR): T-scaling shrinks the step by ~|theta|.
    "asam": {"rho": 0.5, "sam_scope": "actor", "asam_eta": 0.01},
    # Lee & Yoon's public Hopper config (rho 0.01); their code steps the actor and the critic (scope all).
    "lysam": {"rho": 0.01, "sam_scope": "all"},
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
    if name == "lysam":
        return LeeYoonSAM(radius)
    eta = float(asam_eta if asam_eta is not None else defaults["asam_eta"])  # type: ignore[arg-type]
    return ASAM(radius, eta)
