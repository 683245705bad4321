"""Pooling B independent probe replicates into one ``probe.json``: every scalar is a mean with its standard error.

A probe batch is a sample (of episodes, of random directions, of Hutchinson and SLQ probes, of evaluation
episodes), so one batch's number is one draw of the measure. The probe repeats every stage on B batches with
independent seeds (:func:`replicate_seed`) and pools them here with one rule for every stage, whoever wrote it:

* a number ``x`` becomes the mean over the B replicates, with ``x_se`` = sample std (ddof 1) / sqrt(B) beside it
  and ``x_batches`` (the B values, NaN where undefined) in ``probe.npz`` under the dotted path
  (``hessian.lambda_max_batches``). The SE is over replicates, so it holds every source of randomness at once:
  the batch's episodes, Hutchinson / SLQ probe vectors and the Monte-Carlo directions and evaluation episodes
  of the perturbation measures (each replicate draws its own). A measure undefined on any replicate (None) is
  None, with its values kept in ``x_batches``;
* a list of numbers of one length is pooled elementwise (``x_se`` a list);
* settings that are the same on every replicate (``rho``, ``sigmas``, ...: :data:`SETTINGS`) stay as they are;
* within-replicate standard errors (keys ``stderr`` / ``*_stderr``: over one batch's directions or probes)
  are dropped, as the replicate SE contains them and they alone understate the uncertainty;
* anything else (strings, booleans) is kept when equal on all replicates, else listed per replicate.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from rlflat.probe.seeding import subseed

__all__ = ["SETTINGS", "pool", "replicate_seed", "se_key"]

SETTINGS = frozenset(
    {
        "rho",
        "eta",
        "sigmas",
        "span",
        "points",
        "points_2d",
        "n_probes",
        "n_params",
        "n_params_total",
        "gamma",
        "gae_lambda",
        "reward_scale",
        "return_floor",
    }
)
"""Keys that are configuration, not estimates: kept as they are when every replicate agrees."""


def replicate_seed(seed: int, replicate: int) -> int:
    """The seed of replicate ``replicate`` of a probe with seed ``seed``: independent streams per replicate, and
    replicate b is the same whatever B, so a probe with more batches extends one with fewer."""
    return subseed(seed, f"replicate-{replicate}")


def se_key(key: str) -> str:
    """Where the standard error of ``key`` is stored: ``x`` -> ``x_se``."""
    return f"{key}_se"


def _is_number(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)


def _is_stderr(key: str) -> bool:
    return key == "stderr" or key.endswith("_stderr")


def _mean_se(values: np.ndarray) -> tuple[Any, Any]:
    """Mean and SE over axis 0 (None when any replicate is undefined, SE None with one replicate)."""
    if np.isnan(values).any():
        return None, None
    mean = values.mean(axis=0)
    se = values.std(axis=0, ddof=1) / math.sqrt(values.shape[0]) if values.shape[0] > 1 else None
    if values.ndim == 1:
        return float(mean), None if se is None else float(se)
    return mean.tolist(), None if se is None else se.tolist()


def _numeric(values: Sequence[Any]) -> np.ndarray | None:
    """The replicates' values as a float array (None -> NaN), or None when they are not all numbers / lists of
    numbers of one length."""
    if all(v is None or _is_number(v) for v in values):
        if all(v is None for v in values):
            return None
        return np.array([np.nan if v is None else float(v) for v in values])
    if all(isinstance(v, list | tuple) for v in values):
        lengths = {len(v) for v in values}
        if len(lengths) == 1 and lengths != {0} and all(x is None or _is_number(x) for v in values for x in v):
            return np.array([[np.nan if x is None else float(x) for x in v] for v in values])
    return None


def pool(replicates: Sequence[Mapping[str, Any]], prefix: str = "") -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Pool B replicate results (same structure) into one: ``(pooled dict, {"<path>_batches": array})``."""
    out: dict[str, Any] = {}
    arrays: dict[str, np.ndarray] = {}
    keys: list[str] = []
    for rep in replicates:
        keys += [k for k in rep if k not in keys]
    for key in keys:
        if _is_stderr(key):
            continue
        values = [rep.get(key) for rep in replicates]
        path = f"{prefix}{key}"
        if all(isinstance(v, Mapping) for v in values if v is not None) and any(isinstance(v, Mapping) for v in values):
            if any(v is None for v in values):
                out[key] = None
                continue
            out[key], sub = pool([v for v in values if isinstance(v, Mapping)], f"{path}.")
            arrays.update(sub)
            continue
        numeric = _numeric(values)
        if numeric is not None and not (key in SETTINGS and all(v == values[0] for v in values)):
            out[key], out[se_key(key)] = _mean_se(numeric)
            arrays[f"{path}_batches"] = numeric
        elif all(v == values[0] for v in values):
            out[key] = values[0]
        else:
            out[key] = list(values)
    return out, arrays
