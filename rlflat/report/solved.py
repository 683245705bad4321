"""Which runs the report counts as solved: the one unsolved rule (:func:`rlflat.tasks.spec.solved_verdict`)
applied to each run's nominal return, its standard error and its task's threshold, so a report of a runs table
written under an older rule still uses this one."""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from rlflat.tasks.spec import solved_verdict

__all__ = ["VERDICT_WORDS", "run_verdicts"]

VERDICT_WORDS = {
    "unsolved": "below the solved threshold (upper 95% bound of the nominal return below it)",
    "borderline": "borderline (the nominal return's 95% interval holds the threshold; counted as solved)",
}


def _number(value: Any) -> float | None:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def _flag(value: Any) -> bool | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return value is True or value == 1 or str(value) == "True"


def run_verdicts(runs: pd.DataFrame) -> pd.Series:
    """Per run: ``solved``, ``borderline``, ``unsolved`` or None (nothing recorded), from the evaluator's
    nominal return, SE and threshold where the table has them, else the table's own ``unsolved`` flag."""
    out: list[str | None] = []
    for _, row in runs.iterrows():
        mean = _number(row.get("robustness.nominal_return"))
        threshold = _number(row.get("robustness.solved_threshold"))
        if mean is not None and threshold is not None:
            out.append(solved_verdict(mean, _number(row.get("robustness.nominal_return_se")), threshold))
            continue
        flag = _flag(row.get("unsolved"))
        out.append(None if flag is None else ("unsolved" if flag else "solved"))
    return pd.Series(out, index=runs.index, dtype=object)
