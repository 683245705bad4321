"""``python -m rlflat.probe RUN``: sharpness measures of one trained policy, written beside it.

Writes ``probe.json`` (scalars plus the full config needed to reproduce them) and ``probe.npz`` (eigenvalues,
spectral density, perturbation curves, landscape grids, and the probe batch under ``observations``, ``actions``,
...) into the run directory or ``--out``; for a run directory also a compact ``probe`` block in ``metrics.json``.
Every input is validated before anything is written, and ``probe.json`` is a pure function of the inputs and
options (timings are printed and kept in ``metrics.json`` only), so one seed gives the same file twice.
"""

from __future__ import annotations

import argparse
import hashlib
import math
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields, replace
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rlflat.cli import run_cli, set_torch_threads
from rlflat.errors import RlflatError, bad_choice
from rlflat.io import read_json, to_jsonable, update_json_block, write_atomic, write_json
from rlflat.policy import MODEL_FILE, FunctionalPolicy, Params, check_spaces, load_policy
from rlflat.probe.batch import DEFAULT_GAE_LAMBDA, DEFAULT_GAMMA, collect_batch, reward_scale, subseed
from rlflat.probe.directions import KINDS, dict_norm
from rlflat.probe.hvp import HessianOperator
from rlflat.probe.landscape import check_same_architecture, eigen_direction, interpolate, scaled_to, slice_1d, slice_2d
from rlflat.probe.losses import LOSSES, SCOPES, make_loss, scope_params
from rlflat.probe.perturbation import average_case, draw_directions, worst_case
from rlflat.probe.spectrum import (
    density_from_eigenvalues,
    eigenpairs,
    extreme_eigenpairs,
    hutchinson_trace,
    lambda_max_over_trace,
    negative_abs_mass_fraction,
    negative_mass_fraction,
    slq_density,
)
from rlflat.tasks import TaskSpec, load_task, make_env

__all__ = ["DEFAULT_MEASURES", "MEASURES", "QUICK", "ProbeOptions", "main", "probe_run"]

MEASURES: tuple[str, ...] = ("hessian", "trace", "density", "perturbation", "worst_case", "landscape")
DEFAULT_MEASURES: tuple[str, ...] = ("hessian", "trace", "density", "perturbation", "worst_case")
PROBE_JSON, PROBE_NPZ, METRICS_JSON, CONFIG_JSON = "probe.json", "probe.npz", "metrics.json", "config.json"
VERSIONED = ("torch", "numpy", "scipy", "gymnasium", "stable-baselines3")


