"""The probe as an instrument in the report: how uncertain each headline measure is on each run (its SE over the
probe's replicate batches) and, when the study holds a test-retest table (``probe_reliability.csv``, written by
``benchmarks/probe_reliability.py``), how reliable each measure is across policies.

A measure whose ICC(2,1) is below 0.8 is marked unfit: most of its spread between runs is probe noise, so no
correlation with it can be read as a property of the policies; 0.9 or more is what a headline measure needs.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from rlflat.report.context import Context, label

RELIABILITY_FILE = "probe_reliability.csv"
FAMILY_FILE = "probe_reliability_by_family.csv"
HEADLINE_ICC, UNFIT_ICC = 0.9, 0.8
NOT_SHARPNESS = frozenset(
    {"loss_value", "nominal_return", "entropy", "max_action_prob", "log_std", "cliff", "magnitude_aware_censored"}
)
"""Probe keys that are no sharpness measure: the policy's confounds and labels, and booleans (a flag's ICC says
how often two probes agree, not how well a magnitude is measured)."""


def headline_choice(pooled: pd.DataFrame, by_family: pd.DataFrame | None = None) -> list[str]:
    """The sharpness measures a test-retest table lets headline, most reliable first.

    A measure headlines when its ICC(2,1) over the pooled policies is >= :data:`HEADLINE_ICC` *and* it is not
    unfit (>= :data:`UNFIT_ICC`) inside any algorithm family of ``by_family`` (``family`` column): across a mixed
    ppo/pg population the families' different curvature alone can make a noisy measure look reliable.
    """
    icc = pd.to_numeric(pooled.set_index("measure")["icc"], errors="coerce")
    chosen = [m for m, v in icc.sort_values(ascending=False).items() if v >= HEADLINE_ICC and m not in NOT_SHARPNESS]
    if by_family is not None and not by_family.empty:
        inside = pd.to_numeric(by_family["icc"], errors="coerce").groupby(by_family["measure"]).min()
        chosen = [m for m in chosen if m in inside.index and inside[m] >= UNFIT_ICC]
    return [str(m) for m in chosen]


def verdicts(pooled: pd.DataFrame, by_family: pd.DataFrame | None = None) -> list[str]:
    """Per row of ``pooled``: 'headline' (:func:`headline_choice`), 'unfit' (pooled ICC < 0.8), else 'usable'."""
    chosen = set(headline_choice(pooled, by_family))
    icc = pd.to_numeric(pooled["icc"], errors="coerce")
    return [
        "headline" if m in chosen else "unfit" if not v >= UNFIT_ICC else "usable"
        for m, v in zip(pooled["measure"], icc, strict=True)
    ]


SENSITIVE_MARGIN = 0.01
"""A verdict decided by an ICC this close to its bar is threshold-sensitive: within the ICC's own noise."""


def bar_margins(pooled: pd.DataFrame, by_family: pd.DataFrame | None = None) -> list[float]:
    """Per row of ``pooled``: the signed distance of the nearest deciding ICC to its bar (pooled ICC vs
    :data:`HEADLINE_ICC` and :data:`UNFIT_ICC`, the lowest family ICC vs :data:`UNFIT_ICC`); negative: below."""
    inside = (
        pd.to_numeric(by_family["icc"], errors="coerce").groupby(by_family["measure"]).min()
        if by_family is not None and not by_family.empty
        else pd.Series(dtype=float)
    )
    out = []
    for measure, value in zip(pooled["measure"], pd.to_numeric(pooled["icc"], errors="coerce"), strict=True):
        gaps = [value - HEADLINE_ICC, value - UNFIT_ICC]
        if measure in inside.index and np.isfinite(inside[measure]):
            gaps.append(float(inside[measure]) - UNFIT_ICC)
        finite = [g for g in gaps if np.isfinite(g)]
        out.append(min(finite, key=abs) if finite else float("nan"))
    return out


def _read(ctx: Context, name: str) -> pd.DataFrame | None:
    for directory in ctx.study.dirs:
        path = directory / name
        if path.exists():
            try:
                return pd.read_csv(path)
            except (OSError, ValueError, pd.errors.ParserError):
                ctx.doc.note(f"{path} is unreadable; it is skipped.")
    return None


def read_reliability(ctx: Context) -> tuple[pd.DataFrame | None, pd.DataFrame | None]:
    """The first study dir's test-retest tables (pooled, by algorithm family), or None (no repeated probes)."""
    return _read(ctx, RELIABILITY_FILE), _read(ctx, FAMILY_FILE)


