"""The report's statistical sections: does sharpness predict robustness, and do flatness variants buy it?"""

from __future__ import annotations

import pandas as pd

from rlflat.report import figures as F
from rlflat.report import select as SEL
from rlflat.report import stats as S
from rlflat.report.censoring import never_collapsed
from rlflat.report.context import Context, add_figure, label
from rlflat.report.document import cell, estimate_ci
from rlflat.report.orientation import direction_word
from rlflat.report.select import comparison_pairs
from rlflat.report.stats.power import min_detectable_rho
from rlflat.report.stats.strata import (
    MIN_STRATUM_RUNS,
    configuration_columns,
    configuration_labels,
    strata_sentence,
    strata_table,
)
from rlflat.report.study import factor_columns

NOMINAL_RETURN = "train.return_mean"
METHODS_TEXT = (
    "Spearman ρ and Kendall τ across runs. Intervals: Fisher's z with the Bonett & Wright (2000) variance "
    "(Spearman) and Fieller et al.'s (1957) 0.437/(n-4) (Kendall), stated only from {min_ci} runs on; p-values: "
    "permutation tests (exact up to 8 runs, else {n_perm} seeded permutations). Pooled rows average "
    "within-task coefficients; 'across runs' rows mix the variation between and within algorithms, 'within "
    "configuration' rows average the coefficients inside each configuration (algorithm x every hyperparameter "
    "varied in the study; strata of fewer than {min_stratum} runs left out), "
    "so an association that is only the algorithm label or a hyperparameter vanishes there. Each measure and metric carries its "
    "orientation (↑ sharper / ↑ flatter, ↑ more / less robust), and sentences read the sign through it. "
    "Runs that never collapsed inside the evaluated range are right-censored: they tie at the range bound."
)


EXPLORATORY_PERMUTATIONS = 999
"""Fewer than the headline tests: hundreds of pairs, read as hypotheses only."""


def _scope(ctx: Context) -> str:
    return S.POOLED if len(ctx.study.tasks) > 1 else ctx.study.tasks[0]


def _sentences(ctx: Context, corr: pd.DataFrame, scope: str, which: str) -> list[str]:
    rows = corr[(corr["task"] == scope) & (corr["method"] == "spearman") & (corr["scope"] == which)]
    if ctx.primary is not None:
        rows = rows[rows["metric"] == ctx.primary]
    out = []
    for _, r in rows.iterrows():
        n_cens = ctx.n_censored(str(r["metric"])) + ctx.n_censored(str(r["measure"]))
        sentence = S.describe_correlation(r.to_dict(), label(str(r["measure"])), label(str(r["metric"])), n_cens)
        strata = r.get("n_strata", 1)
        out.append(sentence + " " + power_clause(int(r["n"]), 1 if pd.isna(strata) else int(strata)))
    return out


def power_clause(n: int, n_strata: int = 1) -> str:
    """How many runs entered and the smallest |rho| they detect with 80% power (strata: their equivalent n)."""
    if n_strata == 0:
        return "(no stratum had enough runs: no within estimate.)"
    n_eq = n - 3 * (max(n_strata, 1) - 1)  # equivalent_n with every stratum above 3 runs
    smallest = min_detectable_rho(n_eq)
    within = f" in {n_strata} strata (equivalent n {n_eq})" if n_strata > 1 else ""
    detect = f"detects |ρ| ≥ {smallest:.2f} with 80% power" if smallest == smallest else "cannot reach 80% power"
    return f"({n} runs entered{within}; this n {detect}.)"


def section_strata(ctx: Context, runs: pd.DataFrame) -> str:
    """Save tables/strata.csv (the configurations of the within statistics, their runs, whether each entered) and
    return the sentence naming them."""
    columns = configuration_columns(ctx.runs)
    table = strata_table(configuration_labels(runs, columns))
    ctx.save_table(table, "strata")
    return strata_sentence(table, columns) + " Every stratum is in tables/strata.csv."


