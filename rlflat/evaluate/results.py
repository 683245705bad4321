"""Where an evaluation's results go: ``robustness.parquet`` and ``metrics.json``'s block, published as one unit.

An evaluation of a folder that already holds one adds to it (issue 22: ``evaluate --suite Y`` after ``--suite X``
keeps X's rows): the rows of the two tables are merged (a row both hold is the new one's) and the robustness block
is recomputed over the merged table, with ``provenance`` listing what each evaluation added. Both must share the
settings that make rows comparable (seeds, episodes, noise seed, normalisation, protocol, nominal return), so the
merged table reads as one evaluation of the union of the suites; ``--force`` replaces instead. Either way both
files change together (:func:`rlflat.io.update_dir`): a kill leaves the old pair or the new pair.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from dataclasses import asdict, is_dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd

from rlflat.errors import RlflatError
from rlflat.io import read_json_object, to_jsonable, update_dir, write_atomic, write_json
from rlflat.tasks import TaskSpec

__all__ = ["MATCHING", "check_accumulates", "merge_tables", "publish_evaluation", "read_table"]

TABLE_FILE, METRICS_FILE = "robustness.parquet", "metrics.json"
MATCHING = ("seed", "episodes", "deterministic", "rng_seed", "collapse_frac", "nominal_episodes", "protocol")
"""Table attributes two evaluations must share to be merged (``normalization`` mode too)."""
_KEY_BASE = ("family", "factor")


def read_table(path: Path) -> pd.DataFrame:
    """The table at ``path``, or a one-line error (a damaged file is refused, never silently replaced)."""
    if path.is_dir():
        raise RlflatError(f"{path} is a directory, not a table; remove it or add --force")
    try:
        return pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises several types for damaged files
        raise RlflatError(f"{path} is not a readable table ({type(exc).__name__}); add --force to replace it") from None


def _expected(options: Mapping[str, Any]) -> dict[str, Any]:
    """The attributes an evaluation with ``options`` will record, from :func:`rlflat.evaluate.evaluate`'s
    defaults (known before any rollout, so a mismatch is refused before the work)."""
    from rlflat.evaluate.api import evaluate

    defaults = {
        name: p.default
        for name, p in inspect.signature(evaluate).parameters.items()
        if p.default is not inspect.Parameter.empty
    }
    merged = {**defaults, **options}
    suite = merged.get("suite")
    return {
        "seed": merged["seed"],
        "episodes": merged["episodes"],
        "deterministic": merged["deterministic"],
        "rng_seed": merged["rng_seed"],
        "collapse_frac": merged["collapse_frac"],
        "nominal_episodes": max(merged["episodes"], merged["nominal_episodes"])
        if isinstance(merged["episodes"], int) and isinstance(merged["nominal_episodes"], int)
        else None,
        "protocol": getattr(suite, "protocol", "default") if suite is not None else "default",
        "normalization": merged["normalization"],
    }


def _recorded(attrs: Mapping[Any, Any]) -> dict[str, Any]:
    recorded = {key: attrs.get(key) for key in MATCHING}
    recorded["rng_seed"] = attrs.get("rng_seed", 0)  # tables written before it was recorded used the default
    recorded["protocol"] = attrs.get("protocol", "default")
    recorded["normalization"] = (attrs.get("normalization") or {}).get("mode", "task")
    return recorded


def check_accumulates(out_dir: Path, options: Mapping[str, Any], force: bool) -> None:
    """Refuse, before any rollout, an evaluation that cannot be added to the one at ``out_dir`` (unless
    ``force``): a damaged earlier file, or settings that make rows incomparable."""
    read_json_object(out_dir / METRICS_FILE)
    if force or not (out_dir / TABLE_FILE).exists():
        return
    old = _recorded(read_table(out_dir / TABLE_FILE).attrs)
    for key, value in _expected(options).items():
        if value is not None and old[key] is not None and to_jsonable(old[key]) != to_jsonable(value):
            raise RlflatError(
                f"{out_dir / TABLE_FILE} was evaluated with {key} {old[key]!r}, this evaluation has {value!r}: use "
                "the same settings to add rows, or --force to replace it"
            )


def _quantities(table: pd.DataFrame) -> list[str]:
    return list(table.attrs.get("quantity_columns") or [])


def merge_tables(old: pd.DataFrame, new: pd.DataFrame, task: TaskSpec) -> pd.DataFrame:
    """``old``'s rows that ``new`` does not hold, then ``new``'s (nominal first); quantities absent from one
    table are nominal there (the table's convention). Attributes are ``new``'s with quantities and severities
    merged; the inert flags are recomputed over the merged rows."""
    if _recorded(old.attrs) != _recorded(new.attrs):
        raise RlflatError("the earlier evaluation used other settings; add --force to replace it")
    old_nominal = old.loc[old["family"] == "nominal", "return_mean"]
    new_nominal = new.loc[new["family"] == "nominal", "return_mean"]
    if len(old_nominal) == 1 and len(new_nominal) == 1 and float(old_nominal.iloc[0]) != float(new_nominal.iloc[0]):
        raise RlflatError(
            f"the earlier evaluation's nominal return {float(old_nominal.iloc[0]):.6g} differs from this one's "
            f"{float(new_nominal.iloc[0]):.6g} (another policy?): add --force to replace it"
        )
    quantities = [
        q for q in [*task.parameters, "action_noise", "obs_noise"] if q in {*_quantities(old), *_quantities(new)}
    ]
    frames = []
    for table in (old, new):
        table = table.copy()
        for name in quantities:
            if name not in table:
                table[name] = task.parameters[name].nominal if name in task.parameters else 0.0
        frames.append(table)
    key_columns = [*_KEY_BASE, *quantities]
    new_keys = {_key(row, key_columns) for _, row in frames[1].iterrows()}
    old_keys = [_key(row, key_columns) for _, row in frames[0].iterrows()]
    if new_keys <= set(old_keys):
        raise RlflatError(
            f"{TABLE_FILE} already has every setting of this evaluation: add --force to evaluate them again"
        )
    kept_old = frames[0][[key not in new_keys for key in old_keys]]
    merged = pd.concat([kept_old, frames[1]], ignore_index=True)
    nominal_first = np.argsort(~(merged["family"] == "nominal").to_numpy(), kind="stable")
    merged = merged.iloc[nominal_first].reset_index(drop=True)
    columns = [c for c in frames[1].columns if c in merged] + [c for c in merged.columns if c not in frames[1].columns]
    merged = merged[columns]
    merged.attrs = dict(new.attrs)
    merged.attrs["quantity_columns"] = quantities
    merged.attrs["severities"] = sorted({*old.attrs.get("severities", ()), *new.attrs.get("severities", ())})
    merged.attrs["episodes"] = int(merged["episodes"].min())
    if "dynamics_group" in merged:
        _reflag_inert(merged, task)
    return merged


def _key(row: pd.Series, columns: list[str]) -> tuple[str, ...]:
    return tuple(repr(to_jsonable(row[c])) for c in columns)


def _reflag_inert(table: pd.DataFrame, task: TaskSpec) -> None:
    """The evaluator's inert/saturated flags over a merged table (group numbers of two evaluations differ)."""
    from rlflat.evaluate.api import _flag_inert

    names = [n for n in task.parameters if n in table.columns]
    physics = []
    for _, row in table.iterrows():
        factors = tuple(
            (n, float(row[n]) / task.parameters[n].nominal)
            for n in names
            if float(row[n]) != task.parameters[n].nominal and task.parameters[n].nominal != 0
        )
        physics.append(SimpleNamespace(key=(factors,)))
    _flag_inert(table, task, physics, int(table.attrs.get("seed") or 0), "auto")  # type: ignore[arg-type]


def describe_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """An evaluation's options as data (the suite spelled out) for ``provenance``."""
    suite = options.get("suite")
    described = {k: v for k, v in options.items() if k not in ("suite", "progress", "workers", "backend")}
    if suite is not None and is_dataclass(suite) and not isinstance(suite, type):
        described["suite"] = asdict(suite)
    result: dict[str, Any] = to_jsonable(described)
    return result


def publish_evaluation(
    out_dir: Path,
    table: pd.DataFrame,
    task: TaskSpec,
    make_block: Any,
    provenance: Mapping[str, Any],
    force: bool,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Write ``robustness.parquet`` and the ``robustness`` block as one unit, adding to an earlier evaluation
    there unless ``force``; ``make_block(table)`` builds the block. Returns the table and block written."""

    def build(folder: Path) -> tuple[pd.DataFrame, dict[str, Any]]:
        metrics = read_json_object(folder / METRICS_FILE)
        merged, history = table, []
        if not force and (folder / TABLE_FILE).exists():
            merged = merge_tables(read_table(folder / TABLE_FILE), table, task)
            earlier = metrics.get("robustness") or {}
            history = list(
                earlier.get("provenance") or [{"options": None, "rows": None, "policy": earlier.get("policy")}]
            )
        block = make_block(merged)
        block["provenance"] = [*history, {**provenance, "rows": len(table)}]
        write_atomic(folder / TABLE_FILE, lambda tmp: merged.to_parquet(tmp, index=False))
        metrics["robustness"] = block
        write_json(folder / METRICS_FILE, metrics)
        return merged, block

    published: tuple[pd.DataFrame, dict[str, Any]] = update_dir(out_dir, build)
    return published
