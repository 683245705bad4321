"""Sweeps: config validation and expansion, resumable execution, failure recording, the table, Ray = local.

Training is expensive on the shared CI cores, so one tiny 3-run study is swept once (module fixture) on the
local process pool; the resume, failure and collect tests work on copies of its directory, and the Ray test
sweeps it once more to compare the tables.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml

from rlflat.cli import run_cli
from rlflat.errors import RlflatError
from rlflat.io import read_json, staging_dir, umask, write_json
from rlflat.sweep import (
    collect,
    executors,
    expand_runs,
    load_study_config,
    parse_study_config,
    pipeline,
    plan_sweep,
    run_sweep,
    timing_columns,
)
from rlflat.sweep.__main__ import main
from rlflat.sweep.config import check_stage_options
from rlflat.sweep.pipeline import RunJob, RunOutcome

TINY_HP = {"n_envs": [2], "n_steps": [64], "batch_size": [64], "n_epochs": [2]}
TINY_STUDY: dict[str, Any] = {
    "name": "tiny",
    "tasks": ["CartPole"],
    "algos": ["ppo", "ppo_sam"],
    "seeds": [0],
    "steps": 256,
    "grid": {**TINY_HP, "rho": [0.01, 0.1]},
    "probe": {"batches": 2, "batch": 64, "batch_envs": 2, "measures": ["trace"], "trace_probes": 2},
    "evaluate": {"suite": {"parameters": ["length"], "points": 3}, "episodes": 2},
}


def _write(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _study(tmp_path: Path, **changes: Any) -> Path:
    return _write(tmp_path / "study.yaml", {**TINY_STUDY, **changes})


def _comparable(table: pd.DataFrame) -> pd.DataFrame:
    return table.drop(columns=timing_columns(table)).sort_values("run_id").reset_index(drop=True)


# -- config validation and expansion (no training) -------------------------------------------------------


def test_unknown_key_names_file_path_and_valid_keys(tmp_path: Path) -> None:
    path = _study(tmp_path, grd={"rho": [0.1]})
    with pytest.raises(RlflatError) as info:
        load_study_config(path)
    message = str(info.value)
    assert str(path) in message and "'grd'" in message
    assert "valid keys: name, tasks, algos, seeds" in message and "\n" not in message


def test_bad_values_are_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(RlflatError, match="missing required key 'algos'"):
        parse_study_config("name: x\ntasks: [CartPole]\n")
    with pytest.raises(RlflatError, match="seeds"):
        parse_study_config("name: x\ntasks: [CartPole]\nalgos: [ppo]\nseeds: 0\n")
    with pytest.raises(RlflatError, match="overrides names 'pg'"):
        parse_study_config("name: x\ntasks: [CartPole]\nalgos: [ppo]\noverrides: {pg: {n_envs: 2}}\n")
    with pytest.raises(RlflatError, match="<string> line 3: not valid YAML"):
        parse_study_config("name: x\ntasks: [CartPole\n")


def test_seeds_count_or_list() -> None:
    base = "name: x\ntasks: [CartPole]\nalgos: [ppo]\nsteps: 256\n"
    assert [r.config["seed"] for r in expand_runs(parse_study_config(base + "seeds: 3\n"))] == [0, 1, 2]
    assert [r.config["seed"] for r in expand_runs(parse_study_config(base + "seeds: [7, 3]\n"))] == [7, 3]
    with pytest.raises(RlflatError, match="distinct"):
        parse_study_config(base + "seeds: [1, 1]\n")


def test_grid_crosses_only_into_algorithms_that_accept_the_key() -> None:
    text = "name: x\ntasks: [CartPole]\nalgos: [ppo, ppo_sam]\nseeds: 2\nsteps: 256\n"
    text += "grid: {rho: [0.01, 0.1], batch_size: [32, 64]}\n"
    runs = expand_runs(parse_study_config(text))
    plain = [r for r in runs if r.config["algo"] == "ppo"]
    sam = [r for r in runs if r.config["algo"] == "ppo_sam"]
    assert len(plain) == 2 * 2 and all("rho" not in r.config["hyperparameters"] for r in plain)
    assert len(sam) == 2 * 2 * 2
    assert {r.config["hyperparameters"]["rho"] for r in sam} == {0.01, 0.1}
    assert len({r.run_id for r in runs}) == len(runs)
    assert all(r.name == f"{r.config['algo']}-CartPole-s{r.config['seed']}-{r.run_id}" for r in runs)


def test_overrides_beat_the_grid_and_duplicates_merge() -> None:
    text = "name: x\ntasks: [CartPole]\nalgos: [ppo_sam, ppo_asam]\nseeds: 1\nsteps: 256\n"
    text += "grid: {rho: [0.01, 0.1]}\noverrides: {ppo_sam: {rho: 0.05}}\n"
    runs = expand_runs(parse_study_config(text))
    assert [r.config["hyperparameters"]["rho"] for r in runs if r.config["algo"] == "ppo_sam"] == [0.05]
    assert len([r for r in runs if r.config["algo"] == "ppo_asam"]) == 2
    # a list of grids is a union; {} is the baseline, and identical runs are merged by run id
    union = "name: x\ntasks: [CartPole]\nalgos: [ppo]\nseeds: 1\nsteps: 256\n"
    union += "grid: [{}, {batch_size: [32, 64]}, {}, {batch_size: [64]}]\n"
    loaded = parse_study_config(union)
    assert len(expand_runs(loaded, with_duplicates=True)) == 5
    assert len(expand_runs(loaded)) == 3


def test_schema_errors_fail_the_whole_sweep_up_front(tmp_path: Path) -> None:
    with pytest.raises(RlflatError, match=r"grid.rhoo is not a hyperparameter of any of ppo.*valid keys:"):
        expand_runs(parse_study_config("name: x\ntasks: [CartPole]\nalgos: [ppo]\ngrid: {rhoo: [1]}\n"))
    with pytest.raises(RlflatError, match=r"tasks: unknown task 'Cartpol'; valid choices: .*CartPole"):
        run_sweep(_study(tmp_path, tasks=["Cartpol"]), tmp_path / "out", progress=False)
    with pytest.raises(RlflatError, match=r"overrides.ppo.rho is not a hyperparameter of ppo; valid keys:"):
        run_sweep(_study(tmp_path, overrides={"ppo": {"rho": 0.1}}), tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()  # nothing was started
    with pytest.raises(RlflatError, match="unknown probe option 'batchsize'"):
        run_sweep(_study(tmp_path, probe={"batchsize": 3}), tmp_path / "out", dry_run=True)
    with pytest.raises(RlflatError, match="evaluate.*unknown evaluate option 'points'"):
        run_sweep(_study(tmp_path, evaluate={"points": 3}), tmp_path / "out", dry_run=True)


def test_stage_keys_the_sweep_sets_are_reserved() -> None:
    base = "name: x\ntasks: [CartPole]\nalgos: [ppo]\n"
    # without its metrics.json block a stage never counts as done: every sweep would redo it
    with pytest.raises(RlflatError, match=r"probe.update_metrics is set by the sweep"):
        parse_study_config(base + "probe: {update_metrics: false}\n")
    with pytest.raises(RlflatError, match=r"evaluate.write is set by the sweep"):
        parse_study_config(base + "evaluate: {write: false}\n")
    with pytest.raises(RlflatError, match=r"probe.out is set by the sweep"):
        parse_study_config(base + "probe: {out: elsewhere}\n")


def _fake_train(run_dir: Path, job: RunJob) -> None:
    """Stand-in for train_run (serial backend only): a finished run directory in no time."""
    with staging_dir(run_dir) as staging:
        write_json(staging / "config.json", {**job.config, "run_id": job.run_id})
        write_json(staging / "metrics.json", {"status": "ok", "train": {"return_mean": 1.0}})


@pytest.mark.parametrize(
    ("grid", "message"),
    [
        ({"rho": [0.1, -1.0]}, "n_steps=64 rho=-1.0: rho must be >= 0, got -1.0"),
        ({"learning_rate": ["abc"]}, "learning_rate 'abc' is not a schedule"),
        ({"n_steps": [64, "x", -3]}, "n_steps must be a number, got 'x' (and 1 more rejected runs)"),
    ],
)
def test_a_rejected_run_stops_the_sweep_before_anything_is_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], grid: dict[str, list[Any]], message: str
) -> None:
    path = _study(tmp_path, algos=["ppo_sam"], grid={**TINY_HP, **grid}, probe=False, evaluate=False)
    out = tmp_path / "out"
    for extra in (["--dry-run"], ["--backend", "serial"]):
        assert run_cli(main, [str(path), "--out", str(out), "--no-progress", *extra]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err and "nothing was run or written" in err
        assert not out.exists()


def test_an_existing_study_yaml_is_never_replaced_by_another_study(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(pipeline.STAGE_RUNNERS, "train", _fake_train)
    path = _study(tmp_path, algos=["ppo"], grid=TINY_HP, probe=False, evaluate=False)
    out = tmp_path / "out"
    argv = ["--out", str(out), "--backend", "serial", "--no-progress"]
    assert run_cli(main, [str(path), *argv]) == 0
    kept = (out / "study.yaml").read_text()
    other = _write(tmp_path / "other.yaml", {**yaml.safe_load(kept), "seeds": [0, 1]})
    capsys.readouterr()
    assert run_cli(main, [str(other), *argv]) == 2
    assert "holds a different study (seeds: [0], " in capsys.readouterr().err
    assert (out / "study.yaml").read_text() == kept and len(list(out.glob("ppo-*"))) == 1
    reported = _write(tmp_path / "report.yaml", {**yaml.safe_load(kept), "report": {"n_boot": 500}})
    assert run_cli(main, [str(reported), *argv]) == 2  # changes no result, but a resume rewrites nothing
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "report: {} there, {'n_boot': 500} in " in err and "--force" in err
    assert (out / "study.yaml").read_text() == kept
    assert run_cli(main, [str(reported), *argv, "--force"]) == 0  # ... unless asked to replace it
    assert (out / "study.yaml").read_text() == reported.read_text()
    assert run_cli(main, [str(other), *argv, "--force"]) == 2  # --force never mixes two studies' results


def test_bad_flags_write_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _study(tmp_path)
    out = tmp_path / "out"
    with pytest.raises(RlflatError, match="--workers must be an integer >= 1, got 0"):
        main([str(path), "--out", str(out), "--workers", "0"])
    with pytest.raises(RlflatError, match="--address is for --backend ray, not --backend local"):
        main([str(path), "--out", str(out), "--address", "ray://head:10001"])
    with pytest.raises(RlflatError, match=r"--backend: invalid choice: 'dask'"):
        main([str(path), "--out", str(out), "--backend", "dask"])

    def no_ray() -> None:
        raise RlflatError("--backend ray needs Ray: pip install 'rlflat[ray]' (or use --backend local)")

    monkeypatch.setattr(executors, "import_ray", no_ray)
    with pytest.raises(RlflatError, match="needs Ray"):
        main([str(path), "--out", str(out), "--backend", "ray"])
    assert not out.exists()


def test_usage_errors_are_one_line_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli(main, ["--workers", "two"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: python -m rlflat.sweep: argument --workers") and err.count("\n") == 1


def test_report_block_is_validated_by_the_report_settings() -> None:
    from rlflat.report.settings import ReportSettings

    base = "name: x\ntasks: [CartPole]\nalgos: [ppo]\n"
    assert parse_study_config(base + "report: {n_boot: 50}\n").config.report == {"n_boot": 50}
    with pytest.raises(RlflatError) as info:
        parse_study_config(base + "report: {n_bootz: 50}\n", source="s.yaml")
    valid = ", ".join(ReportSettings.model_fields)
    assert str(info.value) == f"s.yaml: unknown key 'report.n_bootz'; valid keys: {valid}"
    assert "n_boot" in valid and "seed" in valid
    with pytest.raises(RlflatError, match=r"s.yaml: report.n_boot: Input should be a valid integer"):
        parse_study_config(base + "report: {n_boot: many}\n", source="s.yaml")


def test_staging_dir_publishes_atomically_or_not_at_all(tmp_path: Path) -> None:
    out = tmp_path / "run"
    with pytest.raises(ZeroDivisionError), staging_dir(out) as staging:
        (staging / "half.json").write_text("{")
        raise ZeroDivisionError
    assert list(tmp_path.iterdir()) == []  # nothing published, no staging left
    with staging_dir(out) as staging:
        assert staging.parent.parent == tmp_path and staging.parent.name.startswith(".run.")
        (staging / "a.txt").write_text("old")
    assert (out / "a.txt").read_text() == "old" and out.stat().st_mode & 0o777 == 0o777 & ~umask()
    with staging_dir(out) as staging:  # an existing directory is replaced as a whole
        (staging / "b.txt").write_text("new")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"] and [p.name for p in out.iterdir()] == ["b.txt"]
    with staging_dir(out):  # an empty folder replaces it too
        pass
    assert list(out.iterdir()) == [] and sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_cli_errors_exit_2_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from rlflat.cli import run_cli

    path = _study(tmp_path, algos=["ppo", "sgd"])
    assert run_cli(main, [str(path), "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "'sgd'" in err and "ppo_sam" in err and "\n" not in err


def test_shipped_configs_expand() -> None:
    configs = Path(__file__).resolve().parents[1] / "configs"
    studies = {p.stem: load_study_config(p) for p in sorted(configs.glob("*.yaml"))}
    for study in studies.values():
        check_stage_options(study)  # probe and evaluate accept every shipped block
    counts = {name: len(expand_runs(study)) for name, study in studies.items()}
    assert counts["smoke"] == 4 and counts["cartpole_sam"] == 20
    assert counts["batch_size"] == 7 * 5 and counts["sam_rho"] == (1 + 5 + 5) * 5
    assert counts["flatness_knobs"] == (1 + 3 + 2 + 2) * 5
    for name in ("smoke", "cartpole_sam"):  # every figure of the report has data
        config = studies[name].config
        assert {"density", "landscape"} <= set(config.stage_options("probe")["measures"])
        assert config.stage_options("evaluate")["suite"]["grids"]


# -- one real sweep, reused -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def swept(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path]]:
    """The tiny study swept on the local pool with 2 workers: (config path, study dir)."""
    root = tmp_path_factory.mktemp("sweep")
    config = _write(root / "tiny.yaml", TINY_STUDY)
    result = run_sweep(config, root / "tiny", workers=2, progress=False)
    assert not result.failed, [(o.name, o.error) for o in result.failed]
    yield config, root / "tiny"


def _copy(study: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(study, tmp_path / "copy"))


def test_sweep_writes_one_flat_row_per_run(swept: tuple[Path, Path]) -> None:
    config, study = swept
    assert (study / "study.yaml").read_text() == config.read_text()
    table = pd.read_parquet(study / "runs.parquet")
    assert len(table) == 3 and table["run_id"].is_unique and set(table["status"]) == {"ok"}
    for column in ("algo", "task", "seed", "run_id", "status", "error", "log", "hp.batch_size", "hp.rho"):
        assert column in table.columns
    assert {"train.return_mean", "probe.trace", "robustness.auc_mean"} <= set(table.columns)
    assert table["hp.rho"].isna().sum() == 1  # plain ppo has no rho
    assert not any(isinstance(v, list | dict) for v in table.to_numpy().ravel())
    for _, row in table.iterrows():
        assert (study / row["path"]).is_dir() and (study / row["log"]).is_file()
        assert row["path"].endswith(row["run_id"])


def test_dry_run_lists_runs_and_which_are_done(
    swept: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config, study = swept
    copy = _copy(study, tmp_path)
    metrics = read_json(next(copy.glob("ppo-*")) / "metrics.json")
    del metrics["robustness"]
    write_json(next(copy.glob("ppo-*")) / "metrics.json", metrics)
    assert main([str(config), "--out", str(copy), "--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert sum(line.startswith("done ") for line in lines) == 2
    assert any(line.startswith("partial ") and "to do: evaluate" in line for line in lines)
    assert "3 runs (2 done, 0 failed, 1 partial, 0 todo)" in lines[-1]


def test_dry_run_refuses_changed_stage_settings_like_the_real_run(
    swept: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config, study = swept
    copy = _copy(study, tmp_path)
    changed = yaml.safe_load(config.read_text())
    changed["evaluate"] = {**(changed.get("evaluate") or {}), "episodes": 7}
    other = _write(tmp_path / "changed.yaml", changed)
    for extra in (["--dry-run"], []):
        assert run_cli(main, [str(other), "--out", str(copy), *extra]) == 2
        assert "would mix settings" in capsys.readouterr().err


def test_a_stage_switched_off_before_may_be_switched_on(swept: tuple[Path, Path], tmp_path: Path) -> None:
    config, _ = swept
    raw = yaml.safe_load(config.read_text())
    study = tmp_path / "later"
    trained_only = _write(tmp_path / "trained.yaml", {**raw, "evaluate": False})
    assert main([str(trained_only), "--out", str(study), "--dry-run"]) == 0
    (study).mkdir()
    (study / "study.yaml").write_text(trained_only.read_text())
    assert run_cli(main, [str(config), "--out", str(study), "--dry-run"]) == 2  # study.yaml is not rewritten ...
    assert main([str(config), "--out", str(study), "--dry-run", "--force"]) == 0  # ... unless asked: evaluate added
    (study / "study.yaml").write_text(config.read_text())
    assert run_cli(main, [str(trained_only), "--out", str(study), "--dry-run"]) == 2  # dropping a ran stage is not


def test_rerun_skips_everything(swept: tuple[Path, Path], tmp_path: Path) -> None:
    config, study = swept
    copy = _copy(study, tmp_path)
    stamps = {p: p.stat().st_mtime_ns for p in copy.glob("*/*") if p.is_file()}
    result = run_sweep(config, copy, backend="serial", progress=False)
    assert result.outcomes == [] and result.already_done == 3
    assert {p: p.stat().st_mtime_ns for p in copy.glob("*/*") if p.is_file()} == stamps


def test_crash_leftovers_resume_without_duplicates(swept: tuple[Path, Path], tmp_path: Path) -> None:
    config, study = swept
    copy = _copy(study, tmp_path)
    sam = sorted(copy.glob("ppo_sam-*"))
    # killed between stages: trained and probed, no robustness block yet
    metrics = read_json(sam[0] / "metrics.json")
    del metrics["robustness"]
    write_json(sam[0] / "metrics.json", metrics)
    # killed while training: only train_run's hidden staging directory exists
    shutil.rmtree(sam[1])
    from rlflat.io import _new_staging

    staging = _new_staging(copy / sam[1].name)  # marked, as staging_dir makes them
    (staging / "new" / "config.json").write_text("{}")
    stale_tmp = copy / ".runs.parquet.x1y2.tmp"
    stale_tmp.write_text("half")
    foreign = [copy / ".cache", copy / f".{sam[1].name}", copy / ".notes.tmp"]  # not a sweep's: kept
    foreign.append(copy / f".{sam[1].name}.backup")  # issue 23: a decoy with the run's name is kept too
    foreign[0].mkdir()
    foreign[1].mkdir()
    foreign[2].write_text("mine")
    foreign[3].mkdir()
    assert len(collect(copy)) == 1  # half-finished runs have no row
    model_mtime = (sam[0] / "model.zip").stat().st_mtime_ns
    result = run_sweep(config, copy, backend="serial", progress=False)
    assert sorted(o.ran for o in result.outcomes) == [("evaluate",), ("train", "probe", "evaluate")]
    assert (sam[0] / "model.zip").stat().st_mtime_ns == model_mtime  # not retrained
    assert not staging.exists() and not stale_tmp.exists()
    assert all(path.exists() for path in foreign)
    table = pd.read_parquet(copy / "runs.parquet")
    assert len(table) == 3 and table["run_id"].is_unique and set(table["status"]) == {"ok"}
    original = pd.read_parquet(study / "runs.parquet")
    pd.testing.assert_frame_equal(_comparable(table), _comparable(original))  # same seeds, same numbers


def test_failed_run_is_recorded_and_exit_code_nonzero(
    swept: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    config, study = swept
    copy = _copy(study, tmp_path)
    target = next(copy.glob("ppo-*"))
    metrics = read_json(target / "metrics.json")
    del metrics["robustness"]
    write_json(target / "metrics.json", metrics)

    def broken(run_dir: Path, job: pipeline.RunJob) -> None:
        print("about to fail")
        raise FloatingPointError("simulated divergence")

    monkeypatch.setitem(pipeline.STAGE_RUNNERS, "evaluate", broken)
    assert main([str(config), "--out", str(copy), "--backend", "serial", "--no-progress"]) == 1
    out = capsys.readouterr().out
    assert "1 failed" in out and f"logs/{target.name}.log" in out
    table = pd.read_parquet(copy / "runs.parquet")
    row = table.set_index("path").loc[target.name]
    assert row["status"] == "failed" and row["failed_stage"] == "evaluate"
    assert row["error"] == "FloatingPointError: simulated divergence"
    log = (copy / row["log"]).read_text()
    assert "about to fail" in log and "Traceback" in log
    assert row["train.return_mean"] == row["train.return_mean"]  # the finished stages' metrics are kept
    # the next sweep retries it and the failure record goes
    monkeypatch.undo()
    assert main([str(config), "--out", str(copy), "--backend", "serial", "--no-progress"]) == 0
    table = pd.read_parquet(copy / "runs.parquet")
    assert len(table) == 3 and set(table["status"]) == {"ok"}


def test_diverging_training_is_recorded(tmp_path: Path) -> None:
    path = _study(tmp_path, algos=["ppo"], grid={**TINY_HP, "ent_coef": [1.0e39]}, probe=False, evaluate=False)
    result = run_sweep(path, tmp_path / "out", backend="serial", progress=False)
    assert result.table is not None and len(result.table) == 1
    row = result.table.iloc[0]  # the entropy term overflows float32: loss -inf at the first minibatch
    assert row["status"] == "failed" and row["failed_stage"] == "train" and "diverged" in row["error"]
    assert result.failed and (tmp_path / "out" / row["path"] / "failure.json").exists()


def test_collect_rebuilds_an_identical_table(swept: tuple[Path, Path], tmp_path: Path) -> None:
    _, study = swept
    copy = _copy(study, tmp_path)
    before = pd.read_parquet(copy / "runs.parquet")
    (copy / "runs.parquet").unlink()
    assert main(["--collect", str(copy)]) == 0
    pd.testing.assert_frame_equal(pd.read_parquet(copy / "runs.parquet"), before)


def test_runs_no_longer_in_the_study_are_marked(swept: tuple[Path, Path], tmp_path: Path) -> None:
    _, study = swept
    assert pd.read_parquet(study / "runs.parquet")["in_study"].all()
    copy = _copy(study, tmp_path)
    _write(copy / "study.yaml", {**TINY_STUDY, "grid": {**TINY_HP, "rho": [0.01, 0.3]}})  # rho 0.1 dropped
    table = collect(copy).set_index("hp.rho", drop=False)
    assert len(table) == 3 and table["in_study"].dtype == bool
    assert table["in_study"].tolist() == [r != 0.1 for r in table["hp.rho"]]  # ppo's NaN rho: still in the study


def _stand_in_execute(job: RunJob, study_dir: str) -> RunOutcome:
    """A pool worker's target for the executor test: ``crash`` kills its worker, the others take a while."""
    attempts = Path(study_dir) / f"{job.name}.attempts"
    with open(attempts, "a") as handle:
        print(",".join(str(os.environ.get(name)) for name in executors.SINGLE_THREAD_ENV), file=handle, flush=True)
    if job.name == "crash":
        time.sleep(0.3)
        os._exit(1)
    if len(attempts.read_text().splitlines()) > 1:
        return RunOutcome(job.name, job.run_id, "ok", seconds=0.0)  # a rerun: quick
    deadline = time.monotonic() + 30
    while not (Path(study_dir) / "crash.attempts").exists() and time.monotonic() < deadline:
        time.sleep(0.05)  # be in flight together with the crash, however slow the workers start
    time.sleep({"a": 0.5, "d": 3.0}.get(job.name, 0.1))
    return RunOutcome(job.name, job.run_id, "ok")


