"""Plain sentences for correlation and comparison rows: direction read from the orientation table, the
interval on the scale of the stated change, and the caveat said out loud when the data cannot decide."""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence

import pandas as pd

from rlflat.errors import RlflatError, bad_choice
from rlflat.report.orientation import association_sentence, improvement_words
from rlflat.report.stats._common import POOLED, check_columns
from rlflat.report.stats.comparison import COMPARISON_COLUMNS
from rlflat.report.stats.correlation import WITHIN_ALGO

SPANS_ZERO = "the CI spans zero: no evidence of a difference"


def _fmt(value: float, digits: int = 3) -> str:
    return f"{value:.{digits}g}" if math.isfinite(value) else "n/a"


def _p(value: float) -> str:
    return "= n/a" if not math.isfinite(value) else (f"= {value:.2g}" if value >= 0.001 else "< 0.001")


def describe_correlation(row: Mapping[str, object], measure_label: str, metric_label: str, n_censored: int = 0) -> str:
    """One sentence for a correlation row: oriented direction, estimate [CI], n, permutation p, censoring."""
    est, lo, hi = (float(row[k]) for k in ("estimate", "ci_low", "ci_high"))  # type: ignore[arg-type]
    n = int(row["n"])  # type: ignore[call-overload]
    name = "Spearman ρ" if row["method"] == "spearman" else "Kendall τ"
    scope = "pooled over tasks (within-task ranks)" if row["task"] == POOLED else f"on {row['task']}"
    if str(row.get("scope", "")) == WITHIN_ALGO:
        scope += ", within each configuration"
    elif str(row.get("scope", "")) == "across runs":
        scope += ", across runs (between + within algorithms)"
    if not math.isfinite(est):
        return f"{measure_label} vs {metric_label} {scope}: undefined ({row.get('reason') or 'no data'})."
    censored = f"; {n_censored} of {n} runs never collapsed (tied at the range bound)" if n_censored else ""
    p = f"permutation p {_p(float(row['p_value']))}"  # type: ignore[arg-type]
    if "p_holm" in row and math.isfinite(float(row["p_holm"])):  # type: ignore[arg-type]
        p += f", Holm-adjusted over {int(row['n_tests'])} tests p {_p(float(row['p_holm']))}"  # type: ignore[call-overload, arg-type]
    text = f"{measure_label} vs {metric_label} {scope}: {name} = {est:.2f}"
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return f"{text} over {n} runs ({p}{censored}); too few runs for an interval, so no claim."
    text += f" [CI {lo:.2f}, {hi:.2f}] over {n} runs ({p}{censored})"
    if lo <= 0 <= hi:
        return text + "; the CI spans zero: no evidence of an association."
    way = association_sentence(str(row["measure"]), str(row["metric"]), est)
    return text + f"; the CI excludes zero: {way} (as ranked by {metric_label})."


def _label(metric: str, labels: Mapping[str, str] | None) -> str:
    if labels and metric in labels:
        return labels[metric]
    return metric.rsplit(".", 1)[-1]


def _ci(lo: float, hi: float, digits: int) -> str:
    return f"[CI {_fmt(lo, digits)}, {_fmt(hi, digits)}]" if math.isfinite(lo) and math.isfinite(hi) else "[no CI]"


def _poi_clause(r: Mapping[str, object], what: str, digits: int) -> str:
    good, _ = improvement_words(str(r["metric"]))
    poi, lo, hi = (float(r[k]) for k in ("poi", "poi_ci_low", "poi_ci_high"))  # type: ignore[arg-type]
    text = f"P({good} on {what}) = {_fmt(poi, 2)} {_ci(lo, hi, 2)}"
    if math.isfinite(lo) and lo <= 0.5 <= hi:
        text += " (spans 0.5: no evidence either way)"
    return text


