"""Build a study's report: tables (CSV), figures (PNG), ``report.md`` and a self-contained ``report.html``.

The report answers the project's two questions from the runs table with the estimators of
:mod:`rlflat.report.stats`: (a) does a sharpness measure predict robustness across runs (Spearman rho and
Kendall tau with bootstrap CIs, per task and pooled; the granulated Kendall coefficient of Jiang et al. 2020
over the varied factors), and (b) does a flatness-seeking variant (``*_sam``, ``*_asam``) beat its base
algorithm (mean and IQM differences with stratified bootstrap CIs, probability of improvement; Agarwal et al.
2021). Every claim is also a plain sentence, and a CI that spans zero is said to be no evidence.

The document is built once as a list of blocks and rendered twice, to Markdown (figures linked from
``figures/``) and to HTML (the same PNGs inlined as base64, so the file can be mailed or archived alone).
"""

from __future__ import annotations

import base64
import functools
import html
import math
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from rlflat.errors import RlflatError
from rlflat.io import write_atomic, write_text
from rlflat.report import figures as F
from rlflat.report import stats as S
from rlflat.report import study as D

MAX_MEASURES = 8
MAX_METRICS = 6
ROBUST_PREFERENCE = ("robustness.auc", "robustness.auc_mean", "robustness.worst_return")
NOMINAL_RETURN = "train.return_mean"


# ----------------------------------------------------------------------------- the document model


@dataclass
class Block:
    """One piece of the report: heading, paragraph, bullets, table, figure or note."""

    kind: str
    text: str = ""
    level: int = 2
    items: list[str] = field(default_factory=list)
    table: pd.DataFrame | None = None
    path: Path | None = None


@dataclass
class Document:
    """Blocks in reading order; rendered to Markdown and HTML by :func:`to_markdown` and :func:`to_html`."""

    title: str
    blocks: list[Block] = field(default_factory=list)

    def heading(self, text: str, level: int = 2) -> None:
        self.blocks.append(Block("heading", text, level=level))

    def para(self, text: str) -> None:
        self.blocks.append(Block("para", text))

    def bullets(self, items: Sequence[str]) -> None:
        if items:
            self.blocks.append(Block("bullets", items=list(items)))

    def table(self, frame: pd.DataFrame, caption: str = "") -> None:
        self.blocks.append(Block("table", caption, table=frame))

    def figure(self, path: Path, caption: str) -> None:
        self.blocks.append(Block("figure", caption, path=path))

    def note(self, text: str) -> None:
        self.blocks.append(Block("note", text))


def _cell(value: object) -> str:
    if isinstance(value, float | np.floating):
        return "n/a" if not math.isfinite(float(value)) else f"{float(value):.3g}"
    return str(value)


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|")


def to_markdown(doc: Document, root: Path) -> str:
    """Markdown with figures linked relative to ``root`` (the report directory)."""
    lines = [f"# {doc.title}", ""]
    for b in doc.blocks:
        if b.kind == "heading":
            lines += ["#" * b.level + " " + b.text, ""]
        elif b.kind == "para":
            lines += [b.text, ""]
        elif b.kind == "note":
            lines += [f"> **Note.** {b.text}", ""]
        elif b.kind == "bullets":
            lines += [f"- {item}" for item in b.items] + [""]
        elif b.kind == "table" and b.table is not None:
            if b.text:
                lines += [f"*{b.text}*", ""]
            cols = [str(c) for c in b.table.columns]
            lines.append("| " + " | ".join(_md_escape(c) for c in cols) + " |")
            lines.append("|" + "|".join(" --- " for _ in cols) + "|")
            for row in b.table.itertuples(index=False):
                lines.append("| " + " | ".join(_md_escape(_cell(v)) for v in row) + " |")
            lines.append("")
        elif b.kind == "figure" and b.path is not None:
            lines += [f"![{b.text}]({b.path.relative_to(root).as_posix()})", "", f"*{b.text}*", ""]
    return "\n".join(lines).rstrip() + "\n"


_CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;
color:#222;line-height:1.5}
h1,h2,h3{line-height:1.2}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;margin:.5em 0 1.5em;font-size:.9em}th,td{border:1px solid #ccc;padding:.25em .6em;
text-align:right}th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}
figure{margin:1em 0 2em}figure img{max-width:100%;height:auto;display:block;margin:0 auto}
figcaption{font-size:.9em;color:#444;margin-top:.4em}.note{background:#fff8e1;border-left:4px solid #f0b400;
padding:.4em .8em}.caption{font-style:italic;color:#444}
"""


def to_html(doc: Document) -> str:
    """Self-contained HTML: inline CSS, every figure embedded as a base64 PNG, no external references."""
    esc = html.escape
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{esc(doc.title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{esc(doc.title)}</h1>",
    ]
    for b in doc.blocks:
        if b.kind == "heading":
            parts.append(f"<h{b.level}>{esc(b.text)}</h{b.level}>")
        elif b.kind == "para":
            parts.append(f"<p>{esc(b.text)}</p>")
        elif b.kind == "note":
            parts.append(f'<p class="note"><strong>Note.</strong> {esc(b.text)}</p>')
        elif b.kind == "bullets":
            parts.append("<ul>" + "".join(f"<li>{esc(i)}</li>" for i in b.items) + "</ul>")
        elif b.kind == "table" and b.table is not None:
            if b.text:
                parts.append(f'<p class="caption">{esc(b.text)}</p>')
            head = "".join(f"<th>{esc(str(c))}</th>" for c in b.table.columns)
            body = "".join(
                "<tr>" + "".join(f"<td>{esc(_cell(v))}</td>" for v in row) + "</tr>"
                for row in b.table.itertuples(index=False)
            )
            parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
        elif b.kind == "figure" and b.path is not None:
            data = base64.b64encode(b.path.read_bytes()).decode("ascii")
            parts.append(
                f'<figure><img alt="{esc(b.text)}" src="data:image/png;base64,{data}">'
                f"<figcaption>{esc(b.text)}</figcaption></figure>"
            )
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


# ----------------------------------------------------------------------------- choosing columns


def _varying(runs: pd.DataFrame, columns: Sequence[str]) -> list[str]:
    """Columns whose finite values are not all equal (a constant cannot be correlated or compared)."""
    out = []
    for c in columns:
        v = pd.to_numeric(runs[c], errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
        v = v[np.isfinite(v)]
        if v.size >= 2 and np.ptp(v) > 0:
            out.append(c)
    return out


def _headline(columns: Sequence[str], prefix: str, limit: int) -> tuple[list[str], list[str]]:
    """Shallow names first (``probe.hessian.trace`` before ``probe.perturbation.filter.kl.0``), capped."""
    ranked = sorted(columns, key=lambda c: (c[len(prefix) :].count("."), columns.index(c)))
    return ranked[:limit], ranked[limit:]


def _comparison_pairs(algos: Sequence[str]) -> list[tuple[str, str]]:
    """Every flatness variant with its base present: (ppo_sam, ppo), (pg_asam, pg), ..."""
    pairs = []
    for algo in algos:
        base, rule = F.split_algo(algo)
        if rule and base in algos:
            pairs.append((algo, base))
    return pairs


# ----------------------------------------------------------------------------- sentences


def describe_correlation(row: pd.Series, measure_label: str, metric_label: str) -> str:
    """One sentence for a correlation row: direction, estimate [CI], n, and whether the CI spans zero."""
    est, lo, hi, n = float(row["estimate"]), float(row["ci_low"]), float(row["ci_high"]), int(row["n"])
    name = "Spearman ρ" if row["method"] == "spearman" else "Kendall τ"
    scope = "pooled over tasks (within-task ranks)" if row["task"] == S.POOLED else f"on {row['task']}"
    if not math.isfinite(est):
        return f"{measure_label} vs {metric_label} {scope}: undefined ({row['reason'] or 'no data'})."
    ci = f"[CI {lo:.2f}, {hi:.2f}]" if math.isfinite(lo) and math.isfinite(hi) else "[CI undefined]"
    text = f"{measure_label} vs {metric_label} {scope}: {name} = {est:.2f} {ci} over {n} runs"
    if math.isfinite(lo) and math.isfinite(hi) and lo <= 0 <= hi:
        return text + "; the CI spans zero: no evidence of an association."
    if math.isfinite(lo) and math.isfinite(hi):
        way = "sharper runs were more robust" if est > 0 else "sharper runs were less robust"
        return text + f"; the CI excludes zero: {way} (as ranked by {metric_label})."
    return text + "."


def _ci(est: float, lo: float, hi: float) -> str:
    if not math.isfinite(est):
        return "n/a"
    return f"{est:.3g} [{lo:.3g}, {hi:.3g}]"


def _comparison_table(
    mean: pd.DataFrame, iqm: pd.DataFrame, agg: pd.DataFrame, algo: str, base: str, task: str
) -> pd.DataFrame:
    """One row per metric: each algorithm's mean [CI] and IQM, their differences [CI], P(algo > base) [CI]."""
    rows = []
    m = mean[mean["task"] == task].set_index("metric")
    q = iqm[iqm["task"] == task].set_index("metric")
    a = {
        (str(r["metric"]), str(r["algo"])): (float(r["estimate"]), float(r["ci_low"]), float(r["ci_high"]))
        for r in agg[agg["task"] == task].to_dict("records")
    }
    for metric in m.index:
        rm = m.loc[metric]
        rq = q.loc[metric] if metric in q.index else None

        def agg_ci(who: str, metric: str = metric) -> str:
            return _ci(*a[(metric, who)]) if (metric, who) in a else "n/a"

        rows.append(
            {
                "metric": F.column_label(str(metric)),
                f"{algo} mean [CI]": agg_ci(algo),
                f"{base} mean [CI]": agg_ci(base),
                "Δ mean [CI]": _ci(float(rm["difference"]), float(rm["diff_ci_low"]), float(rm["diff_ci_high"])),
                f"{algo} IQM": _cell(float(rq["algo_value"])) if rq is not None else "n/a",
                f"{base} IQM": _cell(float(rq["baseline_value"])) if rq is not None else "n/a",
                "Δ IQM [CI]": _ci(float(rq["difference"]), float(rq["diff_ci_low"]), float(rq["diff_ci_high"]))
                if rq is not None
                else "n/a",
                f"P({algo} > {base}) [CI]": _ci(float(rm["poi"]), float(rm["poi_ci_low"]), float(rm["poi_ci_high"])),
                "runs": f"{int(rm['n_algo'])} vs {int(rm['n_baseline'])}",
            }
        )
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------- assembling the report


@dataclass
class _Context:
    study: D.Study
    out: Path
    seed: int
    n_boot: int
    fig_boot: int
    doc: Document
    palette: F.Palette
    measures: list[str]
    metrics: list[str]
    primary: str | None
    written: list[Path] = field(default_factory=list)

    def save_table(self, frame: pd.DataFrame, name: str) -> Path:
        path = self.out / "tables" / f"{name}.csv"
        write_atomic(path, lambda p: frame.to_csv(p, index=False))
        self.written.append(path)
        return path


def _add_figure(ctx: _Context, name: str, caption: str, draw: Callable[[], F.FigAxes]) -> None:
    """Draw and save one figure; a figure without data becomes a note, never an error."""
    try:
        fig, _ = draw()
    except F.FigureSkipped as why:
        ctx.doc.note(f"Figure '{name}' skipped: {why}.")
        return
    except Exception as exc:  # a malformed per-run file must not cost the whole report
        print(f"warning: figure {name} failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        ctx.doc.note(f"Figure '{name}' failed ({type(exc).__name__}: {exc}).")
        return
    path = F.save_figure(fig, ctx.out / "figures" / f"{name}.png")
    ctx.written.append(path)
    ctx.doc.figure(path, caption)


def _section_overview(ctx: _Context) -> None:
    runs, failed = ctx.study.runs, ctx.study.failed
    doc = ctx.doc
    doc.heading("Study")
    doc.para(
        f"{len(runs)} successful runs of {len(ctx.study.algos)} algorithm(s) on {len(ctx.study.tasks)} task(s) "
        f"from {', '.join(str(d) for d in ctx.study.dirs)}; {len(failed)} failed run(s) excluded."
    )
    counts = runs.groupby(["task", "algo"]).size().rename("runs (ok)").reset_index()
    if len(failed):
        bad = failed.groupby(["task", "algo"]).size().rename("failed").reset_index()
        counts = counts.merge(bad, on=["task", "algo"], how="outer").fillna(0)
        counts["failed"] = counts["failed"].astype(int)
        counts["runs (ok)"] = counts["runs (ok)"].astype(int)
        reasons = failed["status"].astype(str).value_counts() if "status" in failed else pd.Series(dtype=int)
        doc.note("Excluded runs by status: " + ", ".join(f"{k}: {v}" for k, v in reasons.items()) + ".")
    doc.table(counts, "Runs per task and algorithm.")
    ctx.save_table(counts, "runs")
    doc.para(
        "Sharpness measures: " + (", ".join(F.column_label(m, unit=False) for m in ctx.measures) or "none") + ". "
        "Robustness metrics: " + (", ".join(F.column_label(m, unit=False) for m in ctx.metrics) or "none") + "."
    )


def _section_correlations(ctx: _Context) -> None:
    doc, runs = ctx.doc, ctx.study.runs
    doc.heading("Does sharpness predict robustness?")
    if not ctx.measures or not ctx.metrics:
        doc.note("No varying sharpness measure (probe.*) or robustness metric (robustness.*) in the runs table.")
        return
    corr = S.correlation_table(
        runs, ctx.measures, ctx.metrics, seed=ctx.seed, pooled=len(ctx.study.tasks) > 1, n_boot=ctx.n_boot
    )
    ctx.save_table(corr, "correlations")
    scope = S.POOLED if len(ctx.study.tasks) > 1 else ctx.study.tasks[0]
    doc.para(
        f"Rank correlations across runs with {ctx.n_boot}-resample bootstrap 95% CIs (seed {ctx.seed}); pooled "
        "rows rank each run within its own task. A positive ρ means sharper runs scored higher on the metric."
    )
    rows = corr[(corr["task"] == scope) & (corr["method"] == "spearman")]
    if ctx.primary is not None:
        rows = rows[rows["metric"] == ctx.primary]
    doc.bullets(
        [
            describe_correlation(
                r, F.column_label(str(r["measure"]), unit=False), F.column_label(str(r["metric"]), unit=False)
            )
            for _, r in rows.iterrows()
        ]
    )
    _add_figure(
        ctx,
        "correlation_heatmap",
        "Spearman rank correlation of each sharpness measure (rows) with each robustness metric (columns), "
        "estimate and bootstrap 95% CI; bold: the CI excludes zero.",
        lambda: F.plot_correlation_heatmap(corr),
    )
    if ctx.primary is not None:
        _add_figure(
            ctx,
            "sharpness_vs_robustness",
            f"Each run's sharpness vs its {F.column_label(ctx.primary, unit=False)}; line: least-squares fit over all "
            "runs with a 95% bootstrap band (a guide; the claim is the Spearman ρ [CI] in each title).",
            lambda: F.plot_sharpness_vs_robustness(
                runs, ctx.measures, str(ctx.primary), corr, ctx.palette, seed=ctx.seed, n_boot=ctx.fig_boot
            ),
        )
    table = corr[corr["task"] == scope].copy()
    table["measure"] = [F.column_label(str(m), unit=False) for m in table["measure"]]
    table["metric"] = [F.column_label(str(m), unit=False) for m in table["metric"]]
    doc.table(
        table[["measure", "metric", "method", "estimate", "ci_low", "ci_high", "n", "p_value"]],
        f"Rank correlations ({scope}); all tasks in tables/correlations.csv.",
    )
    _section_granulated(ctx)


def _section_granulated(ctx: _Context) -> None:
    doc, runs = ctx.doc, ctx.study.runs
    factors = D.factor_columns(runs)
    doc.heading("Granulated Kendall coefficient", level=3)
    if not factors:
        doc.note("Only one algorithm and no hyperparameter varied within an algorithm: no factor to granulate over.")
        return
    gk = S.granulated_kendall_table(runs, ctx.measures, ctx.metrics, factors)
    ctx.save_table(gk, "granulated_kendall")
    doc.para(
        f"Jiang et al. (2020): Kendall τ between measure and metric when only one factor varies at a time "
        f"(factors: {', '.join(factors)}; seed replicates averaged first), ψ per factor and their mean Ψ; "
        "Ψ > 0 on every factor is the evidence that a measure tracks robustness rather than the algorithm label."
    )
    metric = ctx.primary or ctx.metrics[0]
    sub = gk[gk["metric"] == metric]
    wide = sub.pivot_table(index=["task", "measure"], columns="factor", values="psi", aggfunc="first").reset_index()
    wide["measure"] = [F.column_label(str(m), unit=False) for m in wide["measure"]]
    wide.columns = [str(c) for c in wide.columns]
    doc.table(
        wide,
        f"ψ per factor, Ψ ({S.PSI_OVERALL}) and plain τ ({S.KENDALL_ALL}) against {F.column_label(metric, unit=False)}.",
    )


def _section_comparisons(ctx: _Context) -> None:
    doc, runs = ctx.doc, ctx.study.runs
    doc.heading("Do flatness-seeking optimisers buy robustness?")
    pairs = _comparison_pairs(ctx.study.algos)
    if not pairs:
        doc.note(f"No flatness variant with its base algorithm among {', '.join(ctx.study.algos)}; nothing to compare.")
        return
    robust = [c for c in ROBUST_PREFERENCE[:2] if c in ctx.metrics][:1]
    every_metric = _varying(runs, D.metric_columns(runs))
    collapse = [c for c in every_metric if re.search(r"collapse_(point|log_factor)", c)][:3]
    collapse = collapse or [c for c in every_metric if re.search(r"collapse_factor", c)][:3]
    metrics = [c for c in dict.fromkeys([NOMINAL_RETURN, *robust, *collapse, *ctx.measures]) if c in runs.columns]
    metrics = _varying(runs, metrics) or metrics
    doc.para(
        "Differences of the mean and of the interquartile mean (IQM), stratified bootstrap 95% CIs (runs "
        "resampled within each task; seeds are independent across algorithms), and the probability that a "
        "run of the variant scores higher than a run of its base (Agarwal et al. 2021). For sharpness "
        "measures lower is flatter; for the probability read 1 - P when lower is better."
    )
    aggs, means, iqms = [], [], []
    for stat in ("mean", "iqm"):
        aggs.append(S.aggregate_table(runs, metrics, seed=ctx.seed, stat=stat, n_boot=ctx.n_boot))
    agg = aggs[0]
    ctx.save_table(pd.concat(aggs, ignore_index=True), "aggregates")
    scopes = [*ctx.study.tasks, *([S.POOLED] if len(ctx.study.tasks) > 1 else [])]
    labels = {m: F.column_label(m, unit=False) for m in metrics}
    for algo, base in pairs:
        mean = S.compare_algorithms(runs, metrics, algo, base, seed=ctx.seed, stat="mean", n_boot=ctx.n_boot)
        iqm = S.compare_algorithms(runs, metrics, algo, base, seed=ctx.seed, stat="iqm", n_boot=ctx.n_boot)
        means.append(mean)
        iqms.append(iqm)
        doc.heading(f"{algo} vs {base}", level=3)
        sentences = []
        for scope in scopes:
            if (mean["task"] == scope).any():
                sentences.append(S.describe_comparison(mean, task=scope, labels=labels) + ".")
        doc.bullets(sentences or [f"No task has runs of both {algo} and {base} with data."])
        for scope in scopes:
            if (mean["task"] == scope).any():
                doc.table(_comparison_table(mean, iqms[-1], agg, algo, base, scope), f"{algo} vs {base} on {scope}.")
    ctx.save_table(pd.concat(means + iqms, ignore_index=True), "comparisons")


def _section_figures(ctx: _Context) -> None:
    doc, study = ctx.doc, ctx.study
    run_algo = dict(zip(study.runs["run_id"].astype(str), study.runs["algo"].astype(str), strict=True))
    doc.heading("Robustness under shifted dynamics")
    robust = D.load_robustness(study)
    curves, labels = D.robustness_curves(robust)
    _add_figure(
        ctx,
        "robustness_curves",
        "Normalised return (1 = the run's nominal return) vs perturbation, per algorithm: mean over runs with a "
        f"95% bootstrap CI band; dashed: collapse threshold {D.COLLAPSE_THRESHOLD}.",
        lambda: F.plot_robustness_curves(curves, ctx.palette, labels, seed=ctx.seed, n_boot=ctx.fig_boot),
    )
    grids = D.robustness_grids(robust)
    if not grids:
        doc.note("Figure 'dynamics_grid' skipped: no 2-D dynamics grid was evaluated.")
    for g in grids:
        title = f"{g.task}: {g.family.replace(':', ' × ')}"
        _add_figure(
            ctx,
            f"dynamics_grid_{g.task}_{g.family.replace(':', '-')}",
            f"{title}: mean normalised return over the grid of factors, per algorithm (mean over runs).",
            functools.partial(F.plot_dynamics_grid, g.data, g.x_label, g.y_label, title),
        )
    doc.heading("Sharpness: spectra and landscapes")
    probes = D.probe_arrays(study)
    _add_figure(
        ctx,
        "hessian_density",
        "Hessian eigenvalue density of the policy loss (stochastic Lanczos quadrature), one line per run, log scale.",
        lambda: F.plot_hessian_density(probes, run_algo, ctx.palette),
    )
    _add_figure(
        ctx,
        "hessian_top_eigenvalues",
        "Top Hessian eigenvalues of each run (dots) with the per-algorithm mean and bootstrap 95% CI (bars).",
        lambda: F.plot_top_eigenvalues(probes, run_algo, ctx.palette, seed=ctx.seed, n_boot=ctx.fig_boot),
    )
    pick_metric = ctx.primary or (NOMINAL_RETURN if NOMINAL_RETURN in study.runs else None)
    seeds = dict(zip(study.runs["run_id"].astype(str), study.runs.get("seed", study.runs["run_id"]), strict=True))
    metric_word = F.column_label(pick_metric, unit=False) if pick_metric else "seed"
    why = f"the run with the median {metric_word} per algorithm, as change from the trained parameters along "
    why += "filter-normalised random directions."

    def representative(data: dict[str, D.T]) -> tuple[dict[str, D.T], dict[str, str]]:
        chosen = D.median_run(study.runs, pick_metric, data)
        labels = {algo: f"{algo} (seed {seeds.get(run, '?')})" for algo, run in chosen.items()}
        return {algo: data[run] for algo, run in chosen.items()}, labels

    one_d, one_labels = representative({r: c for r, a in probes.items() if (c := F.landscape_1d(a)) is not None})
    two_d, two_labels = representative({r: s for r, a in probes.items() if (s := F.landscape_2d(a)) is not None})
    _add_figure(
        ctx, "landscape_1d", "1-D landscape of " + why, lambda: F.plot_landscape_1d(one_d, one_labels, ctx.palette)
    )
    _add_figure(ctx, "landscape_2d", "2-D landscape of " + why, lambda: F.plot_landscape_2d(two_d, two_labels))
    doc.heading("Training")
    learning = D.load_learning_curves(study)
    _add_figure(
        ctx,
        "learning_curves",
        "Episode return during training vs environment steps, binned onto a common grid per task: mean over "
        "runs with a 95% bootstrap CI band.",
        lambda: F.plot_learning_curves(learning, ctx.palette, seed=ctx.seed, n_boot=ctx.fig_boot),
    )


def _clean_outputs(out: Path) -> None:
    """Remove figures/tables of an earlier report so a now-skipped figure cannot linger as a stale file."""
    for sub, pattern in (("figures", "*.png"), ("tables", "*.csv")):
        for old in (out / sub).glob(pattern):
            old.unlink()


def default_output(study_dirs: Sequence[str | Path]) -> Path:
    """``<study>/report`` for one study; several studies need an explicit ``--out``."""
    if len(study_dirs) != 1:
        raise RlflatError(f"{len(study_dirs)} study directories given; name the report directory with --out")
    return Path(study_dirs[0]) / "report"


def build_report(
    study_dirs: Sequence[str | Path],
    out: str | Path | None = None,
    *,
    seed: int = 0,
    n_boot: int = 2000,
    figure_n_boot: int = 1000,
) -> Path:
    """Write ``report.md``, ``report.html``, ``figures/*.png`` and ``tables/*.csv`` under ``out``; return ``out``.

    ``seed`` drives every bootstrap (tables and figure bands), so a report is reproducible; ``n_boot`` is
    the resample count of the statistics, ``figure_n_boot`` of the figures' CI bands.
    """
    if isinstance(study_dirs, str | Path):
        study_dirs = [study_dirs]
    study = D.load_study(study_dirs)
    out_dir = Path(out) if out is not None else default_output(study_dirs)
    runs = study.runs
    measures, dropped_m = _headline(_varying(runs, D.measure_columns(runs)), D.MEASURE_PREFIX, MAX_MEASURES)
    metrics, dropped_r = _headline(_varying(runs, D.metric_columns(runs)), "robustness.", MAX_METRICS)
    primary = D.first_present(metrics, ROBUST_PREFERENCE) or (metrics[0] if metrics else None)
    doc = Document(f"rlflat report: {study.name}")
    out_dir.mkdir(parents=True, exist_ok=True)
    _clean_outputs(out_dir)
    ctx = _Context(
        study,
        out_dir,
        seed,
        n_boot,
        min(n_boot, figure_n_boot),
        doc,
        F.algo_palette(study.algos),
        measures,
        metrics,
        primary,
    )
    _section_overview(ctx)
    if dropped_m or dropped_r:
        doc.note(f"Left out of the statistics (deeper columns, cap reached): {', '.join(dropped_m + dropped_r)}.")
    _section_correlations(ctx)
    _section_comparisons(ctx)
    _section_figures(ctx)
    write_text(out_dir / "report.md", to_markdown(doc, out_dir))
    write_text(out_dir / "report.html", to_html(doc))
    return out_dir
