"""Sweeps with populations: grouping by shape, K from memory and workers, refusals, resume, failure of one member.

The end-to-end tests sweep a tiny CartPole study on the in-process ``serial`` backend (populations of 2-3 tiny
learners), so they take seconds; the process pool and Ray carry the same unit of work (``PopulationJob``).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml

from rlflat.cli import run_cli
from rlflat.errors import RlflatError
from rlflat.population import grouping
from rlflat.population.grouping import AUTO_MAX, learner_bytes, parse_population, plan_populations
from rlflat.sweep import run_sweep
from rlflat.sweep.__main__ import main
from rlflat.sweep.populations import PopulationJob, population_units
from rlflat.train import resolve_run_config

TINY_HP = {"n_envs": [2], "n_steps": [64], "batch_size": [64], "n_epochs": [2]}
STUDY: dict[str, Any] = {
    "name": "pop",
    "tasks": ["CartPole"],
    "algos": ["ppo"],
    "seeds": [0, 1, 2],
    "steps": 256,
    "grid": TINY_HP,
    "probe": {
        "batches": 2,
        "batch": 64,
        "batch_envs": 2,
        "measures": ["trace", "return_sharpness"],
        "trace_probes": 2,
        "return_directions": 2,
        "return_episodes": 2,
    },
    "evaluate": {"suite": {"parameters": ["length"], "points": 3}, "episodes": 2},
}


def _config(tmp_path: Path, **changes: Any) -> Path:
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump({**STUDY, **changes}, sort_keys=False))
    return path


def _run(algo: str, seed: int, **hp: Any) -> tuple[str, dict[str, Any]]:
    config = resolve_run_config(algo, "CartPole", seed=seed, steps=256, overrides={**TINY_HP_ONE, **hp})
    return f"{algo}-s{seed}-{sorted(hp.items())}", config


TINY_HP_ONE = {key: values[0] for key, values in TINY_HP.items()}


# -- grouping -------------------------------------------------------------------------------------------------


def test_runs_of_one_shape_are_grouped_and_other_shapes_never_are() -> None:
    runs = [
        _run("ppo", 0),
        _run("ppo_sam", 0),
        _run("ppo", 1, learning_rate=1e-3),  # a scalar: same shape
        _run("ppo", 2, n_steps=128),  # a shape: its own population
        _run("ppo", 3, ent_coef=0.01),
        _run("ppo_sam", 1, rho=0.1),
    ]
    plan = plan_populations(runs, "auto", slots=1, available=2**40)
    assert sorted(map(sorted, plan)) == [[0, 2, 4], [1, 5], [3]]
    assert plan_populations(runs, 1) == [[i] for i in range(len(runs))]
    with pytest.raises(RlflatError, match="cannot share a population"):
        plan_populations(runs, 2, available=2**40)
    same = [runs[0], runs[2], runs[4]]
    assert plan_populations(same, 2, available=2**40) == [[0, 1], [2]]


def test_auto_splits_a_shape_over_the_workers_and_within_memory() -> None:
    runs = [_run("ppo", seed) for seed in range(7)]
    assert [len(p) for p in plan_populations(runs, "auto", slots=2, available=2**40)] == [4, 3]
    assert [len(p) for p in plan_populations(runs, "auto", slots=1, available=2**40)] == [7]
    per = learner_bytes(runs[0][1])
    fits_three = int(3.5 * per / grouping.MEMORY_SHARE)  # memory for 3 learners at the planned share
    assert [len(p) for p in plan_populations(runs, "auto", slots=1, available=fits_three)] == [3, 2, 2]
    assert plan_populations(runs, "auto", slots=1, available=int(per)) == [[i] for i in range(7)]
    many = [_run("ppo", seed) for seed in range(AUTO_MAX + 1)]
    assert max(len(p) for p in plan_populations(many, "auto", slots=1, available=2**40)) <= AUTO_MAX


def test_learner_estimate_grows_with_the_probe_and_evaluation() -> None:
    _, config = _run("ppo", 0)
    bare = learner_bytes(config)
    probed = learner_bytes(config, {"batch": 4000}, None)
    evaluated = learner_bytes(config, None, {"episodes": 200})
    assert 0 < bare < probed and bare < evaluated
    assert learner_bytes(resolve_run_config("ppo", "CartPole", steps=256, overrides={"n_steps": 4096})) > bare


@pytest.mark.parametrize("value", [0, -3, "0", "abc", "2.5", True, None, 1.5])
def test_bad_population_values_are_refused_in_one_line(value: Any) -> None:
    with pytest.raises(RlflatError, match=r"--population must be auto or an integer >= 1, got"):
        parse_population(value)


def test_good_population_values() -> None:
    assert parse_population("auto") == "auto" and parse_population(" AUTO ") == "auto"
    assert parse_population("4") == 4 and parse_population(1) == 1


def test_explicit_k_with_runs_of_several_shapes_is_one_line_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _config(tmp_path, algos=["ppo", "ppo_sam"])
    out = tmp_path / "out"
    assert run_cli(main, [str(config), "--out", str(out), "--population", "4", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--population 4" in err and "algorithm 'ppo' != 'ppo_sam'" in err
    assert not out.exists()  # refused before anything was written
    assert run_cli(main, [str(config), "--out", str(out), "--population", "x", "--dry-run"]) == 2


def test_a_k_that_does_not_fit_in_memory_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    config = _config(tmp_path)
    _, one = _run("ppo", 0)
    need = learner_bytes(one)
    monkeypatch.setattr(grouping, "available_memory", lambda: int(2.5 * need))  # 3 learners do not fit
    out = tmp_path / "out"
    args = [str(config), "--out", str(out), "--population", "3", "--backend", "serial", "--no-progress"]
    assert run_cli(main, args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--population 3" in err and "use a smaller --population" in err
    assert not out.exists()


# -- sweeps ---------------------------------------------------------------------------------------------------


def _table(study: Path) -> pd.DataFrame:
    return pd.read_parquet(study / "runs.parquet").sort_values("run_id").reset_index(drop=True)


def test_population_sweep_publishes_the_runs_a_per_run_sweep_publishes(tmp_path: Path) -> None:
    config = _config(tmp_path)
    auto = run_sweep(config, tmp_path / "auto", backend="serial", progress=False)
    single = run_sweep(config, tmp_path / "single", backend="serial", progress=False, population=1)
    assert not auto.failed and not single.failed
    a, b = _table(tmp_path / "auto"), _table(tmp_path / "single")
    assert list(a["run_id"]) == list(b["run_id"]) and list(a["path"]) == list(b["path"])
    assert set(a["status"]) == {"ok"} and a["probe.trace"].notna().all() and a["robustness.auc_mean"].notna().all()
    logs = sorted(p.name for p in (tmp_path / "auto" / "logs").iterdir())
    assert sum(name.startswith("population-") for name in logs) == 1  # the 3 runs were one population
    assert not any(p.name.startswith("population-") for p in (tmp_path / "single" / "logs").iterdir())
    for path in a["path"]:
        written = json.loads((tmp_path / "auto" / path / "config.json").read_text())
        alone = json.loads((tmp_path / "single" / path / "config.json").read_text())
        assert written["run_id"] == alone["run_id"] and written["hyperparameters"] == alone["hyperparameters"]
        assert written.get("engine") == "population" and "engine" not in alone


def test_a_killed_population_resumes_with_only_its_unfinished_members(tmp_path: Path) -> None:
    config = _config(tmp_path)
    study = tmp_path / "out"
    assert not run_sweep(config, study, backend="serial", progress=False).failed
    runs = sorted(p for p in study.iterdir() if p.name.startswith("ppo-"))
    shutil.rmtree(runs[0])  # killed before this learner was published
    metrics = json.loads((runs[1] / "metrics.json").read_text())
    del metrics["robustness"]  # killed between its probe and its evaluation
    (runs[1] / "metrics.json").write_text(json.dumps(metrics))
    before = (runs[2] / "model.zip").read_bytes()
    result = run_sweep(config, study, backend="serial", progress=False)
    ran = {o.name: o.ran for o in result.outcomes}
    assert ran == {runs[0].name: ("train", "probe", "evaluate"), runs[1].name: ("evaluate",)}
    assert all(o.status == "ok" for o in result.outcomes)
    assert (runs[2] / "model.zip").read_bytes() == before  # the finished learner was left alone
    table = _table(study)
    assert len(table) == 3 and set(table["status"]) == {"ok"} and table["robustness.auc_mean"].notna().all()


def test_a_diverging_learner_fails_alone(tmp_path: Path) -> None:
    config = _config(tmp_path, grid={**TINY_HP, "ent_coef": [0.0, 1.0e39]}, seeds=[0, 1])
    result = run_sweep(config, tmp_path / "out", backend="serial", progress=False)
    table = _table(tmp_path / "out")
    failed = table[table["status"] == "failed"]
    assert len(table) == 4 and len(failed) == 2  # the ent_coef 1e39 learners (loss -inf at the first minibatch)
    assert set(failed["failed_stage"]) == {"train"} and failed["error"].str.contains("diverged").all()
    ok = table[table["status"] == "ok"]
    assert len(ok) == 2 and ok["probe.trace"].notna().all() and ok["robustness.auc_mean"].notna().all()
    assert len(result.failed) == 2
    for path in failed["path"]:
        failure = json.loads((tmp_path / "out" / path / "failure.json").read_text())
        assert failure["stage"] == "train" and failure["log"].startswith("logs/population-")


def test_population_units_keep_singletons_as_plain_runs(tmp_path: Path) -> None:
    from rlflat.sweep.config import expand_runs, load_study_config
    from rlflat.sweep.pipeline import RunJob

    loaded = load_study_config(_config(tmp_path, algos=["ppo", "ppo_sam"], seeds=[0, 1, 2]))
    jobs = [RunJob(spec.config, spec.run_id, spec.name) for spec in expand_runs(loaded)]
    units = population_units(jobs, "auto", slots=2, available=2**40)
    sizes = sorted(len(u.jobs) if isinstance(u, PopulationJob) else 1 for u in units)
    assert sizes == [1, 1, 2, 2]  # two shapes of 3 runs on 2 workers: 2 + 1 each
    assert all(isinstance(u, RunJob) for u in units if not isinstance(u, PopulationJob))


@pytest.mark.slow
def test_ray_ships_populations_and_matches_the_serial_sweep(tmp_path: Path) -> None:
    """A population is one Ray task: its members come back packed and are published like shipped runs."""
    ray = pytest.importorskip("ray")
    config = _config(tmp_path)
    assert not run_sweep(config, tmp_path / "serial", backend="serial", progress=False).failed
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        result = run_sweep(config, tmp_path / "ray", backend="ray", progress=False)
    finally:
        ray.shutdown()
    assert not result.failed, [(o.name, o.error) for o in result.failed]
    local, remote = _table(tmp_path / "serial"), _table(tmp_path / "ray")
    assert list(remote["run_id"]) == list(local["run_id"]) and set(remote["status"]) == {"ok"}
    assert remote["robustness.auc_mean"].notna().all()
    assert any(p.name.startswith("population-") for p in (tmp_path / "ray" / "logs").iterdir())


def test_dry_run_shows_the_populations(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = _config(tmp_path, algos=["ppo", "ppo_sam"])
    args = [str(config), "--out", str(tmp_path / "out"), "--dry-run", "--workers", "2"]
    assert main(args) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "--population auto: 2 populations of 2, 2 runs, 2 runs alone"
    assert main([*args, "--population", "1"]) == 0
    assert "populations" not in capsys.readouterr().out
    assert not (tmp_path / "out").exists()
