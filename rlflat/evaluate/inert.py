"""Settings that do not change the dynamics: ``inert`` (same as nominal) and ``saturated`` (same as another factor).

A perturbation can stop acting: Hopper's foot friction below x0.5 is the floor's friction (MuJoCo takes the larger
of the two geoms'), Pendulum's torque limit above the policy's action bound clips nothing. Rolling a policy out
there measures nominal (or a milder setting) again, and counting it as robustness to a larger shift is wrong.

The test is behavioural and general: every distinct dynamics setting is stepped from the nominal start states
(reset seeds ``seed + j``) with the same fixed action sequences (``sequences`` seeded uniform draws from the
task's action space, ``steps`` long) through Gymnasium's own env built as the rollout builds it
(:func:`rlflat.tasks.make_env`, under the task's protocol). The physics is stepped *past termination*
(``env.unwrapped.step``: no freezing, no reset, no time limit), so every sequence exercises ``steps`` steps of
dynamics, including the states after a fall where bodies other than the feet touch the ground: under random
actions a Hopper episode terminates after 8-62 steps of foot-floor contact only, and a fingerprint frozen there
declared ``friction_scale`` x1.24 (every contact) identical to ``foot_friction`` x1.24 (the foot's alone).
Settings whose observations, rewards and termination flags are bit-identical on every sequence share a
``dynamics_group``; a perturbed setting in the nominal's group is ``inert``, one sharing its group with another
setting of the same family (and not with nominal) is ``saturated``. Identity under a finite set of action
sequences is evidence, not proof: a parameter that only matters in states the sequences never reach is flagged
too, so flags are reported, never silently dropped.
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from gymnasium import spaces

from rlflat.errors import bad_choice
from rlflat.evaluate.rollout import BACKENDS, check_setting, task_spaces
from rlflat.tasks import TaskSpec, make_env

__all__ = ["PROBE_SEQUENCES", "PROBE_STEPS", "dynamics_fingerprints", "dynamics_groups"]

PROBE_STEPS = 300
"""Steps of each fixed action sequence, all of them stepped (past termination: see the module docstring)."""
PROBE_SEQUENCES = 4
"""Independent fixed action sequences (each from its own nominal start state)."""
PROBE_HOLD = 10
"""Steps each random action is held. Held actions swing the body further than per-step draws: over 40 Hopper
sequences of 300 steps, the torso, thigh and leg geoms touched the floor in 100%, 75% and 65% of them (per-step
draws, 200 steps: 85%, 25%, 5%), so four sequences miss a floor contact of the leg with probability ~1.5%."""


def _action_sequences(action_space: spaces.Space, sequences: int, steps: int, seed: int) -> np.ndarray:
    """``(sequences, steps, *shape)`` uniform actions, each held for :data:`PROBE_HOLD` steps; unbounded Box
    dimensions draw from [-1, 1]."""
    rng = np.random.default_rng(seed)
    draws = -(-steps // PROBE_HOLD)
    if isinstance(action_space, spaces.Discrete):
        held = action_space.start + rng.integers(0, action_space.n, size=(sequences, draws))
    elif isinstance(action_space, spaces.Box):
        low = np.where(np.isfinite(action_space.low), action_space.low, -1.0)
        high = np.where(np.isfinite(action_space.high), action_space.high, 1.0)
        uniform = rng.uniform(size=(sequences, draws, *action_space.shape))
        held = (low + uniform * (high - low)).astype(action_space.dtype)
    else:
        raise TypeError(f"fixed action sequences need a Discrete or Box action space, got {action_space}")
    return np.repeat(held, PROBE_HOLD, axis=1)[:, :steps]


def dynamics_fingerprints(
    task: TaskSpec,
    settings: Sequence[Mapping[str, float]],
    *,
    seed: int = 0,
    steps: int = PROBE_STEPS,
    sequences: int = PROBE_SEQUENCES,
    backend: str = "auto",
) -> list[str]:
    """One digest per setting of its trajectories under the fixed action sequences (equal digest = same dynamics).

    Every setting steps Gymnasium's own env, whatever ``backend`` the rollout uses: the batched simulators
    freeze a row at termination (as a rollout must), and the fingerprint needs the physics after it. One env
    at a time, so a large suite holds one MuJoCo model, not one per setting.
    """
    if backend not in BACKENDS:
        raise bad_choice("backend", backend, BACKENDS)
    if not settings:
        return []
    checked = [check_setting(task, s) for s in settings]
    _, action_space = task_spaces(task)
    actions = _action_sequences(action_space, sequences, steps, seed)
    discrete = isinstance(action_space, spaces.Discrete)
    return [_fingerprint(task, dynamics, actions, seed, discrete) for dynamics in checked]


def _fingerprint(task: TaskSpec, dynamics: Mapping[str, float], actions: np.ndarray, seed: int, discrete: bool) -> str:
    """Digest of one setting's un-terminated trajectories, one per action sequence (rows of ``actions``)."""
    env = make_env(task, dynamics)
    per_sequence = []
    try:
        # stepping past termination is the point here: silence Gymnasium's warning about it (CartPole's)
        with warnings.catch_warnings(), np.errstate(over="ignore", invalid="ignore"):
            warnings.simplefilter("ignore")
            for j, sequence in enumerate(actions):
                digest = hashlib.blake2b(digest_size=16)
                obs, _ = env.reset(seed=seed + j)
                _update(digest, np.asarray(obs))
                for action in sequence:
                    obs, reward, terminated, _, _ = env.unwrapped.step(int(action) if discrete else action)
                    _update(digest, np.asarray(obs), np.float64(reward), np.bool_(terminated))
                per_sequence.append(digest.hexdigest())
    finally:
        env.close()
    return hashlib.blake2b("".join(per_sequence).encode(), digest_size=16).hexdigest()


def _update(digest: Any, *arrays: np.ndarray | np.generic) -> None:
    for array in arrays:
        digest.update(np.ascontiguousarray(array).tobytes())


def dynamics_groups(fingerprints: Sequence[str]) -> list[int]:
    """Group ids in order of first appearance: index 0's group is 0 (pass the nominal setting first)."""
    ids: dict[str, int] = {}
    return [ids.setdefault(f, len(ids)) for f in fingerprints]
