"""Exactly the registered analysis: eligible runs, the registered tests, Holm within each family, a verdict each.

Nothing here is a choice: the columns, the strata, the unsolved rule, the exclusions, the direction, alpha, the
permutations and their seed all come from the preregistration (:mod:`rlflat.study.preregistration`). A hypothesis
whose test cannot be computed (no eligible stratum) is reported "not evaluable", never dropped.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from rlflat.report.stats._common import holm
from rlflat.report.stats.registered import RegisteredResult, matched_difference_test, stratified_rank_test
from rlflat.study.preregistration import Hypothesis, Preregistration

__all__ = ["VERDICT_COLUMNS", "ConfirmatoryResult", "prepare_runs", "run_registered_analysis"]

POOLED = "pooled"
SUPPORTED, NOT_SUPPORTED, NOT_EVALUABLE = "supported", "not supported", "not evaluable"
VERDICT_COLUMNS = [
    "test",
    "hypothesis",
    "family",
    "task",
    "direction",
    "estimate",
    "ci_low",
    "ci_high",
    "p_value",
    "p_holm",
    "n",
    "n_strata",
    "verdict",
    "left_out",
]


@dataclass
class ConfirmatoryResult:
    verdicts: pd.DataFrame
    """One row per registered test (``VERDICT_COLUMNS``)."""
    exclusions: pd.DataFrame
    """Per task: runs, unsolved, borderline, without the registered measure/metric, wrong trace route."""
    strata: pd.DataFrame
    """Eligible runs per stratum for H1-type tests (task, stratum label, n)."""
    notes: list[str] = field(default_factory=list)


def _sam(algo: str) -> bool:
    return algo.endswith(("_sam", "_asam"))


def prepare_runs(prereg: Preregistration, runs: pd.DataFrame) -> pd.DataFrame:
    """The registered tasks' runs with the derived design columns and the registered unsolved verdict.

    ``sam_rho``: SAM's radius, 0 for the plain algorithm; ``minibatch``: the task's registered minibatch key;
    ``verdict``: solved / borderline / unsolved by the registered rule (mean + z SE against the threshold).
    """
    tasks = {t.task: t for t in prereg.design.tasks}
    out = runs[runs["task"].isin(list(tasks))].copy()
    rho = pd.to_numeric(out["hp.rho"], errors="coerce") if "hp.rho" in out else pd.Series(np.nan, index=out.index)
    out["sam_rho"] = np.where(out["algo"].map(_sam), rho, 0.0)
    out["minibatch"] = [row.get(f"hp.{tasks[row['task']].minibatch}") for _, row in out.iterrows()]
    rule = prereg.unsolved_rule
    mean = pd.to_numeric(out.get(rule.nominal_return), errors="coerce")
    se = pd.to_numeric(out.get(rule.nominal_return_se), errors="coerce").fillna(0.0)
    threshold = pd.to_numeric(out.get(rule.solved_threshold), errors="coerce")
    threshold = threshold.fillna(out["task"].map({k: t.solved_threshold for k, t in tasks.items()}))
    upper, lower = mean + rule.z * se, mean - rule.z * se
    out["verdict"] = np.where(
        ~np.isfinite(mean) | (upper < threshold), "unsolved", np.where(lower >= threshold, "solved", "borderline")
    )
    return out


def _label(frame: pd.DataFrame, columns: list[str]) -> pd.Series:
    return frame[columns].astype(str).agg(" | ".join, axis=1)


def _eligible(frame: pd.DataFrame, h: Hypothesis) -> pd.DataFrame:
    keep = frame["verdict"] != "unsolved" if h.runs == "solved" else pd.Series(True, index=frame.index)
    for column, value in h.requires.items():
        keep &= frame[column].astype(str) == value if column in frame else False
    return frame[keep]


def _test(prereg: Preregistration, h: Hypothesis, frame: pd.DataFrame, seed: np.random.Generator) -> RegisteredResult:
    a = prereg.analysis
    metric = pd.to_numeric(frame[h.metric], errors="coerce") if h.metric in frame else pd.Series(dtype=float)
    if h.test == "within_correlation":
        measure = pd.to_numeric(frame[h.measure], errors="coerce") if h.measure in frame else metric * np.nan
        alternative = "less" if h.direction == "negative" else "greater"
        return stratified_rank_test(
            measure.to_numpy(dtype=float), metric.to_numpy(dtype=float), _label(frame, prereg.design.strata),
            alternative=alternative, seed=seed, n_perm=a.n_perm, min_stratum=a.min_stratum, confidence=a.confidence,
        )  # fmt: skip
    arms = frame[frame["algo"].isin([h.treatment, h.control])]
    arm_metric = metric.loc[arms.index]
    alternative = "greater" if h.direction == "positive" else "less"
    return matched_difference_test(
        arm_metric.to_numpy(dtype=float), (arms["algo"] == h.treatment).to_numpy(), _label(arms, prereg.design.cells),
        alternative=alternative, seed=seed, n_perm=a.n_perm, confidence=a.confidence,
    )  # fmt: skip


def _units(prereg: Preregistration, h: Hypothesis) -> list[str]:
    return [POOLED] if h.scope == "pooled" else prereg.design.task_names


def run_registered_analysis(prereg: Preregistration, runs: pd.DataFrame) -> ConfirmatoryResult:
    """Every registered test on ``runs`` (a runs table), Holm within each family, and a verdict per test.

    Supported: Holm-adjusted p <= alpha and the estimate in the registered direction; otherwise not supported;
    not evaluable when no stratum or cell could be tested. Each test draws permutations from its own child of
    the registered seed, in the preregistration's hypothesis order, so a report is reproducible.
    """
    frame = prepare_runs(prereg, runs)
    units = [(h, unit) for h in prereg.hypotheses for unit in _units(prereg, h)]
    children = np.random.default_rng(prereg.analysis.seed).spawn(len(units))
    rows = []
    for (h, unit), child in zip(units, children, strict=True):
        data = _eligible(frame if unit == POOLED else frame[frame["task"] == unit], h)
        res = _test(prereg, h, data, child)
        rows.append(
            {
                "test": h.id if unit == POOLED else f"{h.id}:{unit}",
                "hypothesis": h.id,
                "family": h.family,
                "task": unit,
                "direction": h.direction,
                "estimate": res.estimate,
                "ci_low": res.ci_low,
                "ci_high": res.ci_high,
                "p_value": res.p_value,
                "n": res.n,
                "n_strata": res.n_strata,
                "left_out": "; ".join(res.left_out),
            }
        )
    table = pd.DataFrame(rows)
    table["p_holm"] = np.nan
    for _, idx in table.groupby("family", sort=False).groups.items():
        table.loc[idx, "p_holm"] = holm(table.loc[idx, "p_value"].to_numpy(dtype=float))
    table["verdict"] = [
        _verdict(p, e, d, prereg.analysis.alpha)
        for p, e, d in zip(table["p_holm"], table["estimate"], table["direction"], strict=True)
    ]
    return ConfirmatoryResult(table[VERDICT_COLUMNS], _exclusions(prereg, frame), _strata(prereg, frame))


def _verdict(p: float, est: float, direction: str, alpha: float) -> str:
    if not (math.isfinite(p) and math.isfinite(est)):
        return NOT_EVALUABLE
    right_way = est < 0 if direction == "negative" else est > 0
    return SUPPORTED if p <= alpha and right_way else NOT_SUPPORTED


def _exclusions(prereg: Preregistration, frame: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for task in prereg.design.task_names:
        part = frame[frame["task"] == task]
        row: dict[str, object] = {"task": task, "runs": len(part)}
        row["unsolved"] = int((part["verdict"] == "unsolved").sum())
        row["borderline"] = int((part["verdict"] == "borderline").sum())
        for h in prereg.hypotheses:
            for column in filter(None, (h.measure, h.metric)):
                values = pd.to_numeric(part.get(column), errors="coerce")
                row[f"no {column}"] = int(len(part) if values is None else (~np.isfinite(values)).sum())
            for column, value in h.requires.items():
                row[f"{column} != {value}"] = int(
                    len(part) if column not in part else (part[column].astype(str) != value).sum()
                )
        rows.append(row)
    return pd.DataFrame(rows)


def _strata(prereg: Preregistration, frame: pd.DataFrame) -> pd.DataFrame:
    solved = frame[frame["verdict"] != "unsolved"]
    counts = solved.groupby(prereg.design.strata, dropna=False).size().rename("solved_runs").reset_index()
    total = frame.groupby(prereg.design.strata, dropna=False).size().rename("runs").reset_index()
    return total.merge(counts, on=prereg.design.strata, how="left").fillna({"solved_runs": 0})
