"""The flatness-roads study (issue 24, ``configs/flatness_roads.yaml``): every lever against plain PPO, Keskar's
batch-size dose-response, and the curve barriers between pairs of policies. The plan is docs/flatness_roads.md.

* :func:`arm_table`: which arm (lever and level) each run of the study belongs to, read from the study config
  itself (a run that two grid points resolve to, CartPole's plain arm and its batch size 256, is in both);
* :func:`lever_table`: per task, lever level and measure, the arm minus plain PPO as a Welch mean difference
  (Welch 1947) and a Hodges-Lehmann shift (Hodges & Lehmann 1963) with its distribution-free interval, Holm-
  corrected over the levels of one lever;
* :func:`dose_response`: the OLS slope of a measure on log2(batch size) with its t interval, over the plain and
  batch-size runs (a dose-response, not a two-point comparison);
* :func:`connect_pairs` / :func:`connect_table`: which pairs of runs to join with ``probe --connect`` (disjoint
  seed pairs within an arm, seed-matched pairs across arms) and the table of their barriers.

``python -m rlflat.report.roads STUDY_DIR`` writes the three tables as CSV and prints the connect commands.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
from scipy import stats as sps

from rlflat.errors import RlflatError
from rlflat.report.stats import holm, welch_interval

__all__ = [
    "LEVERS",
    "PLAIN",
    "arm_table",
    "connect_pairs",
    "connect_table",
    "dose_points",
    "dose_response",
    "hodges_lehmann",
    "lever_table",
    "main",
    "summary_markdown",
]

LEVERS = ("batch_size", "weight_decay", "swa_start", "learning_rate", "dropout")
PLAIN = "plain"
FloatArray = npt.NDArray[np.float64]


def hodges_lehmann(a: npt.ArrayLike, b: npt.ArrayLike, confidence: float = 0.95) -> tuple[float, float, float]:
    """Hodges-Lehmann shift of ``a`` over ``b`` (median of all a_i - b_j) and its distribution-free interval.

    The interval inverts the two-sided Mann-Whitney test in its normal approximation (no continuity
    correction): a shift d is inside when the count of differences above d, U(d), satisfies
    |U - mn/2| <= z sqrt(mn(m+n+1)/12), i.e. [D_(j_lo), D_(j_hi + 1)] of the sorted differences with
    j_lo = ceil(mn/2 - z s), j_hi = floor(mn/2 + z s) (Lehmann 1975, ch. 2). NaN bounds when a side has fewer than
    2 runs or the sample is too small for the confidence asked (j_lo < 1).
    """
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    x, y = x[np.isfinite(x)], y[np.isfinite(y)]
    if x.size == 0 or y.size == 0:
        return math.nan, math.nan, math.nan
    diffs = np.sort(np.subtract.outer(x, y).ravel())
    estimate = float(np.median(diffs))
    m, n = x.size, y.size
    if m < 2 or n < 2:
        return estimate, math.nan, math.nan
    z = float(sps.norm.ppf(0.5 + confidence / 2))
    half, spread = m * n / 2, z * math.sqrt(m * n * (m + n + 1) / 12)
    j_lo, j_hi = math.ceil(half - spread), math.floor(half + spread)
    if j_lo < 1 or j_hi + 1 > diffs.size:
        return estimate, math.nan, math.nan
    return estimate, float(diffs[j_lo - 1]), float(diffs[j_hi])


def arm_table(study: Any) -> pd.DataFrame:
    """``run_id, task, seed, lever, level`` for every (run, arm) of a loaded study config (``LoadedStudy``).

    ``lever`` is :data:`PLAIN` for the ``{}`` grid point, else the one grid key the run sets beyond the study's
    per-algorithm overrides; a grid point setting several keys is refused (the study is one lever at a time).
    """
    from rlflat.sweep.config import expand_runs

    shared = {k for block in study.config.overrides.values() for k in block}
    rows = []
    for spec in expand_runs(study, with_duplicates=True):
        own = {k: v for k, v in spec.overrides.items() if k not in shared}
        if len(own) > 1:
            raise RlflatError(f"run {spec.name} sets {sorted(own)}: a roads study changes one lever at a time")
        lever, level = next(iter(own.items())) if own else (PLAIN, None)
        rows.append({"run_id": spec.run_id, "task": spec.config["task"], "seed": spec.config["seed"],
                     "lever": lever, "level": level})  # fmt: skip
    return pd.DataFrame(rows, columns=["run_id", "task", "seed", "lever", "level"]).drop_duplicates(
        ["run_id", "lever", "level"]
    )


def _values(runs: pd.DataFrame, ids: pd.Series, metric: str) -> FloatArray:
    values = pd.to_numeric(runs.loc[runs["run_id"].isin(set(ids)), metric], errors="coerce")
    out = values.to_numpy(dtype=np.float64, na_value=np.nan)
    return out[np.isfinite(out)]


def lever_table(
    runs: pd.DataFrame, arms: pd.DataFrame, metrics: Sequence[str], confidence: float = 0.95
) -> pd.DataFrame:
    """Each lever level minus plain PPO, per task and metric: Welch difference and Hodges-Lehmann shift with CIs.

    ``welch_p`` is two-sided; ``welch_p_holm`` Holm-adjusts it over the levels of one lever (per task and
    metric): the family a sentence about "the lever" draws from. Runs are independent across arms (a shared
    seed number does not pair them).
    """
    rows = []
    for task in sorted(arms["task"].unique()):
        in_task = arms[arms["task"] == task]
        plain_ids = in_task.loc[in_task["lever"] == PLAIN, "run_id"]
        for metric in metrics:
            if metric not in runs.columns:
                continue
            base = _values(runs, plain_ids, metric)
            family = []
            for (lever, level), group in in_task[in_task["lever"] != PLAIN].groupby(["lever", "level"], sort=True):
                if set(group["run_id"]) == set(plain_ids):
                    continue  # the plain runs themselves (CartPole's batch 256): no comparison
                arm = _values(runs, group["run_id"], metric)
                low, high = welch_interval(arm, base, confidence)
                p = float(sps.ttest_ind(arm, base, equal_var=False).pvalue) if math.isfinite(low) else math.nan
                hl, hl_low, hl_high = hodges_lehmann(arm, base, confidence)
                family.append({
                    "task": task, "lever": lever, "level": level, "metric": metric,
                    "n_arm": arm.size, "n_plain": base.size,
                    "mean_arm": float(arm.mean()) if arm.size else math.nan,
                    "mean_plain": float(base.mean()) if base.size else math.nan,
                    "welch_diff": float(arm.mean() - base.mean()) if arm.size and base.size else math.nan,
                    "welch_low": low, "welch_high": high, "welch_p": p,
                    "hl_shift": hl, "hl_low": hl_low, "hl_high": hl_high,
                })  # fmt: skip
            for lever in {r["lever"] for r in family}:
                members = [r for r in family if r["lever"] == lever]
                ps = np.array([r["welch_p"] for r in members], dtype=np.float64)
                adjusted = np.full(ps.shape, np.nan)
                finite = np.isfinite(ps)
                if finite.any():
                    adjusted[finite] = holm(ps[finite])
                for r, q in zip(members, adjusted, strict=True):
                    r["welch_p_holm"] = float(q)
            rows.extend(family)
    columns = ["task", "lever", "level", "metric", "n_arm", "n_plain", "mean_arm", "mean_plain", "welch_diff",
               "welch_low", "welch_high", "welch_p", "welch_p_holm", "hl_shift", "hl_low", "hl_high"]  # fmt: skip
    return pd.DataFrame(rows, columns=columns)


def dose_response(
    runs: pd.DataFrame,
    arms: pd.DataFrame,
    metrics: Sequence[str],
    batch_column: str = "hp.batch_size",
    confidence: float = 0.95,
) -> pd.DataFrame:
    """Per task and metric: OLS slope of the metric on log2(batch size) over the plain and batch-size runs.

    ``slope`` is the change per doubling of the minibatch, with its t interval (n - 2 degrees of freedom; runs
    are independent); Keskar et al.'s claim in RL is a positive slope for sharpness and a negative one for
    robustness. ``spearman`` (with its p) is the monotone-trend check that does not assume a straight line.
    """
    rows = []
    for task, subset in dose_points(runs, arms, batch_column).items():
        dose = np.log2(pd.to_numeric(subset["dose"], errors="coerce").to_numpy(dtype=np.float64))
        for metric in metrics:
            if metric not in subset.columns:
                continue
            y = pd.to_numeric(subset[metric], errors="coerce").to_numpy(dtype=np.float64)
            keep = np.isfinite(dose) & np.isfinite(y)
            x, v = dose[keep], y[keep]
            row: dict[str, Any] = {"task": task, "metric": metric, "n": int(keep.sum()),
                                   "doses": int(np.unique(x).size)}  # fmt: skip
            if x.size >= 3 and np.ptp(x) > 0:
                fit = sps.linregress(x, v)
                t = float(sps.t.ppf(0.5 + confidence / 2, x.size - 2))
                rho = sps.spearmanr(x, v)
                row.update(slope=float(fit.slope), slope_low=float(fit.slope - t * fit.stderr),
                           slope_high=float(fit.slope + t * fit.stderr), slope_p=float(fit.pvalue),
                           spearman=float(rho.statistic), spearman_p=float(rho.pvalue))  # fmt: skip
            rows.append(row)
    columns = ["task", "metric", "n", "doses", "slope", "slope_low", "slope_high", "slope_p", "spearman", "spearman_p"]
    return pd.DataFrame(rows, columns=columns)


def dose_points(runs: pd.DataFrame, arms: pd.DataFrame, batch_column: str = "hp.batch_size") -> dict[str, pd.DataFrame]:
    """Per task, the plain and batch-size runs with their batch size as ``dose`` (one row per run)."""
    if batch_column not in runs.columns:
        raise RlflatError(f"the runs table has no {batch_column} column: cannot place runs on the batch axis")
    out = {}
    for task in sorted(arms["task"].unique()):
        ids = arms.loc[(arms["task"] == task) & arms["lever"].isin([PLAIN, "batch_size"]), "run_id"].unique()
        subset = runs[runs["run_id"].isin(set(ids))].copy()
        subset["dose"] = pd.to_numeric(subset[batch_column], errors="coerce")
        out[task] = subset
    return out


def connect_pairs(
    arms: pd.DataFrame, names: dict[str, str], levers: Sequence[str] | None = None
) -> list[tuple[str, str]]:
    """Run-directory pairs for ``probe --connect``: disjoint seed pairs (0-1, 2-3, ...) within every arm, and
    seed-matched pairs between plain PPO and every arm (``names`` maps run id -> directory name).

    Disjoint pairs keep the within-arm barriers independent, so their SE over pairs is honest.
    """
    pairs: list[tuple[str, str]] = []
    chosen = arms if levers is None else arms[arms["lever"].isin([PLAIN, *levers])]
    for (task, lever, _level), group in chosen.groupby(["task", "lever", "level"], dropna=False, sort=True):
        ordered = group.sort_values("seed")["run_id"].tolist()
        pairs += [(names[a], names[b]) for a, b in zip(ordered[0::2], ordered[1::2], strict=False)]
        if lever != PLAIN:
            plain = arms[(arms["task"] == task) & (arms["lever"] == PLAIN)].set_index("seed")["run_id"]
            for seed, run in group.set_index("seed")["run_id"].items():
                if seed in plain.index and plain[seed] != run:
                    pairs.append((names[plain[seed]], names[run]))
    return list(dict.fromkeys(pairs))


def connect_table(study_dir: str | Path) -> pd.DataFrame:
    """Every ``connect-*.json`` under the study's run directories: one row per pair, barriers with their SEs."""
    rows = []
    for path in sorted(Path(study_dir).glob("*/connect-*.json")):
        result = json.loads(path.read_text())
        row: dict[str, Any] = {"a": Path(result["a"]).name, "b": Path(result["b"]).name}
        for name in ("line", "curve"):
            for key in ("loss_barrier", "return_barrier", "loss_mean"):
                row[f"{name}.{key}"] = result[name].get(key)
                row[f"{name}.{key}_se"] = result[name].get(f"{key}_se")
        row["distance"] = result.get("distance")
        rows.append(row)
    return pd.DataFrame(rows)


