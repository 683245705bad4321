"""The report's first screen: the question, the one-sentence answer of this study with its CI, n, and what the
study can and cannot conclude.

Built last (from the tables the sections wrote: ``tables/correlations.csv``, ``tables/comparisons.csv``) and
shown first. The answer is the study's primary test: the first headline measure against the primary metric
within algorithm (or configuration), Spearman with its 95% CI and Holm-adjusted p over the within tests; then
each flatness variant against its base on the primary metric. Every sentence states its interval, and none
claims more than it: an interval that spans zero is "no evidence either way at this n", not "no effect".
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd

from rlflat.report.context import Context, label
from rlflat.report.document import Block, Document


def _read(path: Path) -> pd.DataFrame | None:
    try:
        return pd.read_csv(path)
    except (OSError, pd.errors.EmptyDataError):
        return None


def _fmt(x: Any) -> str:
    return f"{float(x):.3g}" if x is not None and math.isfinite(float(x)) else "n/a"


def _interval(row: pd.Series, est: str, lo: str, hi: str) -> str:
    return f"{_fmt(row[est])} [{_fmt(row[lo])}, {_fmt(row[hi])}]"


def _excludes_zero(row: pd.Series, lo: str, hi: str) -> bool:
    low, high = float(row[lo]), float(row[hi])
    return math.isfinite(low) and math.isfinite(high) and (low > 0 or high < 0)


def _primary_correlation(ctx: Context) -> str | None:
    table = _read(ctx.out / "tables" / "correlations.csv")
    if table is None or not ctx.measures or ctx.primary is None or table.empty:
        return None
    rows = table[
        (table["measure"] == ctx.measures[0])
        & (table["metric"] == ctx.primary)
        & (table["scope"].astype(str).str.startswith("within"))
        & (table["method"] == "spearman")
    ]
    rows = rows[pd.to_numeric(rows["estimate"], errors="coerce").notna()]
    if rows.empty:
        return None
    row = rows.iloc[0]
    holm = float(pd.to_numeric(pd.Series([row.get("p_holm")]), errors="coerce").iloc[0])
    excludes = _excludes_zero(row, "ci_low", "ci_high")
    words = "the 95% CI excludes zero" if excludes else "the 95% CI spans zero: no evidence either way at this n"
    corrected = f"; Holm-adjusted p = {_fmt(holm)} over {int(row['n_tests'])} tests" if math.isfinite(holm) else ""
    if excludes and math.isfinite(holm) and holm >= 0.05:
        corrected += ", so it does not survive the family-wise correction: a lead, not a finding"
    scope = str(row["scope"])
    return (
        f"{scope[0].upper()}{scope[1:]}, {label(ctx.measures[0])} vs {label(ctx.primary)}: Spearman "
        f"{_interval(row, 'estimate', 'ci_low', 'ci_high')} over {int(row['n'])} runs in {int(row['n_strata'])} "
        f"strata ({words}{corrected})."
    )


def _primary_comparison(ctx: Context) -> str | None:
    table = _read(ctx.out / "tables" / "comparisons.csv")
    if table is None or ctx.primary is None or table.empty:
        return None
    rows = table[(table["metric"] == ctx.primary) & pd.to_numeric(table["difference"], errors="coerce").notna()]
    if rows.empty:
        return None
    parts = []
    for _, row in rows.drop_duplicates(["algo", "baseline"]).iterrows():  # the first (primary) statistic per pair
        words = "CI excludes zero" if _excludes_zero(row, "diff_ci_low", "diff_ci_high") else "CI spans zero"
        parts.append(
            f"{row['algo']} vs {row['baseline']}, {label(ctx.primary)}: difference "
            f"{_interval(row, 'difference', 'diff_ci_low', 'diff_ci_high')} ({row['diff_method']}; "
            f"n = {int(row['n_algo'])} vs {int(row['n_baseline'])}; {words})"
        )
    return "; ".join(parts) + "."


def section_summary(ctx: Context) -> None:
    """Put the summary at the front of ``ctx.doc`` (call after every other section has written its tables)."""
    study, runs = ctx.study, ctx.runs
    tasks = ", ".join(sorted(runs["task"].astype(str).unique())) if "task" in runs else "?"
    algos = ", ".join(study.algos)
    n_unsolved = 0 if ctx.unsolved is None else len(ctx.unsolved)
    confirmatory = any(b.kind == "heading" and "onfirmatory" in b.text for b in ctx.doc.blocks)
    front = Document("")
    front.heading("Summary")
    front.para(
        f"Question: across the runs of this study ({tasks}; {algos}), does a policy's sharpness predict its "
        "robustness to shifted dynamics within an algorithm, and does a flatness-seeking variant beat its base?"
    )
    answer = _primary_correlation(ctx)
    comparison = _primary_comparison(ctx)
    front.para(
        "Answer (primary test): "
        + (answer or "no within-algorithm correlation of the first headline measure could be computed.")
        + (f" Flatness variants: {comparison}" if comparison else "")
    )
    front.para(
        f"n: {len(runs)} runs; {len(ctx.correlated)} enter the correlations"
        + (f" ({n_unsolved} unsolved runs left out)" if n_unsolved and len(ctx.correlated) < len(runs) else "")
        + "."
    )
    front.bullets(
        [
            "Can conclude: whether these measures and robustness scores move together in these runs, and how "
            "large an association the intervals still allow.",
            "Cannot conclude: that sharpness causes robustness (runs differ in more than sharpness), anything "
            "about tasks or training budgets not studied here, or absence of an effect from an interval that "
            "spans zero.",
            "Status: "
            + (
                "confirmatory tests are reported in their own section; everything else is exploratory."
                if confirmatory
                else "exploratory (no preregistered analysis): treat every association as a lead to confirm."
            ),
        ]
    )
    ctx.doc.front = [*front.blocks, Block("para", "Full tables are listed under 'Tables (CSV)' at the end.")]
