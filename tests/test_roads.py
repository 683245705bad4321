"""rlflat.report.roads: the flatness-roads analysis on the real study config and synthetic runs with known effects."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from rlflat.report.roads import PLAIN, arm_table, connect_pairs, dose_response, hodges_lehmann, lever_table
from rlflat.sweep.config import load_study_config

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "flatness_roads.yaml"


@pytest.fixture(scope="module")
def arms() -> pd.DataFrame:
    return arm_table(load_study_config(CONFIG))


def test_hodges_lehmann_by_hand_and_as_the_inverted_mann_whitney_test() -> None:
    a, b = np.array([1.0, 4.0, 6.0]), np.array([0.0, 2.0])
    # differences: 1, -1, 4, 2, 6, 4 -> sorted -1 1 2 4 4 6, median 3
    assert hodges_lehmann(a, b)[0] == 3.0
    rng = np.random.default_rng(0)
    x, y = rng.normal(1.0, 1.0, 12), rng.normal(0.0, 1.0, 10)
    estimate, low, high = hodges_lehmann(x, y, 0.95)
    assert low < estimate < high
    diffs = np.sort(np.subtract.outer(x, y).ravel())

    def p(shift: float) -> float:
        return float(sps.mannwhitneyu(x - shift, y, method="asymptotic", use_continuity=False).pvalue)

    for bound, side in ((low, -1), (high, 1)):
        i = int(np.searchsorted(diffs, bound))
        inside = 0.5 * (diffs[i] + diffs[i - side]) if side < 0 else 0.5 * (diffs[i] + diffs[i - 1])
        outside = 0.5 * (diffs[i] + diffs[i - 1]) if side < 0 else 0.5 * (diffs[i] + diffs[i + 1])
        assert p(inside) >= 0.05 > p(outside)
    assert math.isnan(hodges_lehmann([1.0], [2.0, 3.0])[1])


def test_arms_of_the_study(arms: pd.DataFrame) -> None:
    counts = arms.groupby(["task", "lever"]).size()
    assert counts[("CartPole", PLAIN)] == 8 and counts[("CartPole", "batch_size")] == 7 * 8
    assert counts[("Pendulum", "dropout")] == 16 and counts[("Pendulum", "weight_decay")] == 24
    cart = arms[arms["task"] == "CartPole"]
    plain = set(cart.loc[cart["lever"] == PLAIN, "run_id"])
    assert plain == set(cart.loc[(cart["lever"] == "batch_size") & (cart["level"] == 256), "run_id"])


def _synthetic(arms: pd.DataFrame, seed: int = 0) -> pd.DataFrame:
    """One row per run: weight decay 1e-2 shifts ``m`` by +1; ``sharp`` grows 0.5 per doubling of the batch."""
    rng = np.random.default_rng(seed)
    runs = arms.drop_duplicates("run_id").copy()
    batch = {"CartPole": 256, "Pendulum": 64}
    runs["hp.batch_size"] = [
        int(level) if lever == "batch_size" else batch[task]
        for task, lever, level in zip(runs["task"], runs["lever"], runs["level"], strict=True)
    ]
    shift = ((runs["lever"] == "weight_decay") & (runs["level"] == 0.01)).to_numpy(dtype=float)
    runs["m"] = shift + rng.normal(0.0, 0.5, len(runs))
    runs["sharp"] = 0.5 * np.log2(runs["hp.batch_size"].to_numpy(dtype=float)) + rng.normal(0.0, 0.3, len(runs))
    runs["path"] = [f"dir-{r}" for r in runs["run_id"]]
    return runs


def test_lever_table_finds_the_planted_shift(arms: pd.DataFrame) -> None:
    table = lever_table(_synthetic(arms), arms, ["m"])
    row = table[(table["task"] == "Pendulum") & (table["lever"] == "weight_decay") & (table["level"] == 0.01)].iloc[0]
    assert row["n_arm"] == row["n_plain"] == 8
    assert row["welch_low"] < 1.0 < row["welch_high"] and row["welch_low"] > 0
    assert row["hl_low"] < row["hl_shift"] < row["hl_high"] and row["hl_low"] > 0
    assert (table["welch_p_holm"] >= table["welch_p"] - 1e-12).all()
    wd = table[(table["task"] == "Pendulum") & (table["lever"] == "weight_decay")]
    assert len(wd) == 3


def test_dose_response_recovers_the_slope(arms: pd.DataFrame) -> None:
    runs = _synthetic(arms)
    table = dose_response(runs, arms, ["sharp"])
    for task in ("CartPole", "Pendulum"):
        sharp = table[(table["task"] == task) & (table["metric"] == "sharp")].iloc[0]
        assert sharp["doses"] == 7 and sharp["slope_low"] < 0.5 < sharp["slope_high"] and sharp["slope_p"] < 1e-6
    # under no dose effect the 95% interval covers a zero slope about 95% of the time (binomial SE 1.5% at 200)
    rng = np.random.default_rng(1)
    covered = []
    for _ in range(100):
        runs["null"] = rng.normal(0.0, 1.0, len(runs))
        null = dose_response(runs, arms, ["null"])
        covered += [bool(lo < 0 < hi) for lo, hi in zip(null["slope_low"], null["slope_high"], strict=True)]
    assert 0.90 <= np.mean(covered) <= 0.99


def test_connect_pairs_within_and_across_arms(arms: pd.DataFrame) -> None:
    names = {r: f"dir-{r}" for r in arms["run_id"]}
    pairs = connect_pairs(arms[arms["task"] == "Pendulum"], names, levers=["dropout"])
    within = [p for p in pairs if p[0] != p[1]]
    assert len(pairs) == len(within) == 4 * 3 + 8 * 2  # 4 disjoint pairs in 3 arms, 8 seed-matched x 2 levels


def test_main_writes_the_tables_and_the_connect_commands(
    arms: pd.DataFrame, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from rlflat.cli import run_cli
    from rlflat.report.roads import main

    runs = _synthetic(arms).rename(columns={"m": "robustness.auc_mean", "sharp": "probe.kl_sigma0p1"})
    runs = runs.drop(columns=["lever", "level"])  # the runs table knows hyperparameters, not arms
    runs.to_parquet(tmp_path / "runs.parquet")
    (tmp_path / "study.yaml").write_text(CONFIG.read_text())
    assert main([str(tmp_path)]) == 0
    levers = pd.read_csv(tmp_path / "report" / "roads_levers.csv")
    assert set(levers["metric"]) == {"robustness.auc_mean", "probe.kl_sigma0p1"}
    dose = pd.read_csv(tmp_path / "report" / "roads_dose_response.csv")
    assert len(dose) == 4
    summary = (tmp_path / "report" / "roads.md").read_text()
    # one slope row and 15 lever levels (batch 256 is the plain arm itself: not compared with itself)
    assert summary.count("| CartPole | probe.kl_sigma0p1 |") == 1 + 15
    assert (tmp_path / "report" / "roads_dose_response.png").stat().st_size > 0
    assert capsys.readouterr().out.count("--connect") == len(
        connect_pairs(arms, dict(zip(runs["run_id"], runs["path"], strict=True)))
    )
    assert run_cli(main, [str(tmp_path / "nothing")]) == 2
    assert "run the sweep" in capsys.readouterr().err