def test_a_dead_worker_loses_only_its_own_run(tmp_path: Path) -> None:
    # The pool may notice a dead worker only at its next event (Python 3.11 adds a new worker's sentinel to its
    # watch list late), here a's result; d is still in flight then, so it is always caught in the break.
    jobs = [RunJob(config={}, run_id=name, name=name) for name in ("a", "crash", "d", "b")]
    environment = {name: os.environ.get(name) for name in executors.SINGLE_THREAD_ENV}
    started: list[str] = []
    outcomes: list[RunOutcome] = []
    executors.run_local(jobs, tmp_path, 3, lambda j: started.append(j.name), outcomes.append, _stand_in_execute)
    assert sorted(started) == ["a", "b", "crash", "d"]  # each announced once, though some ran twice
    assert sorted((o.name, o.status) for o in outcomes) == [("a", "ok"), ("b", "ok"), ("crash", "lost"), ("d", "ok")]
    assert next(o.error for o in outcomes if o.name == "crash") == executors.LOST_WORKER
    attempts = {p.stem: p.read_text().splitlines() for p in tmp_path.glob("*.attempts")}
    assert len(attempts["crash"]) == 2 and len(attempts["d"]) == 2 and len(attempts["b"]) == 1  # alone, then lost
    assert {line for lines in attempts.values() for line in lines} == {"1,1,1"}  # one BLAS thread per worker
    assert {name: os.environ.get(name) for name in executors.SINGLE_THREAD_ENV} == environment  # restored