def section_correlations(ctx: Context) -> None:
    doc, runs = ctx.doc, ctx.correlated
    doc.heading("Does sharpness predict robustness?")
    if not ctx.measures or not ctx.metrics:
        doc.note("No varying headline sharpness measure or robustness metric in the runs table.")
        return
    if len(runs) < S.MIN_N:
        doc.note(
            f"{len(runs)} solved run(s): nothing to correlate (report: {{include_unsolved: true}} keeps the rest)."
        )
        return
    corr = S.correlation_table(
        runs,
        ctx.measures,
        ctx.metrics,
        seed=ctx.seed,
        pooled=len(ctx.study.tasks) > 1,
        n_perm=ctx.settings.n_perm,
        configuration=configuration_columns(ctx.runs),
    )
    ctx.save_table(corr, "correlations")
    scope = _scope(ctx)
    n_tests = len(ctx.measures) * len(ctx.metrics)
    doc.para(METHODS_TEXT.format(min_ci=S.MIN_N_CI, n_perm=ctx.settings.n_perm, min_stratum=MIN_STRATUM_RUNS))
    doc.bullets(_sentences(ctx, corr, scope, S.ACROSS))
    within = _sentences(ctx, corr, scope, S.WITHIN_ALGO)
    if within:
        doc.para(
            "Is it only the algorithm or a hyperparameter? The same association within each configuration (seeds "
            "only). " + section_strata(ctx, runs)
        )
        doc.bullets(within)
    add_figure(
        ctx,
        "correlation_heatmap",
        f"Spearman ρ across runs of each sharpness measure (rows) with each robustness metric (columns), estimate "
        f"and Fisher-z 95% CI ('no CI': too few runs); bold: Holm-adjusted permutation p < 0.05 over the "
        f"{n_tests} measure × metric tests of the panel. Labels give each column's orientation.",
        lambda: F.plot_correlation_heatmap(corr),
    )
    if ctx.primary is not None:
        primary = ctx.primary
        add_figure(
            ctx,
            "sharpness_vs_robustness",
            f"Each run's sharpness vs its {label(primary)} ({direction_word(primary) or 'no orientation'}); line: "
            "least-squares fit over all runs with a 95% bootstrap band (a visual guide only; the claim is the "
            "Spearman ρ [Fisher-z CI] in each title).",
            lambda: F.plot_sharpness_vs_robustness(
                runs, ctx.measures, primary, corr, ctx.palette, seed=ctx.seed, n_boot=ctx.fig_boot
            ),
        )
    table = corr[(corr["task"] == scope) & corr["estimate"].notna()].copy()
    table["measure"] = [label(str(m)) for m in table["measure"]]
    table["metric"] = [label(str(m)) for m in table["metric"]]
    doc.table(
        table[["measure", "metric", "method", "scope", "estimate", "ci_low", "ci_high", "n", "p_value", "p_holm"]],
        f"Rank correlations ({scope}) that are defined; every row, task and reason in tables/correlations.csv.",
    )
    _all_pairs(ctx)
    section_granulated(ctx)


def _all_pairs(ctx: Context) -> None:
    """Every (measure, metric) pair of the runs table, as an exploratory table beside the headline analysis."""
    runs = ctx.correlated
    measures, _ = SEL.distinct(runs, SEL.varying(runs, SEL.measure_columns(runs)))
    metrics, _ = SEL.distinct(runs, SEL.varying(runs, SEL.metric_columns(runs)))
    if not measures or not metrics:
        return
    every = S.correlation_table(
        runs,
        measures,
        metrics,
        seed=ctx.seed,
        pooled=len(ctx.study.tasks) > 1,
        n_perm=EXPLORATORY_PERMUTATIONS,
        configuration=configuration_columns(ctx.runs),
    )
    ctx.save_table(every, "correlations_all")
    ctx.doc.para(
        f"Exploratory: every pair of the {len(measures)} sharpness measures and {len(metrics)} robustness metrics "
        f"in the runs table ({len(measures) * len(metrics)} tests per task, method and scope; Holm-adjusted within "
        f"that family; {EXPLORATORY_PERMUTATIONS} permutations) is in tables/correlations_all.csv. Read it as a "
        "search for hypotheses, not as evidence: the headline pairs above were declared before the analysis."
    )


