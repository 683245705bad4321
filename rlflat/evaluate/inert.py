"""Settings that do not change the dynamics: ``inert`` (same as nominal) and ``saturated`` (same as another factor).

A perturbation can stop acting: Hopper's foot friction below x0.5 is the floor's friction (MuJoCo takes the larger
of the two geoms'), Pendulum's torque limit above the policy's action bound clips nothing. Rolling a policy out
there measures nominal (or a milder setting) again, and counting it as robustness to a larger shift is wrong.

The test is behavioural and general: every distinct dynamics setting is stepped from the nominal start states
(reset seeds ``seed + j``) with the same fixed action sequences (``sequences`` seeded uniform draws from the
task's action space, ``steps`` long), through the same simulator the rollout uses (a batched numpy simulator or
the Gymnasium fallback). Settings whose observations, rewards and termination flags are bit-identical on every
sequence share a ``dynamics_group``; a perturbed setting in the nominal's group is ``inert``, one sharing its
group with another setting of the same family (and not with nominal) is ``saturated``. Identity under a finite
set of action sequences is evidence, not proof: a parameter that only matters in states the sequences never
reach is flagged too, so flags are reported, never silently dropped.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from gymnasium import spaces

from rlflat.evaluate.rollout import _make_simulator, check_setting, task_spaces
from rlflat.tasks import TaskSpec

__all__ = ["PROBE_SEQUENCES", "PROBE_STEPS", "dynamics_fingerprints", "dynamics_groups"]

PROBE_STEPS = 200
"""Steps of each fixed action sequence (episodes that end earlier stay frozen, as in the rollout)."""
PROBE_SEQUENCES = 3
"""Independent fixed action sequences (each from its own nominal start state)."""


def _action_sequences(action_space: spaces.Space, sequences: int, steps: int, seed: int) -> np.ndarray:
    """``(sequences, steps, *shape)`` uniform actions; unbounded Box dimensions draw from [-1, 1]."""
    rng = np.random.default_rng(seed)
    if isinstance(action_space, spaces.Discrete):
        return action_space.start + rng.integers(0, action_space.n, size=(sequences, steps))
    if isinstance(action_space, spaces.Box):
        low = np.where(np.isfinite(action_space.low), action_space.low, -1.0)
        high = np.where(np.isfinite(action_space.high), action_space.high, 1.0)
        draws = rng.uniform(size=(sequences, steps, *action_space.shape))
        return (low + draws * (high - low)).astype(action_space.dtype)
    raise TypeError(f"fixed action sequences need a Discrete or Box action space, got {action_space}")


def dynamics_fingerprints(
    task: TaskSpec,
    settings: Sequence[Mapping[str, float]],
    *,
    seed: int = 0,
    steps: int = PROBE_STEPS,
    sequences: int = PROBE_SEQUENCES,
    backend: str = "auto",
) -> list[str]:
    """One digest per setting of its trajectories under the fixed action sequences (equal digest = same dynamics)."""
    if not settings:
        return []
    checked = [check_setting(task, s) for s in settings]
    _, action_space = task_spaces(task)
    actions = _action_sequences(action_space, sequences, steps, seed)
    sequence_of_row = np.tile(np.arange(sequences), len(checked))
    sim, _ = _make_simulator(task, checked, np.repeat(np.arange(len(checked)), sequences), backend)
    digests = [hashlib.blake2b(digest_size=16) for _ in range(len(sequence_of_row))]
    try:
        obs = np.asarray(sim.reset(seed + sequence_of_row))
        _update(digests, obs)
        done = np.zeros(len(sequence_of_row), dtype=bool)
        with np.errstate(over="ignore", invalid="ignore"):
            for t in range(steps):
                obs, reward, terminated, truncated = sim.step(actions[sequence_of_row, t])
                _update(digests, np.asarray(obs), np.asarray(reward, dtype=np.float64), np.asarray(terminated))
                done |= np.asarray(terminated) | np.asarray(truncated)
                if done.all():
                    break
    finally:
        close = getattr(sim, "close", None)
        if callable(close):
            close()
    per_row = [d.hexdigest() for d in digests]
    return [
        hashlib.blake2b("".join(per_row[i * sequences : (i + 1) * sequences]).encode(), digest_size=16).hexdigest()
        for i in range(len(checked))
    ]


def _update(digests: list[Any], *arrays: np.ndarray) -> None:
    for i, digest in enumerate(digests):
        for array in arrays:
            digest.update(np.ascontiguousarray(array[i]).tobytes())


def dynamics_groups(fingerprints: Sequence[str]) -> list[int]:
    """Group ids in order of first appearance: index 0's group is 0 (pass the nominal setting first)."""
    ids: dict[str, int] = {}
    return [ids.setdefault(f, len(ids)) for f in fingerprints]