def _uncertainty(ctx: Context) -> pd.DataFrame:
    """Per headline measure with an ``_se`` column: runs with an SE, median SE / |value| over runs."""
    rows = []
    for measure in ctx.measures:
        se_column = f"{measure}_se"
        if se_column not in ctx.runs.columns:
            continue
        value = pd.to_numeric(ctx.runs[measure], errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
        se = pd.to_numeric(ctx.runs[se_column], errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
        ok = np.isfinite(value) & np.isfinite(se) & (value != 0)
        if ok.any():
            relative = np.abs(se[ok] / value[ok])
            rows.append(
                {
                    "measure": label(measure),
                    "runs": int(ok.sum()),
                    "median SE / |value|": float(np.median(relative)),
                    "max SE / |value|": float(relative.max()),
                }
            )
    return pd.DataFrame(rows)


def _probe_sets_sentence(table: pd.DataFrame, runs: pd.DataFrame) -> str:
    """Which rows were re-probed apart (the benchmark's ``probes`` column: a changed measure re-run alone), and
    whether this study's own Fisher traces are the older Hutchinson estimates."""
    traces = ["fisher_trace", "fisher_adaptive_trace"]
    apart: dict[str, str] = {}
    if "probes" in table and table["probes"].nunique() > 1:
        usual = table["probes"].mode().iloc[0]
        apart = {str(m): str(p) for m, p in zip(table["measure"], table["probes"], strict=True) if p != usual}
    text = (
        " Rows probed apart from the others (a changed measure re-probed alone; 'probes' names the probe folder): "
        + ", ".join(f"{m} ({p})" for m, p in apart.items())
        + "."
        if apart
        else ""
    )
    if "probe.fisher_trace_method" in runs and runs["probe.fisher_trace_method"].eq("exact").all():
        return text
    if all(m in apart for m in traces):
        return text + (
            " This study's per-run fisher_trace and fisher_adaptive_trace are still the older Hutchinson estimates "
            "(its models are not committed); their reliability rows are the exact trace, re-probed on retrained "
            "policies."
        )
    return text + (
        " fisher_trace and fisher_adaptive_trace here are the older Hutchinson estimates (the models are not "
        "committed, so the exact trace could not be re-probed)."
    )


def section_reliability(ctx: Context) -> None:
    """'Probe uncertainty and reliability': per-run SEs of the headline measures, and the test-retest table."""
    uncertainty = _uncertainty(ctx)
    table, families = read_reliability(ctx)
    if uncertainty.empty and table is None:
        return
    ctx.doc.heading("Probe uncertainty and reliability")
    if not uncertainty.empty:
        ctx.doc.para(
            "Every probe measure is the mean over the probe's independent replicate batches (fresh episodes, "
            "directions and probe vectors) with its standard error; the scatter plots draw it as horizontal bars."
        )
        ctx.doc.table(uncertainty, "Standard error of each headline measure relative to its value, over runs.")
        ctx.save_table(uncertainty, "probe_uncertainty")
    if table is None:
        return
    shown = table.copy()
    if families is not None and {"measure", "family", "icc"} <= set(families.columns):
        wide = families.pivot_table(index="measure", columns="family", values="icc")
        shown = shown.join(wide.add_prefix("icc ").add_suffix(" family"), on="measure")
    else:
        families = None
    shown["verdict"] = verdicts(table, families)
    shown["bar margin"] = bar_margins(table, families)
    sensitive = [
        str(m) for m, g in zip(shown["measure"], shown["bar margin"], strict=True) if abs(g) < SENSITIVE_MARGIN
    ]
    ctx.doc.para(
        "Test-retest reliability: each policy probed twice with independent batch sets. ICC(2,1) (two-way random, "
        f"absolute agreement, single probe) over {int(shown['n'].max())} policies, with its 95% CI, the "
        "between-policy / within-policy variance ratio, and the ICC inside each algorithm family when measured. "
        "Headline: ICC >= 0.9 over all policies and >= 0.8 inside every family (the families' different "
        "curvature alone can make a noisy measure look reliable across them); unfit: < 0.8 (its between-run "
        "spread is largely probe noise, so correlations with it say little about the policies)."
    )
    ctx.doc.table(shown, "Probe measures by test-retest reliability.")
    ctx.save_table(shown, "probe_reliability")
    ctx.doc.para(
        "'bar margin' is the signed distance of the deciding ICC (pooled, or the lowest family's) to the nearest "
        f"bar (0.9, 0.8); a verdict within {SENSITIVE_MARGIN} of its bar is threshold-sensitive, a choice within the "
        "ICC's own noise rather than a finding: "
        + (", ".join(sensitive) if sensitive else "none")
        + ". Intervals are printed as the table stores them (two decimals in tables written before three were "
        "kept: [1.00, 1.00] there means both bounds >= 0.995)." + _probe_sets_sentence(table, ctx.runs)
    )
    unfit = [m for m, v in zip(shown["measure"], shown["verdict"], strict=True) if v == "unfit"]
    headline_unfit = [m for m in ctx.measures if m.removeprefix("probe.") in unfit]
    if headline_unfit:
        ctx.doc.note("Headline measures marked UNFIT by reliability: " + ", ".join(label(m) for m in headline_unfit))