def section_granulated(ctx: Context) -> None:
    doc, runs = ctx.doc, ctx.correlated
    factors = factor_columns(runs)
    doc.heading("Granulated Kendall coefficient", level=3)
    if not factors:
        doc.note("Only one algorithm and no hyperparameter varied within an algorithm: no factor to granulate over.")
        return
    gk = S.granulated_kendall_table(runs, ctx.measures, ctx.metrics, factors)
    ctx.save_table(gk, "granulated_kendall")
    n_configs = int(gk["n_configs"].max()) if len(gk) else 0
    doc.para(
        f"Jiang et al. (2020): Kendall τ between measure and metric when one factor varies at a time (factors: "
        f"{', '.join(factors)}; {len(factors)} factor(s), up to {n_configs} configurations after averaging seeds), "
        f"ψ per factor and their mean Ψ. ψ is suppressed with fewer than 2 factors or {S.MIN_CONFIGS} "
        "configurations: with the algorithm as the only factor ψ is plain τ over a handful of points. The "
        "within-algorithm correlations above answer 'is it only the algorithm?'."
    )
    if (gk["reason"].astype(str) != "").any():
        doc.note(f"{gk['reason'].iloc[0]}.")
    metric = ctx.primary or ctx.metrics[0]
    sub = gk[gk["metric"] == metric]
    wide = sub.pivot_table(index=["task", "measure"], columns="factor", values="psi", aggfunc="first", dropna=False)
    wide = wide.reset_index()
    counts = sub.groupby(["task", "measure"], as_index=False)[["n_configs", "n_factors"]].first()
    wide = wide.merge(counts, on=["task", "measure"])
    wide["measure"] = [label(str(m)) for m in wide["measure"]]
    wide.columns = [str(c) for c in wide.columns]
    doc.table(wide, f"ψ per factor, Ψ ({S.PSI_OVERALL}) and plain τ ({S.KENDALL_ALL}) against {label(metric)}.")


def _comparison_table(
    mean: pd.DataFrame, iqm: pd.DataFrame, agg: pd.DataFrame, algo: str, base: str, task: str
) -> pd.DataFrame:
    """One row per metric: each algorithm's summary [CI], the differences [CI], P(algo improves) [CI]."""
    rows = []
    m = mean[mean["task"] == task].set_index("metric")
    q = iqm[iqm["task"] == task].set_index("metric")
    a = {(str(r["metric"]), str(r["algo"])): r for r in agg[agg["task"] == task].to_dict("records")}
    for metric in m.index:
        rm, rq = m.loc[metric], (q.loc[metric] if metric in q.index else None)

        def summary(who: str, metric: str = str(metric)) -> str:
            r = a.get((metric, who))
            if r is None:
                return "n/a"
            text = ("median " if r["stat"] == "median" else "") + ("≥ " if r["estimate_is_bound"] else "")
            text += estimate_ci(r["estimate"], r["ci_low"], r["ci_high"])
            return text + (f" ({r['n_censored']}/{r['n_runs']} never collapsed)" if r["n_censored"] else "")

        censored = rm["stat"] == "median"
        iqm_text = (
            "n/a" if rq is None or censored else estimate_ci(rq["difference"], rq["diff_ci_low"], rq["diff_ci_high"])
        )
        rows.append(
            {
                "metric": F.column_label(str(metric))
                + (f" ({direction_word(str(metric))})" if direction_word(str(metric)) else ""),
                f"{algo} mean [t CI] or median": summary(algo),
                f"{base} mean [t CI] or median": summary(base),
                "Δ mean [Welch CI]": "(censored: see P)"
                if censored
                else estimate_ci(rm["difference"], rm["diff_ci_low"], rm["diff_ci_high"]),
                "Δ IQM [bootstrap, descriptive]": iqm_text,
                "P(improves) [Newcombe CI]": estimate_ci(rm["poi"], rm["poi_ci_low"], rm["poi_ci_high"]),
                "runs": f"{int(rm['n_algo'])} vs {int(rm['n_baseline'])}",
            }
        )
    return pd.DataFrame(rows)


