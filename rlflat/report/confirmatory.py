"""The report's Confirmatory section: the registered analysis of a preregistered study, then the Exploratory label.

When the studies' ``study.yaml`` name a preregistration, this section checks it against the hash locked at each
study's first run (:mod:`rlflat.study.lock`), prints the amendments, runs exactly the registered tests
(:mod:`rlflat.study.analysis`) and states a verdict per hypothesis with estimate, CI, p, Holm p and n, whatever
the outcome. A preregistration changed without an amendment voids the verdicts (they are withheld, and the report
says why). The granulated Kendall summary follows, labelled exploratory, and everything after this section is
exploratory.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import yaml

from rlflat.errors import RlflatError
from rlflat.report.context import Context, add_figure
from rlflat.report.document import Document, estimate_ci
from rlflat.report.stats.granulated_summary import granulated_summary
from rlflat.study.analysis import ConfirmatoryResult, run_registered_analysis
from rlflat.study.lock import LOCK_FILE, check_preregistration, read_lock
from rlflat.study.preregistration import LoadedPreregistration, load_preregistration

__all__ = ["confirmatory_blocks", "preregistration_path", "section_confirmatory"]

GRANULATED_BOOT = 500
"""Bootstrap resamples of the granulated-Kendall intervals (descriptive, exploratory)."""


def preregistration_path(study_dirs: Sequence[Path]) -> Path | None:
    """The preregistration named by the studies' ``study.yaml`` (None when none names one)."""
    named: dict[str, Path] = {}
    for directory in study_dirs:
        path = directory / "study.yaml"
        if not path.exists():
            continue
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise RlflatError(f"cannot read {path}: {exc}") from None
        if isinstance(data, dict) and data.get("preregistration"):
            given = Path(str(data["preregistration"]))
            found = given if given.exists() else directory.resolve().parent.parent / given
            named[str(given)] = found
    if len(named) > 1:
        raise RlflatError(f"the studies name different preregistrations: {', '.join(sorted(named))}")
    return next(iter(named.values()), None)


def _fmt_p(p: float) -> str:
    return "n/a" if pd.isna(p) else f"{p:.2g}"


def _verdict_table(result: ConfirmatoryResult) -> pd.DataFrame:
    v = result.verdicts
    return pd.DataFrame(
        {
            "test": v["test"],
            "family": v["family"],
            "estimate [95% CI]": [estimate_ci(e, lo, hi) for e, lo, hi in zip(v["estimate"], v["ci_low"],
                                                                              v["ci_high"], strict=True)],
            "p (one-sided)": v["p_value"].map(_fmt_p),
            "Holm p": v["p_holm"].map(_fmt_p),
            "n": v["n"],
            "strata": v["n_strata"],
            "verdict": v["verdict"],
        }
    )  # fmt: skip


def _strata_summary(result: ConfirmatoryResult, min_stratum: int) -> pd.DataFrame:
    rows = []
    for task, part in result.strata.groupby("task", sort=False):
        solved = part["solved_runs"]
        rows.append({"task": task, "strata": len(part), "runs per stratum": f"{part['runs'].min()}-{part['runs'].max()}",
                     "solved per stratum": f"{int(solved.min())}-{int(solved.max())}",
                     f"strata with >= {min_stratum} solved": int((solved >= min_stratum).sum())})  # fmt: skip
    return pd.DataFrame(rows)


def _header(doc: Document, loaded: LoadedPreregistration, study_dirs: Sequence[Path]) -> bool:
    """Registration, locks and amendments; False when a lock refuses the file (verdicts withheld)."""
    p = loaded.prereg
    doc.para(
        f"This study was preregistered: `{loaded.path.as_posix()}` ({p.title}; registered {p.registered.isoformat()}, "
        f"body sha256 `{loaded.body_hash[:16]}`). The tests below are exactly the registered ones; every verdict is "
        "printed whatever its outcome."
    )
    locks = []
    for directory in study_dirs:
        lock = read_lock(directory)
        if lock is None:
            locks.append(f"{directory.name}: no {LOCK_FILE} (not run through the sweep's preregistration check)")
        else:
            locks.append(f"{directory.name}: first run started {lock.get('first_run_started', lock['recorded_at'])}, "
                         f"locked sha256 `{str(lock['body_sha256'])[:16]}`")  # fmt: skip
    doc.bullets(locks)
    if p.amendments:
        doc.para(f"Amendments ({len(p.amendments)}):")
        doc.bullets([f"{a.date.isoformat()}: {a.changes} Reason: {a.reason}" for a in p.amendments])
    else:
        doc.para("Amendments: none.")
    for directory in study_dirs:
        try:
            check_preregistration(loaded.path, directory)
        except RlflatError as exc:
            doc.note(f"Verdicts withheld: {exc}.")
            return False
    return True


