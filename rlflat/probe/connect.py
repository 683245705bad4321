"""Curves between two policies (mode connectivity): the straight line and a fitted quadratic Bezier curve.

Garipov et al. (2018, "Loss Surfaces, Mode Connectivity, and Fast Ensembling of DNNs") and Draxler et al. (2018)
found that two independently trained minima, separated by a barrier along the straight line, are joined by simple
curves of low loss. Here the curve is Garipov's quadratic Bezier ``phi(t) = (1-t)^2 a + 2t(1-t) c + t^2 b`` between
the parameters ``a`` of policy A and ``b`` of policy B, whose control point ``c`` minimises the expected loss
along the curve, ``E_{t ~ U(0,1)} L(phi(t))``, by Adam with a fresh ``t`` each step (Garipov's training
procedure; ``c`` starts at the midpoint, i.e. on the straight line).

The loss, and why. An RL policy has no training loss whose minima are the trained policies: the PPO surrogate
on a probe batch is minimised by no trained policy (its gradient at theta0 is the policy gradient, not zero),
and it is unbounded below away from theta0 (the ratio grows without limit for a Gaussian policy whose std
shrinks), so a curve fitted to it could run to degenerate policies and its "barrier" would compare nothing.
The curve is fitted instead to the *KL to the nearer endpoint*,

    L(theta) = min( KL(pi_A || pi_theta) on A's probe states,  KL(pi_B || pi_theta) on B's probe states ),

which is 0 with zero gradient at both endpoints (each is an exact minimum, as mode connectivity requires),
bounded below, and smooth wherever the nearer endpoint does not change. A low value means every point of the
curve acts like one of the two trained policies on the states that policy visits; its Hessian at an endpoint is
that policy's Fisher matrix, the probe's ``kl`` loss. The quantity of interest, the episode return, is not
differentiable, so it is not fitted but measured along both paths (deterministic actions, common episodes,
one batched evaluator call), which is the test of whether the curve found by the KL keeps the policies' return.

Barrier (Entezari et al. 2022, "The Role of Permutation Invariance in Linear Mode Connectivity"): the largest
excess over the linear interpolation of the endpoint values, ``max_t [L(t) - ((1-t) L(0) + t L(1))]`` for the
loss and ``max_t [((1-t) R(0) + t R(1)) - R(t)]`` for the return. Every number is estimated on B replicates,
each with its own probe batches of A and B, its own curve fit and its own evaluation episodes, and reported as
the mean with its standard error over them (:mod:`rlflat.probe.pooling`).

No neuron alignment. Hidden units can be permuted (and, for tanh, sign-flipped) without changing a network, so
two independently trained policies may sit in differently-permuted copies of one basin, and part of their line
barrier is that symmetry (Entezari et al. 2022; Ainsworth et al. 2023 align units before interpolating). B is not
aligned here: the study asks about the landscape between policies as training leaves them, and the Bezier curve
has a free control point with which it can route around a permutation barrier (Garipov et al. connected
unaligned networks this way), so the line-minus-curve difference is itself the size of what a curved path, or an
alignment, removes. A low *line* barrier between unaligned seeds is the stronger, rarer finding.

Parameters: the actor's (:mod:`rlflat.scope`) and ``log_std`` when the policy has one (it sets the Gaussian's
width, so the KL to B is only 0 at t = 1 if it moves too); the critic enters neither the loss nor the return. A
and B must share the architecture; observations are normalised with A's statistics along the path (as
``--interpolate`` does), so t = 1 is exactly B only when both share them, which is reported.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from rlflat.errors import RlflatError
from rlflat.policy import FunctionalPolicy, Params
from rlflat.probe.batch import ProbeBatch, collect_batch
from rlflat.probe.landscape import _same_normalizer, check_same_architecture, interpolate
from rlflat.probe.losses import _kl
from rlflat.probe.perturbation import perturbed_returns
from rlflat.probe.pooling import pool, replicate_seed
from rlflat.probe.seeding import subseed
from rlflat.tasks import TaskSpec

__all__ = [
    "CONNECT_PREFIX",
    "QUICK_CONNECT",
    "ConnectOptions",
    "bezier",
    "connect",
    "connect_parameters",
    "connect_runs",
    "connect_stem",
    "fit_bezier",
    "line",
    "nearer_endpoint_kl",
    "path_barrier",
]

LossFn = Callable[[Params], Tensor]


@dataclass(frozen=True)
class ConnectOptions:
    """Sizes of the curve probe (``python -m rlflat.probe A --connect B``); :data:`QUICK_CONNECT` for smoke tests."""

    batches: int = 4
    """Replicates B: each has its own probe batches, curve fit and evaluation episodes; SEs are over them."""
    batch: int = 1024
    """Transitions per probe batch of each policy (whole episodes)."""
    seed: int = 0
    points: int = 11
    """Evenly spaced t in [0, 1] at which both paths are evaluated (ends included)."""
    steps: int = 400
    """Adam steps of the control point, one uniformly drawn t each."""
    lr: float = 0.01
    episodes: int = 10
    """Evaluation episodes per path point (common to every point of a replicate)."""

    def __post_init__(self) -> None:
        for name in ("batches", "batch", "points", "steps", "episodes"):
            minimum = 2 if name in ("points", "batch") else 0 if name in ("steps", "episodes") else 1
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise RlflatError(f"connect {name} must be an integer >= {minimum}, got {value!r}")
        if not (isinstance(self.lr, int | float) and self.lr > 0):
            raise RlflatError(f"connect lr must be > 0, got {self.lr!r}")


QUICK_CONNECT = ConnectOptions(batches=2, batch=256, points=5, steps=60, episodes=2)


def bezier(a: Mapping[str, Tensor], c: Mapping[str, Tensor], b: Mapping[str, Tensor], t: float) -> Params:
    """The quadratic Bezier point ``(1-t)^2 a + 2t(1-t) c + t^2 b`` (differentiable in ``c``)."""
    u = 1.0 - t
    return {k: u * u * a[k] + 2.0 * t * u * c[k] + t * t * b[k] for k in a}


def line(a: Mapping[str, Tensor], b: Mapping[str, Tensor], t: float) -> Params:
    return {k: (1.0 - t) * a[k] + t * b[k] for k in a}


def fit_bezier(
    a: Mapping[str, Tensor],
    b: Mapping[str, Tensor],
    loss_fn: LossFn,
    *,
    steps: int = ConnectOptions.steps,
    lr: float = ConnectOptions.lr,
    seed: int = 0,
) -> Params:
    """The control point minimising ``E_{t~U(0,1)} loss_fn(bezier(a, c, b, t))`` (Garipov et al. 2018).

    Adam from the midpoint (the straight line), one seeded uniform ``t`` per step; the endpoints are fixed.
    """
    a = {k: v.detach() for k, v in a.items()}
    b = {k: v.detach() for k, v in b.items()}
    control = {k: (0.5 * (a[k] + b[k])).clone().requires_grad_(True) for k in a}
    optimizer = torch.optim.Adam(list(control.values()), lr=lr)
    gen = torch.Generator().manual_seed(int(seed))
    for _ in range(steps):
        t = float(torch.rand((), generator=gen))
        optimizer.zero_grad()
        loss = loss_fn(bezier(a, control, b, t))
        if not bool(torch.isfinite(loss)):
            raise RlflatError(f"curve fit diverged: loss {loss.item()} at t={t:.3f}; lower the connect lr")
        loss.backward()
        optimizer.step()
    return {k: v.detach() for k, v in control.items()}


def path_barrier(
    values: Sequence[float] | np.ndarray, ts: Sequence[float] | np.ndarray, higher_is_worse: bool
) -> float:
    """Entezari et al.'s (2022) barrier: the largest excess over the linear interpolation of the end values.

    ``ts`` must start at 0 and end at 1. Loss (``higher_is_worse``): ``max_t L(t) - ((1-t) L0 + t L1)``; return:
    ``max_t ((1-t) R0 + t R1) - R(t)``. 0 when the path is never worse than the chord (the ends give 0).
    """
    v, t = np.asarray(values, dtype=np.float64), np.asarray(ts, dtype=np.float64)
    if t.size < 2 or abs(t[0]) > 1e-12 or abs(t[-1] - 1.0) > 1e-12:
        raise RlflatError("a barrier needs a grid of t from 0 to 1")
    chord = (1.0 - t) * v[0] + t * v[-1]
    excess = v - chord if higher_is_worse else chord - v
    return float(excess.max())


def connect_parameters(policy: FunctionalPolicy) -> list[str]:
    """The parameters the paths move: the actor's and ``log_std`` (see the module docstring)."""
    return [*policy.actor_names, *(["log_std"] if "log_std" in policy.params else [])]


