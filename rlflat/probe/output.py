"""What a probe writes and how to read it back: ``probe.json``, ``probe.npz`` and the ``metrics.json`` block.

``probe.npz`` holds every array of a probe under flat names (:data:`ARRAY_KEYS`); :func:`load_probe_arrays` reads
them back for the report and the sweep. The ``probe`` block of ``metrics.json`` (:func:`metrics_block`) is flat
scalars only, because the sweep turns each key into a ``probe.<key>`` column of ``runs.parquet``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from rlflat.errors import RlflatError
from rlflat.io import package_versions, write_atomic, write_json
from rlflat.policy import MODEL_FILE
from rlflat.probe.options import ProbeOptions

__all__ = [
    "ARRAY_KEYS",
    "METRICS_JSON",
    "PROBE_JSON",
    "PROBE_NPZ",
    "check_accumulates",
    "load_probe_arrays",
    "metrics_block",
    "model_sha256",
    "probe_config",
    "publish_probe",
    "return_and_published_block",
    "sigma_key",
    "write_probe",
]

PROBE_JSON, PROBE_NPZ, METRICS_JSON = "probe.json", "probe.npz", "metrics.json"
VERSIONED = ("torch", "numpy", "scipy", "gymnasium", "stable-baselines3")

ARRAY_KEYS: dict[str, str] = {
    "<path>_batches": "(B,) or (B, L) per-replicate values of the pooled scalar (or list) at that dotted path of "
    "probe.json, NaN where undefined (rlflat.probe.pooling)",
    "batch_index": "(N,) which replicate batch each row of the probe batch arrays below came from",
    "observations": "(N, obs...) raw states of the probe batches, all replicates concatenated (the policy's "
    "preprocess normalises them)",
    "actions": "(N, ...) the batch's sampled actions",
    "old_log_probs": "(N,) log pi_theta0(a|s) at collection",
    "advantages": "(N,) GAE advantages (normalised when normalize_advantage)",
    "returns": "(N,) value targets",
    "values": "(N,) critic values",
    "hessian_eigenvalues": "(n,) the whole spectrum, ascending (exact route only)",
    "hessian_top_eigenvalues": "(k,) largest eigenvalues, descending",
    "hessian_bottom_eigenvalues": "(k,) most negative eigenvalues, ascending",
    "hessian_top_eigenvector": "(n,) unit top eigenvector, flat in parameter order (when it was computed)",
    "density_grid": "(G,) eigenvalue grid of the spectral density",
    "density": "(G,) smoothed spectral density on density_grid (integrates to ~1)",
    "perturbation_sigmas": "(S,) the sigma grid of the average-case curves",
    "perturbation_<kind>_<measure>": "(K, S) per direction and sigma, kind raw/filter/layer, measure "
    "loss_increase / kl / action_change",
    "perturbation_<kind>_returns": "(K, S, E) returns per direction, sigma and episode",
    "perturbation_nominal_returns": "(E,) returns of theta0",
    "worst_case_returns": "(4, E) returns at the raw one-step, raw multi-step, adaptive one-step, adaptive "
    "multi-step maximisers",
    "return_sharpness_<filter|adaptive>_returns": "(K, S, E) returns per direction, return sigma and episode",
    "return_sharpness_nominal_returns": "(E,) returns of theta0 on the same episodes",
    "cliff_alphas": "(P,) step sizes along the filter-normalised policy gradient",
    "cliff_returns": "(P, E) returns along that line",
    "landscape_alphas": "(P,) 1-D slice coordinates",
    "landscape_alphas_2d": "(Q,) 2-D slice coordinates (both axes)",
    "landscape_1d_<filter|eigen>_<loss|return>": "(P,) 1-D slices",
    "landscape_2d_<filter|eigen>_<loss|return>": "(Q, Q) 2-D slices",
    "interpolation_*": "arrays of the linear path to another policy (rlflat.probe.landscape.interpolate)",
}
"""Names of the arrays in ``probe.npz`` (``<...>`` is a placeholder) and what each holds; arrays other than the
probe batches and ``*_batches`` are the first replicate's. N batch size, n
probed parameters, K directions, S sigmas, E episodes."""


def write_probe(out_dir: Path, result: Mapping[str, Any], arrays: Mapping[str, Any]) -> None:
    """``probe.npz`` then ``probe.json`` into ``out_dir``, each written to a temporary name and renamed."""
    arrays_np = {k: np.asarray(v) for k, v in arrays.items()}
    write_atomic(out_dir / PROBE_NPZ, lambda p: _save_npz(p, arrays_np))
    write_json(out_dir / PROBE_JSON, result)


def _save_npz(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    with open(path, "wb") as handle:
        np.savez_compressed(handle, **arrays)  # type: ignore[arg-type]


def load_probe_arrays(path: str | Path) -> dict[str, np.ndarray]:
    """All arrays of a probe: ``path`` is its ``probe.npz`` or the directory holding it (a run dir or ``--out``).

    Keys are described in :data:`ARRAY_KEYS`. Raises :class:`RlflatError` when there is no readable ``probe.npz``.
    """
    path = Path(path)
    file = path / PROBE_NPZ if path.is_dir() else path
    if not file.is_file():
        raise RlflatError(f"no {PROBE_NPZ} at {path}: probe the run first (python -m rlflat.probe)")
    try:
        with np.load(file, allow_pickle=False) as data:
            return {key: np.asarray(data[key]) for key in data.files}
    except (OSError, ValueError) as exc:
        raise RlflatError(f"{file} is not a readable {PROBE_NPZ}: {exc}") from None


def sigma_key(sigma: float) -> str:
    """A column-safe name for a sigma: 0.1 -> '0p1', 0.03 -> '0p03', 1.0 -> '1' (no dots: they nest columns)."""
    return f"{sigma:g}".replace(".", "p").replace("-", "m")


_HESSIAN_KEYS = (
    "lambda_max",
    "lambda_min",
    "trace",
    "lambda_max_over_trace",
    "lambda_max_over_abs_sum",
    "negative_mass_fraction",
    "negative_count_fraction",
)
_FISHER_KEYS = ("lambda_max", "trace", "rao_norm", "adaptive_lambda_max", "adaptive_trace")
_CONFOUND_KEYS = ("entropy", "max_action_prob", "log_std")


def _with_se(
    block: dict[str, Any], key: str, entry: Mapping[str, Any] | None, field: str, index: int | None = None
) -> None:
    """``block[key]`` and ``block[key_se]`` from ``entry[field]`` and ``entry[field_se]`` (element ``index`` of
    list fields); None where absent."""
    entry = entry or {}
    for suffix in ("", "_se"):
        value = entry.get(f"{field}{suffix}")
        if index is not None:
            value = value[index] if isinstance(value, list) and index < len(value) else None
        block[f"{key}{suffix}"] = value


def metrics_block(
    result: Mapping[str, Any], out_dir: Path, run_dir: Path, seconds: Mapping[str, float]
) -> dict[str, Any]:
    """The compact, flat ``probe`` block merged into ``metrics.json`` (the sweep's ``probe.<key>`` columns).

    Every measure ``x`` comes with ``x_se``, its standard error over the probe's replicate batches (None where the
    measure was not run or is undefined). Keys:
    ``file``, ``loss``, ``loss_value``, ``seed``, ``batches`` (B), ``batch_size`` (mean transitions per batch),
    ``directions`` (the configured kind), ``hessian_method`` (exact/eigsh), ``density_method`` (exact/slq);
    of the loss's Hessian: ``lambda_max``, ``lambda_min``, ``trace``, ``lambda_max_over_trace`` (None unless
    trace > 0), ``lambda_max_over_abs_sum`` (whole spectrum only), ``negative_mass_fraction`` (sum |lambda| of
    negative eigenvalues / sum |lambda|), ``negative_count_fraction`` (spectral mass below -1e-3 max|lambda|);
    of the Fisher (:mod:`rlflat.probe.fisher`): ``fisher_lambda_max``, ``fisher_trace``, ``fisher_rao_norm``,
    ``fisher_adaptive_lambda_max``, ``fisher_adaptive_trace``, ``fisher_trace_method`` (``exact``; ``hutchinson`` for
    older probe files); confounds: ``entropy`` (mean policy entropy on the
    batch), ``max_action_prob`` (Discrete) or ``log_std`` (Box), ``param_norm.<parameter>`` (no SE: fixed);
    ``nominal_return``, ``return_halving_sigma`` (configured kind), ``return_halving_sigma_raw``; per reference sigma s
    (0.1 -> ``0p1``) along the configured kind: ``kl_sigma<s>`` (mean KL of perturbed vs original policy),
    ``action_change_sigma<s>`` (action disagreement rate; mean normalised |delta a| for Box actions),
    ``loss_increase_sigma<s>``; ``worst_case_raw``, ``worst_case_adaptive`` (multi-step),
    ``worst_case_raw_one_step``, ``worst_case_adaptive_one_step``; per return sigma s and kind
    filter/adaptive ``return_drop_<kind>_sigma<s>`` (expected normalised return drop,
    :mod:`rlflat.probe.return_sharpness`); ``cliff`` (True/False when every replicate agrees, else None),
    ``cliff_fraction`` (share of replicates with a cliff), ``cliff_drop_over_range``, ``cliff_return_ratio``
    (Sullivan et al., 2022); ``keskar_sharpness`` (Keskar et al., 2017, percent); ``magnitude_aware_sigma``,
    ``magnitude_aware_flatness`` (1 / sigma'^2), ``magnitude_aware_censored`` (on any replicate)
    (Jiang et al., 2020); ``wall_seconds``.
    """
    hess = result.get("hessian") or {}
    perturbation = result.get("perturbation") or {}
    try:
        where = str(out_dir.resolve().relative_to(run_dir.resolve()) / PROBE_JSON)
    except ValueError:
        where = str(out_dir / PROBE_JSON)
    block: dict[str, Any] = {
        "file": where,
        "loss": result["loss"]["name"],
        "loss_value": result["loss"]["value"],
        "seed": result["config"]["seed"],
        "batches": result["config"].get("batches", 1),
        "batch_size": (result.get("batch") or {}).get("size"),
        "directions": result["config"]["directions"],
        "hessian_method": hess.get("method"),
        "density_method": (hess.get("density") or {}).get("method"),
    }
    for key in _HESSIAN_KEYS:
        _with_se(block, key, hess, key)
    for key in _FISHER_KEYS:
        _with_se(block, f"fisher_{key}", result.get("fisher"), key)
    if result.get("fisher"):  # absent in older probe files, whose Fisher traces are Hutchinson estimates
        block["fisher_trace_method"] = result["fisher"].get("trace_method", "hutchinson")
    confounds = result.get("confounds") or {}
    for key in _CONFOUND_KEYS:
        if key in confounds:
            _with_se(block, key, confounds, key)
    for name, norm in (confounds.get("parameter_norms") or {}).items():
        block[f"param_norm.{name}"] = norm
    block.update(_average_case_block(perturbation.get("average") or {}, result["config"]))
    block.update(_worst_case_block(perturbation.get("worst_case") or {}))
    block.update(return_and_published_block(result))
    block["wall_seconds"] = float(sum(seconds.values()))
    return block


def _average_case_block(avg: Mapping[str, Any], config: Mapping[str, Any]) -> dict[str, Any]:
    main = avg.get(config["directions"]) or {}
    block: dict[str, Any] = {}
    _with_se(block, "nominal_return", avg, "nominal_return")
    _with_se(block, "return_halving_sigma", main, "return_halving_sigma")
    _with_se(block, "return_halving_sigma_raw", avg.get("raw"), "return_halving_sigma")
    at = main.get("at_reference_sigmas") or {}
    for i, sigma in enumerate(config.get("reference_sigmas") or ()):
        for measure in ("kl", "action_change", "loss_increase"):
            _with_se(block, f"{measure}_sigma{sigma_key(sigma)}", at.get(measure), "mean", i)
    return block


def _worst_case_block(wc: Mapping[str, Any]) -> dict[str, Any]:
    block: dict[str, Any] = {}
    for ball in ("raw", "adaptive"):
        entry = wc.get(ball) or {}
        _with_se(block, f"worst_case_{ball}", entry.get("multi_step"), "sharpness")
        _with_se(block, f"worst_case_{ball}_one_step", entry.get("one_step"), "sharpness")
    return block


def return_and_published_block(result: Mapping[str, Any]) -> dict[str, Any]:
    """Flat keys (each with its replicate SE) of the return-based and published-definition measures (None where
    not run)."""
    block: dict[str, Any] = {}
    ret = result.get("return_sharpness") or {}
    for i, sigma in enumerate(ret.get("sigmas") or ()):
        for kind in ("filter", "adaptive"):
            _with_se(block, f"return_drop_{kind}_sigma{sigma_key(sigma)}", ret.get(kind), "drop", i)
    cliff = result.get("cliff") or {}
    block["cliff"] = cliff.get("cliff") if isinstance(cliff.get("cliff"), bool) else None
    _with_se(block, "cliff_fraction", cliff, "indicator")
    _with_se(block, "cliff_drop_over_range", cliff, "drop_over_range")
    _with_se(block, "cliff_return_ratio", cliff, "return_ratio")
    _with_se(block, "keskar_sharpness", result.get("keskar"), "sharpness")
    mag = result.get("magnitude_aware") or {}
    _with_se(block, "magnitude_aware_sigma", mag, "sigma")
    _with_se(block, "magnitude_aware_flatness", mag, "flatness")
    censored = mag.get("censored")
    block["magnitude_aware_censored"] = any(censored) if isinstance(censored, list) else censored
    return block


def probe_config(
    source: Path,
    run_config: Mapping[str, Any],
    task: tuple[str, str],
    opts: ProbeOptions,
    resolved: Mapping[str, Any],
) -> dict[str, Any]:
    """``probe.json['config']``: the source and its hash, the task (alias, id), every option, the resolved
    gamma / GAE lambda / reward scale, and package versions: everything needed to reproduce the probe."""
    return {
        "source": str(source),
        "model_sha256": _sha256(source),
        "run_config": {k: run_config.get(k) for k in ("algo", "task", "seed", "run_id") if k in run_config},
        "task": task[0],
        "task_id": task[1],
        **asdict(opts),
        **resolved,
        "evaluation": "deterministic actions, nominal dynamics, episode e seeded with e (rollout_returns)",
        "scope_note": "critic parameters do not enter these losses; with scope 'all' their Hessian rows are zero",
        "versions": package_versions(VERSIONED),
    }


def model_sha256(path: Path) -> str:
    """SHA-256 of the model file at ``path`` (a run dir's model.zip or the zip itself)."""
    return _sha256(path)


def _sha256(path: Path) -> str:
    file = path / MODEL_FILE if path.is_dir() else path
    return hashlib.sha256(file.read_bytes()).hexdigest()


# -- accumulation: a probe adds its measures to the probe already at its output ---------------------------------

BLOCKS: dict[str, tuple[str, ...]] = {
    "hessian": ("hessian_", "density"),
    "fisher": (),
    "perturbation.average": ("perturbation_",),
    "perturbation.worst_case": ("worst_case_",),
    "return_sharpness": ("return_sharpness_",),
    "cliff": ("cliff_",),
    "keskar": (),
    "magnitude_aware": (),
    "landscape": ("landscape_",),
    "interpolation": ("interpolation_",),
}
"""The result blocks of ``probe.json`` (dotted paths) a probe can add to an earlier one, with the prefixes of
their ``probe.npz`` arrays (their ``<path>_batches`` arrays belong to them too). Everything else (the loss, the
batch, confounds, the probe batch's arrays) is the header, which the latest probe writes."""
MEASURE_BLOCKS: dict[str, str] = {
    "hessian": "hessian",
    "trace": "hessian",
    "density": "hessian",
    "fisher": "fisher",
    "perturbation": "perturbation.average",
    "worst_case": "perturbation.worst_case",
    "return_sharpness": "return_sharpness",
    "cliff": "cliff",
    "keskar": "keskar",
    "magnitude_aware": "magnitude_aware",
    "landscape": "landscape",
}
"""Which block each measure writes (``hessian``, ``trace`` and ``density`` share one)."""
FREE_OPTIONS = ("measures", "update_metrics", "interpolate")
"""Options that may differ between probes that accumulate; every other option must be equal, so the merged
``probe.json`` reads as one probe with the union of the measures (its ``config`` holds for every block)."""


def requested_blocks(measures: tuple[str, ...], interpolate: object) -> set[str]:
    blocks = {MEASURE_BLOCKS[m] for m in measures if m in MEASURE_BLOCKS}
    return blocks | ({"interpolation"} if interpolate is not None else set())


def result_blocks(result: Mapping[str, Any]) -> set[str]:
    """The blocks ``result`` (a ``probe.json`` object) holds."""
    return {block for block in BLOCKS if _get(result, block) is not None}


def _get(result: Mapping[str, Any], block: str) -> Any:
    value: Any = result
    for part in block.split("."):
        value = value.get(part) if isinstance(value, Mapping) else None
    return value


def _set(result: dict[str, Any], block: str, value: Any) -> None:
    *parents, last = block.split(".")
    node = result
    for part in parents:
        node[part] = dict(node.get(part) or {})
        node = node[part]
    node[last] = value


def array_block(key: str) -> str | None:
    """The block a ``probe.npz`` key belongs to (None: the header)."""
    if key.endswith("_batches"):
        path = key[: -len("_batches")]
        return next((b for b in BLOCKS if path == b or path.startswith(b + ".")), None)
    return next((b for b, prefixes in BLOCKS.items() if any(key.startswith(p) for p in prefixes)), None)


def check_accumulates(
    out_dir: Path, options: Mapping[str, Any], model_sha256: str, metrics: Path | None, force: bool
) -> None:
    """Refuse, before any work, a probe that cannot add to the one at ``out_dir`` (unless ``force``, which
    replaces it): a measure it already holds, another model, or an option that differs. Reads ``metrics`` and
    the earlier files first, so a corrupt one is a one-line error whether or not ``force`` is given."""
    from rlflat.io import read_json_object

    if metrics is not None:
        read_json_object(metrics)
    existing = read_json_object(out_dir / PROBE_JSON)
    if force or not (out_dir / PROBE_JSON).exists():
        return
    if not isinstance(existing.get("config"), dict):
        raise RlflatError(f"{out_dir / PROBE_JSON} has no config block; add --force to replace it")
    load_probe_arrays(out_dir)
    held = result_blocks(existing)
    overlap = sorted(held & requested_blocks(tuple(options["measures"]), options.get("interpolate")))
    if overlap:
        raise RlflatError(
            f"{out_dir / PROBE_JSON} already has {', '.join(overlap)}: add --force to replace the probe, or probe "
            f"other measures (it has {', '.join(sorted(held)) or 'none'})"
        )
    old = existing["config"]
    if old.get("model_sha256") != model_sha256:
        raise RlflatError(f"{out_dir / PROBE_JSON} is a probe of another model: add --force to replace it")
    for key, value in options.items():
        if key in FREE_OPTIONS or key not in old:
            continue
        if to_comparable(old[key]) != to_comparable(value):
            raise RlflatError(
                f"{out_dir / PROBE_JSON} was probed with {key}={old[key]!r}, this probe has {key}={value!r}: use the "
                "same options to add measures, or --force to replace the probe"
            )


def to_comparable(value: Any) -> Any:
    from rlflat.io import to_jsonable

    return to_jsonable(value)


def _provenance(config: Mapping[str, Any]) -> dict[str, Any]:
    return {k: config.get(k) for k in ("measures", "interpolate", "model_sha256", "versions")}


def merge_results(
    old: Mapping[str, Any], old_arrays: Mapping[str, np.ndarray], new: Mapping[str, Any], arrays: Mapping[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """``probe.json`` and ``probe.npz`` holding ``old``'s blocks beside ``new``'s (``new`` wins the header and any
    block both hold); ``provenance`` says which probe wrote each block."""
    new_blocks = result_blocks(new)
    kept = result_blocks(old) - new_blocks if old else set()
    merged: dict[str, Any] = {k: v for k, v in new.items() if k != "provenance"}
    old_provenance = old.get("provenance") or {b: _provenance(old.get("config") or {}) for b in kept}
    provenance = {b: old_provenance.get(b) for b in kept}
    for block in kept:
        _set(merged, block, _get(old, block))
    provenance.update({b: _provenance(new["config"]) for b in new_blocks})
    config = dict(new["config"])
    union = set(config.get("measures") or ()) | set((old.get("config") or {}).get("measures") or ()) if kept else None
    if union is not None:
        from rlflat.probe.options import MEASURES

        config["measures"] = [m for m in MEASURES if m in union]
        if "interpolation" in kept:
            config["interpolate"] = (old.get("config") or {}).get("interpolate")
    merged["config"] = config
    merged["provenance"] = {b: provenance[b] for b in BLOCKS if b in provenance}
    merged_arrays = {k: v for k, v in old_arrays.items() if array_block(k) in kept}
    merged_arrays.update({k: v for k, v in arrays.items() if array_block(k) not in kept})
    return merged, merged_arrays


def publish_probe(
    out_dir: Path,
    result: Mapping[str, Any],
    arrays: Mapping[str, Any],
    metrics: Callable[[Mapping[str, Any]], dict[str, Any]] | None,
    force: bool,
) -> dict[str, Any]:
    """Write ``probe.json``, ``probe.npz`` and (``metrics``: the block builder) ``metrics.json``'s ``probe`` block as
    one unit (:func:`rlflat.io.update_dir`): a kill at any moment leaves the earlier set or the new one. Without
    ``force`` the new measures are added to an earlier probe there (:func:`merge_results`). Returns the
    ``probe.json`` object written."""
    from rlflat.io import read_json_object, to_jsonable, update_dir

    def build(folder: Path) -> dict[str, Any]:
        old = {} if force else read_json_object(folder / PROBE_JSON)
        old_arrays = load_probe_arrays(folder) if old else {}
        merged, merged_arrays = merge_results(old, old_arrays, to_jsonable(result), arrays)
        write_probe(folder, merged, merged_arrays)
        if metrics is not None:
            block = metrics(merged)
            if old:
                previous = read_json_object(folder / METRICS_JSON).get("probe") or {}
                block["wall_seconds"] += float(previous.get("wall_seconds") or 0.0)
            data = read_json_object(folder / METRICS_JSON)
            data["probe"] = block
            write_json(folder / METRICS_JSON, data)
        return merged

    published: dict[str, Any] = update_dir(out_dir, build)
    return published
