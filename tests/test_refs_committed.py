"""The committed studies re-derive from their own committed inputs: every run's ``robustness`` block from its
``robustness.parquet``, and a whole report (its text and every table) from the study's per-run files.

These are regression checks, not independent references: they pin what a clone already carries, so any change
to the metrics or the statistics that would alter a committed number fails here rather than silently making
the committed reports unreproducible. Floats are compared to a tolerance (another numpy/scipy build may differ
in the last bits); words, keys and structure exactly.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from rlflat.evaluate import robustness_block
from rlflat.evaluate.metrics import normalization
from rlflat.tasks import load_task

REPO = Path(__file__).resolve().parents[1]
STUDIES = ("cartpole_sam", "cartpole_v2", "pendulum_sam", "hopper_sam")
RUN_DIRS = sorted(p.parent for s in STUDIES for p in (REPO / "results" / s).glob("*/robustness.parquet"))
CALLER_KEYS = {"policy", "table", "rescored"}
"""Keys the evaluator's CLI adds around robustness_block (where the policy and table came from)."""


def _assert_close(got: Any, want: Any, where: str = "") -> None:
    """Equal structure and keys; floats equal to 1e-9 relative (NaN equal to NaN)."""
    if isinstance(want, dict):
        assert isinstance(got, dict) and sorted(got) == sorted(want), f"{where}: keys {sorted(got)} != {sorted(want)}"
        for key in want:
            _assert_close(got[key], want[key], f"{where}.{key}")
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), f"{where}: {got!r} != {want!r}"
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            _assert_close(g, w, f"{where}[{i}]")
    elif isinstance(want, float) and not isinstance(got, bool) and isinstance(got, int | float):
        assert math.isclose(got, want, rel_tol=1e-9, abs_tol=1e-12) or (math.isnan(got) and math.isnan(want)), (
            f"{where}: {got!r} != {want!r}"
        )
    else:
        assert type(got) is type(want) and got == want, f"{where}: {got!r} != {want!r}"


def test_there_are_committed_runs_of_every_study() -> None:
    for study in STUDIES:
        assert any(d.parent.name == study for d in RUN_DIRS), f"no committed robustness table in results/{study}"


@pytest.mark.parametrize("run_dir", RUN_DIRS, ids=lambda d: f"{d.parent.name}/{d.name}")
def test_committed_robustness_blocks_re_derive_from_their_tables(run_dir: Path) -> None:
    """Every key and value of metrics.json's robustness block, from the committed robustness.parquet."""
    committed = json.loads((run_dir / "metrics.json").read_text())["robustness"]
    config = json.loads((run_dir / "config.json").read_text())
    task = load_task(config.get("task") or config["env"])
    want = {k: v for k, v in committed.items() if k not in CALLER_KEYS}
    table = pd.read_parquet(run_dir / "robustness.parquet")
    got = json.loads(json.dumps(robustness_block(table, task, committed["collapse_frac"])))
    _assert_close(got, want, run_dir.name)
    # the table's own normalisation: its recorded scale and every normalised return, from the raw mean returns
    recorded = table.attrs["normalization"]
    scale = normalization(task, table.attrs["nominal_return"], recorded["mode"])
    _assert_close(json.loads(json.dumps(scale.block())), recorded, f"{run_dir.name} normalization")
    np.testing.assert_allclose(scale.apply(table["return_mean"].to_numpy()), table["normalized_return"], rtol=1e-12)


_NUMBER = re.compile(r"[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?")


def _numbers_and_words(text: str) -> tuple[list[str], str]:
    return _NUMBER.findall(text), _NUMBER.sub("#", text)


def _same_printed_number(got: str, want: str) -> bool:
    """Equal, or within one unit of the last printed digit (rounding of a value another build computes in its
    last bits differently)."""
    if got == want:
        return True
    g, w = float(got), float(want)
    mantissa = want.lower().split("e")[0]
    unit = 10.0 ** -(len(mantissa.split(".")[1]) if "." in mantissa else 0)
    if "e" in want.lower():
        unit *= 10.0 ** int(want.lower().split("e")[1])
    return abs(g - w) <= unit * 1.0001


def _check_report_re_derives(study: str, out_root: Path) -> None:
    """report.md word for word (every sentence, verdict and table layout) with every number to its printed digit,
    and every table to 1e-7, rendered afresh from the study's per-run files."""
    from rlflat.report.render import build_report

    with contextlib.chdir(REPO):  # the report names its study as given: the relative path it was rendered from
        out = build_report([f"results/{study}"], out_root)
    committed = REPO / "results" / study / "report"
    want_numbers, want_words = _numbers_and_words((committed / "report.md").read_text())
    got_numbers, got_words = _numbers_and_words((out / "report.md").read_text())
    assert got_words == want_words
    assert len(got_numbers) == len(want_numbers)
    bad = [(g, w) for g, w in zip(got_numbers, want_numbers, strict=True) if not _same_printed_number(g, w)]
    assert not bad, f"{len(bad)} numbers differ, first {bad[:5]}"
    tables = sorted((committed / "tables").glob("*.csv"))
    assert [p.name for p in tables] == sorted(p.name for p in (out / "tables").glob("*.csv"))
    for path in tables:
        want, got = pd.read_csv(path), pd.read_csv(out / "tables" / path.name)
        pd.testing.assert_frame_equal(got, want, check_exact=False, rtol=1e-7, atol=1e-12, obj=path.name)


def test_committed_report_re_derives_from_the_study(tmp_path: Path) -> None:
    """Pendulum's report (the quickest to render, ~30 s). One test, no fixture: the render is its cost (mutmut
    times tests without their fixtures' setup)."""
    _check_report_re_derives("pendulum_sam", tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("study", ["cartpole_sam", "cartpole_v2", "hopper_sam"])
def test_every_other_committed_report_re_derives(study: str, tmp_path: Path) -> None:
    """The other committed reports (1-2 min each: `pytest -m slow tests/test_refs_committed.py`)."""
    _check_report_re_derives(study, tmp_path)