def nearer_endpoint_kl(
    policy_a: FunctionalPolicy, policy_b: FunctionalPolicy, batch_a: ProbeBatch, batch_b: ProbeBatch
) -> LossFn:
    """``min(KL(pi_A || pi_theta) on A's states, KL(pi_B || pi_theta) on B's states)``, theta read through A.

    Each reference distribution is its own policy's, on its own (normalised) observations; the path's policy
    normalises with A's statistics.
    """
    obs_a = policy_a.preprocess(batch_a.observations)
    obs_b_as_a = policy_a.preprocess(batch_b.observations)
    with torch.no_grad():
        ref_a = policy_a.distribution({}, obs_a)
        ref_b = policy_b.distribution({}, policy_b.preprocess(batch_b.observations))

    def loss(params: Params) -> Tensor:
        kl_a = _kl(ref_a, policy_a.distribution(params, obs_a), policy_a.discrete).mean()
        kl_b = _kl(ref_b, policy_a.distribution(params, obs_b_as_a), policy_a.discrete).mean()
        return torch.minimum(kl_a, kl_b)

    return loss


def _replicate(
    policy_a: FunctionalPolicy, policy_b: FunctionalPolicy, task: TaskSpec, opts: ConnectOptions, seed: int
) -> tuple[dict[str, Any], Params]:
    """One replicate: probe batches, the fitted curve, both paths' losses, returns and barriers."""
    batch_a = collect_batch(policy_a, task, opts.batch, seed=subseed(seed, "connect-batch-a"))
    batch_b = collect_batch(policy_b, task, opts.batch, seed=subseed(seed, "connect-batch-b"))
    loss_fn = nearer_endpoint_kl(policy_a, policy_b, batch_a, batch_b)
    names = connect_parameters(policy_a)
    a = {k: policy_a.params[k] for k in names}
    b = {k: policy_b.params[k] for k in names}
    control = fit_bezier(a, b, loss_fn, steps=opts.steps, lr=opts.lr, seed=subseed(seed, "connect-t"))
    ts = np.linspace(0.0, 1.0, opts.points)
    eval_seed = subseed(seed, "connect-episodes")
    # the line through the --interpolate machinery (all parameters; the critic changes neither loss nor return)
    straight, _ = interpolate(policy_a, policy_b, task, loss_fn, ts, episodes=opts.episodes, eval_seed=eval_seed)
    curve_points = [bezier(a, control, b, float(t)) for t in ts]
    with torch.no_grad():
        curve_loss = [float(loss_fn(p)) for p in curve_points]
    curve_return = None
    if opts.episodes > 0:
        curve_return = perturbed_returns(policy_a, task, curve_points, opts.episodes, seed=eval_seed).mean(-1).tolist()
    paths = {"line": (straight["loss"], straight["return"]), "curve": (curve_loss, curve_return)}
    result: dict[str, Any] = {}
    for name, (losses, returns) in paths.items():
        result[name] = {
            "loss": list(losses),
            "loss_mean": float(np.mean(losses)),
            "loss_barrier": path_barrier(losses, ts, higher_is_worse=True),
            "return": returns,
            "return_barrier": None if returns is None else path_barrier(returns, ts, higher_is_worse=False),
        }
    midpoint = {k: 0.5 * (a[k] + b[k]) for k in a}
    result["distance"] = _norm({k: a[k] - b[k] for k in a})
    result["control_offset"] = _norm({k: control[k] - midpoint[k] for k in a})
    return result, control


