"""Hessian-vector products of a pure loss over a parameter dict, without materialising the Hessian.

Route (measured by ``benchmarks/probe_numerics_speed.py``, 4-64-64-2 tanh actor, 2,048 states,
one CPU thread): autograd double-backward with the first-order graph reused (Pearlmutter, 1994).
The gradient is built once with ``create_graph=True``; each HVP is then one
``torch.autograd.grad(grads, params, v, retain_graph=True)``: 2.0 ms CPU, 1.8x a gradient, vs
7.4 ms for torch.func forward-over-reverse, 2.1 ms for reverse-over-reverse with the vjp reused
(+0.5 s setup) and 2.0 ms for forward-over-reverse through ``torch.func.linearize`` (+0.4 s
setup, make_fx tracing). Blocks of HVPs can be one vmapped backward (``is_grads_batched``), but on
CPU that did not pay (compute-bound: 2.6 ms/column unbatched vs 3.1-7.2 ms/column in blocks of
8-64), so blocks default to a plain loop on CPU and to vmapped chunks of 128 columns elsewhere.
The dense Hessian (exact mode) needs no generic HVPs: row by row it backpropagates only the gradient
tensor that holds the row, into only the tensors whose columns are still missing (the rest by
symmetry), 2.3x fewer CPU seconds than n generic HVPs for a 64x64 actor (see :meth:`HessianOperator.dense`).

Guards against the pitfalls of PyHessian (Yao et al., 2020): the module mode is never touched
(``loss_fn`` is the caller's pure function), the Hessian is taken w.r.t. private detached copies of
the caller's tensors, so their ``.grad`` is never written and neither they nor the snapshot drift.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Protocol

import numpy as np
import torch
from scipy.sparse.linalg import LinearOperator

from rlflat.errors import RlflatError

Params = dict[str, torch.Tensor]
LossFn = Callable[[Params], torch.Tensor]

__all__ = ["HessianOperator", "LossFn", "MatVec", "Params", "check_params"]


class MatVec(Protocol):
    """Any symmetric operator the stochastic estimators need: its size, products and a product count."""

    @property
    def n(self) -> int: ...

    @property
    def hvp_count(self) -> int: ...

    def matvec(self, v: torch.Tensor) -> torch.Tensor: ...


def check_params(params: Mapping[str, torch.Tensor]) -> tuple[torch.dtype, torch.device]:
    """Validate a parameter dict (non-empty, floating, one dtype and device); return both."""
    if not params:
        raise RlflatError("params is empty; need at least one tensor")
    dtypes = {p.dtype for p in params.values()}
    devices = {p.device for p in params.values()}
    if len(dtypes) != 1 or len(devices) != 1:
        raise RlflatError(f"params must share one dtype and device; got {sorted(map(str, dtypes))}")
    dtype = next(iter(dtypes))
    if not dtype.is_floating_point:
        raise RlflatError(f"params must be floating point; got {dtype}")
    return dtype, next(iter(devices))


class HessianOperator:
    """The Hessian of ``loss_fn`` at ``params`` as a matrix-free linear operator.

    The first-order graph is built once at construction, on a private copy of the parameters, and
    reused by every product: the operator is a snapshot of the point it was built at, unaffected by
    later edits of ``params``. Flat vectors follow the dict's key order. ``chunk_size`` is the
    number of columns per vmapped backward in ``matmat``/``dense`` (default: 1, a plain loop, on
    CPU; 128 elsewhere).
    """

    def __init__(self, loss_fn: LossFn, params: Mapping[str, torch.Tensor], *, chunk_size: int | None = None):
        self.dtype, self.device = check_params(params)
        if chunk_size is None:
            chunk_size = 1 if self.device.type == "cpu" else 128
        if chunk_size < 1:
            raise RlflatError(f"chunk_size must be >= 1; got {chunk_size}")
        self.chunk_size = chunk_size
        self.names = list(params)
        self.shapes = [params[k].shape for k in self.names]
        self.sizes = [params[k].numel() for k in self.names]
        self.n = int(sum(self.sizes))
        self.hvp_count = 0
        # Private leaves (one copy of the weights, small next to the graph): the caller's tensors
        # get no .grad, and cannot drift the snapshot by being edited in place later.
        self._leaves = [params[k].detach().clone().requires_grad_(True) for k in self.names]
        with torch.enable_grad():
            loss = loss_fn(dict(zip(self.names, self._leaves, strict=True)))
            if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
                raise RlflatError("loss_fn must return a scalar tensor")
            if not loss.requires_grad:
                raise RlflatError("loss_fn output does not depend on params")
            grads = torch.autograd.grad(loss.reshape(()), self._leaves, create_graph=True, allow_unused=True)
        self.loss = float(loss.detach())
        # Gradients that are constant (or unused) have a zero Hessian row block: drop them from
        # the double-backward call and pad the result with zeros.
        self._grad = torch.cat(
            [
                (torch.zeros_like(p) if g is None else g.detach()).reshape(-1)
                for g, p in zip(grads, self._leaves, strict=True)
            ]
        )
        self._live = [i for i, g in enumerate(grads) if g is not None and g.requires_grad]
        self._live_grads = [grads[i] for i in self._live]
        assert all(g is not None for g in self._live_grads)
        self._offsets = np.concatenate([[0], np.cumsum(self.sizes)]).tolist()

    # ----- flat <-> dict -------------------------------------------------------------------------
    def flatten(self, tensors: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Concatenate a dict with the operator's keys and shapes into one 1-D tensor."""
        missing = set(self.names) ^ set(tensors)
        if missing:
            raise RlflatError(f"dict keys differ from the operator's: {sorted(missing)}")
        parts = []
        for k, shape in zip(self.names, self.shapes, strict=True):
            t = tensors[k]
            if t.shape != shape:
                raise RlflatError(f"tensor {k!r} has shape {tuple(t.shape)}; expected {tuple(shape)}")
            parts.append(t.reshape(-1).to(device=self.device, dtype=self.dtype))
        return torch.cat(parts)

    def unflatten(self, v: torch.Tensor) -> Params:
        """Split a flat vector of length n into a dict of views shaped like the parameters."""
        v = self._as_vec(v)
        return {
            k: v[a:b].view(shape)
            for k, shape, a, b in zip(self.names, self.shapes, self._offsets[:-1], self._offsets[1:], strict=True)
        }

    def _as_vec(self, v: torch.Tensor) -> torch.Tensor:
        if v.ndim != 1 or v.shape[0] != self.n:
            raise RlflatError(f"vector must be 1-D of length {self.n}; got shape {tuple(v.shape)}")
        return v.to(device=self.device, dtype=self.dtype)

    # ----- products ------------------------------------------------------------------------------
    def gradient(self) -> torch.Tensor:
        """The flat gradient at the snapshot point (detached, a copy)."""
        return self._grad.clone()

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        """H @ v for a 1-D v of length n: one backward through the retained first-order graph."""
        v = self._as_vec(v)
        self.hvp_count += 1
        if not self._live:
            return torch.zeros_like(v)
        parts = [v[self._offsets[i] : self._offsets[i + 1]].view(self.shapes[i]) for i in self._live]
        with torch.enable_grad():
            hv = torch.autograd.grad(self._live_grads, self._leaves, parts, retain_graph=True, allow_unused=True)
        return torch.cat(
            [(torch.zeros_like(p) if h is None else h).reshape(-1) for h, p in zip(hv, self._leaves, strict=True)]
        )

    def matmat(self, vs: torch.Tensor) -> torch.Tensor:
        """H @ V for V of shape (n, b), as vmapped backwards over chunks of ``chunk_size`` columns."""
        if vs.ndim != 2 or vs.shape[0] != self.n:
            raise RlflatError(f"matrix must have shape ({self.n}, b); got {tuple(vs.shape)}")
        vs = vs.to(device=self.device, dtype=self.dtype)
        out = torch.empty_like(vs)
        for start in range(0, vs.shape[1], self.chunk_size):
            block = vs[:, start : start + self.chunk_size].T.contiguous()  # (b, n)
            out[:, start : start + block.shape[0]] = self._batched(block).T
        return out

    def _batched(self, block: torch.Tensor) -> torch.Tensor:
        """Rows H @ block[j] for a (b, n) block in one batched backward; returns (b, n)."""
        b = block.shape[0]
        self.hvp_count += b
        if not self._live:
            return torch.zeros_like(block)
        if b == 1:
            return self.matvec(block[0])[None]
        parts = [block[:, self._offsets[i] : self._offsets[i + 1]].view(b, *self.shapes[i]) for i in self._live]
        with torch.enable_grad():
            hv = torch.autograd.grad(
                self._live_grads,
                self._leaves,
                parts,
                retain_graph=True,
                allow_unused=True,
                is_grads_batched=True,
            )
        return torch.cat(
            [
                (block.new_zeros(b, p.numel()) if h is None else h.reshape(b, -1))
                for h, p in zip(hv, self._leaves, strict=True)
            ],
            dim=1,
        )

    def dense(self, *, symmetrize: bool = True) -> torch.Tensor:
        """The exact n x n Hessian, built row block by row block through the reused graph (n HVPs, no n^2 graph).

        Two savings over n generic products, both exact: (1) the rows of one parameter tensor are derivatives of
        that tensor's gradient alone, so only it is backpropagated (the generic HVP also runs the double-backward of
        every other tensor's gradient, with zero cotangents); (2) by symmetry only the blocks on and right of the
        diagonal are computed, in order of tensor size, so the largest tensor comes last and its backward is
        pruned to its own leaf (the rest of the graph is skipped); the blocks left of the diagonal are mirrored.
        On a 64x64 CartPole actor at batch 4096 (one CPU thread) a middle-layer row costs 1.9 ms instead of 4.7 ms.
        Rows of constant (or unused) gradients, hence their columns, stay zero. Peak extra memory is the n x n
        result plus one chunk's backward. ``symmetrize`` averages each diagonal block with its transpose, removing
        float round-off asymmetry before an eigensolver (off-diagonal blocks are exact mirrors either way).
        """
        h = torch.zeros(self.n, self.n, dtype=self.dtype, device=self.device)
        order = sorted(range(len(self._live)), key=lambda b: self.sizes[self._live[b]])
        for position, block in enumerate(order):
            columns = [self._live[b] for b in order[position:]]
            rows = self._span(self._live[block])
            for start in range(0, self.sizes[self._live[block]], self.chunk_size):
                stop = min(start + self.chunk_size, rows.stop - rows.start)
                self._block_rows(block, start, stop, columns, h[rows.start + start : rows.start + stop])
        for position, block in enumerate(order):
            rows = self._span(self._live[block])
            if symmetrize:
                h[rows, rows] = 0.5 * (h[rows, rows] + h[rows, rows].T)
            for later in order[position + 1 :]:
                other = self._span(self._live[later])
                h[other, rows] = h[rows, other].T
        return h

    def _span(self, i: int) -> slice:
        """The flat coordinates of parameter tensor ``i``."""
        return slice(self._offsets[i], self._offsets[i + 1])

    def _block_rows(self, block: int, start: int, stop: int, columns: list[int], out: torch.Tensor) -> None:
        """Rows ``start:stop`` of tensor ``self._live[block]``, at the columns of tensors ``columns``, into ``out``
        (b, n): one backward of that tensor's gradient alone (batched with ``is_grads_batched`` when b > 1)."""
        i, b = self._live[block], stop - start
        self.hvp_count += b
        cotangent = torch.zeros(b, self.sizes[i], dtype=self.dtype, device=self.device)
        cotangent[torch.arange(b), torch.arange(start, stop)] = 1.0
        shaped = cotangent.view(self.shapes[i]) if b == 1 else cotangent.view(b, *self.shapes[i])
        with torch.enable_grad():
            rows = torch.autograd.grad(
                [self._live_grads[block]],
                [self._leaves[c] for c in columns],
                [shaped],
                retain_graph=True,
                allow_unused=True,
                is_grads_batched=b > 1,
            )
        for r, c in zip(rows, columns, strict=True):
            if r is not None:
                out[:, self._span(c)] = r.reshape(b, -1)

    def as_linear_operator(self) -> LinearOperator:
        """A float64 scipy view (for ``eigsh``); products are computed in the parameters' dtype."""

        def mv(x: np.ndarray) -> np.ndarray:
            v = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float64).reshape(-1))
            return self.matvec(v).detach().to("cpu", torch.float64).numpy()

        def mm(x: np.ndarray) -> np.ndarray:
            m = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float64))
            return self.matmat(m).detach().to("cpu", torch.float64).numpy()

        return LinearOperator((self.n, self.n), matvec=mv, rmatvec=mv, matmat=mm, dtype=np.float64)
