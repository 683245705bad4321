"""The report's edge-of-stability section: sharpness along training against the stability thresholds."""

from __future__ import annotations

import numpy as np
import pandas as pd

from rlflat.report import figures as F
from rlflat.report.context import Context, add_figure
from rlflat.report.document import estimate_ci
from rlflat.report.stats.comparison import mean_interval
from rlflat.report.study import load_sharpness_paths

PATH_PREFIX = "train.sharpness_path."
SUMMARY_COLUMNS = {
    "late_adam_ratio": "late λ₁(P⁻¹H) / threshold",
    "frac_adam_at_edge": "fraction of updates with λ₁(P⁻¹H) ≥ threshold",
    "max_adam_ratio": "max λ₁(P⁻¹H) / threshold",
    "late_gd_ratio": "late λ₁(H) / (2/η)",
}
"""Per-run path scalars (``metrics.json`` ``train.sharpness_path``) tabulated per algorithm and learning rate."""


def path_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Per (algorithm, learning-rate setting): runs, and each path scalar's mean with a 95% t interval over runs."""
    present = [c for c in SUMMARY_COLUMNS if PATH_PREFIX + c in runs]
    lr = runs["hp.learning_rate"].astype(str) if "hp.learning_rate" in runs else pd.Series("?", index=runs.index)
    rows = []
    for (algo, setting), group in runs.assign(_lr=lr).groupby(["algo", "_lr"], sort=True):
        row: dict[str, object] = {"algo": algo, "learning rate": setting, "runs": len(group)}
        for column in present:
            values = pd.to_numeric(group[PATH_PREFIX + column], errors="coerce").dropna().to_numpy(np.float64)
            mean = float(values.mean()) if values.size else float("nan")
            row[SUMMARY_COLUMNS[column]] = estimate_ci(mean, *mean_interval(values))
        rows.append(row)
    return pd.DataFrame(rows)


def section_stability(ctx: Context) -> None:
    """Skipped entirely for a study without tracked runs (the section would only say so)."""
    paths = load_sharpness_paths(ctx.study)
    if paths.empty:
        return
    ctx.doc.heading("Sharpness along training (edge of stability)")
    ctx.doc.para(
        "Every few updates of a tracked run, on the whole current rollout buffer and the loss the algorithm "
        "minimises there: the top Hessian eigenvalue λ₁(H) and the top eigenvalue of Adam's preconditioned "
        "Hessian P⁻¹H (Cohen et al. 2022: P = (1 − β₁ᵗ)(diag(√v̂) + ε)). Gradient descent is unstable on a "
        "quadratic above 2/η (Cohen et al. 2021); Adam's preconditioned sharpness equilibrates at "
        "2(1 + β₁)/((1 − β₁)η) = 38/η for β₁ = 0.9 (Cohen et al. 2022). 'Late' is the median over the second half "
        "of a run's measurements; ratios divide by the threshold at that update."
    )
    add_figure(
        ctx,
        "sharpness_paths",
        "Sharpness (top) and Adam-preconditioned sharpness (bottom) vs environment steps, one column per "
        "learning rate: thin lines are runs, thick lines the per-algorithm mean with a 95% bootstrap CI band "
        "(descriptive); dashed: the stability threshold.",
        lambda: F.plot_sharpness_paths(paths, ctx.palette, seed=ctx.seed, n_boot=ctx.fig_boot),
    )
    table = path_table(ctx.runs)
    if len(table.columns) > 3:
        ctx.doc.table(table, "Path scalars per algorithm and learning rate: mean [95% t interval over runs].")
        ctx.save_table(table, "sharpness_paths")
