"""Per-learner optimiser arithmetic on stacked parameters: Adam/AdamW, global-norm clipping, SAM/ASAM ascent.

Each function reproduces, slice by slice, the operation order of the torch/SB3 code a single run executes
(``torch.optim.Adam``'s single-tensor CPU path, ``clip_grad_norm_``, :mod:`rlflat.algos.rules`), with the
per-learner scalars (learning rate, weight decay, max_grad_norm, rho) as float32 tensors broadcast over the
K axis: a Python scalar in those kernels is applied in float32 too, so the arithmetic is the same. A subset of
learners (``index``) is stepped by gathering its slices and scattering them back; the others are untouched.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch as th

from rlflat.errors import RlflatError

Params = dict[str, th.Tensor]
_SAM_EPS = 1e-12  # rlflat.algos.rules._NORM_EPS
_CLIP_EPS = 1e-6  # torch.nn.utils.clip_grad_norm_


def per_learner(values: Sequence[float] | np.ndarray, like: th.Tensor) -> th.Tensor:
    """A float32 ``(K, 1, ..., 1)`` tensor broadcasting over ``like``'s non-K dimensions."""
    return th.tensor(np.asarray(values, dtype=np.float64), dtype=like.dtype).view(-1, *([1] * (like.dim() - 1)))


def tensor_norms(tensors: Sequence[th.Tensor]) -> th.Tensor:
    """``(K,)`` 2-norm over all of each learner's tensors, as ``vector_norm(stack(per-tensor norms))``."""
    norms = [th.linalg.vector_norm(t.reshape(t.shape[0], -1), dim=1) for t in tensors]
    return th.linalg.vector_norm(th.stack(norms, dim=1), dim=1)


def clip_by_global_norm(grads: list[th.Tensor], max_norms: Sequence[float]) -> None:
    """In place, each learner's gradients scaled to global norm <= its max_grad_norm (``clip_grad_norm_``)."""
    total = tensor_norms(grads)
    coef = th.reciprocal(total + _CLIP_EPS) * th.tensor(max_norms, dtype=total.dtype)  # max_norm / (total + eps)
    coef = th.clamp(coef, max=1.0)
    for g in grads:
        g.mul_(coef.view(-1, *([1] * (g.dim() - 1))))


def sam_perturbation(
    params: list[th.Tensor], grads: list[th.Tensor], rhos: Sequence[float], etas: Sequence[float] | None
) -> list[th.Tensor]:
    """Each learner's ascent step: SAM ``rho g/||g||`` (etas None) or ASAM ``rho T^2 g/||T g||``, T = |theta|+eta."""
    rho = th.tensor(rhos, dtype=grads[0].dtype)
    if etas is None:
        factor = th.reciprocal(tensor_norms(grads) + _SAM_EPS) * rho
        return [g * factor.view(-1, *([1] * (g.dim() - 1))) for g in grads]
    scales = [p.detach().abs() + per_learner(etas, p) for p in params]
    scaled = [t * g for t, g in zip(scales, grads, strict=True)]
    factor = th.reciprocal(tensor_norms(scaled) + _SAM_EPS) * rho
    return [t * s * factor.view(-1, *([1] * (s.dim() - 1))) for t, s in zip(scales, scaled, strict=True)]