def _float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _ci(value: Any, low: Any, high: Any) -> str:
    value, low, high = _float(value), _float(low), _float(high)
    if not math.isfinite(value):
        return "n/a"
    interval = f" [{low:.3g}, {high:.3g}]" if math.isfinite(low) and math.isfinite(high) else " [n/a]"
    return f"{value:.3g}{interval}"


def summary_markdown(levers: pd.DataFrame, dose: pd.DataFrame) -> str:
    """The two tables as Markdown: every difference and slope with its 95% interval (the CSVs hold the rest)."""
    lines = ["# Flatness roads: each lever against plain PPO", ""]
    lines += ["Arm minus plain PPO: Welch mean difference and Hodges-Lehmann shift, each with its 95% interval;",
              "p is Welch's, Holm-adjusted over the levels of one lever (per task and measure).", ""]  # fmt: skip
    lines += ["| task | measure | lever = level | n arm / plain | Welch diff [95% CI] | HL shift [95% CI] | p (Holm) |",
              "| --- | --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    for r in levers.itertuples(index=False):
        lines.append(
            f"| {r.task} | {r.metric} | {r.lever} = {r.level} | {r.n_arm} / {r.n_plain} | "
            f"{_ci(r.welch_diff, r.welch_low, r.welch_high)} | {_ci(r.hl_shift, r.hl_low, r.hl_high)} | "
            f"{_float(r.welch_p_holm):.3g} |"
        )
    lines += ["", "# Batch-size dose-response (plain + batch-size runs)", ""]
    lines += [
        "| task | measure | runs | doses | slope per doubling [95% CI] | Spearman rho (p) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in dose.itertuples(index=False):
        rho = f"{_float(r.spearman):.3g} ({_float(r.spearman_p):.3g})" if math.isfinite(_float(r.spearman)) else "n/a"
        lines.append(
            f"| {r.task} | {r.metric} | {r.n} | {r.doses} | {_ci(r.slope, r.slope_low, r.slope_high)} | {rho} |"
        )
    return "\n".join(lines) + "\n"


def _write_csv(path: Path, table: pd.DataFrame) -> None:
    from rlflat.io import write_atomic

    write_atomic(path, lambda p: table.to_csv(p, index=False))


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m rlflat.report.roads STUDY_DIR``: the lever and dose-response tables, and the connect commands."""
    from rlflat.io import write_text
    from rlflat.report.figures.dose import plot_dose_response
    from rlflat.report.figures.style import FigureSkipped, save_figure
    from rlflat.report.settings import DEFAULT_MEASURES, DEFAULT_METRICS
    from rlflat.sweep.config import load_study_config
    from rlflat.sweep.table import RUNS_FILE, STUDY_FILE

    parser = argparse.ArgumentParser(prog="python -m rlflat.report.roads", description=main.__doc__)
    parser.add_argument("study_dir", type=Path)
    parser.add_argument("--out", type=Path, help="where the CSVs go (default: STUDY_DIR/report)")
    args = parser.parse_args(argv)
    study_dir: Path = args.study_dir
    if not (study_dir / RUNS_FILE).is_file() or not (study_dir / STUDY_FILE).is_file():
        raise RlflatError(f"{study_dir}: no {RUNS_FILE} and {STUDY_FILE}; run the sweep (and --collect) first")
    runs = pd.read_parquet(study_dir / RUNS_FILE)
    arms = arm_table(load_study_config(study_dir / STUDY_FILE))
    metrics = [*DEFAULT_MEASURES, *DEFAULT_METRICS]
    out = args.out or study_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    tables = {
        "roads_levers.csv": lever_table(runs, arms, metrics),
        "roads_dose_response.csv": dose_response(runs, arms, metrics),
        "roads_connect.csv": connect_table(study_dir),
    }
    for name, table in tables.items():
        _write_csv(out / name, table)
        print(out / name)
    write_text(out / "roads.md", summary_markdown(tables["roads_levers.csv"], tables["roads_dose_response.csv"]))
    print(out / "roads.md")
    try:
        fig, _ = plot_dose_response(dose_points(runs, arms), tables["roads_dose_response.csv"], metrics)
        print(save_figure(fig, out / "roads_dose_response.png"))
    except FigureSkipped as exc:
        print(f"note: no dose-response figure ({exc})", file=sys.stderr)
    names = dict(zip(runs["run_id"], runs["path"], strict=False))
    for a, b in connect_pairs(arms[arms["run_id"].isin(set(names))], names):
        print(f"python -m rlflat.probe {study_dir / a} --connect {study_dir / b}")
    return 0


if __name__ == "__main__":
    from rlflat.cli import run_cli

    sys.exit(run_cli(main))
