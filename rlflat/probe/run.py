"""``probe_run``: sharpness measures of one trained policy, written beside it (``python -m rlflat.probe``).

Every stage runs on ``batches`` independent probe batches (replicates with their own seeds) and every scalar is
reported as the mean over them with its standard error, ``x`` beside ``x_se`` (:mod:`rlflat.probe.pooling`).
Writes ``probe.json`` (scalars plus the full config needed to reproduce them) and ``probe.npz`` (eigenvalues,
spectral density, perturbation curves, landscape grids, and the probe batch under ``observations``, ``actions``,
...; see :data:`rlflat.probe.output.ARRAY_KEYS`) into the run directory or ``out``; for a run directory also a
compact ``probe`` block in ``metrics.json`` (:func:`rlflat.probe.output.metrics_block`). Every input is validated
before anything is written, and ``probe.json`` is a pure function of the inputs and options (timings are printed
and kept in ``metrics.json`` only), so one seed gives the same file twice. Options live in
:mod:`rlflat.probe.options`, the measures in :mod:`rlflat.probe.measures`, the files in :mod:`rlflat.probe.output`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor
from tqdm.auto import tqdm

from rlflat.errors import RlflatError
from rlflat.io import check_output_dir, read_json_object
from rlflat.policy import MODEL_FILE, FunctionalPolicy, Params, check_spaces, load_policy
from rlflat.probe.batch import DEFAULT_GAE_LAMBDA, DEFAULT_GAMMA, ProbeBatch, collect_batch
from rlflat.probe.budget import check_probe_memory
from rlflat.probe.fisher import confounds, fisher_measures, parameter_norms
from rlflat.probe.hvp import HessianOperator
from rlflat.probe.landscape import check_same_architecture
from rlflat.probe.losses import LossFn, make_loss, scope_params
from rlflat.probe.measures import (
    TopVectors,
    hessian_measures,
    interpolation_measures,
    landscape_measures,
    perturbation_measures,
    worst_case_measures,
)
from rlflat.probe.options import (
    DEFAULT_MEASURES,
    MEASURES,
    QUICK,
    ProbeOptions,
    make_options,
    validate_probe_options,
)
from rlflat.probe.output import (
    METRICS_JSON,
    check_accumulates,
    metrics_block,
    model_sha256,
    probe_config,
    publish_probe,
)
from rlflat.probe.pooling import pool, replicate_seed
from rlflat.probe.return_and_published import (
    RETURN_AND_PUBLISHED,
    cliff_measures,
    keskar_measures,
    magnitude_aware_measures,
    return_sharpness_measures,
)
from rlflat.probe.seeding import subseed
from rlflat.sb3_readable import readable_hyperparameters
from rlflat.tasks import TaskSpec, load_task, make_env

__all__ = [
    "DEFAULT_MEASURES",
    "MEASURES",
    "QUICK",
    "ProbeOptions",
    "default_out",
    "last_timing",
    "make_options",
    "probe_run",
    "validate_probe_options",
]

CONFIG_JSON = "config.json"


@dataclass(frozen=True)
class _Source:
    path: Path
    run_dir: Path | None
    config: dict[str, Any]


def _resolve_source(path: str | Path) -> _Source:
    path = Path(path)
    if path.is_dir():
        if not (path / MODEL_FILE).exists():
            raise RlflatError(f"{path} is a directory without {MODEL_FILE}: not an rlflat run dir")
        return _Source(path, path, read_json_object(path / CONFIG_JSON))
    if path.suffix == ".zip" and path.is_file():  # the zip's own gamma / GAE lambda (readable data) as its config's
        return _Source(path, None, {"hyperparameters": readable_hyperparameters(path)})
    raise RlflatError(f"{path} is neither a run directory nor an SB3 model .zip")


def _resolve_task(source: _Source, task: str | None) -> TaskSpec:
    name = task or source.config.get("task")
    if not name:
        raise RlflatError(f"{source.path}: a bare model zip needs --task (e.g. --task CartPole)")
    return load_task(str(name))


def default_out(path: str | Path) -> Path:
    """Where a probe of ``path`` writes by default: the run dir itself, or ``<zip stem>-probe/`` beside a zip."""
    source = _resolve_source(path)
    if source.run_dir is not None:
        return source.run_dir
    return source.path.with_name(f"{source.path.stem}-probe")


class _Timer:
    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def run(self, name: str, fn: Callable[[], Any]) -> Any:
        start = time.perf_counter()
        try:
            return fn()
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start


_LAST_TIMING: dict[str, float] = {}


def last_timing() -> dict[str, float]:
    """Seconds per stage of the latest :func:`probe_run` in this process (kept out of probe.json)."""
    return dict(_LAST_TIMING)


def probe_run(
    path: str | Path,
    task: str | None = None,
    out: str | Path | None = None,
    *,
    force: bool = False,
    trust: bool = False,
    vecnormalize: str | Path | None = None,
    progress: bool | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Probe the policy at ``path`` (a run dir or any SB3 on-policy zip) and return the ``probe.json`` content.

    ``task`` defaults to the run's ``config.json`` task (required for a bare zip); ``out`` defaults to the run dir
    (``<zip stem>-probe/`` beside a bare zip). ``options`` are :class:`ProbeOptions` fields (``quick=True`` for the
    smaller :data:`QUICK` sizes). ``trust`` and ``vecnormalize`` are :func:`rlflat.policy.load_policy`'s: by
    default nothing is unpickled. ``progress``: a progress bar once the probe runs past 5 s (None: on a tty only;
    it changes no result). Raises :class:`RlflatError` on bad input before writing anything. A probe already at
    ``out`` is added to (its measures kept, these added; the same options and model required, no measure twice)
    unless ``force``, which replaces it; either way every file is published as one unit
    (:func:`rlflat.probe.output.publish_probe`). Returns the ``probe.json`` object written.
    """
    opts = make_options(**options)
    source = _resolve_source(path)
    out_dir = check_output_dir(Path(out) if out is not None else default_out(source.path), published=True)
    # a run dir's probe block goes to metrics.json beside probe.json: the run's own, or --out's (issue 23: a
    # probe writes only under its output)
    metrics_path = out_dir / METRICS_JSON if source.run_dir is not None and opts.update_metrics else None
    check_accumulates(out_dir, asdict(opts), model_sha256(source.path), metrics_path, force)
    spec = _resolve_task(source, task)
    policy = load_policy(source.path, spec, trust=trust, vecnormalize=vecnormalize)
    env = make_env(spec)
    try:
        check_spaces(policy, env.observation_space, env.action_space)
    finally:
        env.close()
    probed = scope_params(policy, opts.scope)
    if all(not bool(p.any()) for p in probed.values()):  # issue 23: ARPACK fails on the zero operator
        raise RlflatError(
            f"{source.path}: every probed parameter is zero, so the policy ignores its input and every curvature "
            "measure is zero by construction; nothing to probe (an untrained zero-initialised model?)"
        )
    check_probe_memory(opts, policy, sum(p.numel() for p in probed.values()), spec)
    other = None
    if opts.interpolate is not None:
        other = load_policy(_resolve_source(opts.interpolate).path, spec, trust=trust)
        check_same_architecture(policy, other)
    timer = _Timer()
    result, arrays = _probe(policy, spec, source, opts, other, timer, progress)
    run_dir = source.run_dir

    def block(merged: Mapping[str, Any]) -> dict[str, Any]:
        return metrics_block(merged, out_dir, run_dir or out_dir, timer.seconds)

    published = publish_probe(out_dir, result, arrays, block if metrics_path is not None else None, force)
    _LAST_TIMING.clear()
    _LAST_TIMING.update(timer.seconds)
    _LAST_TIMING["total"] = sum(timer.seconds.values())
    return published


