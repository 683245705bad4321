"""The report's edge-of-stability section: sharpness along training against the stability thresholds."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import scipy.stats as sps

from rlflat.report import figures as F
from rlflat.report.context import Context, add_figure
from rlflat.report.document import estimate_ci
from rlflat.report.solved import run_verdicts
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


SLOPE_COLUMNS = (
    ("sharpness", "λ₁(H)"),
    ("preconditioned_sharpness", "λ₁(P⁻¹H)"),
    ("surrogate_preconditioned_sharpness", "surrogate λ₁(P⁻¹H)"),
)
"""(late level column, its name in the slope table): the loss's two sharpnesses and the policy surrogate's."""


def late_levels(paths: pd.DataFrame) -> pd.DataFrame:
    """Per run: its constant learning rate and the median of each sharpness over the second half of its
    measurements (runs whose learning rate is not one number, i.e. a schedule, are left out)."""
    rows = []
    for (algo, run_id, setting), run in paths.groupby(["algo", "run_id", "lr_setting"], sort=True):
        try:
            lr = float(str(setting))
        except ValueError:
            continue
        late = run.sort_values("timesteps").iloc[len(run) // 2 :]
        levels = {c: float(late[c].median()) if c in late else float("nan") for c, _ in SLOPE_COLUMNS}
        rows.append({"algo": algo, "run_id": run_id, "lr": lr, **levels})
    return pd.DataFrame(rows)


def threshold_slopes(levels: pd.DataFrame, confidence: float = 0.95) -> pd.DataFrame:
    """Per algorithm, the slope of log(late sharpness) on log(eta) over runs, with a t interval (n - 2 df).

    At the edge of stability the level follows its threshold, which is proportional to 1/eta: slope -1. A level
    set by the problem rather than the step size does not move with eta: slope 0."""
    rows = []
    for algo, group in levels.groupby("algo", sort=True):
        row: dict[str, object] = {"algo": algo, "runs": len(group), "learning rates": group["lr"].nunique()}
        for column, name in SLOPE_COLUMNS:
            ok = group[(group[column] > 0) & (group["lr"] > 0)]
            if ok["lr"].nunique() < 2 or len(ok) < 3:
                row[f"slope of log late {name} on log η"] = "n/a"
                continue
            fit = sps.linregress(np.log(ok["lr"]), np.log(ok[column]))
            half = sps.t.ppf(0.5 + confidence / 2, len(ok) - 2) * fit.stderr
            slope = float(fit.slope)
            row[f"slope of log late {name} on log η"] = estimate_ci(slope, slope - half, slope + half)
            row[f"_{column}_slope"] = slope if math.isfinite(slope) else float("nan")
        rows.append(row)
    return pd.DataFrame(rows)


_PATH = "train.sharpness_path."
CROSSING_COLUMNS = (
    ("max_gd_ratio", "max λ₁(H) / (2/η)"),
    ("late_gd_ratio", "late λ₁(H) / (2/η)"),
    ("max_adam_ratio", "max λ₁(P⁻¹H) / (38/η)"),
    ("late_adam_ratio", "late λ₁(P⁻¹H) / (38/η)"),
    ("max_surrogate_gd_ratio", "max surrogate λ₁(H) / (2/η)"),
    ("late_surrogate_adam_ratio", "late surrogate λ₁(P⁻¹H) / (38/η)"),
    ("value_dominated", "value-dominated"),
)
"""Per-run path scalars of the crossings table (:func:`rlflat.algos.sharpness_tracking.path_summary`)."""


def crossings_table(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per tracked run: algorithm, learning rate, solved verdict and its threshold ratios (max and late),
    the policy surrogate's own, and whether the whole loss's curvature is the value terms'."""
    present = [(c, name) for c, name in CROSSING_COLUMNS if f"{_PATH}{c}" in runs]
    if not present:
        return pd.DataFrame()
    table = runs[["run_id", "algo"]].copy()
    table["learning rate"] = runs.get("hp.learning_rate")
    table["verdict"] = run_verdicts(runs)
    for column, name in present:
        table[name] = runs[f"{_PATH}{column}"]
    return table.dropna(subset=[present[0][1]]).sort_values(["algo", "learning rate", "run_id"])


def _crossings_sentence(table: pd.DataFrame) -> str:
    """How many runs cross each threshold at some update and late, named, and the value-dominated count."""
    parts = []
    for name in ("max λ₁(H) / (2/η)", "late λ₁(H) / (2/η)", "max λ₁(P⁻¹H) / (38/η)", "late λ₁(P⁻¹H) / (38/η)"):
        if name not in table:
            continue
        values = pd.to_numeric(table[name], errors="coerce")
        over = table[values >= 1.0]
        listed = ", ".join(f"{r.run_id} ({v:.2f})" for r, v in zip(over.itertuples(), values[over.index], strict=True))
        parts.append(f"{name} ≥ 1 in {len(over)} of {len(table)} runs (largest {values.max():.2f})"
                     + (f": {listed}" if 0 < len(over) <= 6 else ""))  # fmt: skip
    if "value-dominated" in table:
        flags = table["value-dominated"].map(lambda v: v is True or str(v) == "True")
        parts.append(f"value-dominated (the whole loss's late top eigenvalue more than twice the policy "
                     f"surrogate's) in {int(flags.sum())} of {len(table)} runs")  # fmt: skip
    return "Per run: " + "; ".join(parts) + ". Every run is in tables/threshold_crossings.csv."


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
    crossings = crossings_table(ctx.runs)
    if not crossings.empty:
        ctx.save_table(crossings, "threshold_crossings")
        ctx.doc.para(_crossings_sentence(crossings))
    slopes = threshold_slopes(late_levels(paths))
    if not slopes.empty and (slopes["learning rates"] > 1).any():
        shown = slopes[[c for c in slopes.columns if not c.startswith("_")]]
        ctx.doc.table(
            shown,
            "Does the late level move with the learning rate? OLS slope of log(late sharpness) on log η over runs, "
            "95% t interval: −1 = it follows the threshold (edge of stability), 0 = set by the problem, not the step.",
        )
        ctx.save_table(shown, "threshold_slopes")
