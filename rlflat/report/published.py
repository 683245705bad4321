"""Published numbers beside ours: the same settings of the robustness suite, our runs' returns with intervals.

A published number from one seed is one draw; ours is the mean over seeds of each run's mean return at that
setting, with a Student-t 95% interval across seeds (runs are the independent units; episodes share a run's
policy), and the runs' ``inert``/``saturated`` flags when the evaluator set them, because a setting that does
not change the dynamics (Hopper's foot friction below x0.5) measures the nominal task again.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import stats

from rlflat.report.context import Context
from rlflat.report.document import cell
from rlflat.report.settings import parse_setting
from rlflat.report.study import load_robustness

_NOISE = "action_noise"


def _select(robust: pd.DataFrame, family: str, level: float) -> pd.DataFrame:
    rows = robust[robust["family"] == family]
    if family == "nominal":
        return rows
    column = _NOISE if family == _NOISE else "factor"
    return rows[np.isclose(rows[column].astype(float), level, rtol=1e-9, atol=1e-12)]


def published_table(robust: pd.DataFrame, rows: list[tuple[str, dict[str, float]]]) -> pd.DataFrame:
    """One line per (setting, algo): published value, our mean over runs, its 95% t interval, n, flags."""
    out = []
    for setting, values in rows:
        family, level = parse_setting(setting)
        chosen = _select(robust, family, level)
        for algo, theirs in values.items():
            mine = chosen[chosen["algo"] == algo]
            per_run = mine.groupby("run_id")["return_mean"].first().to_numpy(dtype=float)
            n = len(per_run)
            mean = float(per_run.mean()) if n else math.nan
            half = float(stats.t.ppf(0.975, n - 1) * per_run.std(ddof=1) / math.sqrt(n)) if n > 1 else math.nan
            flags = [f for f in ("inert", "saturated") if f in mine and bool(mine[f].astype(bool).any())]
            out.append(
                {
                    "setting": setting,
                    "algo": algo,
                    "published": theirs,
                    "ours_mean": mean,
                    "ours_ci_low": mean - half,
                    "ours_ci_high": mean + half,
                    "runs": n,
                    "flags": ",".join(flags),
                }
            )
    return pd.DataFrame(out)


def section_published(ctx: Context) -> None:
    published = ctx.settings.published
    if published is None:
        return
    doc = ctx.doc
    doc.heading("Published numbers beside ours")
    robust = load_robustness(ctx.study)
    if robust.empty:
        doc.note("No robustness tables: nothing to set beside the published numbers.")
        return
    table = published_table(robust, [(r.setting, r.values) for r in published.rows])
    ctx.save_table(table, "published")
    doc.para(
        f"Published: {published.source}. Ours: mean over runs of each run's mean return at the setting, with a "
        "Student-t 95% interval across runs (n = runs); flags: the evaluator found the setting's dynamics "
        "identical to nominal (inert) or to another factor of the same sweep (saturated)."
    )
    shown = pd.DataFrame(
        {
            "setting": table["setting"],
            "algo": table["algo"],
            "published": table["published"].map(cell),
            "ours [95% CI]": [
                f"{m:.0f} [{lo:.0f}, {hi:.0f}]" if n > 1 else (f"{m:.0f}" if n else "-")
                for m, lo, hi, n in zip(
                    table["ours_mean"], table["ours_ci_low"], table["ours_ci_high"], table["runs"], strict=True
                )
            ],
            "runs": table["runs"],
            "flags": table["flags"],
        }
    )
    doc.table(shown)
