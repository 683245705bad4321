"""Bounded sizes: every command refuses an oversize argument in one line, before allocating, with nothing written.

Each refusal names the estimate and the available memory. Where a case would fit on this machine, the available
memory is patched down, so the test checks that the estimate is wired in for ordinary sizes too (and the
"refuses" is not an accident of a small test machine).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from stable_baselines3 import PPO

from rlflat import memory
from rlflat.cli import run_cli
from rlflat.errors import RlflatError
from rlflat.evaluate.__main__ import main as evaluate_main
from rlflat.evaluate.budget import rollout_bytes
from rlflat.memory import available_memory, format_bytes, require_memory
from rlflat.probe.__main__ import main as probe_main
from rlflat.sweep.__main__ import main as sweep_main
from rlflat.tasks import load_task, make_env
from rlflat.train import MAX_TOTAL_TIMESTEPS
from rlflat.train import main as train_main


@pytest.fixture(scope="module")
def cartpole_zip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("zip") / "model.zip"
    PPO("MlpPolicy", make_env(load_task("CartPole")), seed=0, policy_kwargs={"net_arch": [16]}).save(path)
    return path


def _refused(capsys: pytest.CaptureFixture[str], main: Any, argv: list[str], out: Path, *words: str) -> str:
    assert run_cli(main, argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: "), err
    for word in words:
        assert word in err, err
    assert not out.exists()
    return err


def test_available_memory_is_read_and_a_refusal_names_both_numbers(monkeypatch: pytest.MonkeyPatch) -> None:
    assert 0 < available_memory() < 2**60
    monkeypatch.setattr(memory, "available_memory", lambda: 2**30)
    require_memory(2**29, "half")  # fits: no error
    with pytest.raises(RlflatError, match=r"^thing needs about 2 GiB of memory, more than the 1 GiB available"):
        require_memory(2**31, "thing")
    assert format_bytes(1536) == "1.5 KiB"


@pytest.mark.parametrize(
    "args",
    [["--points", "100000000"], ["--episodes", "1000000000"], ["--random", "1000000000"],
     ["--action-noise", "0:1", "--points", "1000000000"]],
)  # fmt: skip
def test_evaluate_refuses_oversize_suites(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], cartpole_zip: Path, args: list[str]
) -> None:
    out = tmp_path / "out"
    argv = [str(cartpole_zip), "--task", "CartPole", "--out", str(out), "--no-progress", *args]
    _refused(capsys, evaluate_main, argv, out, "evaluate:", "rollout rows", "needs about", "available")


def test_evaluate_estimate_is_wired_for_ordinary_sizes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], cartpole_zip: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    task = load_task("CartPole")
    need = rollout_bytes(task, 20 * 4, settings=4, episodes=20)  # nominal + 3 factors of length
    assert 80 * 500 < need < 80 * 5000  # measured ~1.5 KiB per row for a 64x64 policy; a few hundred B + widths
    monkeypatch.setattr(memory, "available_memory", lambda: int(need) // 2)
    out = tmp_path / "out"
    argv = [str(cartpole_zip), "--task", "CartPole", "--suite", "length", "--points", "2", "--out", str(out)]
    _refused(capsys, evaluate_main, argv, out, "4 settings x 20 episodes")


@pytest.mark.parametrize(
    ("args", "part"),
    [(["--batch", "100000000000"], "batch"), (["--n-directions", "1000000000"], "perturbation rollouts"),
     (["--episodes", "1000000000"], "perturbation rollouts"),
     (["--measures", "landscape", "--landscape-points", "1000000000"], "landscape rollouts")],
)  # fmt: skip
def test_probe_refuses_oversize_options(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], cartpole_zip: Path, args: list[str], part: str
) -> None:
    out = tmp_path / "out"
    argv = [str(cartpole_zip), "--task", "CartPole", "--out", str(out), *args]
    _refused(capsys, probe_main, argv, out, "probe of", part, "needs about", "available")


def test_probe_dense_hessian_counts_against_memory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], cartpole_zip: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out"
    argv = [str(cartpole_zip), "--task", "CartPole", "--out", str(out), "--measures", "hessian", "--batch", "64"]
    argv += ["--scope", "all"]  # 211 params: the dense route's 3 x 8 x n^2 = 1.0 MiB is the largest part
    monkeypatch.setattr(memory, "available_memory", lambda: 2**19)
    _refused(capsys, probe_main, argv, out, "dense Hessian")


def test_train_refuses_too_many_steps_and_oversize_buffers(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    steps = str(MAX_TOTAL_TIMESTEPS + 1)
    _refused(capsys, train_main, ["ppo", "CartPole", "--steps", steps, "--out", str(out)], out, "over the maximum")
    argv = ["ppo", "CartPole", "--set", "n_steps=1000000000", "--set", "n_envs=8", "--out", str(out)]
    _refused(capsys, train_main, argv, out, "training with n_envs 8 x n_steps 1000000000", "needs about")


def test_sweep_refuses_an_oversize_evaluate_block_before_writing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = yaml.safe_load(Path("configs/smoke.yaml").read_text())
    config["evaluate"]["suite"]["points"] = 100_000_000
    path = tmp_path / "huge.yaml"
    path.write_text(yaml.safe_dump(config))
    out = tmp_path / "study"
    _refused(capsys, sweep_main, [str(path), "--out", str(out), "--no-progress"], out, "rollout rows", "needs about")
