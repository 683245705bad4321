"""The headline question: is it flatness, or only the algorithm, that goes with robustness?

The pooled across-run rank correlation mixes two sources: algorithms that differ in flatness *and* in robustness
(which also differ in steps, gamma and lambda), and runs of one algorithm that differ in both. Only the second
says that flatness itself matters. This section reports, per headline pair, the pooled coefficient labelled as
what it is (between + within algorithms), the within-configuration (stratified by algorithm x every varying
hyperparameter, :mod:`rlflat.report.stats.strata`) coefficient with a stratified permutation test, and the
partial Spearman controlling for the configuration and the probe's recorded confounds
(policy entropy), each with how many runs entered and the smallest |rho| that n detects with 80% power.
A mixed-effects model is not fitted: with a handful of algorithms its between-algorithm variance rests on that
handful of points, and the stratified estimate already removes the algorithm's level.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from rlflat.report import select as SEL
from rlflat.report import stats as S
from rlflat.report.context import Context, add_figure, label
from rlflat.report.figures.within import plot_within_algorithm
from rlflat.report.stats.partial import partial_spearman
from rlflat.report.stats.power import min_detectable_rho, stratified_power
from rlflat.report.stats.strata import (
    MIN_STRATUM_RUNS,
    configuration_columns,
    configuration_labels,
    strata_sentence,
    strata_table,
)


def _ci(estimate: float, lo: float, hi: float) -> str:
    if estimate is None or math.isnan(estimate):
        return "n/a"
    return f"{estimate:.2f} [{lo:.2f}, {hi:.2f}]" if not math.isnan(lo) else f"{estimate:.2f} [no CI]"


def _entered(labels: pd.Series, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Runs with both sides whose stratum has at least MIN_STRATUM_RUNS such runs (the within estimates' runs)."""
    complete = np.isfinite(x) & np.isfinite(y)
    sizes = labels[complete].value_counts()
    return complete & (labels.map(sizes).fillna(0).to_numpy(dtype=float) >= MIN_STRATUM_RUNS)


def flatness_table(ctx: Context, runs: pd.DataFrame, confounds: list[str]) -> pd.DataFrame:
    """One row per (task, measure, metric): pooled, within-configuration and partial Spearman with n and power;
    the within and partial estimates use the runs of strata with at least MIN_STRATUM_RUNS complete runs."""
    rows = []
    columns = configuration_columns(ctx.runs)
    for task in sorted(runs["task"].astype(str).unique()):
        sub = runs[runs["task"].astype(str) == task]
        labels = configuration_labels(sub, columns, task_col=None)
        for measure in ctx.measures:
            for metric in ctx.metrics:
                x = pd.to_numeric(sub[measure], errors="coerce").to_numpy(dtype=float)
                y = pd.to_numeric(sub[metric], errors="coerce").to_numpy(dtype=float)
                pooled = S.rank_correlation(x, y, seed=ctx.seed, n_perm=ctx.settings.n_perm)
                within = S.rank_correlation(
                    x, y, seed=ctx.seed, strata=labels, n_perm=ctx.settings.n_perm, min_stratum=MIN_STRATUM_RUNS
                )
                keep = _entered(labels, x, y)
                kept = labels[keep]
                by_algo = partial_spearman(x[keep], y[keep], seed=ctx.seed, strata=kept, n_perm=ctx.settings.n_perm)
                both = (
                    partial_spearman(
                        x[keep],
                        y[keep],
                        seed=ctx.seed,
                        strata=kept,
                        confounds=sub[confounds].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=float)[keep],
                        confound_names=confounds,
                        n_perm=ctx.settings.n_perm,
                    )
                    if confounds
                    else None
                )
                n_eq = within.n - 3 * (within.n_strata - 1)
                rows.append(
                    {
                        "task": task,
                        "measure": measure,
                        "metric": metric,
                        "pooled_rho": pooled.estimate,
                        "pooled_ci_low": pooled.ci_low,
                        "pooled_ci_high": pooled.ci_high,
                        "pooled_n": pooled.n,
                        "within_rho": within.estimate,
                        "within_ci_low": within.ci_low,
                        "within_ci_high": within.ci_high,
                        "within_p": within.p_value,
                        "within_n": within.n,
                        "within_strata": within.n_strata,
                        "within_min_detectable": min_detectable_rho(n_eq),
                        "partial_algo_rho": by_algo.estimate,
                        "partial_algo_ci_low": by_algo.ci_low,
                        "partial_algo_ci_high": by_algo.ci_high,
                        "partial_algo_p": by_algo.p_value,
                        "partial_confounds": ", ".join(confounds),
                        "partial_confounds_rho": None if both is None else both.estimate,
                        "partial_confounds_ci_low": None if both is None else both.ci_low,
                        "partial_confounds_ci_high": None if both is None else both.ci_high,
                        "partial_confounds_p": None if both is None else both.p_value,
                        "reason": within.reason or pooled.reason,
                    }
                )
    return pd.DataFrame(rows)


