"""Published numbers beside ours: setting parsing, row matching, the interval across runs."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from rlflat.errors import RlflatError
from rlflat.report.published import published_table
from rlflat.report.settings import parse_report_settings, parse_setting


def _robust() -> pd.DataFrame:
    rows = []
    for algo, base in (("ppo", 100.0), ("ppo_sam", 200.0)):
        for seed in range(3):
            run = f"{algo}-{seed}"
            rows += [
                {"run_id": run, "algo": algo, "family": "nominal", "factor": 1.0, "action_noise": 0.0,
                 "return_mean": base + seed, "inert": False},
                {"run_id": run, "algo": algo, "family": "torso_mass", "factor": 1.5, "action_noise": 0.0,
                 "return_mean": base / 2 + 10 * seed, "inert": False},
                {"run_id": run, "algo": algo, "family": "foot_friction", "factor": 0.4, "action_noise": 0.0,
                 "return_mean": base, "inert": seed == 0},
                {"run_id": run, "algo": algo, "family": "action_noise", "factor": math.nan,
                 "action_noise": 0.2 + 1e-15, "return_mean": base - seed, "inert": False},
            ]  # fmt: skip
    return pd.DataFrame(rows)


def test_published_rows_match_the_suite_and_carry_a_t_interval() -> None:
    table = published_table(
        _robust(),
        [("torso_mass=1.5", {"ppo": 877.0}), ("action_noise=0.2", {"ppo_sam": 3263.0}), ("nominal", {"ppo": 1.0})],
    )
    mass = table.iloc[0]
    values = np.array([50.0, 60.0, 70.0])
    half = stats.t.ppf(0.975, 2) * values.std(ddof=1) / math.sqrt(3)
    assert mass["published"] == 877.0 and mass["runs"] == 3 and mass["ours_mean"] == pytest.approx(60.0)
    assert mass["ours_ci_low"] == pytest.approx(60.0 - half) and mass["ours_ci_high"] == pytest.approx(60.0 + half)
    assert table.iloc[1]["ours_mean"] == pytest.approx(199.0)  # the sigma matched despite rounding
    assert table.iloc[2]["ours_mean"] == pytest.approx(101.0)
    flagged = published_table(_robust(), [("foot_friction=0.4", {"ppo": 126.0}), ("torso_mass=0.7", {"ppo": 1.0})])
    assert flagged.iloc[0]["flags"] == "inert"
    assert flagged.iloc[1]["runs"] == 0 and math.isnan(flagged.iloc[1]["ours_mean"])  # absent: said, not guessed


def test_bad_published_settings_are_named() -> None:
    assert parse_setting("action_noise=0.25") == ("action_noise", 0.25)
    for bad in ("torso_mass", "=1.5", "torso_mass=heavy"):
        with pytest.raises(ValueError, match="must be nominal"):
            parse_setting(bad)
    with pytest.raises(RlflatError, match=r"published.rows.0.setting"):
        parse_report_settings({"published": {"source": "x", "rows": [{"setting": "mass", "values": {"ppo": 1}}]}})