def _collect(
    policy: FunctionalPolicy, spec: TaskSpec, source: _Source, opts: ProbeOptions
) -> tuple[ProbeBatch, dict[str, Any]]:
    """The probe batch of ``opts.seed``, with the resolved gamma / GAE lambda / reward scale (the run's unless
    overridden)."""
    hp = source.config.get("hyperparameters") or {}
    gamma = _rate(opts.gamma if opts.gamma is not None else hp.get("gamma", DEFAULT_GAMMA), "gamma", source)
    gae_lambda = _rate(
        opts.gae_lambda if opts.gae_lambda is not None else hp.get("gae_lambda", DEFAULT_GAE_LAMBDA),
        "gae_lambda",
        source,
    )
    rscale = policy.reward_scaling
    batch = collect_batch(
        policy,
        spec,
        opts.batch,
        seed=opts.seed,
        gamma=gamma,
        gae_lambda=gae_lambda,
        n_envs=opts.batch_envs,
        reward_scaling=rscale,
        normalize_advantage=opts.normalize_advantage,
        whole_episodes=opts.whole_episodes,
    )
    return batch, {"gamma_resolved": gamma, "gae_lambda_resolved": gae_lambda, "reward_scale": list(rscale)}


def _rate(value: Any, name: str, source: _Source) -> float:
    """A discount or GAE lambda in [0, 1] (from the options or the run's config.json), or a one-line error."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value <= 1.0:
        raise RlflatError(f"{name} must be a number in [0, 1], got {value!r} (from {source.path}'s {CONFIG_JSON})")
    return float(value)


def _stages(opts: ProbeOptions, other: FunctionalPolicy | None) -> list[str]:
    """The timed stages one replicate runs, in order (for the progress bar)."""
    measures = set(opts.measures)
    names = ["batch", "gradient"]
    names += ["hessian"] if measures & {"hessian", "trace", "density"} else []
    names += [m for m in ("fisher", "perturbation", "worst_case", *RETURN_AND_PUBLISHED, "landscape") if m in measures]
    return names + (["interpolation"] if other is not None else [])


def _probe(
    policy: FunctionalPolicy,
    spec: TaskSpec,
    source: _Source,
    opts: ProbeOptions,
    other: FunctionalPolicy | None,
    timer: _Timer,
    progress: bool | None = None,
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Every stage on ``opts.batches`` independent replicates (seeds :func:`replicate_seed`), pooled into means
    with standard errors (:func:`rlflat.probe.pooling.pool`).

    ``probe.npz`` holds the pooled scalars' per-replicate values (``<path>_batches``), the probe batches of all
    replicates concatenated (with ``batch_index``), and the other arrays (spectra, curves, landscapes) of the
    first replicate.
    """
    stages = _stages(opts, other)
    bar = tqdm(  # shown once the probe has run 5 s
        total=opts.batches * len(stages), desc="probe", unit="stage", delay=5.0, disable=_disabled(progress)
    )
    results: list[dict[str, Any]] = []
    arrays: dict[str, np.ndarray] = {}
    batch_arrays: list[dict[str, np.ndarray]] = []
    resolved: dict[str, Any] = {}
    try:
        for b in range(opts.batches):
            replicate = replace(opts, seed=replicate_seed(opts.seed, b))
            bar.set_postfix_str(f"batch {b + 1}/{opts.batches}")
            result, rep_arrays, batch, resolved = _replicate(policy, spec, source, replicate, other, timer, bar)
            results.append(result)
            batch_arrays.append(batch.arrays())
            if b == 0:
                arrays.update(rep_arrays)
    finally:
        bar.close()
    pooled, per_batch = pool(results)
    arrays.update(per_batch)
    for key in batch_arrays[0]:
        arrays[key] = np.concatenate([a[key] for a in batch_arrays])
    arrays["batch_index"] = np.concatenate([np.full(len(a["advantages"]), b) for b, a in enumerate(batch_arrays)])
    pooled["confounds"] = {**(pooled.get("confounds") or {}), "parameter_norms": parameter_norms(policy)}
    pooled["config"] = probe_config(source.path, source.config, (spec.alias, spec.id), opts, resolved)
    pooled["config"]["replicate_seeds"] = [replicate_seed(opts.seed, b) for b in range(opts.batches)]
    return pooled, arrays