def _sentence(r: pd.Series) -> str:
    text = (
        f"{label(str(r['measure']))} vs {label(str(r['metric']))}: between + within algorithms ρ = "
        f"{_ci(r['pooled_rho'], r['pooled_ci_low'], r['pooled_ci_high'])} ({int(r['pooled_n'])} runs); within "
        f"configuration ρ = {_ci(r['within_rho'], r['within_ci_low'], r['within_ci_high'])}, stratified permutation "
        f"p = {r['within_p']:.2g} ({int(r['within_n'])} runs in {int(r['within_strata'])} configurations; detects "
        f"|ρ| ≥ {r['within_min_detectable']:.2f} with 80% power); partial ρ given the configuration = "
        f"{_ci(r['partial_algo_rho'], r['partial_algo_ci_low'], r['partial_algo_ci_high'])}"
    )
    if r["partial_confounds"] and r["partial_confounds_rho"] is not None:
        text += (
            f", given the configuration and {r['partial_confounds']} = "
            f"{_ci(r['partial_confounds_rho'], r['partial_confounds_ci_low'], r['partial_confounds_ci_high'])}"
        )
    lo, hi = float(r["within_ci_low"]), float(r["within_ci_high"])
    spans = math.isnan(lo) or lo <= 0 <= hi
    verdict = "the within-configuration CI spans zero" if spans else "the within-configuration CI excludes zero"
    return f"{text}; {verdict}."


def section_flatness_vs_algorithm(ctx: Context) -> None:
    doc, runs = ctx.doc, ctx.correlated
    doc.heading("Flatness or algorithm?")
    if not ctx.measures or not ctx.metrics or len(runs) < S.MIN_N or runs["algo"].nunique() < 2:
        doc.note(f"Needs headline measures and metrics and runs ({len(runs)} entered) of at least two algorithms.")
        return
    confounds = [c for c in ctx.settings.confounds if c in runs.columns and SEL.varying(runs, [c])]
    absent = [c for c in ctx.settings.confounds if c not in confounds]
    columns = configuration_columns(ctx.runs)
    strata = strata_table(configuration_labels(runs, columns))
    sizes = strata.loc[strata["entered"], "runs"].to_numpy()
    doc.para(
        f"Runs entering: {len(runs)} ({', '.join(f'{a}: {n}' for a, n in runs.groupby('algo').size().items())}). "
        + strata_sentence(strata, columns)
        + (
            f" The design's power for a within-configuration |ρ| of 0.3 is {stratified_power(0.3, sizes):.2f} and "
            f"of 0.5 is {stratified_power(0.5, sizes):.2f} (two-sided 5% test, Fisher z with the entered strata's "
            "equivalent n)."
            if len(sizes)
            else " No stratum has enough runs: there is no within-configuration estimate and no power to state."
        )
        + " 'Between + within algorithms' is the pooled across-run ρ; 'within configuration' averages "
        "the coefficients inside each configuration (the permutation test shuffles within them); the partial ρ "
        "removes the configuration's level (indicators) and the ranks of the confounds, on the same runs."
        + (f" Confounds not in the runs table (or constant), left out: {', '.join(absent)}." if absent else "")
    )
    table = flatness_table(ctx, runs, confounds)
    ctx.save_table(table, "flatness_vs_algorithm")
    primary = ctx.primary or ctx.metrics[0]
    doc.bullets([_sentence(r) for _, r in table[table["metric"] == primary].iterrows()])
    doc.para("Every headline pair is in tables/flatness_vs_algorithm.csv.")
    measure = ctx.measures[0]
    add_figure(
        ctx,
        "within_algorithm",
        f"{label(measure)} vs {label(primary)} inside each configuration (the strata above), one least-squares line "
        "per configuration (a guide; the claim is the within-configuration ρ above).",
        lambda: plot_within_algorithm(
            runs, measure, primary, ctx.palette, strata=configuration_labels(runs, columns, task_col=None)
        ),
    )
