"""Scores comparable across runs: task-level normalisation constants, inert/saturated settings, collapse brackets."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from rlflat.errors import RlflatError
from rlflat.evaluate import SuiteSpec, build_settings, collapse_point, robustness_block, sweep_factors
from rlflat.evaluate.inert import dynamics_fingerprints, dynamics_groups
from rlflat.evaluate.metrics import normalization
from rlflat.tasks import list_tasks, load_spec_file, load_task
from rlflat.tasks.reference_returns import main as reference_main
from rlflat.tasks.reference_returns import random_policy_returns

REPO = Path(__file__).resolve().parents[1]


def test_every_shipped_spec_records_reference_returns() -> None:
    for task in list_tasks():
        ref = task.reference_returns
        assert ref is not None, task.alias
        assert ref.ref > ref.low and ref.low_n >= 200 and ref.low_se >= 0
        assert f"reference_returns {task.alias} --episodes {ref.low_n}" in ref.low_source
        assert ref.ref_source


def test_recorded_cartpole_floor_is_what_the_shipped_command_measures(capsys: pytest.CaptureFixture[str]) -> None:
    ref = load_task("CartPole").reference_returns
    assert ref is not None
    returns = random_policy_returns(load_task("CartPole"), ref.low_n, seed=0)
    assert returns.mean() == pytest.approx(ref.low, abs=5e-4)  # recorded to 6 significant digits
    assert returns.std(ddof=1) / math.sqrt(returns.size) == pytest.approx(ref.low_se, rel=2e-3)
    assert reference_main(["CartPole", "--episodes", "200"]) == 0
    assert "low_n: 200" in capsys.readouterr().out
    assert reference_main(["CartPole", "--episodes", "1"]) == 2  # bad input: one line, exit 2


def test_task_normalisation_is_the_same_for_every_run_and_never_capped() -> None:
    task = load_task("CartPole")
    ref = task.reference_returns
    assert ref is not None
    for nominal in (433.0, 500.0):  # an unsolved and a solved run score the same return the same
        scale = normalization(task, nominal, "task")
        assert scale.apply(ref.low) == 0.0 and scale.apply(ref.ref) == 1.0
        assert scale.apply(433.0) == pytest.approx((433.0 - ref.low) / (ref.ref - ref.low))
    assert normalization(task, 433.0, "task").apply(600.0) > 1.0  # above R_ref stays above 1
    per_run = normalization(task, 433.0, "nominal")
    assert per_run.apply(433.0) == 1.0 and per_run.apply(500.0) > 1.0  # the per-run option rewards unsolved runs
    with pytest.raises(RlflatError, match="normalization must be one of task, nominal"):
        normalization(task, 1.0, "max")


def test_a_spec_without_constants_needs_the_nominal_option(tmp_path: Path) -> None:
    path = tmp_path / "x.yaml"
    path.write_text("id: CartPole-v1\nalias: X\nsolved_threshold: 1\nparameters: {}\n")
    task = load_spec_file(path)
    with pytest.raises(RlflatError, match="no reference_returns.*normalization 'nominal'"):
        normalization(task, 10.0)
    path.write_text(
        "id: CartPole-v1\nalias: X\nsolved_threshold: 1\nparameters: {}\n"
        "reference_returns: {low: 5, low_se: 0, low_n: 2, low_source: s, ref: 5, ref_source: r}\n"
    )
    with pytest.raises(RlflatError, match=r"ref \(5.0\) must exceed low"):
        load_spec_file(path)


def _pendulum_with_strong_motors(tmp_path: Path) -> Path:
    """Pendulum whose torque limit may rise above the [-2, 2] action bound, where it clips nothing (inert)."""
    text = (REPO / "envs" / "Pendulum.yaml").read_text()
    text = text.replace(
        "max_torque: {nominal: 2.0, range: [0.25, 1.0]", "max_torque: {nominal: 2.0, range: [0.25, 4.0]"
    )
    path = tmp_path / "Pendulum.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("backend", ["batched", "gym"])
def test_fingerprints_find_inert_settings_in_batched_and_gym_simulators(tmp_path: Path, backend: str) -> None:
    task = load_spec_file(_pendulum_with_strong_motors(tmp_path))
    settings = [{}, {"max_torque": 1.0}, {"max_torque": 4.0}, {"max_torque": 8.0}, {"g": 10.0 * 1.01}]
    groups = dynamics_groups(dynamics_fingerprints(task, settings, steps=50, backend=backend))
    assert groups == [0, 1, 0, 0, 2]  # stronger motors than the action bound change nothing; a 1% g does


def test_fingerprints_separate_distinct_dynamics_and_match_equal_ones() -> None:
    """Fingerprints always step Gymnasium's own env past termination (issue 25), so the rollout backend cannot
    change them; what they must do is tell distinct dynamics apart and give equal dynamics one fingerprint (the
    nominal setting spelt out equals the empty one)."""
    task = load_task("CartPole")
    settings = [{}, {"length": 0.25}, {"masscart": 2.0}, {"length": task.parameters["length"].nominal}]
    prints = dynamics_fingerprints(task, settings, steps=30, backend="batched")
    assert prints == dynamics_fingerprints(task, settings, steps=30, backend="gym")
    assert prints[0] == prints[3] and len(set(prints)) == 3


def test_hopper_foot_friction_below_half_is_one_saturated_setting() -> None:
    pytest.importorskip("mujoco")
    task = load_task("Hopper")
    nominal = task.parameters["foot_friction"].nominal
    factors = [0.4, 0.45, 0.5, 0.75, 1.0]
    settings = [{}, *({"foot_friction": nominal * f} for f in factors)]
    groups = dynamics_groups(dynamics_fingerprints(task, settings, steps=40, sequences=2))
    assert groups[1] == groups[2] == groups[3]  # max(2.0 x f, floor 1.0) = 1.0 for every f <= 0.5
    assert len({groups[3], groups[4], groups[0]}) == 3 and groups[5] == 0


def _table(factors: list[float], normalized: list[float], groups: list[int]) -> pd.DataFrame:
    table = pd.DataFrame(
        {
            "family": ["nominal", *["p"] * len(factors)],
            "factor": [1.0, *factors],
            "p": [1.0, *factors],
            "return_mean": [1.0, *normalized],
            "normalized_return": [1.0, *normalized],
            "collapsed": [False, *(v < 0.5 for v in normalized)],
            "dynamics_group": [0, *groups],
        }
    )
    physics = [(), *(((("p", f),) if f != 1.0 else ()) for f in factors)]
    table["inert"] = [p != () and g == 0 for p, g in zip(physics, table["dynamics_group"], strict=True)]
    table["saturated"] = (
        table["dynamics_group"].duplicated(keep=False) & ~table["inert"] & (table["dynamics_group"] > 0)
    )
    table.attrs["quantity_columns"] = ["p"]
    return table


def test_metrics_treat_inert_as_nominal_and_a_saturated_run_as_one_setting() -> None:
    task = load_task("CartPole")
    # factors 0.25 and 0.5 are the same dynamics (saturated), 2 and 4 equal nominal (inert)
    table = _table([0.25, 0.5, 1.0, 2.0, 4.0], [0.9, 0.9, 1.0, 1.0, 1.0], [1, 1, 0, 0, 0])
    block = robustness_block(table, task)
    curve = block["parameters"]["p"]
    assert curve["factors"] == [0.5, 1.0] and curve["inert_factors"] == [2.0, 4.0]
    assert curve["saturated_factors"] == [0.25]
    assert curve["max_log_factor"] == pytest.approx(math.log(2.0))  # the bound is where the perturbation acts
    assert block["n_settings"] == 1 and block["inert_settings"] == 2 and block["saturated_settings"] == 2
    everything_inert = _table([0.5, 1.0, 2.0], [1.0, 1.0, 1.0], [0, 0, 0])
    inert_block = robustness_block(everything_inert, task)
    assert inert_block["parameters"]["p"]["inert"] and inert_block["collapse_log_factor_min"] is None
    assert inert_block["auc_mean"] is None and inert_block["n_settings"] == 0


def test_collapse_points_carry_their_bracket() -> None:
    collapse = collapse_point([0.25, 0.5, 1.0, 2.0, 4.0], [0.0, 0.8, 1.0, 0.9, 0.2], 0.5)
    assert collapse.high_bracket == pytest.approx((2.0, 4.0)) and collapse.low_bracket == pytest.approx((0.5, 0.25))
    assert 2.0 < collapse.high < 4.0 and 0.25 < collapse.low < 0.5
    assert collapse.bracket == collapse.low_bracket  # the nearer side in |log-factor| (0.39 vs 2.97)
    at_reference = collapse_point([0.5, 1.0], [0.1, 0.2], 0.5)
    assert at_reference.low == 1.0 and at_reference.low_bracket == (1.0, 1.0)
    assert collapse_point([1.0, 2.0], [1.0, 0.9]).bracket is None


def test_unsolved_runs_are_flagged_from_the_nominal_return() -> None:
    task = load_task("CartPole")
    table = _table([0.5, 2.0], [0.9, 0.9], [1, 2])
    for nominal, unsolved in ((474.9, True), (475.0, False)):
        table.loc[0, "return_mean"] = nominal
        assert robustness_block(table, task)["unsolved"] is unsolved
    assert np.isnan(normalization(task, 1.0, "nominal").apply(np.array([1.0]))).sum() == 0


def test_default_grids_are_fine_and_always_hold_the_declared_severities() -> None:
    task = load_task("CartPole")
    settings = build_settings(task, SuiteSpec(parameters=("length", "masspole"), grids=(("length", "masspole"),)))
    length = [s.factor for s in settings if s.family == "length"]
    assert len(length) >= 21 and 0.5 in length and 2.0 in length and 1.0 in length
    assert length[0] == 0.25 and length[-1] == 4.0
    masspole = [s.factor for s in settings if s.family == "masspole"]
    assert len(masspole) >= 21 and {0.5, 2.0} <= set(masspole)  # inserted: not points of the 10^(k/10) grid
    grid = [s for s in settings if s.family == "length:masspole"]
    axes = (
        {f for s in grid for n, f in s.factors if n == "length"},
        {f for s in grid for n, f in s.factors if n != "length"},
    )
    assert all(len(axis) >= 11 for axis in axes) and len(grid) == len(axes[0]) * len(axes[1])
    # snapped onto the declared factors; 8 is outside the range: not added
    assert sweep_factors(0.25, 4.0, 5, include=(0.5, 2.0, 8.0)) == [0.25, 0.5, 1.0, 2.0, 4.0]
    with pytest.raises(RlflatError, match="severities are factors"):
        build_settings(task, SuiteSpec(severities=(0.0,)))


def test_severity_metrics_read_the_declared_factors_and_the_box() -> None:
    task = load_task("CartPole")
    table = _table([0.25, 0.5, 1.0, 2.0, 4.0], [0.1, 0.4, 1.0, 0.8, 0.2], [1, 2, 0, 3, 4])
    table.attrs["severities"] = [0.5, 2.0]
    block = robustness_block(table, task)
    curve = block["parameters"]["p"]
    assert curve["severity_return_x0p5"] == 0.4 and curve["severity_return_x2"] == 0.8
    assert block["severity_return_x0p5"] == 0.4 and block["severity_return_x2"] == 0.8
    table.attrs["severities"] = [0.7071067811865476]  # between grid points: interpolated in log-factor
    assert robustness_block(table, task)["parameters"]["p"]["severity_return_x0p707107"] == pytest.approx(0.7)


def test_collapsed_fraction_box_counts_settings_inside_the_severity_box() -> None:
    task = load_task("CartPole")
    table = _table([0.25, 0.5, 1.0, 2.0, 4.0], [0.1, 0.4, 1.0, 0.8, 0.2], [1, 2, 0, 3, 4])
    table = table.rename(columns={"p": "length"}).assign(family=lambda t: t["family"].replace("p", "length"))
    table["length"] = table["length"] * 0.5  # absolute values (nominal 0.5)
    table.attrs.update(severities=[0.5, 2.0], quantity_columns=["length"])
    block = robustness_block(table, task)
    assert block["n_settings_box"] == 2 and block["collapsed_fraction_box"] == 0.5  # x0.5 collapsed, x2 not
    assert block["n_settings"] == 4 and block["collapsed_fraction"] == 0.75


def test_rescore_renormalises_saved_returns_without_rollouts(tmp_path: Path) -> None:
    import shutil

    from rlflat.evaluate.rescore import main as rescore_main
    from rlflat.io import read_json

    source = next((REPO / "results" / "cartpole_sam").glob("pg_sam-CartPole-s3-*"))
    run = tmp_path / source.name
    shutil.copytree(source, run, ignore=shutil.ignore_patterns("*.npz", "model.zip"))
    assert rescore_main([str(tmp_path), "--normalization", "nominal"]) == 0
    table = pd.read_parquet(run / "robustness.parquet")
    nominal = float(table.loc[table["family"] == "nominal", "return_mean"].iloc[0])
    assert table.loc[table["family"] == "nominal", "normalized_return"].iloc[0] == pytest.approx(1.0)
    assert rescore_main([str(run)]) == 0
    table = pd.read_parquet(run / "robustness.parquet")
    ref = load_task("CartPole").reference_returns
    assert ref is not None
    expected = (table["return_mean"] - ref.low) / (ref.ref - ref.low)
    assert np.allclose(table["normalized_return"], expected)
    block = read_json(run / "metrics.json")["robustness"]
    assert block["unsolved"] is (nominal < 475.0) and block["normalization"]["mode"] == "task"
    assert rescore_main([str(tmp_path / "missing")]) == 2


def test_collapse_values_in_one_bracket_are_ties() -> None:
    from rlflat.report.brackets import tie_within_brackets

    column = "robustness.collapse_log_factor_min"
    runs = pd.DataFrame(
        {
            "task": ["T"] * 4,
            column: [1.030, 1.034, 0.5, None],
            f"{column}_bracket_low": [0.9, 0.9, 0.4, None],
            f"{column}_bracket_high": [1.2, 1.2, 0.6, None],
        }
    )
    tied, shared = tie_within_brackets(runs)
    assert tied[column].iloc[0] == tied[column].iloc[1] == pytest.approx(1.05)  # same bracket: a tie
    assert tied[column].iloc[2] == pytest.approx(0.5) and math.isnan(tied[column].iloc[3])  # censored left as is
    assert shared == {column: 2}
    assert runs[column].iloc[0] == 1.030  # the input is not modified
