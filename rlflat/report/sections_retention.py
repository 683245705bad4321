"""Robustness apart from nominal performance.

The task-scale robust AUC (:mod:`rlflat.evaluate.metrics`) is comparable across runs, but a run that reaches a
higher nominal return also scores higher under every perturbation that does not break it: where runs differ in
nominal return, "more robust" may mean "better". Two views take nominal performance out:

* ``retention``: a solved run's robust AUC relative to its own nominal score, auc_mean / nominal_normalized_return
  on the task scale (the AUC is linear in the normalised returns, so this is the AUC of the curve divided by its
  nominal value, with zero at the random policy): the share of its own nominal performance a policy keeps. It is
  given for solved and borderline runs only; a ratio to a failing nominal means nothing.
* the partial Spearman of a measure with the robust AUC given the nominal return's rank, across runs and within
  configurations (:mod:`rlflat.report.stats.strata`).

Each sentence says which score it uses.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from rlflat.report import stats as S
from rlflat.report.context import Context, label
from rlflat.report.solved import run_verdicts
from rlflat.report.stats.partial import PartialResult, partial_spearman
from rlflat.report.stats.strata import MIN_STRATUM_RUNS, configuration_columns, configuration_labels

__all__ = ["AUC", "NOMINAL", "RETENTION", "retention", "retention_table", "section_retention"]

AUC, NOMINAL = "robustness.auc_mean", "robustness.nominal_normalized_return"
RETENTION = "robustness.retention"


def retention(runs: pd.DataFrame) -> pd.Series:
    """auc_mean / nominal_normalized_return for runs that are not unsolved (NaN otherwise, or for a nominal score
    <= 0)."""
    missing = pd.Series(float("nan"), index=runs.index)
    auc = pd.to_numeric(runs.get(AUC, missing), errors="coerce")
    nominal = pd.to_numeric(runs.get(NOMINAL, missing), errors="coerce")
    ok = (run_verdicts(runs) != "unsolved").to_numpy() & (nominal > 0).to_numpy()
    return pd.Series(np.where(ok, auc / nominal.where(nominal > 0), np.nan), index=runs.index, dtype=float)


def _ci(lo: float, hi: float) -> str:
    return f"[{lo:.2f}, {hi:.2f}]" if math.isfinite(lo) and math.isfinite(hi) else "[no CI]"


def retention_table(ctx: Context, runs: pd.DataFrame) -> pd.DataFrame:
    """Per headline measure: Spearman with the task-scale AUC and with retention, and the partial Spearman with
    the AUC given the nominal return (across runs; within configurations of at least MIN_STRATUM_RUNS runs)."""
    columns = configuration_columns(ctx.runs)
    rows = []
    for task in sorted(runs["task"].astype(str).unique()):
        sub = runs[runs["task"].astype(str) == task]
        auc = pd.to_numeric(sub[AUC], errors="coerce").to_numpy(dtype=float)
        kept = retention(sub).to_numpy(dtype=float)
        nominal = pd.to_numeric(sub["robustness.nominal_return"], errors="coerce").to_numpy(dtype=float)
        labels = configuration_labels(sub, columns, task_col=None)
        sizes = labels.value_counts()
        big = (labels.map(sizes).to_numpy(dtype=float) >= MIN_STRATUM_RUNS) & np.isfinite(nominal)
        for measure in ctx.measures:
            x = pd.to_numeric(sub[measure], errors="coerce").to_numpy(dtype=float)
            on_auc = S.rank_correlation(x, auc, seed=ctx.seed, n_perm=ctx.settings.n_perm)
            on_retention = S.rank_correlation(x, kept, seed=ctx.seed, n_perm=ctx.settings.n_perm)
            given = partial_spearman(x, auc, seed=ctx.seed, confounds=nominal[:, None], n_perm=ctx.settings.n_perm)
            within = partial_spearman(x[big], auc[big], seed=ctx.seed, strata=labels[big],
                                      confounds=nominal[big, None], n_perm=ctx.settings.n_perm)  # fmt: skip
            results: list[tuple[str, str, S.CorrResult | PartialResult]] = [
                ("auc (task scale)", "", on_auc),
                ("retention (auc / own nominal)", "", on_retention),
                ("auc (task scale)", "nominal return", given),
                ("auc (task scale)", "nominal return, within configuration", within),
            ]
            for score, adjusted, res in results:
                rows.append({"task": task, "measure": measure, "score": score, "adjusted_for": adjusted,
                             "rho": res.estimate, "ci_low": res.ci_low, "ci_high": res.ci_high, "n": res.n,
                             "p_value": res.p_value})  # fmt: skip
    return pd.DataFrame(rows)


def section_retention(ctx: Context) -> None:
    doc, runs = ctx.doc, ctx.correlated
    if AUC not in runs or NOMINAL not in runs or not ctx.measures or len(runs) < S.MIN_N:
        return
    doc.heading("Robustness apart from nominal return", level=3)
    auc = pd.to_numeric(runs[AUC], errors="coerce")
    nominal = pd.to_numeric(runs["robustness.nominal_return"], errors="coerce")
    link = S.rank_correlation(auc.to_numpy(dtype=float), nominal.to_numpy(dtype=float), seed=ctx.seed, n_perm=999)
    table = retention_table(ctx, runs)
    ctx.save_table(table, "retention")
    doc.para(
        f"The task-scale robust AUC goes with the nominal return itself (Spearman ρ = {link.estimate:.2f} "
        f"{_ci(link.ci_low, link.ci_high)}, {link.n} runs), so beside it: retention = robust AUC / the run's own "
        "nominal score (task scale; solved and borderline runs only), and the AUC's partial Spearman given the "
        "nominal return. Each line names its score; every task is in tables/retention.csv."
    )
    lines = []
    for _, r in table.iterrows():
        what = r["score"] + (f", given {r['adjusted_for']}" if r["adjusted_for"] else "")
        value = "undefined" if not math.isfinite(r["rho"]) else f"{r['rho']:.2f} {_ci(r['ci_low'], r['ci_high'])}"
        p = f", p = {r['p_value']:.2g}" if math.isfinite(r["p_value"]) else ""
        lines.append(f"{label(str(r['measure']))} vs {what} on {r['task']}: ρ = {value} ({int(r['n'])} runs{p}).")
    doc.bullets(lines)
