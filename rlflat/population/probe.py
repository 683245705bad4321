"""Probe K runs at once: their perturbed-policy rollouts batched into one call, every other stage per run.

Each run is probed by the unchanged single-run code (:func:`rlflat.probe.run.probe_run`, writing ``probe.json``,
``probe.npz`` and the ``probe`` block as ``python -m rlflat.probe RUN`` does), one thread per run
(:mod:`rlflat.population.rendezvous`). Every return the probe measures comes from
:func:`rlflat.evaluate.rollout_returns` with stacked perturbed parameter sets (perturbation, worst case, return
sharpness, cliff, landscapes); the K runs' calls of one stage meet and run as one rollout whose stacked sets are
all of them (each filled out to the full parameter dict of its own policy), so one simulator and one ``vmap``
forward per step serve K x sets x episodes rows.

What is not batched, and why (measured in ``docs/population_pipeline.md``): Hessian-vector products (the
surrogate and Fisher spectra, traces, densities) are compute-bound on a CPU core at the default batch of 1,000
states: a ``vmap`` over K parameter dicts does the same arithmetic and did not beat K plain double-backward HVPs
(:mod:`rlflat.probe.hvp` measured the same for blocks of HVPs of one policy), and ARPACK's reverse communication
iterates one operator at a time. The probe batches (Gymnasium envs sampling each policy) are per run too.

Tolerance: a batched rollout evaluates a policy at its own parameters through the stacked ``vmap`` forward where
alone it uses the module's forward (:func:`rlflat.evaluate.actions._own_mode`), and a batched matmul may round
the last bit of an activation differently; a discrete policy's argmax is unchanged unless two logits tie to
within that rounding. Returns are therefore equal to probing alone up to such ties (exactly equal in the tests),
and every probe scalar to a relative 1e-6 (the HVP stages are each run's own arithmetic, bit for bit).
"""

from __future__ import annotations

import inspect
from collections.abc import Hashable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

import rlflat.evaluate as evaluate_package
from rlflat.evaluate import rollout as single
from rlflat.policy import FunctionalPolicy
from rlflat.population.evaluate import _frozen, _task_key
from rlflat.population.rendezvous import Rendezvous, Request, intercepted, run_members

__all__ = ["RTOL", "probe_runs"]

RTOL = 1e-6
"""Relative tolerance of a population probe's scalars against probing each run alone (see the module docstring)."""

_SIGNATURE = inspect.signature(single.rollout_returns)


def _bound(args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
    bound = _SIGNATURE.bind(*args, **kwargs)
    bound.apply_defaults()
    return dict(bound.arguments)


def policy_signature(policy: FunctionalPolicy) -> Hashable:
    """Policies with equal signatures compute the same function of the same parameter names and shapes."""
    normalizer = policy.normalizer
    norm = None if normalizer is None else (_frozen(normalizer.mean), _frozen(normalizer.var),
                                            normalizer.clip, normalizer.epsilon)  # fmt: skip
    shapes = tuple((name, tuple(p.shape), str(p.dtype)) for name, p in policy.params.items())
    return (repr(policy.policy), type(policy.policy.action_dist).__name__, policy.sde, shapes, norm)


def _rollout_key(*args: Any, **kwargs: Any) -> Hashable | None:
    call = _bound(args, kwargs)
    if call["stats"] is not None or not isinstance(call["params"], dict | type(None)):
        return None
    if call["backend"] not in single.BACKENDS or single._gym_rows(call["task"], call["backend"]):
        return None  # one Gymnasium env per row: nothing shared to gain
    fixed = {k: v for k, v in call.items() if k not in ("policy", "task", "params", "progress")}
    return (_task_key(call["task"]), policy_signature(call["policy"]), _frozen(fixed))


def _full_sets(policy: FunctionalPolicy, params: dict[str, torch.Tensor] | None) -> dict[str, torch.Tensor]:
    """``params`` (leading K axis, missing names = the trained values) as complete stacked parameter dicts."""
    if params is None:
        return {name: value.detach()[None] for name, value in policy.params.items()}
    k = int(next(iter(params.values())).shape[0])
    return {
        name: params[name].detach() if name in params else value.detach()[None].expand(k, *value.shape)
        for name, value in policy.params.items()
    }


def _batched_rollouts(requests: Sequence[Request]) -> list[np.ndarray]:
    calls = [_bound(r.args, r.kwargs) for r in requests]
    sets = [_full_sets(c["policy"], c["params"]) for c in calls]
    sizes = [int(next(iter(s.values())).shape[0]) for s in sets]
    merged = {name: torch.cat([s[name] for s in sets]) for name in sets[0]}
    call = {**calls[0], "params": merged, "progress": False}
    out = single.rollout_returns(**call)
    bounds = np.cumsum([0, *sizes])
    return [out[bounds[i] : bounds[i + 1]] for i in range(len(requests))]


def probe_runs(paths: Sequence[str | Path], **options: Any) -> list[dict[str, Any] | BaseException]:
    """:func:`rlflat.probe.run.probe_run` for every path (same ``options``), their rollouts batched.

    Returns per path what ``probe_run`` returns, or the exception it raised (one failing run does not stop the
    others). Files are written per run exactly as ``probe_run`` writes them.
    """
    from rlflat.probe.run import probe_run

    options.setdefault("progress", False)
    rendezvous = Rendezvous(len(paths))
    work = [lambda p=path: probe_run(p, **options) for path in paths]
    with intercepted(rendezvous, evaluate_package, "rollout_returns", _rollout_key, _batched_rollouts):
        return run_members(rendezvous, work)