def section_comparisons(ctx: Context) -> None:
    doc, runs = ctx.doc, ctx.runs
    doc.heading("Do flatness-seeking optimisers buy robustness?")
    algos = ctx.study.algos
    pairs = [tuple(p) for p in ctx.settings.comparisons] if ctx.settings.comparisons else comparison_pairs(algos)
    pairs = [(a, b) for a, b in pairs if a in algos and b in algos]
    if not pairs:
        doc.note(f"No flatness variant with its base algorithm among {', '.join(algos)}; nothing to compare.")
        return
    metrics = [c for c in dict.fromkeys([NOMINAL_RETURN, *ctx.metrics, *ctx.measures]) if c in runs.columns]
    cens = {c: f for c, f in ctx.censored.items() if c in metrics}
    doc.para(
        "Per task: difference of means with Welch's t interval; IQM difference with a percentile bootstrap "
        "(descriptive only at these sample sizes); and P(improves), the probability that a run of the variant "
        "is more robust (for sharpness measures: flatter) than a run of its base, with Newcombe's (2006) "
        "interval. Runs that never collapsed are tied at the range bound; for those metrics the summary is the "
        "median and the inference is P(improves). Raw values are not pooled across tasks: the pooled sentence "
        "averages per-task P(improves) (Agarwal et al. 2021)."
    )
    aggs = [
        S.aggregate_table(runs, metrics, seed=ctx.seed, stat=s, censored=cens, n_boot=ctx.settings.n_boot)
        for s in ("mean", "iqm")
    ]
    ctx.save_table(pd.concat(aggs, ignore_index=True), "aggregates")
    if cens:
        frames = [never_collapsed(runs, f).assign(metric=label(c)) for c, f in cens.items()]
        table = pd.concat(frames, ignore_index=True)[
            ["metric", "task", "algo", "runs", "never collapsed", "fraction never collapsed"]
        ]
        ctx.save_table(table, "never_collapsed")
        doc.table(
            table.assign(**{"fraction never collapsed": [cell(v) for v in table["fraction never collapsed"]]}),
            "Runs that never collapsed inside the evaluated range (right-censored), per algorithm.",
        )
    scopes = [*ctx.study.tasks, *([S.POOLED] if len(ctx.study.tasks) > 1 else [])]
    labels = {m: label(m) for m in metrics}
    frames = []
    for algo, base in pairs:
        mean = S.compare_algorithms(
            runs, metrics, algo, base, seed=ctx.seed, stat="mean", censored=cens, n_boot=ctx.settings.n_boot
        )
        iqm = S.compare_algorithms(
            runs, metrics, algo, base, seed=ctx.seed, stat="iqm", censored=cens, n_boot=ctx.settings.n_boot
        )
        frames += [mean, iqm]
        doc.heading(f"{algo} vs {base}", level=3)
        sentences = [
            S.describe_comparison(mean, task=s, labels=labels) + "." for s in scopes if (mean["task"] == s).any()
        ]
        doc.bullets(sentences or [f"No task has runs of both {algo} and {base} with data."])
        for scope in ctx.study.tasks:
            if (mean["task"] == scope).any():
                doc.table(_comparison_table(mean, iqm, aggs[0], algo, base, scope), f"{algo} vs {base} on {scope}.")
    ctx.save_table(pd.concat(frames, ignore_index=True), "comparisons")
