"""TensorBoard, checkpoints and evaluation during training: watched, never changed.

A run trained with every monitoring option on learns bit-identically to one trained without (the options are
outside its id); the TensorBoard events hold SB3's scalars and, when tracked, the sharpness path; each
evaluation row equals an independent evaluation of the checkpoint saved at the same step.
"""

from __future__ import annotations

import csv
import io
from contextlib import redirect_stdout
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

from rlflat.cli import run_cli
from rlflat.io import read_json
from rlflat.policy import load_policy
from rlflat.tasks import load_task
from rlflat.train import evaluate_nominal, main, resolve_run_config, run_id, train_run
from rlflat.train_monitoring import EVAL_FILE, Monitoring

torch.set_num_threads(1)
STEPS = 1024  # 4 PPO updates of CartPole's 8 envs x 32 steps
TINY = {"n_epochs": 2}


def _train(out: Path, monitoring: Monitoring | None = None, **overrides: Any) -> Path:
    config = resolve_run_config("ppo", "CartPole", seed=0, steps=STEPS, overrides={**TINY, **overrides})
    extra = {"monitoring": monitoring.to_json()} if monitoring is not None else None
    return train_run(config, out=out, progress=False, extra=extra)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    root = tmp_path_factory.mktemp("monitoring")
    plain = _train(root / "plain", track_sharpness=2)
    watched_monitoring = Monitoring(
        tensorboard=str(root / "tb") if _has_tensorboard() else None,
        checkpoint_every=512,
        eval_every=512,
        eval_episodes=3,
    )
    watched = _train(root / "watched", watched_monitoring, track_sharpness=2)
    return plain, watched, root


def _has_tensorboard() -> bool:
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        return False
    return True


def test_monitoring_changes_nothing_the_run_learns(runs: tuple[Path, Path, Path]) -> None:
    plain, watched, _ = runs
    a, b = read_json(plain / "config.json"), read_json(watched / "config.json")
    assert a["run_id"] == b["run_id"] and "monitoring" not in a and b["monitoring"]["eval_every"] == 512
    pa = load_policy(plain).params
    pb = load_policy(watched).params
    assert pa.keys() == pb.keys() and all(torch.equal(pa[k], pb[k]) for k in pa)
    timing = ["wall_seconds", "tracking_seconds"]
    curves = [pd.read_csv(run / "train.csv").drop(columns=timing) for run in (plain, watched)]
    pd.testing.assert_frame_equal(*curves)  # episodes and sharpness measurements, value for value
    assert (
        read_json(plain / "metrics.json")["train"]["return_mean"]
        == read_json(watched / "metrics.json")["train"]["return_mean"]
    )


def test_each_evaluation_row_is_the_checkpoint_of_its_step_evaluated_independently(
    runs: tuple[Path, Path, Path],
) -> None:
    _, watched, _ = runs
    with open(watched / EVAL_FILE) as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["timesteps"]) for r in rows] == [512, 1024]
    spec = load_task("CartPole")
    for row in rows:
        checkpoint = watched / "checkpoints" / f"model_{row['timesteps']}_steps.zip"
        returns = evaluate_nominal(load_policy(checkpoint, spec), spec, 3)
        assert float(row["return_mean"]) == pytest.approx(float(np.mean(returns)), abs=1e-9)
        assert int(row["episodes"]) == 3


def test_tensorboard_holds_sb3_scalars_and_the_sharpness_path(runs: tuple[Path, Path, Path]) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _, watched, root = runs
    (folder,) = (root / "tb").iterdir()
    assert folder.name == f"ppo-CartPole-s0-{read_json(watched / 'config.json')['run_id']}_1"
    events = EventAccumulator(str(folder))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"rollout/ep_rew_mean", "train/approx_kl", "train/loss", "eval/mean_return"} <= tags
    curve = pd.read_csv(watched / "train.csv")
    tracked = curve[curve["sharpness"].notna()]
    logged = events.Scalars("sharpness/sharpness")
    assert [e.step for e in logged] == tracked["timesteps"].tolist()
    assert [e.value for e in logged] == pytest.approx(tracked["sharpness"].tolist(), rel=1e-6)  # float32 events


def test_set_tensorboard_log_is_monitoring_not_a_hyperparameter(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    out = io.StringIO()
    argv = ["ppo", "CartPole", "--steps", "256", "--set", "n_epochs=1", "--no-progress", "--out", str(tmp_path / "r")]
    with redirect_stdout(out):
        assert main([*argv, "--set", f"tensorboard_log={tmp_path / 'tb'}", "--eval-every", "256"]) == 0
    config = read_json(tmp_path / "r" / "config.json")
    assert "tensorboard_log" not in config["hyperparameters"]
    assert config["run_id"] == run_id(resolve_run_config("ppo", "CartPole", steps=256, overrides={"n_epochs": 1}))
    lines = out.getvalue().splitlines()
    metrics = read_json(tmp_path / "r" / "metrics.json")["train"]
    verdict = "unsolved" if not metrics["solved"] else ("borderline", "solved")
    assert lines[0].startswith(f"return {metrics['return_mean']:.1f} +- ") and "(threshold 475;" in lines[0]
    assert lines[0].split(": ")[1].split(" (")[0] in (verdict if isinstance(verdict, tuple) else (verdict,))
    assert lines[1].startswith("evaluated 1 times during training: best ")
    assert lines[-1] == str(tmp_path / "r") and any(line.startswith("tensorboard: ") for line in lines)


@pytest.mark.parametrize("flag", ["--checkpoint-every", "--eval-every", "--eval-episodes"])
def test_bad_monitoring_values_are_one_line(flag: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli(main, ["ppo", "CartPole", flag, "0", "--out", str(tmp_path / "r")]) == 2
    assert capsys.readouterr().err == f"error: {flag} must be an integer >= 1, got 0\n"
    assert not (tmp_path / "r").exists()
