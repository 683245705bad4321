"""Who may train together: a population's members, their results, and the key that groups them.

Learners of one population share every value that sets a tensor shape or a loop count (task, algorithm, net
architecture, rollout and minibatch sizes, epochs, normalisation, action distribution, budget); they may differ
in seed and in every scalar hyperparameter. :func:`shape_key` is that equivalence, as a hashable tuple.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlflat.errors import RlflatError

SHAPE_KEYS = (
    "total_timesteps",
    "n_envs",
    "n_steps",
    "batch_size",
    "n_epochs",
    "normalize",
    "normalize_advantage",
    "use_sde",
    "sde_sample_freq",
    "sam_scope",
    "track_sharpness",
    "swa_start",
    "dropout",
    "critic_dropout",
    "policy_kwargs",
)
"""Hyperparameters learners of one population must share: each sets a tensor shape, a loop count or the policy's
structure (``policy_kwargs``: net_arch, activation, log_std_init, ortho_init, optimizer). ``swa_start`` and
``track_sharpness`` change what happens after an update, and ``dropout``/``critic_dropout`` what happens in every
forward pass, so they are shared too. Every other key (learning
rate and its schedule, clip ranges, coefficients, gamma, gae_lambda, max_grad_norm, target_kl, weight_decay,
rho, asam_eta) may differ per learner."""


@dataclass(frozen=True)
class Member:
    """One learner: its resolved run config (:func:`rlflat.train.resolve_run_config`) and where it is published."""

    config: dict[str, Any]
    run_dir: Path


@dataclass(frozen=True)
class MemberResult:
    """What became of one learner: ``status`` is ``"ok"`` or ``"failed"`` (then ``error`` says why)."""

    run_dir: Path
    status: str
    error: str | None = None


def shape_key(config: Mapping[str, Any]) -> tuple[Any, ...]:
    """Hashable key; two configs may share a population exactly when their keys are equal.

    The algorithm name (base and update rule: SAM takes two gradients per minibatch) and the task id, then
    :data:`SHAPE_KEYS` in canonical JSON (absent and default-valued keys are told apart only by their value
    as resolved, so a spec's default and the same value given explicitly group together).
    """
    hyperparameters = config["hyperparameters"]
    shared = {key: hyperparameters.get(key) for key in SHAPE_KEYS}
    return (config["algo"], config["task_id"], json.dumps(shared, sort_keys=True, default=str))


def population_id(members: Sequence[Member]) -> str:
    """Content address of a population: a short hash of its members' run ids, in order."""
    from rlflat.train import run_id

    ids = [run_id(m.config) for m in members]
    return hashlib.sha256(json.dumps(ids).encode()).hexdigest()[:10]


def check_members(members: Sequence[Member]) -> None:
    """Refuse, in one line, an empty population or members that cannot share one (differing :func:`shape_key`)."""
    if not members:
        raise RlflatError("a population needs at least one member, got none")
    first = shape_key(members[0].config)
    for member in members[1:]:
        key = shape_key(member.config)
        if key != first:
            diff = _first_difference(first, key)
            raise RlflatError(
                f"members {members[0].run_dir.name} and {member.run_dir.name} cannot share a population: {diff}"
            )
    dirs = [str(m.run_dir) for m in members]
    if len(set(dirs)) != len(dirs):
        duplicate = next(d for d in dirs if dirs.count(d) > 1)
        raise RlflatError(f"two members of a population publish to the same run directory {duplicate}")


def _first_difference(a: tuple[Any, ...], b: tuple[Any, ...]) -> str:
    if a[0] != b[0]:
        return f"algorithm {a[0]!r} != {b[0]!r}"
    if a[1] != b[1]:
        return f"task {a[1]!r} != {b[1]!r}"
    left, right = json.loads(a[2]), json.loads(b[2])
    key = next(k for k in SHAPE_KEYS if left.get(k) != right.get(k))
    return f"{key} {left.get(key)!r} != {right.get(key)!r} (shape-setting hyperparameters must be equal)"
