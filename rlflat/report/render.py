"""Build a study's report: tables (CSV), figures (PNG), ``report.md`` and a self-contained ``report.html``.

The report answers the project's two questions from the runs table: (a) does a sharpness measure predict
robustness across runs, and within each algorithm (:mod:`rlflat.report.sections_stats`), and (b) does a
flatness-seeking variant (``*_sam``, ``*_asam``) beat its base algorithm. The columns analysed are declared
up front (:class:`rlflat.report.settings.ReportSettings`, from the study's ``study.yaml`` ``report:`` block),
runs that never collapsed are kept as right-censored (:mod:`rlflat.report.censoring`), and every claim is a
plain sentence whose direction is read through one orientation table (:mod:`rlflat.report.orientation`).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
from tqdm.auto import tqdm

from rlflat.errors import RlflatError
from rlflat.io import check_output_dir, update_dir, write_text
from rlflat.report import figures as F
from rlflat.report import probe_data as P
from rlflat.report import robustness_data as RD
from rlflat.report import select
from rlflat.report.brackets import tie_within_brackets
from rlflat.report.censoring import MIN_COLLAPSE, censor_runs
from rlflat.report.confirmatory import section_confirmatory
from rlflat.report.context import Context, label
from rlflat.report.document import Document, to_html, to_markdown
from rlflat.report.published import section_published
from rlflat.report.reliability import section_reliability
from rlflat.report.sections_figures import section_robustness, section_sharpness, section_training
from rlflat.report.sections_flatness import section_flatness_vs_algorithm
from rlflat.report.sections_retention import section_retention
from rlflat.report.sections_stability import section_stability
from rlflat.report.sections_stats import section_comparisons, section_correlations
from rlflat.report.settings import ReportSettings, load_report_settings
from rlflat.report.solved import VERDICT_WORDS, run_verdicts
from rlflat.report.stats.strata import configuration_columns
from rlflat.report.study import Study, load_robustness, load_study, skipped_runs
from rlflat.report.summary import section_summary

DEFAULT_COLLAPSE_FRAC = 0.5

_SOLVED_COLUMNS = ("robustness.nominal_return", "robustness.nominal_return_se", "robustness.solved_threshold")


def _verdict_table(runs: pd.DataFrame, configuration: Sequence[str]) -> pd.DataFrame:
    """A verdict's runs with what tells them apart: the configuration (e.g. SAM's radius) beside the seed."""
    cols = [c for c in ("run_id", "algo", *configuration, "seed", *_SOLVED_COLUMNS) if c in runs]
    return runs[cols]


def _shown_to_the_hundredth(table: pd.DataFrame) -> pd.DataFrame:
    """Returns as text with two decimals: three significant digits would show 474.94 as the threshold 475."""
    shown = table.copy()
    for col in _SOLVED_COLUMNS:
        if col in shown:
            shown[col] = [f"{v:.2f}" if isinstance(v, float) and math.isfinite(v) else v for v in shown[col]]
    return shown


def _collapse_frac(runs: pd.DataFrame, settings: ReportSettings, doc: Document) -> float:
    """The evaluator's collapse threshold from the data; the settings' value only where the data has none."""
    values = pd.to_numeric(runs.get("robustness.collapse_frac", pd.Series(dtype=float)), errors="coerce").dropna()
    found = sorted(set(values.round(12)))
    if len(found) > 1:
        doc.note(f"Runs were evaluated with different collapse thresholds {found}; the curves draw {found[0]:g}.")
    if found:
        if settings.collapse_frac is not None and not math.isclose(settings.collapse_frac, found[0]):
            doc.note(
                f"report.collapse_frac {settings.collapse_frac:g} ignored: the runs were evaluated at {found[0]:g}."
            )
        return float(found[0])
    return settings.collapse_frac if settings.collapse_frac is not None else DEFAULT_COLLAPSE_FRAC


def _headline(runs: pd.DataFrame, wanted: Sequence[str], what: str, doc: Document) -> list[str]:
    """Resolve the declared columns; say which are absent, constant, or identical to an earlier one."""
    present = select.resolve(runs, wanted)
    moving = select.varying(runs, present)
    kept, twins = select.distinct(runs, moving)
    missing = [w for w in wanted if not select.resolve(runs, [w])]
    notes = []
    if missing:
        notes.append(f"absent: {', '.join(missing)}")
    if constant := [c for c in present if c not in moving]:
        notes.append(f"constant over runs: {', '.join(constant)}")
    if twins:
        notes.append("identical to another: " + ", ".join(f"{a} (= {b})" for a, b in twins.items()))
    if notes:
        doc.note(f"Headline {what} left out ({'; '.join(notes)}).")
    return kept


def _section_overview(ctx: Context) -> None:
    runs, failed, doc = ctx.study.runs, ctx.study.failed, ctx.doc
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
    unsolved = ctx.unsolved if ctx.unsolved is not None else runs.iloc[0:0]
    borderline = ctx.borderline if ctx.borderline is not None else runs.iloc[0:0]
    entering = len(ctx.correlated)
    for verdict, listed in (("unsolved", unsolved), ("borderline", borderline)):
        if len(listed):
            table = _verdict_table(listed, configuration_columns(runs))
            doc.table(_shown_to_the_hundredth(table), f"Runs {VERDICT_WORDS[verdict]}.")
            ctx.save_table(table, verdict)
    doc.para(
        f"{len(unsolved)} of {len(runs)} runs are below the solved threshold (the upper 95% bound of the nominal "
        f"return below it; {len(borderline)} more are borderline and count as solved); "
        + (
            f"they are kept in the sharpness-robustness correlations (include_unsolved), so {entering} runs enter them."
            if ctx.settings.include_unsolved
            else f"they are left out of the sharpness-robustness correlations, so {entering} runs enter them "
            "(algorithm comparisons keep every run)."
        )
    )
    if ctx.bracket_ties:
        doc.para(
            "Collapse points are ranked by the grid bracket they fall in (the two evaluated factors around the "
            "crossing): runs in one bracket are ties. Runs sharing a bracket with another run: "
            + "; ".join(f"{label(c)}: {n}" for c, n in ctx.bracket_ties.items() if c in ctx.metrics or n)
            + "."
        )
    doc.para(
        "Headline sharpness measures (declared before the analysis): "
        + (", ".join(label(m) for m in ctx.measures) or "none")
        + ". Headline robustness metrics: "
        + (", ".join(label(m) for m in ctx.metrics) or "none")
        + f". {len(ctx.measures) * len(ctx.metrics)} measure × metric pairs are tested per task and method."
    )
    _measure_glossary(ctx)
    if ctx.censored:
        parts = [
            f"{label(c)}: {int(f.sum())} of {len(f)}"
            for c, f in ctx.censored.items()
            if c in ctx.measures + ctx.metrics
        ]
        if parts:
            doc.para(
                "Runs right-censored (never collapsed inside the evaluated range; tied at its bound): "
                + "; ".join(parts)
                + "."
            )


def _measure_glossary(ctx: Context) -> None:
    """What each headline probe measure is and what it is invariant to, from :data:`rlflat.probe.invariance.INVARIANCE`."""
    from rlflat.probe.invariance import INVARIANCE, family, rescaling_words, sign_flip_words

    rows = []
    for column in ctx.measures:
        key = family(column.removeprefix("probe."))
        if column.startswith("probe.") and (inv := INVARIANCE.get(key)) is not None:
            rows.append(
                {
                    "measure": label(column),
                    "what it is": inv.what,
                    "per-neuron ReLU rescaling": rescaling_words(inv),
                    "tanh sign flips": sign_flip_words(inv),
                }
            )
    if rows:
        ctx.doc.table(
            pd.DataFrame(rows),
            "What each headline sharpness measure is (definitions and invariances as tested in "
            "tests/test_probe_invariance.py).",
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


def _context(study: Study, out_dir: Path, settings: ReportSettings, figure_n_boot: int) -> Context:
    doc = Document(f"rlflat report: {study.name}")
    probe_meta = P.probe_json(study)
    robust = load_robustness(study)
    tied, bracket_ties = tie_within_brackets(study.runs)
    runs, censored = censor_runs(tied, RD.log_factor_bounds(robust), probe_meta)
    measures = _headline(runs, settings.headline_measures, "measures", doc)
    wanted_metrics = list(settings.headline_metrics)
    metrics = _headline(runs, wanted_metrics, "metrics", doc)
    primary = metrics[0] if metrics else None
    ctx = Context(
        study=study,
        out=out_dir,
        settings=settings,
        fig_boot=min(settings.n_boot, figure_n_boot),
        doc=doc,
        palette=F.algo_palette(study.algos),
        runs=runs,
        censored={c: f for c, f in censored.items() if c in (*measures, *metrics) or c == MIN_COLLAPSE},
        measures=measures,
        metrics=metrics,
        primary=primary,
        collapse_frac=DEFAULT_COLLAPSE_FRAC,
        probe_meta=probe_meta,
    )
    ctx.collapse_frac = _collapse_frac(runs, settings, doc)
    ctx.bracket_ties = bracket_ties
    verdicts = run_verdicts(runs)
    if verdicts.notna().any():
        flags = verdicts == "unsolved"
        ctx.unsolved = runs[flags]
        ctx.borderline = runs[verdicts == "borderline"]
        ctx.corr_runs = runs if settings.include_unsolved else runs[~flags]
    return ctx


def build_report(
    study_dirs: Sequence[str | Path],
    out: str | Path | None = None,
    *,
    seed: int | None = None,
    n_boot: int | None = None,
    figure_n_boot: int = 1000,
    settings: ReportSettings | None = None,
    strict: bool = False,
    progress: bool = False,
) -> Path:
    """Write ``report.md``, ``report.html``, ``figures/*.png`` and ``tables/*.csv`` under ``out``; return ``out``.

    ``settings`` default to the first study's ``study.yaml`` ``report:`` block; ``seed`` and ``n_boot``, when
    given, override it. ``seed`` drives every resampling and permutation, so a report is reproducible.
    Every run or per-run file left out is named on stderr (:func:`rlflat.report.study.skipped_runs`); with
    ``strict`` any such skip is an error, before anything is written. ``progress`` shows a bar per section.
    """
    if isinstance(study_dirs, str | Path):
        study_dirs = [study_dirs]
    study = load_study(study_dirs)
    base = settings if settings is not None else load_report_settings(study_dirs)
    overrides = {k: v for k, v in (("seed", seed), ("n_boot", n_boot)) if v is not None}
    settings = ReportSettings.model_validate(base.model_dump() | overrides) if overrides else base
    out_dir = check_output_dir(Path(out) if out is not None else default_output(study_dirs), published=True)
    skipped = skipped_runs(study)
    for name, reason in skipped:
        print(f"skipped {name}: {reason}", file=sys.stderr)
    if skipped and strict:
        raise RlflatError(f"{len(skipped)} run(s) or run file(s) skipped (listed above); --strict: no report written")

    def build(folder: Path) -> None:  # a copy of out_dir, swapped in whole when done (rlflat.io.update_dir)
        _clean_outputs(folder)
        ctx = _context(study, folder, settings, figure_n_boot)
        sections = (_section_overview, section_confirmatory, section_reliability, section_flatness_vs_algorithm,
                    section_correlations,
                    section_retention, section_comparisons, section_published, section_robustness,
                    section_sharpness, section_training, section_stability)  # fmt: skip
        with tqdm(sections, desc="report", unit="section", disable=None if progress else True, file=sys.stderr,
                  leave=False) as bar:  # fmt: skip
            for section in bar:
                bar.set_postfix_str(section.__name__.removeprefix("_").removeprefix("section_"))
                section(ctx)
        section_summary(ctx)  # shown first, built last: it quotes the tables the sections wrote
        write_text(folder / "report.md", to_markdown(ctx.doc, folder))
        write_text(folder / "report.html", to_html(ctx.doc, folder))

    update_dir(out_dir, build, lock=False)  # a failure or kill leaves the earlier report whole (issue 23)
    return out_dir


__all__ = ["build_report", "default_output"]
