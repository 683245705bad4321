"""Collapse points the grid cannot tell apart are ties: rank them by the bracket they fall in.

A collapse point is interpolated between two evaluated factors; two runs whose crossings fall between the same
two factors differ only by how the interpolation treats their curves, not by anything the grid resolved (the
first study's four PPO collapse points at x0.3558-0.3563 and ppo_sam's at x0.3573 all sat in one x2 bracket).
For statistics, every observed collapse value with a bracket (``<column>_bracket_low``/``_high`` from the
evaluator) is replaced by its bracket's midpoint in |log factor|: same bracket, same value, a tie in rank
correlations and in P(improves); different brackets keep their order (brackets of one grid do not overlap).
The interpolated values stay in the runs table and the per-run files; censored values are left to
:mod:`rlflat.report.censoring`.
"""

from __future__ import annotations

import pandas as pd

__all__ = ["bracket_columns", "tie_within_brackets"]


def bracket_columns(runs: pd.DataFrame) -> dict[str, tuple[str, str]]:
    """Collapse column -> its (low, high) bracket columns, for every column that has both."""
    return {
        str(c): (f"{c}_bracket_low", f"{c}_bracket_high")
        for c in runs.columns
        if f"{c}_bracket_low" in runs.columns and f"{c}_bracket_high" in runs.columns
    }


def tie_within_brackets(runs: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, int]]:
    """``runs`` with bracketed collapse values set to their bracket midpoint; column -> runs that share a bracket."""
    out = runs.copy()
    shared: dict[str, int] = {}
    for column, (low, high) in bracket_columns(runs).items():
        lo, hi = pd.to_numeric(runs[low], errors="coerce"), pd.to_numeric(runs[high], errors="coerce")
        has = lo.notna() & hi.notna() & pd.to_numeric(runs[column], errors="coerce").notna()
        if not has.any():
            continue
        out.loc[has, column] = ((lo + hi) / 2.0)[has]
        pairs = pd.DataFrame({"task": runs["task"], "lo": lo, "hi": hi})[has]
        shared[column] = int(pairs.duplicated(keep=False).sum())
    return out, shared
