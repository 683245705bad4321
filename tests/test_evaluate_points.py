"""``evaluate --points`` with grids: used (when the grids are the only sweep) or refused, never ignored; collapse
brackets print low to high."""

from __future__ import annotations

import io
from contextlib import redirect_stdout
from pathlib import Path

import pandas as pd
import pytest
import torch

from rlflat.cli import run_cli
from rlflat.evaluate.__main__ import _summary, main
from rlflat.io import read_json
from rlflat.train import resolve_run_config, train_run

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    config = resolve_run_config("ppo", "CartPole", steps=512, overrides={"n_epochs": 1})
    return train_run(config, out=tmp_path_factory.mktemp("points") / "run", progress=False)


def _table(run: Path, out: Path, *flags: str) -> pd.DataFrame:
    with redirect_stdout(io.StringIO()):
        assert (
            main([str(run), "--out", str(out), "--episodes", "1", "--nominal-episodes", "2", "--no-inert", *flags]) == 0
        )
    return pd.read_parquet(out / "robustness.parquet")


def test_points_sizes_a_grid_that_is_the_only_sweep(run: Path, tmp_path: Path) -> None:
    by_points = _table(run, tmp_path / "a", "--grid", "length:masscart", "--points", "3")
    by_grid_points = _table(run, tmp_path / "b", "--grid", "length:masscart", "--grid-points", "3")
    columns = ["family", "length", "masscart"]
    pd.testing.assert_frame_equal(by_points[columns], by_grid_points[columns])
    assert by_points["length"].nunique() < 11  # not the default 11 x 11 (plus the declared severities)


def test_points_with_one_d_sweeps_leaves_the_grid_to_grid_points(run: Path, tmp_path: Path) -> None:
    table = _table(run, tmp_path / "a", "--suite", "length", "--grid", "length:masscart", "--points", "3")
    sweep, grid = table[table["family"] == "length"], table[table["family"] == "length:masscart"]
    assert sweep["length"].nunique() < 11 <= grid["masscart"].nunique()  # 3 points (+ severities); grid at 11


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--random", "4", "--points", "5"], "--points 5: no 1-D sweep, noise family or grid to apply it to"),
        (["--grid", "length:masscart", "--points", "5", "--grid-points", "3"], "give one of them"),
    ],
)
def test_points_nothing_would_use_is_refused(
    run: Path, tmp_path: Path, flags: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_cli(main, [str(run), "--out", str(tmp_path / "o"), *flags]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and not (tmp_path / "o").exists()


def test_collapse_bracket_prints_low_to_high(run: Path, tmp_path: Path) -> None:
    _table(run, tmp_path / "a", "--suite", "length", "--points", "5")
    block = read_json(tmp_path / "a" / "metrics.json")["robustness"]
    curve = block["parameters"]["length"]
    curve.update(collapse_factor=0.14, collapse_bracket=[0.158, 0.126])  # a bracket below nominal, stored outward
    text = _summary(block, 5, tmp_path / "a")
    assert "collapse x0.14 in [x0.126, x0.158]" in text