@dataclass(frozen=True)
class ProbeOptions:
    """Every knob of a probe, recorded in ``probe.json['config']``; defaults are the fast CartPole demo set."""

    measures: tuple[str, ...] = DEFAULT_MEASURES
    loss: str = "surrogate"
    scope: str = "actor"
    seed: int = 0
    # probe batch
    batch: int = 4096
    batch_envs: int = 8
    gamma: float | None = None
    """None: the run's ``hyperparameters.gamma`` (0.99 for a bare zip)."""
    gae_lambda: float | None = None
    normalize_advantage: bool = True
    # Hessian
    top_k: int = 5
    exact_threshold: int = 10_000
    trace_probes: int = 100
    density_probes: int = 4
    density_steps: int = 90
    density_grid: int = 1000
    # average-case perturbation
    directions: str = "filter"
    ignore_1d: bool = True
    """Filter/layer directions: zero 1-D tensors (biases, log-std) as Li et al. (2018); False normalises them."""
    n_directions: int = 8
    sigmas: tuple[float, ...] = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0)
    episodes: int = 5
    critical_fraction: float = 0.5
    # worst case
    rho: float = 0.05
    adaptive_rho: float = 0.5
    eta: float = 0.01
    ascent_steps: int = 10
    # landscapes
    landscape_points: int = 21
    landscape_points_2d: int = 11
    landscape_span: float = 1.0
    landscape_episodes: int = 3
    # interpolation
    interpolate: str | None = None
    interpolation_steps: int = 20
    interpolation_margin: float = 0.25
    update_metrics: bool = True

    def validate(self) -> None:
        """One-line errors naming the bad value and the valid choices; nothing is computed or written before."""
        for m in self.measures:
            if m not in MEASURES:
                raise bad_choice("measure", m, MEASURES)
        if not self.measures:
            raise RlflatError(f"no measures selected; valid: {', '.join(MEASURES)}")
        if self.loss not in LOSSES:
            raise bad_choice("loss", self.loss, LOSSES)
        if self.scope not in SCOPES:
            raise bad_choice("parameter scope", self.scope, SCOPES)
        if self.directions not in KINDS:
            raise bad_choice("direction kind", self.directions, KINDS)
        positive = {
            "batch": self.batch,
            "batch_envs": self.batch_envs,
            "top_k": self.top_k,
            "n_directions": self.n_directions,
            "episodes": self.episodes,
            "density_probes": self.density_probes,
            "density_steps": self.density_steps,
            "ascent_steps": self.ascent_steps,
            "landscape_points": self.landscape_points,
            "landscape_points_2d": self.landscape_points_2d,
            "landscape_episodes": self.landscape_episodes,
            "interpolation_steps": self.interpolation_steps,
        }
        for name, value in positive.items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise RlflatError(f"{name} must be a positive integer, got {value!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise RlflatError(f"seed must be an integer >= 0, got {self.seed!r}")
        if self.batch < 2 or self.trace_probes < 2 or self.density_grid < 2:
            raise RlflatError("batch, trace_probes and density_grid must be >= 2")
        for name in ("rho", "adaptive_rho", "eta", "landscape_span", "interpolation_margin"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
                raise RlflatError(f"{name} must be a finite number >= 0, got {value!r}")
        if not self.sigmas or any(not (math.isfinite(s) and s > 0) for s in self.sigmas):
            raise RlflatError(f"sigmas must be positive finite numbers, got {list(self.sigmas)}")
        if list(self.sigmas) != sorted(self.sigmas):
            raise RlflatError(f"sigmas must be ascending, got {list(self.sigmas)}")
        if not 0 < self.critical_fraction < 1:
            raise RlflatError(f"critical_fraction must be in (0, 1), got {self.critical_fraction}")


QUICK: dict[str, Any] = {
    "batch": 1024,
    "trace_probes": 30,
    "n_directions": 4,
    "sigmas": (0.03, 0.3, 1.0, 3.0),
    "episodes": 2,
    "ascent_steps": 5,
    "landscape_points": 11,
    "landscape_points_2d": 7,
    "landscape_episodes": 1,
    "exact_threshold": 0,
    "measures": ("hessian", "trace", "perturbation", "worst_case"),
}
"""``--quick``: smaller sizes and the matrix-free spectrum, ~10 s for a 64x64 CartPole policy (explicit options
still win)."""


def make_options(**options: Any) -> ProbeOptions:
    """Options from keywords, rejecting unknown names in one line; sequences become tuples (hashable, JSON-able)."""
    names = [f.name for f in fields(ProbeOptions)]
    quick = bool(options.pop("quick", False))
    for key in options:
        if key not in names:
            raise bad_choice("probe option", key, [*names, "quick"])
    merged = {**(QUICK if quick else {}), **{k: v for k, v in options.items() if v is not None or k == "interpolate"}}
    if isinstance(merged.get("measures"), str):
        merged["measures"] = tuple(m.strip() for m in merged["measures"].split(",") if m.strip())
    for key in ("measures", "sigmas"):
        if key in merged:
            merged[key] = tuple(merged[key])
    if merged.get("interpolate") is not None:
        merged["interpolate"] = str(merged["interpolate"])
    opts = replace(ProbeOptions(), **merged)
    opts.validate()
    return opts


# ----- resolving inputs ---------------------------------------------------------------------------------


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
        config = read_json(path / CONFIG_JSON) if (path / CONFIG_JSON).exists() else {}
        return _Source(path, path, config if isinstance(config, dict) else {})
    if path.suffix == ".zip" and path.is_file():
        return _Source(path, None, {})
    raise RlflatError(f"{path} is neither a run directory nor an SB3 model .zip")


def _resolve_task(source: _Source, task: str | None) -> TaskSpec:
    name = task or source.config.get("task")
    if not name:
        raise RlflatError(f"{source.path}: a bare model zip needs --task (e.g. --task CartPole)")
    return load_task(str(name))


def _default_out(source: _Source) -> Path:
    if source.run_dir is not None:
        return source.run_dir
    return source.path.with_name(f"{source.path.stem}-probe")


def _sha256(path: Path) -> str:
    file = path / MODEL_FILE if path.is_dir() else path
    return hashlib.sha256(file.read_bytes()).hexdigest()


def _versions() -> dict[str, str]:
    out = {}
    for package in VERSIONED:
        try:
            out[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            out[package] = "unknown"
    return out


# ----- the probe ---------------------------------------------------------------------------------------


class _Timer:
    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def run(self, name: str, fn: Callable[[], Any]) -> Any:
        start = time.perf_counter()
        try:
            return fn()
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start


def probe_run(
    path: str | Path, task: str | None = None, out: str | Path | None = None, **options: Any
) -> dict[str, Any]:
    """Probe the policy at ``path`` (a run dir or any SB3 on-policy zip) and return the ``probe.json`` content.

    ``task`` defaults to the run's ``config.json`` task (required for a bare zip); ``out`` defaults to the run dir
    (``<zip stem>-probe/`` beside a bare zip). ``options`` are :class:`ProbeOptions` fields (``quick=True`` for the
    smaller :data:`QUICK` sizes). Raises :class:`RlflatError` on bad input before writing anything.
    """
    opts = make_options(**options)
    source = _resolve_source(path)
    policy = load_policy(source.path)
    spec = _resolve_task(source, task)
    env = make_env(spec)
    try:
        check_spaces(policy, env.observation_space, env.action_space)
    finally:
        env.close()
    other = None
    if opts.interpolate is not None:
        other_source = _resolve_source(opts.interpolate)
        other = load_policy(other_source.path)
        check_same_architecture(policy, other)
    out_dir = Path(out) if out is not None else _default_out(source)
    timer = _Timer()
    result, arrays = _probe(policy, spec, source, opts, other, timer)
    arrays_np = {k: np.asarray(v) for k, v in arrays.items()}
    write_atomic(out_dir / PROBE_NPZ, lambda p: _save_npz(p, arrays_np))
    write_json(out_dir / PROBE_JSON, result)
    if source.run_dir is not None and opts.update_metrics:
        update_json_block(
            source.run_dir / METRICS_JSON, "probe", _summary(result, out_dir, source.run_dir, timer.seconds)
        )
    result_timing = dict(timer.seconds)
    result_timing["total"] = sum(timer.seconds.values())
    _LAST_TIMING.clear()
    _LAST_TIMING.update(result_timing)
    jsonable: dict[str, Any] = to_jsonable(result)
    return jsonable


_LAST_TIMING: dict[str, float] = {}


def last_timing() -> dict[str, float]:
    """Seconds per stage of the latest :func:`probe_run` in this process (kept out of probe.json)."""
    return dict(_LAST_TIMING)


def _save_npz(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    with open(path, "wb") as handle:
        np.savez_compressed(handle, **arrays)  # type: ignore[arg-type]


def _probe(
    policy: FunctionalPolicy,
    spec: TaskSpec,
    source: _Source,
    opts: ProbeOptions,
    other: FunctionalPolicy | None,
    timer: _Timer,
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    hp = source.config.get("hyperparameters") or {}
    gamma = float(opts.gamma if opts.gamma is not None else hp.get("gamma", DEFAULT_GAMMA))
    gae_lambda = float(opts.gae_lambda if opts.gae_lambda is not None else hp.get("gae_lambda", DEFAULT_GAE_LAMBDA))
    rscale = reward_scale(source.path)
    batch = timer.run(
        "batch",
        lambda: collect_batch(
            policy,
            spec,
            opts.batch,
            seed=opts.seed,
            gamma=gamma,
            gae_lambda=gae_lambda,
            n_envs=opts.batch_envs,
            reward_scaling=rscale,
            normalize_advantage=opts.normalize_advantage,
        ),
    )
    loss_fn = make_loss(policy, batch, opts.loss)
    params = scope_params(policy, opts.scope)
    obs = policy.preprocess(batch.observations)
    eval_seed = 0  # episode e of every evaluation starts from seed e: the evaluator's convention
    arrays: dict[str, np.ndarray] = dict(batch.arrays())
    measures = set(opts.measures)

    op = timer.run("gradient", lambda: HessianOperator(loss_fn, params))
    grad_norm = float(op.gradient().norm())
    result: dict[str, Any] = {
        "loss": {"name": opts.loss, "value": op.loss, "gradient_norm": grad_norm},
        "n_params": op.n,
        "n_params_total": policy.n_params,
        "scope": opts.scope,
        "task": spec.alias,
        "batch": {
            "size": len(batch),
            "gamma": gamma,
            "gae_lambda": gae_lambda,
            "reward_scale": rscale[0],
            "mean_value_target": float(batch.returns.mean()),
        },
    }

    vectors: torch.Tensor | None = None
    if measures & {"hessian", "trace", "density"}:
        hess, harr, vectors = timer.run("hessian", lambda: _hessian(op, opts, measures))
        result["hessian"] = hess
        arrays.update(harr)
    else:
        result["hessian"] = None

    nominal_return = None
    if "perturbation" in measures:
        kinds = [opts.directions] + (["raw"] if opts.directions != "raw" else [])
        avg, aarr = timer.run(
            "perturbation",
            lambda: average_case(
                policy,
                spec,
                loss_fn,
                params,
                obs,
                opts.sigmas,
                kinds=kinds,
                n_directions=opts.n_directions,
                episodes=opts.episodes,
                seed=subseed(opts.seed, "directions"),
                eval_seed=eval_seed,
                ignore_1d=opts.ignore_1d,
                critical_fraction=opts.critical_fraction,
            ),
        )
        arrays.update(aarr)
        nominal_return = avg["nominal_return"]
        perturbation: dict[str, Any] = {"average": avg, "worst_case": None}
    else:
        perturbation = {"average": None, "worst_case": None}
    if "worst_case" in measures:
        wc, warr = timer.run(
            "worst_case",
            lambda: worst_case(
                policy,
                spec,
                loss_fn,
                params,
                obs,
                rho=opts.rho,
                adaptive_rho=opts.adaptive_rho,
                steps=opts.ascent_steps,
                eta=opts.eta,
                episodes=opts.episodes,
                eval_seed=eval_seed,
                nominal_return=nominal_return,
            ),
        )
        if opts.loss == "kl":
            wc["note"] = (
                "the kl loss has zero gradient at theta0, so gradient ascent cannot leave it: use surrogate/nll"
            )
        perturbation["worst_case"] = wc
        arrays.update(warr)
    result["perturbation"] = perturbation

    if "landscape" in measures:
        land, larr = timer.run("landscape", lambda: _landscapes(policy, spec, loss_fn, params, op, vectors, opts))
        result["landscape"] = land
        arrays.update(larr)
    if other is not None:
        alphas = _interpolation_grid(opts.interpolation_steps, opts.interpolation_margin)
        interp, iarr = timer.run(
            "interpolation",
            lambda: interpolate(policy, other, spec, loss_fn, alphas, episodes=opts.episodes, eval_seed=eval_seed),
        )
        interp["other"] = str(opts.interpolate)
        result["interpolation"] = interp
        arrays.update(iarr)
    result["config"] = _config(source, spec, opts, gamma, gae_lambda, rscale)
    return result, arrays


def _hessian(
    op: HessianOperator, opts: ProbeOptions, measures: set[str]
) -> tuple[dict[str, Any], dict[str, np.ndarray], torch.Tensor | None]:
    """Spectrum, trace and density: exact (dense Hessian, one ``eigh``) when n <= ``exact_threshold``, else
    matrix-free (ARPACK both ends, Hutchinson, SLQ)."""
    n, k = op.n, min(opts.top_k, op.n)
    exact = n <= opts.exact_threshold and bool(measures & {"hessian", "density"})
    seed = subseed(opts.seed, "hessian")
    out: dict[str, Any] = {"method": "exact" if exact else "eigsh"}
    arrays: dict[str, np.ndarray] = {}
    vectors: torch.Tensor | None = None
    eigenvalues: torch.Tensor | None = None
    before = op.hvp_count
    if exact:
        h = op.dense().to(torch.float64)
        if "landscape" in measures:  # eigenvectors only when a slice needs them (eigvalsh is ~3x cheaper)
            eigenvalues, all_vectors = torch.linalg.eigh(h)
            vectors = all_vectors[:, -2:].flip(1).clone()
            del all_vectors
        else:
            eigenvalues = torch.linalg.eigvalsh(h)
        del h
        top, bottom = eigenvalues.flip(0)[:k], eigenvalues[:k]
        arrays["hessian_eigenvalues"] = eigenvalues.numpy()
    elif "hessian" in measures:
        hi, lo = extreme_eigenpairs(op, k, exact_threshold=opts.exact_threshold, seed=seed, vectors=True)
        top, bottom, vectors = hi.values, lo.values, hi.vectors
    if exact or "hessian" in measures:
        out.update(
            lambda_max=float(top[0]),
            lambda_min=float(bottom[0]),
            top_eigenvalues=top.tolist(),
            bottom_eigenvalues=bottom.tolist(),
        )
        arrays["hessian_top_eigenvalues"] = top.numpy()
        arrays["hessian_bottom_eigenvalues"] = bottom.numpy()
        if vectors is not None:
            arrays["hessian_top_eigenvector"] = vectors[:, 0].numpy()
    else:
        out.update(lambda_max=None, lambda_min=None, top_eigenvalues=None, bottom_eigenvalues=None)
    hutch = None
    if "trace" in measures or not exact:
        hutch = hutchinson_trace(op, opts.trace_probes, seed=subseed(opts.seed, "trace"))
        out["hutchinson"] = {"estimate": hutch.estimate, "stderr": hutch.stderr, "n_probes": hutch.n_probes}
    if eigenvalues is not None:
        out["trace"], out["trace_stderr"], out["trace_method"] = float(eigenvalues.sum()), 0.0, "exact"
    else:
        assert hutch is not None
        out["trace"], out["trace_stderr"], out["trace_method"] = hutch.estimate, hutch.stderr, "hutchinson"
    lmax = out.get("lambda_max")
    out["lambda_max_over_trace"] = None if lmax is None else lambda_max_over_trace(lmax, out["trace"])
    out["negative_mass_fraction"] = out["negative_count_fraction"] = None
    if eigenvalues is not None:
        scale = float(eigenvalues.abs().max()) or 1.0
        absmass = float(eigenvalues.abs().sum())
        neg = eigenvalues[eigenvalues < 0]
        out["negative_mass_fraction"] = float(neg.abs().sum()) / absmass if absmass > 0 else None
        out["negative_count_fraction"] = float((eigenvalues < -1e-6 * scale).double().mean())
    if "density" in measures:
        if eigenvalues is not None:
            sd = density_from_eigenvalues(eigenvalues, grid_size=opts.density_grid)
        else:
            sd = slq_density(
                op,
                n_probes=opts.density_probes,
                steps=opts.density_steps,
                grid_size=opts.density_grid,
                seed=subseed(opts.seed, "density"),
            )
            out["negative_mass_fraction"] = negative_abs_mass_fraction(sd)
            out["negative_count_fraction"] = negative_mass_fraction(sd)
        out["density"] = {"method": "exact" if eigenvalues is not None else "slq", "sigma": sd.sigma}
        arrays["density_grid"] = sd.grid.numpy()
        arrays["density"] = sd.density.numpy()
    out["hvps"] = op.hvp_count - before
    return out, arrays, vectors


def _landscapes(
    policy: FunctionalPolicy,
    spec: TaskSpec,
    loss_fn: Callable[[Params], torch.Tensor],
    params: Params,
    op: HessianOperator,
    vectors: torch.Tensor | None,
    opts: ProbeOptions,
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """1-D slices along a filter-normalised direction and the top eigenvector; 2-D planes (d1, d2) and (v1, v2)."""
    if vectors is None or vectors.shape[1] < 2:
        pairs = eigenpairs(op, min(2, op.n), exact_threshold=opts.exact_threshold, seed=subseed(opts.seed, "hessian"))
        vectors = pairs.vectors
    assert vectors is not None
    d1, d2 = draw_directions(params, "filter", 2, seed=subseed(opts.seed, "landscape"), ignore_1d=opts.ignore_1d)
    norm = float(dict_norm(params))
    v1 = scaled_to(eigen_direction(vectors, 0, params), norm)
    v2 = scaled_to(eigen_direction(vectors, 1, params), norm) if vectors.shape[1] > 1 else d2
    span = opts.landscape_span
    a1 = np.linspace(-span, span, opts.landscape_points)
    a2 = np.linspace(-span, span, opts.landscape_points_2d)
    ep = opts.landscape_episodes
    out: dict[str, Any] = {"span": span, "points": opts.landscape_points, "points_2d": opts.landscape_points_2d}
    arrays: dict[str, np.ndarray] = {"landscape_alphas": a1, "landscape_alphas_2d": a2}
    for name, d in (("filter", d1), ("eigen", v1)):
        loss, ret = slice_1d(policy, spec, loss_fn, params, d, a1, episodes=ep)
        arrays[f"landscape_1d_{name}_loss"] = loss
        if ret is not None:
            arrays[f"landscape_1d_{name}_return"] = ret
        out[f"1d_{name}"] = {"loss_range": float(loss.max() - loss.min()), "return_min": _min_or_none(ret)}
    for name, (da, db) in (("filter", (d1, d2)), ("eigen", (v1, v2))):
        loss2, ret2 = slice_2d(policy, spec, loss_fn, params, da, db, a2, episodes=ep)
        arrays[f"landscape_2d_{name}_loss"] = loss2
        if ret2 is not None:
            arrays[f"landscape_2d_{name}_return"] = ret2
        out[f"2d_{name}"] = {"loss_range": float(loss2.max() - loss2.min()), "return_min": _min_or_none(ret2)}
    return out, arrays


def _min_or_none(x: np.ndarray | None) -> float | None:
    return None if x is None else float(x.min())


def _interpolation_grid(steps: int, margin: float) -> np.ndarray:
    """alpha = j / steps from -margin to 1 + margin, so 0 and 1 lie exactly on the grid."""
    extra = round(margin * steps)
    return np.arange(-extra, steps + extra + 1) / steps


def _config(
    source: _Source,
    spec: TaskSpec,
    opts: ProbeOptions,
    gamma: float,
    gae_lambda: float,
    rscale: tuple[float, float],
) -> dict[str, Any]:
    options = asdict(opts)
    return {
        "source": str(source.path),
        "model_sha256": _sha256(source.path),
        "run_config": {k: source.config.get(k) for k in ("algo", "task", "seed", "run_id") if k in source.config},
        "task": spec.alias,
        "task_id": spec.id,
        **options,
        "gamma_resolved": gamma,
        "gae_lambda_resolved": gae_lambda,
        "reward_scale": list(rscale),
        "evaluation": "deterministic actions, nominal dynamics, episode e seeded with e (rollout_returns)",
        "scope_note": "critic parameters do not enter these losses; with scope 'all' their Hessian rows are zero",
        "versions": _versions(),
    }


def _summary(result: Mapping[str, Any], out_dir: Path, run_dir: Path, seconds: Mapping[str, float]) -> dict[str, Any]:
    """The compact block merged into ``metrics.json`` (headline numbers only; probe.json has the rest)."""
    hess = result.get("hessian") or {}
    avg = (result.get("perturbation") or {}).get("average") or {}
    wc = (result.get("perturbation") or {}).get("worst_case") or {}
    kind = result["config"]["directions"]
    main = avg.get(kind) or {}
    try:
        where = str(out_dir.resolve().relative_to(run_dir.resolve()) / PROBE_JSON)
    except ValueError:
        where = str(out_dir / PROBE_JSON)
    return {
        "file": where,
        "loss": result["loss"]["name"],
        "loss_value": result["loss"]["value"],
        "seed": result["config"]["seed"],
        "lambda_max": hess.get("lambda_max"),
        "lambda_min": hess.get("lambda_min"),
        "trace": hess.get("trace"),
        "lambda_max_over_trace": hess.get("lambda_max_over_trace"),
        "critical_sigma": main.get("critical_sigma"),
        "worst_case_adaptive": ((wc.get("adaptive") or {}).get("multi_step") or {}).get("sharpness"),
        "worst_case_raw": ((wc.get("raw") or {}).get("multi_step") or {}).get("sharpness"),
        "wall_seconds": float(sum(seconds.values())),
    }


# ----- CLI -------------------------------------------------------------------------------------------


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _parser() -> argparse.ArgumentParser:
    d = ProbeOptions()
    p = argparse.ArgumentParser(prog="python -m rlflat.probe", description=(__doc__ or "").splitlines()[0])
    p.add_argument("path", help="run directory (from rlflat.train) or any SB3 PPO/A2C model .zip")
    p.add_argument("--task", help="task alias or Gymnasium id (default: the run's config.json task)")
    p.add_argument("--out", type=Path, help="output directory (default: the run dir; <stem>-probe/ beside a zip)")
    p.add_argument("--measures", help=f"comma list of {','.join(MEASURES)} (default {','.join(DEFAULT_MEASURES)})")
    p.add_argument("--loss", help=f"{'/'.join(LOSSES)} (default {d.loss})")
    p.add_argument("--scope", help=f"{'/'.join(SCOPES)} (default {d.scope}; critic params do not enter the losses)")
    p.add_argument("--batch", type=int, help=f"probe batch size (default {d.batch})")
    p.add_argument("--seed", type=int, help=f"probe seed (default {d.seed})")
    p.add_argument("--top-k", type=int, help=f"eigenvalues at each end (default {d.top_k})")
    p.add_argument("--exact-threshold", type=int,
                   help=f"dense Hessian + full spectrum when n_params <= this (default {d.exact_threshold})")  # fmt: skip
    p.add_argument("--directions", help=f"{'/'.join(KINDS)} for average-case sharpness (default {d.directions})")
    p.add_argument(
        "--normalize-1d", action="store_true", help="normalise biases in filter directions (default: zeroed)"
    )
    p.add_argument("--n-directions", type=int, help=f"random directions K (default {d.n_directions})")
    p.add_argument("--sigmas", type=_floats, help=f"ascending sigma grid (default {','.join(map(str, d.sigmas))})")
    p.add_argument("--episodes", type=int, help=f"episodes per perturbed policy (default {d.episodes})")
    p.add_argument("--rho", type=float, help=f"raw worst-case radius (default {d.rho})")
    p.add_argument("--adaptive-rho", type=float, help=f"adaptive (ASAM) worst-case radius (default {d.adaptive_rho})")
    p.add_argument("--landscape-points", type=int, help=f"1-D slice points (default {d.landscape_points})")
    p.add_argument("--landscape-span", type=float, help=f"slice half-width (default {d.landscape_span})")
    p.add_argument("--interpolate", metavar="RUN_B", help="also probe the linear path to this policy")
    p.add_argument("--quick", action="store_true", help="smaller sizes for smoke tests")
    p.add_argument("--no-metrics", action="store_true", help="do not add the probe block to metrics.json")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    set_torch_threads(args.threads)
    options: dict[str, Any] = {
        "measures": args.measures,
        "loss": args.loss,
        "scope": args.scope,
        "batch": args.batch,
        "seed": args.seed,
        "top_k": args.top_k,
        "exact_threshold": args.exact_threshold,
        "directions": args.directions,
        "n_directions": args.n_directions,
        "sigmas": args.sigmas,
        "episodes": args.episodes,
        "rho": args.rho,
        "adaptive_rho": args.adaptive_rho,
        "landscape_points": args.landscape_points,
        "landscape_span": args.landscape_span,
        "interpolate": args.interpolate,
        "quick": args.quick,
    }
    if args.normalize_1d:
        options["ignore_1d"] = False
    if args.no_metrics:
        options["update_metrics"] = False
    options = {k: v for k, v in options.items() if v is not None}
    result = probe_run(args.path, task=args.task, out=args.out, **options)
    out_dir = args.out if args.out is not None else _default_out(_resolve_source(args.path))
    _print_summary(result, last_timing(), out_dir)
    return 0


def _print_summary(result: Mapping[str, Any], seconds: Mapping[str, float], out_dir: Path) -> None:
    hess = result.get("hessian") or {}
    print(f"loss {result['loss']['name']} = {result['loss']['value']:.6g}  n_params {result['n_params']}")
    if hess:
        print(
            f"hessian ({hess.get('method')}): lambda_max {_fmt(hess.get('lambda_max'))}  "
            f"lambda_min {_fmt(hess.get('lambda_min'))}  trace {_fmt(hess.get('trace'))} "
            f"+- {_fmt(hess.get('trace_stderr'))}"
        )
    avg = (result.get("perturbation") or {}).get("average")
    if avg:
        for kind in (k for k in KINDS if k in avg):
            print(f"perturbation {kind}: critical sigma {_fmt(avg[kind].get('critical_sigma'))}")
    print("seconds: " + ", ".join(f"{k} {v:.2f}" for k, v in seconds.items()))
    print(out_dir / PROBE_JSON)


def _fmt(x: Any) -> str:
    return "null" if x is None else f"{x:.4g}"


if __name__ == "__main__":
    sys.exit(run_cli(main))