def test_ray_backend_matches_local(swept: tuple[Path, Path], tmp_path: Path) -> None:
    ray = pytest.importorskip("ray")
    config, study = swept
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        result = run_sweep(config, tmp_path / "ray", backend="ray", progress=False)
    finally:
        ray.shutdown()
    assert not result.failed, [(o.name, o.error) for o in result.failed]
    local = pd.read_parquet(study / "runs.parquet")
    remote = pd.read_parquet(tmp_path / "ray" / "runs.parquet")
    assert sorted(remote["run_id"]) == sorted(local["run_id"])
    pd.testing.assert_frame_equal(_comparable(remote), _comparable(local))
    assert json.loads((tmp_path / "ray" / local["path"][0] / "config.json").read_text())["run_id"] == local["run_id"][0]


def test_plan_reports_states(swept: tuple[Path, Path]) -> None:
    config, study = swept
    states = {p.state for p in plan_sweep(load_study_config(config), study)}
    assert states == {"done"}


def test_the_shipped_smoke_study_runs_end_to_end(tmp_path: Path) -> None:
    """configs/smoke.yaml itself (the demo's study): every run trains, probes and evaluates into one table."""
    result = run_sweep(
        Path(__file__).parents[1] / "configs" / "smoke.yaml", out=tmp_path, backend="serial", progress=False
    )
    table = pd.read_parquet(tmp_path / "runs.parquet")
    assert len(table) == 4 and set(table["status"]) == {"ok"} and not result.failed
    assert set(table["algo"]) == {"ppo", "ppo_sam"} and sorted(set(table["seed"])) == [0, 1]
    for column in ("train.return_mean", "probe.lambda_max", "probe.trace", "robustness.auc_mean"):
        assert table[column].notna().all(), column
    assert (table["hp.total_timesteps"] == 3000).all()


