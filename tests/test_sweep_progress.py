"""The sweep's per-run lines stay on screen: on a terminal they print above the progress bar, not inside it."""

from __future__ import annotations

import io

from rlflat.sweep.pipeline import RunOutcome
from rlflat.sweep.runner import _ProgressView


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_per_run_lines_outlive_the_bar_on_a_terminal() -> None:
    stream = _Terminal()
    with _ProgressView(total=3, todo=2, name="study", enabled=True, stream=stream) as view:
        assert view._progress is not None  # the rich bar is what a terminal gets
        view.finished(RunOutcome("ppo-CartPole-s0-aaaa", "aaaa", "ok", seconds=1.25))
        view.finished(RunOutcome("ppo-CartPole-s1-bbbb", "bbbb", "failed", stage="probe", error="boom", seconds=2.0))
    text = stream.getvalue()
    assert "[1/2] ok ppo-CartPole-s0-aaaa 1.2 s" in text or "[1/2] ok ppo-CartPole-s0-aaaa 1.3 s" in text
    assert "[2/2] failed ppo-CartPole-s1-bbbb 2.0 s (probe: boom)" in text


def test_per_run_lines_without_a_terminal() -> None:
    stream = io.StringIO()
    with _ProgressView(total=1, todo=1, name="study", enabled=True, stream=stream) as view:
        view.finished(RunOutcome("r", "r", "ok", seconds=0.5))
    assert stream.getvalue().splitlines() == ["study: 1 of 1 runs to do", "[1/1] ok r 0.5 s"]


def test_summary_counts_solved_runs_and_notes_a_table_left_stale(tmp_path) -> None:
    import pandas as pd

    from rlflat.sweep.runner import SweepResult, summary_lines

    table = pd.DataFrame({"run_id": ["a", "b", "c"], "unsolved": [True, False, None]})
    result = SweepResult(study_dir=tmp_path, plan=[], table=table, stale_table=True)
    lines = summary_lines(result)
    assert "solved: 2 of 3 runs (1 unsolved: the report leaves them out of correlations)" in lines
    assert any(line.startswith("note: runs.parquet differs") and "--collect" in line for line in lines)