def confirmatory_blocks(
    doc: Document, study_dirs: Sequence[Path], runs: pd.DataFrame, failed: pd.DataFrame | None = None
) -> tuple[ConfirmatoryResult | None, pd.DataFrame | None, LoadedPreregistration | None]:
    """Write the Confirmatory section into ``doc``; returns the result, the granulated summary and the file."""
    path = preregistration_path(study_dirs)
    if path is None:
        return None, None, None
    loaded = load_preregistration(path)
    prereg = loaded.prereg
    doc.heading("Confirmatory analysis (preregistered)")
    if not _header(doc, loaded, study_dirs):
        doc.heading("Exploratory analyses")
        doc.note("Everything below is exploratory.")
        return None, None, loaded
    result = run_registered_analysis(prereg, runs)
    doc.table(_verdict_table(result), "Registered tests: one-sided stratified permutation tests, Holm within each "
              "family; supported = Holm p <= alpha with the estimate in the registered direction.")  # fmt: skip
    for r in result.verdicts.to_dict("records"):
        h = prereg.hypothesis(str(r["hypothesis"]))
        if h.scope == "pooled":
            est = estimate_ci(float(r["estimate"]), float(r["ci_low"]), float(r["ci_high"]))
            doc.para(f"**{r['test']}: {r['verdict']}.** {h.statement} Estimate {est}, one-sided permutation p = "
                     f"{_fmt_p(float(r['p_value']))}, Holm p = {_fmt_p(float(r['p_holm']))} over the {r['family']} "
                     f"family, n = {r['n']} runs in {r['n_strata']} strata.")  # fmt: skip
    if failed is not None and len(failed):
        doc.note(f"{len(failed)} run(s) without a result entered no test: " + ", ".join(map(str, failed["run_id"])))
    doc.table(result.exclusions, "Runs per task and why runs left tests (registered exclusions).")
    doc.table(_strata_summary(result, prereg.analysis.min_stratum), "n per task and stratum (configuration).")
    left = [f"{t}: {lo}" for t, lo in zip(result.verdicts["test"], result.verdicts["left_out"], strict=True) if lo]
    doc.bullets([f"Left out of {item}" for item in left])
    doc.heading("Exploratory: granulated Kendall per factor", level=3)
    measures = list(dict.fromkeys(h.measure for h in prereg.hypotheses if h.measure))
    metric = next(h.metric for h in prereg.hypotheses if h.measure)
    from rlflat.study.analysis import prepare_runs

    frame = prepare_runs(prereg, runs)
    frame = frame[frame["verdict"] != "unsolved"]
    summary = granulated_summary(frame, measures, metric, prereg.design.factors, seed=prereg.analysis.seed,
                                 n_boot=GRANULATED_BOOT)  # fmt: skip
    doc.para(
        "Exploratory (not registered as a test): Jiang et al.'s (2020) granulated Kendall psi per factor (one factor "
        "varied, the others fixed; seed replicates averaged), solved runs, 95% bootstrap intervals over seed "
        "replicates; pooled over tasks with inverse-variance weights (psi scale), Cochran's Q and I^2 for how much "
        "the tasks disagree."
    )
    return result, summary, loaded


def section_confirmatory(ctx: Context) -> None:
    """The report section (see the module doc); nothing for a study without a preregistration."""
    result, summary, _ = confirmatory_blocks(ctx.doc, ctx.study.dirs, ctx.study.runs, ctx.study.failed)
    if result is None:
        return
    ctx.save_table(result.verdicts, "confirmatory_verdicts")
    ctx.save_table(result.exclusions, "confirmatory_exclusions")
    ctx.save_table(result.strata, "confirmatory_strata")
    if summary is not None:
        ctx.save_table(summary, "granulated_kendall_summary")
        shown = summary[summary["factor"].notna()].copy()
        ctx.doc.table(_granulated_table(shown), "Granulated Kendall psi per factor and task (exploratory).")
        from rlflat.report.figures.granulated import plot_granulated_kendall

        add_figure(ctx, "granulated_kendall", "Granulated Kendall per factor, one panel per task (exploratory).",
                   lambda: plot_granulated_kendall(shown))  # fmt: skip
    ctx.doc.heading("Exploratory analyses")
    ctx.doc.note("Everything below is exploratory: chosen or computed without a registration, so a lead, not a test.")


def _granulated_table(summary: pd.DataFrame) -> pd.DataFrame:
    out = summary[["task", "measure", "factor"]].copy()
    out["psi [95% CI]"] = [estimate_ci(e, lo, hi) for e, lo, hi in zip(summary["psi"], summary["ci_low"],
                                                                      summary["ci_high"], strict=True)]  # fmt: skip
    out["Q p"] = summary["q_p"].map(_fmt_p)
    out["I^2"] = summary["i2"].map(lambda v: "" if pd.isna(v) else f"{100 * v:.0f}%")
    return out
