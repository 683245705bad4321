"""`python -m rlflat.train`: run directories, reproducibility, and one-line errors for bad input."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from stable_baselines3 import PPO

from rlflat import algos
from rlflat.errors import RlflatError
from rlflat.train import main, resolve_run_config, run_id, train_run

TINY = {"n_envs": 2, "n_steps": 32, "batch_size": 32, "n_epochs": 2}


def _tiny_run(tmp_path: Path, name: str, algo: str = "ppo_sam", seed: int = 0) -> Path:
    config = resolve_run_config(algo, "CartPole", seed=seed, steps=256, overrides=TINY)
    return train_run(config, out=tmp_path / name, progress=False)


def test_run_directory_is_complete_and_loadable(tmp_path: Path) -> None:
    out = _tiny_run(tmp_path, "run")
    assert {p.name for p in out.iterdir()} >= {"config.json", "model.zip", "train.csv", "metrics.json"}
    config = json.loads((out / "config.json").read_text())
    assert config["algo"] == "ppo_sam" and config["task"] == "CartPole" and config["seed"] == 0
    assert config["hyperparameters"]["total_timesteps"] == 256
    assert config["hyperparameters"]["gamma"] == 0.98  # the task spec's value survives the overrides
    assert "rho" in config["hyperparameters"]
    assert config["versions"]["torch"] and config["run_id"] == run_id(config)
    effective = config["effective_hyperparameters"]  # SB3's and the policy's defaults, as built
    assert effective["vf_coef"] == 0.5 and effective["max_grad_norm"] == 0.5 and effective["clip_range_vf"] is None
    assert effective["normalize_advantage"] is True and effective["n_steps"] == 32 and effective["rho"] == 0.05
    assert effective["policy_kwargs"]["optimizer_kwargs"]["eps"] == algos.ADAM_EPS
    assert effective["policy_kwargs"]["activation_fn"] == "torch.nn.modules.activation.Tanh"
    assert run_id({**config, "effective_hyperparameters": {}}) == config["run_id"]  # not hashed: ids stay stable
    assert run_id(config) == run_id(resolve_run_config("ppo_sam", "CartPole", seed=0, steps=256, overrides=TINY))
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["status"] == "ok" and metrics["train"]["episodes"] == 20
    assert metrics["train"]["total_timesteps"] >= 256
    with open(out / "train.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert rows and float(rows[-1]["timesteps"]) <= metrics["train"]["total_timesteps"]
    loaded = PPO.load(out / "model.zip")  # loadable with the SB3 class it names
    assert sum(p.numel() for p in loaded.policy.parameters()) > 0
    assert not list(tmp_path.glob(".run.*")), "staging directory left behind"


def test_same_seed_same_parameters(tmp_path: Path) -> None:
    a = algos.load_model(_tiny_run(tmp_path, "a") / "model.zip")
    b = algos.load_model(_tiny_run(tmp_path, "b") / "model.zip")
    c = algos.load_model(_tiny_run(tmp_path, "c", seed=1) / "model.zip")
    for (name, pa), pb in zip(a.policy.state_dict().items(), b.policy.state_dict().values(), strict=True):
        assert torch.equal(pa, pb), name
    assert any(
        not torch.equal(pa, pc)
        for pa, pc in zip(a.policy.state_dict().values(), c.policy.state_dict().values(), strict=True)
    )


def test_run_id_is_a_content_hash() -> None:
    a = resolve_run_config("ppo", "CartPole", seed=0)
    assert run_id(a) == run_id(resolve_run_config("ppo", "CartPole-v1", seed=0))
    assert run_id(a) != run_id(resolve_run_config("ppo", "CartPole", seed=1))
    assert run_id(a) != run_id(resolve_run_config("ppo", "CartPole", seed=0, overrides={"n_epochs": 3}))


def test_existing_nonempty_out_is_refused(tmp_path: Path) -> None:
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "keep.txt").write_text("mine")
    config = resolve_run_config("ppo", "CartPole", steps=64, overrides=TINY)
    with pytest.raises(RlflatError, match="already exists"):
        train_run(config, out=tmp_path / "taken", progress=False)
    assert (tmp_path / "taken" / "keep.txt").read_text() == "mine"


def test_force_replaces_a_run_and_the_refusal_names_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from rlflat.cli import run_cli

    argv = ["ppo", "CartPole", "--steps", "64", "--out", str(tmp_path / "run"), "--no-progress"]
    argv += [f"--set={k}={v}" for k, v in TINY.items()]
    assert run_cli(main, argv) == 0
    first = (tmp_path / "run" / "config.json").read_text()
    capsys.readouterr()
    assert run_cli(main, [*argv, "--seed", "1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "already exists" in err and "--force" in err
    assert (tmp_path / "run" / "config.json").read_text() == first
    assert run_cli(main, [*argv, "--seed", "1", "--force"]) == 0
    assert json.loads((tmp_path / "run" / "config.json").read_text())["seed"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"], "staging or trash folder left behind"


def test_training_leaves_no_sb3_logger_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import tempfile

    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))  # SB3's default logger folder goes under gettempdir()
    monkeypatch.delenv("SB3_LOGDIR", raising=False)
    _tiny_run(tmp_path, "run")
    assert list(scratch.iterdir()) == []


def test_stale_staging_folders_are_removed_live_ones_kept(tmp_path: Path) -> None:
    import fcntl
    import os

    from rlflat.io import _new_staging

    stale = _new_staging(tmp_path / "run")  # what a killed training leaves (marked: see test_hardening)
    (stale / "new" / "sub").mkdir(parents=True)
    live = _new_staging(tmp_path / "run")
    other = _new_staging(tmp_path / "other")
    fd = os.open(live, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # what a running staging_dir holds
        _tiny_run(tmp_path, "run")
        assert not stale.exists() and live.is_dir() and other.is_dir()
    finally:
        os.close(fd)


def test_sigterm_removes_the_staging_folder(tmp_path: Path) -> None:
    import os
    import signal
    import time

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "OMP_NUM_THREADS": "1"}
    argv = [sys.executable, "-m", "rlflat.train", "ppo", "CartPole", "--steps", "10000000", "--no-progress"]
    proc = subprocess.Popen([*argv, "--out", str(tmp_path / "run")], env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    # training has started once config.json is written somewhere inside the (marked) staging folder
    while not any(tmp_path.glob(".run.*/**/config.json")):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()  # never block on a live child's stderr: it would wait for the whole training
            _, err = proc.communicate(timeout=60)
            pytest.fail(f"training never started (exit {proc.returncode}): {err}")
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143 and err.strip() == "terminated"
    assert list(tmp_path.iterdir()) == []


def test_divergence_writes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = resolve_run_config("ppo", "CartPole", steps=64, overrides=TINY)
    original = algos.build_model

    def poisoned(*args, **kwargs):  # type: ignore[no-untyped-def]
        model = original(*args, **kwargs)
        with torch.no_grad():
            next(model.policy.parameters()).fill_(float("nan"))
        return model

    monkeypatch.setattr(algos, "build_model", poisoned)
    with pytest.raises(algos.TrainingDiverged, match="not finite"):
        train_run(config, out=tmp_path / "nan", progress=False)
    assert list(tmp_path.iterdir()) == []  # issue 23: no run folder, no staging left (the sweep records its own)


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["ppo_adam", "CartPole"], "ppo_adam"),
        (["ppo", "CartPol"], "CartPol"),
        (["ppo", "CartPole", "--set", "n_stepz=32"], "n_stepz"),
        (["ppo", "CartPole", "--steps", "0"], "--steps"),
        (["ppo", "CartPole", "--steps", "-5"], "-5"),
        (["ppo_sam", "CartPole", "--rho", "-0.1"], "-0.1"),
        (["ppo", "CartPole", "--set", "n_steps"], "n_steps"),
        (["ppo", "CartPole", "--set", "n_steps=abc"], "abc"),
        (["ppo", "CartPole", "--steps", "abc"], "'abc'"),
        (["ppo"], "ALGO and TASK"),
        (["ppo", "CartPole", "--device", "foo"], "'foo' is not a torch device; valid forms: cpu, cuda, cuda:N, mps"),
        (["ppo", "CartPole", "--device", "cuda:99"], "'cuda:99'"),
        (["ppo", "CartPole", "--set", "tensorboard_log=5"], "tensorboard_log must be a directory path"),
        (["ppo", "CartPole", "--set", "verbose=1"], "'verbose'"),
        (["ppo", "CartPole", "--seed", "-1"], "-1"),
        (["ppo", "CartPole", "--threads", "0"], "--threads"),
        (["ppo", "CartPole", "--set", "policy_kwargs={optimizer_class: adam}"], "optimizer_class"),
    ],
)
def test_bad_input_is_one_line_exit_2_nothing_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], needle: str
) -> None:
    from rlflat.cli import run_cli

    out = tmp_path / "out"
    assert run_cli(main, [*argv, "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err and needle in err
    assert not out.exists()


def test_repeated_set_merges_policy_kwargs_and_is_built(tmp_path: Path) -> None:
    from rlflat.cli import run_cli

    out = tmp_path / "merged"
    sets = [
        "--set",
        "policy_kwargs={net_arch: [8]}",
        "--set",
        "n_steps=32",
        "--set",
        "policy_kwargs={activation_fn: relu}",
    ]
    assert run_cli(main, ["pg", "CartPole", "--steps", "64", "--out", str(out), "--no-progress", *sets]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["hyperparameters"]["policy_kwargs"] == {"net_arch": [8], "activation_fn": "relu"}
    built = config["effective_hyperparameters"]["policy_kwargs"]
    assert built["net_arch"] == [8] and built["activation_fn"] == "torch.nn.modules.activation.ReLU"


def test_list_and_the_real_command_line(tmp_path: Path) -> None:
    listed = subprocess.run(
        [sys.executable, "-m", "rlflat.train", "--list"], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    assert any(line.split()[:2] == ["algo", "ppo_sam"] for line in listed)
    assert any(line.split()[:2] == ["task", "CartPole"] for line in listed)
    out = tmp_path / "cli"
    sets = ["--set", "n_envs=2", "--set", "n_steps=32"]
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "rlflat.train",
            "pg",
            "CartPole",
            "--steps",
            "128",
            "--seed",
            "3",
            "--out",
            str(out),
            *sets,
        ],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == str(out)
    bad = subprocess.run([sys.executable, "-m", "rlflat.train", "nope", "CartPole"], capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "Traceback" not in bad.stderr