def _clause(r: Mapping[str, object], labels: Mapping[str, str] | None, digits: int) -> str:
    metric = str(r["metric"])
    what = _label(metric, labels)
    if r["task"] == POOLED:
        return _poi_clause(r, what, digits)
    good, bad = improvement_words(metric)
    if int(r["n_censored_algo"]) + int(r["n_censored_baseline"]) > 0 or r["stat"] == "median":  # type: ignore[call-overload]
        bound = " (at least: half or more never collapsed)" if bool(r["value_is_bound"]) else ""
        return (
            f"had median {what} {_fmt(float(r['algo_value']), digits)} vs {_fmt(float(r['baseline_value']), digits)}"  # type: ignore[arg-type]
            f"{bound}, {int(r['n_censored_algo'])}/{int(r['n_algo'])} vs "  # type: ignore[call-overload]
            f"{int(r['n_censored_baseline'])}/{int(r['n_baseline'])} runs never collapsed, "  # type: ignore[call-overload]
            + _poi_clause(r, what, digits)
        )
    diff, lo, hi = (float(r[k]) for k in ("difference", "diff_ci_low", "diff_ci_high"))  # type: ignore[arg-type]
    stat = {"mean": "", "iqm": "the IQM of ", "median": "the median of "}.get(str(r["stat"]), "")
    better = int(r["better"])  # type: ignore[call-overload]
    word = "" if better == 0 or diff == 0 else f", {good if diff * better > 0 else bad}"
    if diff > 0:
        text = f"raised {stat}{what} by {_fmt(diff, digits)} {_ci(lo, hi, digits)}{word}"
    elif diff < 0:
        text = f"lowered {stat}{what} by {_fmt(-diff, digits)} {_ci(-hi, -lo, digits)}{word}"
    else:
        text = f"left {stat}{what} unchanged (difference 0 {_ci(lo, hi, digits)})"
    if math.isfinite(lo) and lo <= 0 <= hi:
        text += f" ({SPANS_ZERO})"
    return text


def describe_comparison(
    comparison: pd.DataFrame,
    *,
    task: Hashable | None = None,
    metrics: Sequence[str] | None = None,
    labels: Mapping[str, str] | None = None,
    digits: int = 3,
) -> str:
    """One sentence summarising :func:`compare_algorithms` rows for one task (or the pooled rows).

    E.g. "ppo_sam lowered lambda_max by 12.3 [CI 4.1, 20.5], flatter, and had median min collapse
    log-factor 1.2 vs 0.9, 2/5 vs 0/5 runs never collapsed, P(more robust on ...) = 0.72 [CI 0.4, 0.9]
    relative to ppo on CartPole (5 seeds)". A reduction's CI is the negated difference CI, so "lowered by
    3 [CI -2, 8]" reads directly; "flatter"/"more robust" come from the orientation table.
    """
    check_columns(comparison, COMPARISON_COLUMNS)
    tasks = list(dict.fromkeys(comparison["task"]))
    if task is None:
        if len(tasks) != 1:
            raise RlflatError(f"task is required when rows hold several tasks; valid choices: {tasks}")
        task = tasks[0]
    if task not in tasks:
        raise bad_choice("task", task, tasks)
    rows = comparison[comparison["task"] == task]
    if metrics is not None:
        present = list(rows["metric"])
        for m in metrics:
            if m not in present:
                raise bad_choice("metric", m, present)
        rows = rows.set_index("metric").loc[list(metrics)].reset_index()
    algos = list(dict.fromkeys(rows["algo"]))
    if len(algos) != 1:
        raise RlflatError(f"rows compare several algorithms {algos}; filter to one")
    clauses = [_clause(r, labels, digits) for r in rows.to_dict("records")]
    body = clauses[0] if len(clauses) == 1 else "; ".join(clauses[:-1]) + "; and " + clauses[-1]
    first = rows.iloc[0]
    na, nb, nt = int(first["n_algo"]), int(first["n_baseline"]), int(first["n_tasks"])
    if task == POOLED:
        return f"{algos[0]} vs {first['baseline']} across {nt} tasks ({na} vs {nb} runs; per-task P(improvement) averaged): {body}"
    seeds = f"{na} seeds" if na == nb else f"{na} vs {nb} seeds"
    return f"{algos[0]} {body} relative to {first['baseline']} on {task} ({seeds})"