def _save_npz(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    with open(path, "wb") as handle:
        np.savez_compressed(handle, **arrays)  # type: ignore[arg-type]


def _norm(params: Mapping[str, Tensor]) -> float:
    return float(torch.sqrt(sum((v.double() ** 2).sum() for v in params.values())))  # type: ignore[arg-type]


def connect(
    policy_a: FunctionalPolicy,
    policy_b: FunctionalPolicy,
    task: TaskSpec,
    options: ConnectOptions | None = None,
    **overrides: Any,
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Line and fitted Bezier curve from A to B on ``options.batches`` replicates, pooled into means with SEs.

    Returns ``(result, arrays)``: ``result["line"|"curve"]`` hold ``loss``/``return`` along ``t`` (lists, with
    ``_se``), their barriers and the mean loss; ``arrays`` the per-replicate values (``<path>_batches``), ``t`` and
    the first replicate's control point (``control.<name>``).
    """
    opts = replace(options or ConnectOptions(), **overrides)
    check_same_architecture(policy_a, policy_b)
    replicates, controls = [], []
    for r in range(opts.batches):
        rep, control = _replicate(policy_a, policy_b, task, opts, replicate_seed(opts.seed, r))
        replicates.append(rep)
        controls.append(control)
    pooled, arrays = pool(replicates)
    ts = np.linspace(0.0, 1.0, opts.points)
    pooled["t"] = ts.tolist()
    pooled["loss_name"] = "kl_nearer_endpoint"
    pooled["parameters"] = connect_parameters(policy_a)
    pooled["n_params"] = int(sum(policy_a.params[k].numel() for k in pooled["parameters"]))
    pooled["same_observation_normalizer"] = _same_normalizer(policy_a, policy_b)
    pooled["aligned"] = False
    pooled["config"] = asdict(opts)
    arrays["t"] = ts
    arrays.update({f"control.{k}": v.numpy() for k, v in controls[0].items()})
    return pooled, arrays


CONNECT_PREFIX = "connect"
"""Files of a curve probe: ``connect-<B>.json`` (pooled numbers and the config) and ``connect-<B>.npz`` (per-replicate
values, ``t``, the first replicate's control point), beside the probe of A; the CLI adds ``connect-<B>.png``."""


def connect_stem(path_b: str | Path) -> str:
    """``connect-<name of B>``: B's run directory name or zip stem, so A can be connected to several policies."""
    path = Path(path_b)
    name = path.name if path.is_dir() else path.stem
    return f"{CONNECT_PREFIX}-{name}"


def connect_runs(
    path_a: str | Path,
    path_b: str | Path,
    task: str | None = None,
    out: str | Path | None = None,
    *,
    force: bool = False,
    trust: bool = False,
    vecnormalize: str | Path | None = None,
    quick: bool = False,
    **options: Any,
) -> tuple[dict[str, Any], Path]:
    """Connect the policy at ``path_a`` to the one at ``path_b`` (run dirs or SB3 zips) and write the result.

    ``out`` defaults to where A's probe goes (its run dir, ``<zip stem>-probe/`` beside a zip); ``options`` are
    :class:`ConnectOptions` fields (``quick`` starts from :data:`QUICK_CONNECT`). Every input is checked before
    any work; an existing result is refused unless ``force``. Returns ``(result, path of the JSON)``.
    """
    from rlflat.io import check_no_results, check_output_dir, to_jsonable, update_dir, write_atomic, write_json
    from rlflat.policy import load_policy
    from rlflat.probe.run import _resolve_source, _resolve_task, default_out

    opts = replace(QUICK_CONNECT if quick else ConnectOptions(), **options)
    source_a, source_b = _resolve_source(path_a), _resolve_source(path_b)
    out_dir = check_output_dir(Path(out) if out is not None else default_out(source_a.path))
    stem = connect_stem(source_b.path)
    check_no_results(out_dir / f"{stem}.json", None, "connect", force)
    spec = _resolve_task(source_a, task)
    policy_a = load_policy(source_a.path, spec, trust=trust, vecnormalize=vecnormalize)
    policy_b = load_policy(source_b.path, spec, trust=trust)
    check_same_architecture(policy_a, policy_b)
    result, arrays = connect(policy_a, policy_b, spec, opts)
    result = {"a": str(source_a.path), "b": str(source_b.path), "task": spec.alias, **result}

    def build(folder: Path) -> None:  # both files as one unit, beside the run's other results (issue 23)
        write_atomic(folder / f"{stem}.npz", lambda p: _save_npz(p, arrays))
        write_json(folder / f"{stem}.json", result)

    update_dir(out_dir, build)
    jsonable: dict[str, Any] = to_jsonable(result)
    return jsonable, out_dir / f"{stem}.json"