class StackedAdam:
    """Adam/AdamW state of K learners: moments stacked like the parameters, one step count per learner.

    AdamW's decoupled decay multiplies by ``1 - lr * weight_decay``, exactly 1.0 for a learner without decay,
    so Adam and AdamW learners share one population. ``from_optimizers`` checks that the shared settings
    (betas, eps, amsgrad, coupled weight decay) agree.
    """

    def __init__(self, params: Params, betas: tuple[float, float], eps: float, weight_decays: Sequence[float]) -> None:
        self.beta1, self.beta2 = betas
        self.eps = eps
        self.weight_decays = [float(w) for w in weight_decays]
        self.exp_avg = {n: th.zeros_like(p) for n, p in params.items()}
        self.exp_avg_sq = {n: th.zeros_like(p) for n, p in params.items()}
        self.steps = np.zeros(len(self.weight_decays), dtype=np.int64)

    @classmethod
    def from_optimizers(cls, params: Params, optimizers: Sequence[th.optim.Optimizer]) -> StackedAdam:
        settings = set()
        decays = []
        for opt in optimizers:
            group = opt.param_groups[0]
            if type(opt) not in (th.optim.Adam, th.optim.AdamW) or len(opt.param_groups) != 1:
                raise RlflatError(f"population engine: optimizer {type(opt).__name__} is not supported (Adam, AdamW)")
            if group["amsgrad"] or group["maximize"] or group.get("differentiable") or group.get("capturable"):
                raise RlflatError(
                    "population engine: amsgrad, maximize, capturable and differentiable are not supported"
                )
            decoupled = isinstance(opt, th.optim.AdamW) or group.get("decoupled_weight_decay", False)
            if group["weight_decay"] and not decoupled:
                raise RlflatError("population engine: Adam with coupled weight_decay is not supported")
            settings.add((tuple(group["betas"]), group["eps"]))
            decays.append(float(group["weight_decay"]) if decoupled else 0.0)
        if len(settings) != 1:
            raise RlflatError(f"population engine: learners' Adam betas/eps differ: {sorted(settings)}")
        betas, eps = settings.pop()
        return cls(params, betas, eps, decays)

    def step(self, params: Params, grads: Params, lrs: Sequence[float], index: Sequence[int] | None = None) -> None:
        """One Adam step of the learners ``index`` (all if None) with their learning rates ``lrs`` (per learner
        in ``index`` order)."""
        rows = list(range(len(self.steps))) if index is None else list(index)
        self.steps[rows] += 1
        steps = self.steps[rows].astype(np.float64)
        bias1 = 1 - self.beta1**steps
        bias2_sqrt = (1 - self.beta2**steps) ** 0.5
        neg_step = [-(lr / b) for lr, b in zip(lrs, bias1, strict=True)]
        decay = [1 - lr * self.weight_decays[k] for lr, k in zip(lrs, rows, strict=True)]
        any_decay = any(self.weight_decays[k] != 0 for k in rows)
        gather = index is not None and len(rows) != len(self.steps)
        idx = th.tensor(rows, dtype=th.long)
        with th.no_grad():
            for name, param in params.items():
                p = param.data[idx] if gather else param.data
                m = self.exp_avg[name][idx] if gather else self.exp_avg[name]
                v = self.exp_avg_sq[name][idx] if gather else self.exp_avg_sq[name]
                g = grads[name][idx] if gather else grads[name]
                if any_decay:
                    p.mul_(per_learner(decay, p))
                m.lerp_(g, 1 - self.beta1)
                v.mul_(self.beta2).addcmul_(g, g, value=1 - self.beta2)
                denom = (v.sqrt() / per_learner(bias2_sqrt, v)).add_(self.eps)
                p.add_(per_learner(neg_step, p) * m / denom)  # addcdiv_: p + value * m / denom
                if gather:
                    param.data[idx] = p
                    self.exp_avg[name][idx] = m
                    self.exp_avg_sq[name][idx] = v

    def load_into(self, optimizer: th.optim.Optimizer, names: Sequence[str], params: Params, k: int, lr: float) -> None:
        """Write learner k's state into its real torch optimizer (so SB3's zip stores it as a single run would)."""
        group = optimizer.param_groups[0]
        group["lr"] = lr
        for name, param in zip(names, group["params"], strict=True):
            if self.steps[k] == 0:
                continue
            optimizer.state[param] = {
                "step": th.tensor(float(self.steps[k])),
                "exp_avg": self.exp_avg[name][k].clone(),
                "exp_avg_sq": self.exp_avg_sq[name][k].clone(),
            }