def _disabled(progress: bool | None) -> bool | None:
    """tqdm's ``disable``: None (a tty only) by default, as the evaluator does."""
    return None if progress is None else not progress


def _replicate(
    policy: FunctionalPolicy,
    spec: TaskSpec,
    source: _Source,
    opts: ProbeOptions,
    other: FunctionalPolicy | None,
    timer: _Timer,
    bar: Any,
) -> tuple[dict[str, Any], dict[str, np.ndarray], ProbeBatch, dict[str, Any]]:
    """Run the selected stages in order on one batch; each adds its block to the result and its arrays."""

    def run(name: str, fn: Callable[[], Any]) -> Any:
        try:
            return timer.run(name, fn)
        finally:
            bar.update(1)

    batch, resolved = run("batch", lambda: _collect(policy, spec, source, opts))
    loss_fn = make_loss(policy, batch, opts.loss)
    params = scope_params(policy, opts.scope)
    obs = policy.preprocess(batch.observations)
    arrays: dict[str, np.ndarray] = {}
    measures = set(opts.measures)
    op = run("gradient", lambda: HessianOperator(loss_fn, params))
    result: dict[str, Any] = _header(op, policy, spec, batch, opts, resolved)
    result["confounds"] = confounds(policy, obs)

    vectors = TopVectors(lambda: None)
    result["hessian"] = None
    if measures & {"hessian", "trace", "density"}:
        result["hessian"], harr, vectors = run("hessian", lambda: hessian_measures(op, opts, measures))
        result["hessian"]["of"] = HESSIAN_LABELS[opts.loss]
        arrays.update(harr)
    if "fisher" in measures:
        result["fisher"] = run(
            "fisher",
            lambda: fisher_measures(policy, batch, params, seed=opts.seed),
        )
    perturbation: dict[str, Any] = {"average": None, "worst_case": None}
    eval_seed = subseed(opts.seed, "evaluation")
    if "perturbation" in measures:
        perturbation["average"], parr = run(
            "perturbation", lambda: perturbation_measures(policy, spec, loss_fn, params, obs, opts, eval_seed)
        )
        arrays.update(parr)
    if "worst_case" in measures:
        nominal = (perturbation["average"] or {}).get("nominal_return")
        perturbation["worst_case"], warr = run(
            "worst_case",
            lambda: worst_case_measures(
                policy, spec, loss_fn, params, obs, opts, nominal_return=nominal, vectors=vectors, eval_seed=eval_seed
            ),
        )
        arrays.update(warr)
    result["perturbation"] = perturbation
    _return_and_published(policy, spec, batch, loss_fn, params, obs, opts, run, eval_seed, result, arrays)
    if "landscape" in measures:
        result["landscape"], larr = run(
            "landscape", lambda: landscape_measures(policy, spec, loss_fn, params, op, vectors, opts)
        )
        arrays.update(larr)
    if other is not None:
        result["interpolation"], iarr = run(
            "interpolation", lambda: interpolation_measures(policy, other, spec, loss_fn, opts, eval_seed)
        )
        arrays.update(iarr)
    known = vectors.known()
    if known is not None:
        arrays["hessian_top_eigenvector"] = known[:, 0].numpy()
    return result, arrays, batch, resolved


