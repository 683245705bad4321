"""Random directions in parameter space, as dicts shaped like the parameters.

Loss-landscape slices and random-perturbation sharpness depend on the scale of the direction:
isotropic directions (even scaled to the parameter norm, as 'raw' ones are here) are not comparable across
networks whose layers have different weight norms, so Li et al. (2018) normalise each filter (for a Linear weight of shape (out, in): each output row) to the
norm of the matching filter of the weights. 'layer' normalisation scales each tensor as a whole.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import torch

from rlflat.errors import RlflatError, bad_choice
from rlflat.probe.hvp import Params, check_params
from rlflat.probe.seeding import as_generator

Kind = Literal["raw", "filter", "layer"]
KINDS: tuple[str, ...] = ("raw", "filter", "layer")

__all__ = [
    "KINDS",
    "add_scaled",
    "dict_dot",
    "dict_norm",
    "filter_normalize",
    "layer_normalize",
    "random_direction",
    "raw_direction",
]

_TINY = 1e-10


def raw_direction(params: Mapping[str, torch.Tensor], seed: int | torch.Generator) -> Params:
    """i.i.d. N(0, 1) entries, drawn on CPU in the dict's key order (device-independent)."""
    dtype, device = check_params(params)
    gen = as_generator(seed)
    return {
        k: torch.randn(p.shape, generator=gen, dtype=torch.float64).to(device=device, dtype=dtype)
        for k, p in params.items()
    }


def _match_norm(d: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    return d * (ref.norm() / (d.norm() + _TINY))


def filter_normalize(
    direction: Mapping[str, torch.Tensor], params: Mapping[str, torch.Tensor], *, ignore_1d: bool = True
) -> Params:
    """Li et al. (2018) filter normalisation of ``direction`` w.r.t. ``params``.

    For every tensor with ndim >= 2, each slice along dim 0 (an output neuron's row, or a conv
    filter) is rescaled to the norm of the same slice of the weights. 1-D and 0-D tensors (biases,
    norm-layer scales, log-std) are zeroed when ``ignore_1d`` (Li's 'biasbn' ignore), else scaled
    to the norm of the parameter.
    """
    _same_keys(direction, params)
    out: Params = {}
    for k, p in params.items():
        d = direction[k]
        if p.ndim >= 2:
            d_norm = d.flatten(1).norm(dim=1)
            p_norm = p.detach().flatten(1).norm(dim=1)
            scale = p_norm / (d_norm + _TINY)
            out[k] = d * scale.view(-1, *([1] * (p.ndim - 1)))
        elif ignore_1d:
            out[k] = torch.zeros_like(d)
        else:
            out[k] = _match_norm(d, p.detach())
    return out


def layer_normalize(
    direction: Mapping[str, torch.Tensor], params: Mapping[str, torch.Tensor], *, ignore_1d: bool = False
) -> Params:
    """Scale each tensor of ``direction`` to the norm of the matching parameter tensor.

    With ``ignore_1d`` the 1-D and 0-D tensors are zeroed, as for :func:`filter_normalize`.
    """
    _same_keys(direction, params)
    return {
        k: (torch.zeros_like(direction[k]) if ignore_1d and p.ndim < 2 else _match_norm(direction[k], p.detach()))
        for k, p in params.items()
    }


def random_direction(
    params: Mapping[str, torch.Tensor],
    kind: Kind = "filter",
    *,
    seed: int | torch.Generator,
    ignore_1d: bool | None = None,
) -> Params:
    """A seeded random direction: 'raw' (isotropic), 'filter' or 'layer' normalised.

    'raw' is the Gaussian of :func:`raw_direction` rescaled as one vector to the norm ||theta|| of ``params``
    (a zero vector stays zero): an unscaled N(0, I) draw has norm ~sqrt(n), far above ||theta|| for a trained
    policy, so every sigma of a grid shared with filter directions would already destroy the policy. Scaled, sigma
    is relative to the parameter norm for every kind (filter: per neuron; layer: per tensor; raw: as a whole),
    and the raw return-halving sigma lands inside the same grid. ``ignore_1d`` defaults to True for 'filter' (Li et al.,
    2018) and False for 'layer'; it has no effect on 'raw'.
    """
    if kind not in KINDS:
        raise bad_choice("direction kind", kind, KINDS)
    d = raw_direction(params, seed)
    if kind == "filter":
        return filter_normalize(d, params, ignore_1d=True if ignore_1d is None else ignore_1d)
    if kind == "layer":
        return layer_normalize(d, params, ignore_1d=False if ignore_1d is None else ignore_1d)
    scale = dict_norm(params) / (dict_norm(d) + _TINY)
    return {k: v * scale.to(v) for k, v in d.items()}


def _same_keys(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> None:
    diff = set(a) ^ set(b)
    if diff:
        raise RlflatError(f"dicts have different keys: {sorted(diff)}")
    for k in a:
        if a[k].shape != b[k].shape:
            raise RlflatError(f"tensor {k!r}: shape {tuple(a[k].shape)} vs {tuple(b[k].shape)}")


def add_scaled(params: Mapping[str, torch.Tensor], direction: Mapping[str, torch.Tensor], alpha: float) -> Params:
    """A new dict params + alpha * direction (inputs untouched, result detached)."""
    _same_keys(params, direction)
    return {k: p.detach() + alpha * direction[k].to(p) for k, p in params.items()}


def dict_dot(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Euclidean inner product of two dicts viewed as flat vectors (a 0-D tensor)."""
    _same_keys(a, b)
    if not a:
        raise RlflatError("cannot take the inner product of empty dicts")
    return torch.stack([(a[k].detach() * b[k].detach()).sum() for k in a]).sum()


def dict_norm(a: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Euclidean norm of a dict viewed as one flat vector (a 0-D tensor)."""
    return torch.sqrt(dict_dot(a, a))
