"""How much memory a probe needs, from its options and the policy's size (see :mod:`rlflat.memory`).

The large allocations of a probe are: the probe batches (all ``batches`` replicates are kept) and the autograd
graph through one (Hessian-vector products keep a double-backward graph), the dense Hessian when ``n_params <=
exact_threshold`` (n^2 float64, plus ``eigvalsh``'s copy and workspace), Lanczos vectors, and the stacked parameter
sets and rollout rows of the perturbation, return-sharpness, cliff, landscape and interpolation stages (one stage
at a time). The probe refuses, in one line, before it collects anything when their sum would not fit.
"""

from __future__ import annotations

import math

from rlflat.evaluate.budget import GRAPH_COPIES, activation_widths, rollout_bytes
from rlflat.memory import format_bytes, require_memory
from rlflat.policy import FunctionalPolicy
from rlflat.probe.options import ProbeOptions
from rlflat.tasks import TaskSpec

__all__ = ["check_probe_memory", "probe_bytes"]


def probe_bytes(opts: ProbeOptions, policy: FunctionalPolicy, n: int, task: TaskSpec) -> dict[str, float]:
    """Estimated bytes of the probe's large allocations by part (``n`` = probed parameters)."""
    widths = activation_widths(policy)
    obs_dim = math.prod(policy.observation_space.shape or (1,))
    measures = set(opts.measures)
    stored = float(opts.batch) * (4 * obs_dim + 64) * opts.batches  # every replicate's batch is kept for the npz
    parts: dict[str, float] = {"batch": stored + float(opts.batch) * 4 * GRAPH_COPIES * (obs_dim + sum(widths))}
    if measures & {"hessian", "trace", "density", "landscape", "worst_case"}:
        if measures & {"hessian", "density", "landscape"} and n <= opts.exact_threshold:
            parts["dense Hessian"] = 3 * 8 * float(n) ** 2
        vectors = max(2 * opts.top_k + 1, 20) + (opts.density_steps if "density" in measures else 0)
        grid = 8 * 260 * float(opts.density_grid) if "density" in measures else 0.0  # smoothed in 256-node chunks
        parts["Lanczos vectors"] = 8 * float(n) * vectors + grid
    stages: dict[str, tuple[float, float]] = {}  # stage -> (parameter sets, rollout rows)
    if "perturbation" in measures:
        kinds = 1 if opts.directions == "raw" else 2
        sets = 1 + kinds * float(opts.n_directions) * len(opts.sigmas)
        stages["perturbation"] = (sets, sets * opts.episodes)
    if "worst_case" in measures:
        stages["worst case"] = (5.0, 5.0 * opts.episodes)
    if "landscape" in measures:
        sets = max(float(opts.landscape_points), float(opts.landscape_points_2d) ** 2)
        stages["landscape"] = (sets, sets * opts.landscape_episodes)
    if "return_sharpness" in measures:
        sets = 1 + 2 * float(opts.return_directions) * len(opts.return_sigmas)  # filter and adaptive directions
        stages["return sharpness"] = (sets, sets * opts.return_episodes)
    if "cliff" in measures:
        stages["cliff"] = (float(opts.cliff_points), float(opts.cliff_points) * opts.return_episodes)
    if "magnitude_aware" in measures:
        stages["magnitude-aware"] = (float(opts.magnitude_aware_samples), 0.0)  # fixed draws, no rollouts
    if opts.interpolate is not None:
        sets = float(opts.interpolation_steps) * 2 + 1
        stages["interpolation"] = (sets, sets * opts.episodes)
    per_stage = {name: 3 * 4 * sets * n + rollout_bytes(task, rows, widths) for name, (sets, rows) in stages.items()}
    if per_stage:  # stages run one after another: the largest one counts
        name = max(per_stage, key=lambda k: per_stage[k])
        parts[f"{name} rollouts"] = per_stage[name]
    return parts


def check_probe_memory(opts: ProbeOptions, policy: FunctionalPolicy, n: int, task: TaskSpec) -> None:
    """Refuse in one line, naming the largest part, when the probe's estimate does not fit in memory."""
    parts = probe_bytes(opts, policy, n, task)
    largest = max(parts, key=lambda k: parts[k])
    require_memory(
        sum(parts.values()),
        f"probe of {n} parameters ({largest} {format_bytes(parts[largest])}; batch {opts.batch}, "
        f"{opts.n_directions} directions x {len(opts.sigmas)} sigmas x {opts.episodes} episodes)",
    )