HESSIAN_LABELS = {
    "surrogate": (
        "the unclipped PPO surrogate on the probe batch: theta0 is not its minimum (its gradient is minus the policy "
        "gradient) and it is indefinite, so this is not curvature at a minimum; see 'fisher' for the PSD geometry"
    ),
    "kl": "the mean KL to the policy at theta0: the Fisher information (PSD, stationary at theta0)",
    "nll": "the negative log-likelihood of the batch's sampled actions",
}
"""What ``probe.json['hessian']`` is the Hessian of, per loss (its ``of`` field)."""


def _return_and_published(
    policy: FunctionalPolicy,
    spec: TaskSpec,
    batch: ProbeBatch,
    loss_fn: LossFn,
    params: Params,
    obs: Tensor,
    opts: ProbeOptions,
    run: Callable[[str, Callable[[], Any]], Any],
    eval_seed: int,
    result: dict[str, Any],
    arrays: dict[str, np.ndarray],
) -> None:
    """The return-based stages and the published-definition stages (None where not selected)."""
    stages: dict[str, Callable[[], tuple[dict[str, Any], dict[str, np.ndarray]]]] = {
        "return_sharpness": lambda: return_sharpness_measures(policy, spec, params, opts, eval_seed),
        "cliff": lambda: cliff_measures(policy, spec, batch, loss_fn, params, opts, eval_seed),
        "keskar": lambda: keskar_measures(loss_fn, params, opts),
        "magnitude_aware": lambda: magnitude_aware_measures(policy, params, obs, opts),
    }
    for name, stage in stages.items():
        result[name] = None
        if name in opts.measures:
            result[name], stage_arrays = run(name, stage)
            arrays.update(stage_arrays)


def _header(
    op: HessianOperator,
    policy: FunctionalPolicy,
    spec: TaskSpec,
    batch: ProbeBatch,
    opts: ProbeOptions,
    resolved: dict[str, Any],
) -> dict[str, Any]:
    """The loss at theta0, parameter counts and the batch's description: the top of ``probe.json``."""
    return {
        "loss": {"name": opts.loss, "value": op.loss, "gradient_norm": float(op.gradient().norm())},
        "n_params": op.n,
        "n_params_total": policy.n_params,
        "scope": opts.scope,
        "task": spec.alias,
        "batch": {
            "size": len(batch),
            "gamma": resolved["gamma_resolved"],
            "gae_lambda": resolved["gae_lambda_resolved"],
            "reward_scale": resolved["reward_scale"][0],
            "mean_value_target": float(batch.returns.mean()),
        },
    }
