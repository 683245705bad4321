"""``sweep --set key=value``: every run changed, the change recorded in ``study.yaml``, bad keys one line."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from rlflat.cli import run_cli
from rlflat.errors import RlflatError
from rlflat.io import staging_dir, write_json
from rlflat.sweep import pipeline
from rlflat.sweep.__main__ import main
from rlflat.sweep.config import expand_runs, load_study_config, parse_study_config
from rlflat.sweep.overrides import with_overrides
from rlflat.sweep.pipeline import RunJob

SMOKE = Path(__file__).resolve().parents[1] / "configs" / "smoke.yaml"


def _runs(texts: list[str]) -> list[dict]:
    return [spec.config for spec in expand_runs(with_overrides(load_study_config(SMOKE), texts))]


def test_a_hyperparameter_reaches_every_run_that_takes_it() -> None:
    base = _runs([])
    changed = _runs(["n_epochs=2", "rho=0.1"])
    assert len(changed) == len(base) == 4
    assert all(run["hyperparameters"]["n_epochs"] == 2 for run in changed)
    assert {run["hyperparameters"].get("rho") for run in changed if run["algo"] == "ppo_sam"} == {0.1}
    assert all("rho" not in run["hyperparameters"] for run in changed if run["algo"] == "ppo")
    for before, after in zip(base, changed, strict=True):  # nothing else moved
        rest = {k: v for k, v in after["hyperparameters"].items() if k not in ("n_epochs", "rho")}
        assert rest == {k: v for k, v in before["hyperparameters"].items() if k not in ("n_epochs", "rho")}


def test_study_keys_and_per_algorithm_overrides() -> None:
    runs = _runs(["steps=500", "seeds=1"])
    assert len(runs) == 2 and {r["hyperparameters"]["total_timesteps"] for r in runs} == {500}
    text = yaml.safe_dump({"name": "s", "tasks": ["CartPole"], "algos": ["ppo", "ppo_sam"],
                           "overrides": {"ppo_sam": {"rho": 0.02}}, "grid": [{}, {"n_epochs": [3]}]})  # fmt: skip
    study = with_overrides(parse_study_config(text), ["rho=0.3"])
    assert {s.config["hyperparameters"].get("rho") for s in expand_runs(study)} == {None, 0.3}
    assert study.config.grid == [{"rho": [0.3]}, {"n_epochs": [3], "rho": [0.3]}]


def test_the_overrides_are_recorded_in_the_text_that_becomes_study_yaml(tmp_path: Path, monkeypatch) -> None:
    def fake_train(run_dir: Path, job: RunJob) -> None:
        with staging_dir(run_dir) as staging:
            write_json(staging / "config.json", {**job.config, "run_id": job.run_id})
            write_json(staging / "metrics.json", {"status": "ok", "train": {"return_mean": 1.0}})

    monkeypatch.setitem(pipeline.STAGE_RUNNERS, "train", fake_train)
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"name": "c", "tasks": ["CartPole"], "algos": ["ppo"], "probe": False,
                                      "evaluate": False, "steps": 256}))  # fmt: skip
    out = tmp_path / "out"
    argv = [str(config), "--out", str(out), "--backend", "serial", "--no-progress", "--set", "n_epochs=3"]
    assert main(argv) == 0
    recorded = (out / "study.yaml").read_text()
    assert recorded.startswith(f"# {config} with --set n_epochs=3 (command-line overrides")
    assert parse_study_config(recorded).config.grid == {"n_epochs": [3]}
    assert main(argv) == 0  # resuming with the same overrides: nothing to do, nothing rewritten
    assert (out / "study.yaml").read_text() == recorded


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("probe=false", "sweep --set probe=...: probe is a section of the study, not a setting"),
        ("n_epochz=2", "n_epochz"),
        ("n_epochs", "--set expects key=value, got 'n_epochs'"),
    ],
)
def test_bad_overrides_are_one_line(text: str, message: str, tmp_path: Path, capsys) -> None:
    assert run_cli(main, [str(SMOKE), "--set", text, "--out", str(tmp_path / "o"), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err
    assert not (tmp_path / "o").exists()
    with pytest.raises(RlflatError):
        expand_runs(with_overrides(load_study_config(SMOKE), [text]))
