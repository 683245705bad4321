"""Per-run probe outputs for the figures: the arrays of ``probe.npz`` (by their documented keys) and ``probe.json``.

The probe owns both formats. When it exports a public loader (``rlflat.probe.load_probe_arrays``) the report uses
it; until then the arrays are read here with the key names ``rlflat.probe.run`` writes, not guessed by pattern.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from rlflat.report.study import Study

PROBE_NPZ, PROBE_JSON = "probe.npz", "probe.json"
KEY_TOP_EIGENVALUES = "hessian_top_eigenvalues"
KEY_DENSITY_GRID = "density_grid"
KEY_DENSITY = "density"
KEY_ALPHAS = "landscape_alphas"
KEY_ALPHAS_2D = "landscape_alphas_2d"
KEY_SIGMAS = "perturbation_sigmas"
Arrays = dict[str, npt.NDArray[np.float64]]


def _read_npz(path: Path) -> Arrays:
    with np.load(path, allow_pickle=False) as data:
        return {k: np.asarray(data[k], dtype=np.float64) for k in data.files if data[k].dtype.kind in "fiub"}


def _loader() -> Callable[[Path], Mapping[str, Any]]:
    """``rlflat.probe.load_probe_arrays`` when the probe provides it, else the local reader."""
    probe = importlib.import_module("rlflat.probe")
    public = getattr(probe, "load_probe_arrays", None)
    return public if callable(public) else _read_npz


def load_probe_arrays(path: Path) -> Arrays:
    """Float arrays of one ``probe.npz`` (empty dict when missing or unreadable)."""
    if not path.exists():
        return {}
    try:
        raw = _loader()(path)
        return {str(k): np.asarray(v, dtype=np.float64) for k, v in raw.items() if np.asarray(v).dtype.kind in "fiub"}
    except Exception:  # a half-written or foreign file: that run's figures are skipped, not the report
        return {}


def probe_arrays(study: Study) -> dict[str, Arrays]:
    """``run_id`` -> that run's probe arrays, for runs that have any."""
    out = {}
    for run_id in study.runs["run_id"].astype(str):
        directory = study.run_dirs.get(run_id)
        if directory is not None:
            arrays = load_probe_arrays(directory / PROBE_NPZ)
            if arrays:
                out[run_id] = arrays
    return out


def probe_json(study: Study) -> dict[str, dict[str, Any]]:
    """``run_id`` -> that run's ``probe.json`` object, for runs that have one."""
    out = {}
    for run_id in study.runs["run_id"].astype(str):
        directory = study.run_dirs.get(run_id)
        if directory is None:
            continue
        try:
            data = json.loads((directory / PROBE_JSON).read_text())
        except (OSError, ValueError):
            continue
        if isinstance(data, dict):
            out[run_id] = data
    return out


def _get(data: Mapping[str, Any], *path: str) -> Any:
    for key in path:
        if not isinstance(data, Mapping):
            return None
        data = data.get(key)  # type: ignore[assignment]
    return data


def spectrum_methods(probes: Mapping[str, Mapping[str, Any]]) -> tuple[set[str], set[str]]:
    """The Hessian eigen-solver methods (``hessian.method``) and density methods (``density.method``) used."""
    hessian = {str(m) for p in probes.values() if (m := _get(p, "hessian", "method"))}
    density = {
        str(m)
        for p in probes.values()
        if (m := _get(p, "density", "method") or _get(p, "hessian", "density", "method"))
    }
    return hessian, density


def sigma_bound(probe: Mapping[str, Any]) -> float | None:
    """Largest perturbation sigma a run was probed at: the censoring bound of its return-halving sigma."""
    sigmas = _get(probe, "perturbation", "average", "sigmas")
    if isinstance(sigmas, list) and sigmas:
        return float(max(sigmas))
    return None
