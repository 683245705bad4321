"""The report's layout: summary first, a table of contents whose every link lands on a heading, long tables in
appendices (linked from where they were), every CSV listed, and captions that say what the data is."""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace

import pandas as pd

from rlflat.report.captions import normalized_return_words
from rlflat.report.document import LONG_TABLE_ROWS, Document, slug, to_html, to_markdown
from rlflat.report.summary import section_summary


def _doc(tmp_path: Path) -> Document:
    doc = Document("rlflat report: x")
    doc.front = Document("").blocks
    doc.heading("Study")
    doc.para("text")
    doc.table(pd.DataFrame({"a": range(3)}), "Short table.")
    doc.heading("Does sharpness predict robustness?")
    doc.table(pd.DataFrame({"a": range(LONG_TABLE_ROWS + 5)}), "Rank correlations; every row in tables/c.csv.")
    (tmp_path / "tables").mkdir()
    (tmp_path / "tables" / "c.csv").write_text("a\n1\n")
    return doc


def test_markdown_contents_link_to_anchors_and_long_tables_move_to_an_appendix(tmp_path: Path) -> None:
    text = to_markdown(_doc(tmp_path), tmp_path)
    anchors = set(re.findall(r'<a id="([^"]+)"></a>', text))
    links = re.findall(r"\]\(#([^)]+)\)", text)
    assert links and set(links) <= anchors
    assert "- [Does sharpness predict robustness?](#does-sharpness-predict-robustness)" in text
    body, appendix = text.split('<a id="appendix-1-rank-correlations"></a>')
    assert "(20 rows): see [Appendix 1: Rank correlations](#appendix-1-rank-correlations)" in body
    assert "| 19 |" not in body and "| 19 |" in appendix  # the long table's rows live in the appendix only
    assert "| 2 |" in body  # a short table stays in place
    assert "- [tables/c.csv](tables/c.csv)" in appendix


def test_html_contents_link_to_heading_ids(tmp_path: Path) -> None:
    page = to_html(_doc(tmp_path), tmp_path)
    ids = set(re.findall(r'<h[1-6] id="([^"]+)"', page))
    targets = re.findall(r'href="#([^"]+)"', page)
    assert targets and set(targets) <= ids
    assert 'href="tables/c.csv"' in page


def test_slug_is_githubs_style() -> None:
    assert slug("Sharpness: spectra and landscapes") == "sharpness-spectra-and-landscapes"
    assert slug("Do flatness-seeking optimisers buy robustness?") == "do-flatness-seeking-optimisers-buy-robustness"


def test_the_curves_caption_names_the_scale_the_runs_used() -> None:
    task = pd.DataFrame({"robustness.normalization.mode": ["task", "task"]})
    assert "(R − R_low) / (R_ref − R_low)" in normalized_return_words(task)
    assert "1 = the run's nominal return" not in normalized_return_words(task)
    nominal = pd.DataFrame({"robustness.normalization.mode": ["nominal"]})
    assert normalized_return_words(nominal) == "Normalised return (1 = the run's own nominal return)"
    assert "different scales" in normalized_return_words(
        pd.DataFrame({"robustness.normalization.mode": ["task", "nominal"]})
    )


def _context(tmp_path: Path, estimate: float, low: float, high: float) -> SimpleNamespace:
    tables = tmp_path / "tables"
    tables.mkdir(exist_ok=True)
    pd.DataFrame(
        [
            {"measure": "probe.fisher_rao_norm", "metric": "robustness.auc_mean", "method": "spearman",
             "scope": "across runs", "estimate": 0.9, "ci_low": 0.8, "ci_high": 0.95, "n": 32, "n_strata": 1,
             "p_holm": 0.01, "n_tests": 20},
            {"measure": "probe.fisher_rao_norm", "metric": "robustness.auc_mean", "method": "spearman",
             "scope": "within algorithm", "estimate": estimate, "ci_low": low, "ci_high": high, "n": 32,
             "n_strata": 4, "p_holm": 0.095, "n_tests": 20},
        ]
    ).to_csv(tables / "correlations.csv", index=False)  # fmt: skip
    pd.DataFrame(
        [{"metric": "robustness.auc_mean", "algo": "ppo_sam", "baseline": "ppo", "difference": 0.049,
          "diff_ci_low": 0.022, "diff_ci_high": 0.076, "diff_method": "Welch t", "n_algo": 14, "n_baseline": 7}]
    ).to_csv(tables / "comparisons.csv", index=False)  # fmt: skip
    runs = pd.DataFrame({"task": ["CartPole"] * 42})
    return SimpleNamespace(
        out=tmp_path, measures=["probe.fisher_rao_norm"], primary="robustness.auc_mean", runs=runs,
        correlated=runs.iloc[:32], unsolved=runs.iloc[:10], study=SimpleNamespace(algos=["ppo", "ppo_sam"]),
        doc=Document("r"),
    )  # fmt: skip


def test_summary_states_the_primary_test_with_its_interval_and_limits(tmp_path: Path) -> None:
    ctx = _context(tmp_path, -0.52, -0.78, -0.11)
    section_summary(ctx)  # type: ignore[arg-type]
    text = to_markdown(ctx.doc, tmp_path)
    assert text.index("## Summary") < text.index("## Contents")
    assert (
        "Within algorithm, Fisher-Rao norm vs robust AUC: Spearman -0.52 [-0.78, -0.11] over 32 runs in 4 strata "
        "(the 95% CI excludes zero; Holm-adjusted p = 0.095 over 20 tests, so it does not survive the family-wise "
        "correction: a lead, not a finding)." in text
    )
    assert (
        "ppo_sam vs ppo, robust AUC: difference 0.049 [0.022, 0.076] (Welch t; n = 14 vs 7; CI excludes zero)" in text
    )
    assert "n: 42 runs; 32 enter the correlations (10 unsolved runs left out)." in text
    assert "Cannot conclude: that sharpness causes robustness" in text and "exploratory" in text


def test_summary_never_reads_an_interval_spanning_zero_as_an_effect(tmp_path: Path) -> None:
    ctx = _context(tmp_path, -0.45, -0.77, 0.04)
    section_summary(ctx)  # type: ignore[arg-type]
    text = to_markdown(ctx.doc, tmp_path)
    assert "the 95% CI spans zero: no evidence either way at this n" in text
