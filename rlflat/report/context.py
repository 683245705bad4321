"""What every section of a report shares: the study, the (censored) runs table, the chosen columns, the outputs."""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from rlflat.io import write_atomic
from rlflat.report import figures as F
from rlflat.report.document import Document
from rlflat.report.settings import ReportSettings
from rlflat.report.study import Study


@dataclass
class Context:
    study: Study
    out: Path
    settings: ReportSettings
    fig_boot: int
    doc: Document
    palette: F.Palette
    runs: pd.DataFrame
    """Successful runs, censored columns set to their task's common bound (see :mod:`rlflat.report.censoring`)."""
    censored: dict[str, pd.Series]
    """Column -> per-run flag: the run never collapsed inside the range (tied at the bound)."""
    measures: list[str]
    metrics: list[str]
    primary: str | None
    collapse_frac: float
    probe_meta: dict[str, dict[str, Any]]
    corr_runs: pd.DataFrame | None = None
    """The runs that enter sharpness-robustness correlations: solved ones unless ``include_unsolved``."""
    unsolved: pd.DataFrame | None = None
    """Runs below their task's solved threshold by :func:`rlflat.tasks.spec.solved_verdict` (listed)."""
    borderline: pd.DataFrame | None = None
    """Runs whose nominal return's 95% interval holds the threshold: counted as solved, listed as borderline."""
    bracket_ties: dict[str, int] = field(default_factory=dict)
    """Collapse column -> runs whose crossing shares its bracket with another run's (ranked as ties)."""
    written: list[Path] = field(default_factory=list)

    @property
    def seed(self) -> int:
        return self.settings.seed

    @property
    def correlated(self) -> pd.DataFrame:
        """The runs of the correlation sections (every run when no unsolved flag is known)."""
        return self.runs if self.corr_runs is None else self.corr_runs

    def save_table(self, frame: pd.DataFrame, name: str) -> Path:
        path = self.out / "tables" / f"{name}.csv"
        write_atomic(path, lambda p: frame.to_csv(p, index=False))
        self.written.append(path)
        return path

    def n_censored(self, column: str, index: pd.Index | None = None) -> int:
        flags = self.censored.get(column)
        if flags is None:
            return 0
        return int(flags.loc[index].sum()) if index is not None else int(flags.sum())


def label(column: str) -> str:
    return F.column_label(column, unit=False)


def add_figure(ctx: Context, name: str, caption: str, draw: Callable[[], F.FigAxes]) -> None:
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