def test_config_does_not_import_the_pipeline() -> None:
    """The shared stage options have one home, so the import arrows between config and pipeline point one way."""
    import ast

    import rlflat.sweep.config as config_module

    tree = ast.parse(Path(config_module.__file__).read_text())
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert "rlflat.sweep.stage_options" in imported and "rlflat.sweep.pipeline" not in imported


def test_collect_names_every_skipped_run_and_strict_refuses(
    swept: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, study = swept
    copy = _copy(study, tmp_path)
    runs = sorted(p for p in copy.iterdir() if p.is_dir() and p.name != "logs")
    (runs[0] / "metrics.json").write_text("{ truncated")
    (runs[1] / "config.json").unlink()
    before = (copy / "runs.parquet").read_bytes()
    capsys.readouterr()
    assert run_cli(main, ["--collect", str(copy), "--strict"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == [
        f"skipped {runs[0].name}: metrics.json corrupt (not valid JSON)",
        f"skipped {runs[1].name}: config.json missing",
        "error: 2 run folder(s) skipped (listed above); --strict: runs.parquet not written",
    ]
    assert (copy / "runs.parquet").read_bytes() == before
    assert run_cli(main, ["--collect", str(copy)]) == 0
    captured = capsys.readouterr()
    assert "1 runs (0 failed, 2 skipped)" in captured.out and len(captured.err.splitlines()) == 2
