"""The robustness evaluator: batched returns equal plain Gymnasium loops, stacked parameter sets, metrics, CLI."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import gymnasium as gym
import numpy as np
import pandas as pd
import pytest
import torch
from stable_baselines3 import PPO

from rlflat.errors import RlflatError
from rlflat.evaluate import (
    RETURN_FLOORS,
    SuiteSpec,
    build_settings,
    collapse_point,
    evaluate,
    evaluate_run,
    has_batched_simulator,
    normalize,
    robust_auc,
    robustness_block,
    rollout_returns,
    sweep_factors,
)
from rlflat.evaluate.__main__ import main
from rlflat.policy import FunctionalPolicy, load_policy
from rlflat.tasks import TaskSpec, load_task, make_env

torch.set_num_threads(1)
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A briefly trained CartPole PPO (returns vary with dynamics) and untrained Pendulum/Acrobot ones."""
    root = tmp_path_factory.mktemp("models")
    paths = {}
    cartpole = PPO("MlpPolicy", make_env(load_task("CartPole")), seed=0, n_steps=256, batch_size=64, n_epochs=4)
    cartpole.learn(2048)
    for task, model in (
        ("CartPole", cartpole),
        ("Pendulum", PPO("MlpPolicy", make_env(load_task("Pendulum")), seed=0)),
        ("Acrobot", PPO("MlpPolicy", make_env(load_task("Acrobot")), seed=0)),
    ):
        run = root / task
        run.mkdir()
        model.save(run / "model.zip")
        (run / "config.json").write_text(json.dumps({"task": task, "algo": "ppo"}))
        paths[task] = run
    return paths


def plain_returns(
    policy: FunctionalPolicy, task: TaskSpec, dynamics: Mapping[str, float], seeds: range, pure: bool = False
) -> list:
    """The reference: one Gymnasium env, one episode at a time, one observation per forward.

    ``pure`` uses ``gym.make`` itself (no rlflat dynamics code at all; nominal only).
    """
    returns = []
    for seed in seeds:
        env = gym.make(task.id) if pure else make_env(task, dynamics)
        obs, _ = env.reset(seed=seed)
        total, done = 0.0, False
        while not done:
            action = policy.act(obs[None])[0]
            obs, reward, terminated, truncated, _ = env.step(int(action) if policy.discrete else action)
            total += float(reward)
            done = terminated or truncated
        returns.append(total)
    return returns


@pytest.mark.parametrize("name", ["CartPole", "Pendulum"])
@pytest.mark.parametrize("backend", ["batched", "gym"])
def test_nominal_matches_plain_gym_loop(models: dict[str, Path], name: str, backend: str) -> None:
    task, policy = load_task(name), load_policy(models[name])
    assert has_batched_simulator(task)
    got = rollout_returns(policy, task, [{}], episodes=4, seed=7, backend=backend)  # type: ignore[arg-type]
    assert got.shape == (1, 1, 4)
    expected = plain_returns(policy, task, {}, range(7, 11))
    if policy.discrete:
        np.testing.assert_array_equal(got[0, 0], expected)
    else:
        # a batched matmul rounds differently from a one-row one (actions differ by ~1e-9), so continuous
        # returns agree to ~1e-10 relative; with one row per forward they are bit-identical
        np.testing.assert_allclose(got[0, 0], expected, rtol=1e-8)
        single = rollout_returns(policy, task, [{}], episodes=1, seed=8, backend=backend)  # type: ignore[arg-type]
        assert single[0, 0, 0] == expected[1]


def test_longer_pole_sees_different_physics(models: dict[str, Path]) -> None:
    task, policy = load_task("CartPole"), load_policy(models["CartPole"])
    got = rollout_returns(policy, task, [{}, {"length": 2.0}], episodes=5)
    nominal, longer = got[0]
    assert not np.array_equal(nominal, longer)  # a sim that ignored per-row dynamics would fail here
    np.testing.assert_array_equal(longer, plain_returns(policy, task, {"length": 2.0}, range(5)))
    np.testing.assert_array_equal(nominal, plain_returns(policy, task, {}, range(5)))


def test_gym_fallback_matches_batched_with_noise(models: dict[str, Path]) -> None:
    task, policy = load_task("Pendulum"), load_policy(models["Pendulum"])
    settings = [{}, {"m": 2.0}]
    kwargs = {"episodes": 2, "action_noise": 0.3, "obs_noise": 0.05, "deterministic": False, "rng_seed": 3}
    batched = rollout_returns(policy, task, settings, backend="batched", **kwargs)  # type: ignore[arg-type]
    fallback = rollout_returns(policy, task, settings, backend="gym", **kwargs)  # type: ignore[arg-type]
    np.testing.assert_array_equal(batched, fallback)


def _perturbed(policy: FunctionalPolicy, k: int, scale: float) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return {
        name: torch.stack([p + scale * i * torch.randn(p.shape, generator=gen) for i in range(k)])
        for name, p in policy.params.items()
    }


@pytest.mark.parametrize("name", ["CartPole", "Pendulum"])
def test_stacked_parameter_sets(models: dict[str, Path], name: str) -> None:
    task, policy = load_task(name), load_policy(models[name])
    settings = [{}, {next(iter(task.default_suite)): task.parameters[task.default_suite[0]].nominal * 2}]
    own = rollout_returns(policy, task, settings, episodes=3)
    same = rollout_returns(policy, task, settings, episodes=3, params=_perturbed(policy, 3, 0.0))
    assert same.shape == (3, 2, 3)
    for k in range(3):
        np.testing.assert_allclose(same[k], own[0], rtol=1e-6)
    different = _perturbed(policy, 3, 0.05)
    together = rollout_returns(policy, task, settings, episodes=3, params=different)
    assert not np.allclose(together[0], together[2])
    for k in range(3):
        alone = rollout_returns(
            policy, task, settings, episodes=3, params={n: v[k : k + 1] for n, v in different.items()}
        )
        np.testing.assert_allclose(together[k], alone[0], rtol=1e-6)


def test_noise_is_seeded_and_shared_across_settings(models: dict[str, Path]) -> None:
    task, policy = load_task("CartPole"), load_policy(models["CartPole"])
    clean = rollout_returns(policy, task, [{}], episodes=4)
    zero = rollout_returns(policy, task, [{}], episodes=4, action_noise=0.0, obs_noise=0.0, rng_seed=9)
    np.testing.assert_array_equal(clean, zero)
    noisy = rollout_returns(policy, task, [{}], episodes=4, action_noise=0.5, obs_noise=0.1, rng_seed=1)
    assert not np.array_equal(noisy, clean)
    # the same episode of a setting sees the same noise whatever else is in the batch
    batch = rollout_returns(
        policy, task, [{"gravity": 19.6}, {}], episodes=4, action_noise=0.5, obs_noise=0.1, rng_seed=1
    )
    np.testing.assert_array_equal(batch[0, 1], noisy[0, 0])
    with pytest.raises(RlflatError, match="probability"):
        rollout_returns(policy, task, [{}], episodes=1, action_noise=1.5)


def test_collapse_point_interpolates_in_log_factor() -> None:
    factors = [0.25, 0.5, 1.0, 2.0, 4.0]
    curve = [0.2, 0.8, 1.0, 0.6, 0.3]
    collapse = collapse_point(factors, curve, 0.5)
    assert collapse.low == pytest.approx(0.5**1.5)  # halfway between log 0.5 (0.8) and log 0.25 (0.2)
    assert collapse.high == pytest.approx(2 ** (4 / 3))  # a third of the way from log 2 (0.6) to log 4 (0.3)
    assert collapse.factor == pytest.approx(2 ** (4 / 3))  # the nearer side in |log-factor|
    # the first crossing walking outward counts, even if the curve recovers further out
    assert collapse_point([1.0, 2.0, 4.0, 8.0], [1.0, 0.0, 1.0, 1.0]).high == pytest.approx(2**0.5)


def test_collapse_none_when_never_below() -> None:
    collapse = collapse_point([0.5, 1.0, 2.0], [0.9, 1.0, 0.51], 0.5)
    assert collapse.low is None and collapse.high is None and collapse.factor is None
    assert robust_auc([0.5, 1.0, 2.0], [1.0, 1.0, 1.0]) == pytest.approx(1.0)
    assert robust_auc([0.5, 1.0, 2.0], [0.0, 1.0, 0.0]) == pytest.approx(0.5)


def test_negative_returns_normalised_against_floor() -> None:
    floor = RETURN_FLOORS["Acrobot-v1"]
    np.testing.assert_allclose(normalize(np.array([-100.0, -500.0, -300.0]), -100.0, floor), [1.0, 0.0, 0.5])
    assert RETURN_FLOORS["Pendulum-v1"] == pytest.approx(-16.2736 * 200, rel=1e-4)
    assert math.isnan(float(normalize(np.array(1.0), 5.0, None)))


def test_sweep_factors_include_nominal() -> None:
    factors = sweep_factors(0.25, 4.0, 4)
    assert 1.0 in factors and factors[0] == 0.25 and factors[-1] == 4.0 and len(factors) == 5
    assert sweep_factors(0.25, 4.0, 5).count(1.0) == 1


def test_bad_inputs_raise(models: dict[str, Path]) -> None:
    task, policy = load_task("CartPole"), load_policy(models["CartPole"])
    with pytest.raises(RlflatError, match=r"'bogus'.*masspole"):
        rollout_returns(policy, task, [{"bogus": 1.0}], episodes=1)
    with pytest.raises(RlflatError, match=r"'bogus'.*masspole"):
        build_settings(task, SuiteSpec(parameters=("bogus",)))
    with pytest.raises(RlflatError, match="outside its range"):
        build_settings(task, SuiteSpec(factors={"length": [8.0]}))
    for bad in (0.0, -1.0):
        with pytest.raises(RlflatError, match="outside its range"):
            build_settings(task, SuiteSpec(factors={"length": [bad]}))
    with pytest.raises(RlflatError, match="valid factors"):
        rollout_returns(policy, task, [{"length": 5.0}], episodes=1)
    with pytest.raises(RlflatError, match="episodes"):
        rollout_returns(policy, task, [{}], episodes=0)
    with pytest.raises(RlflatError, match="do not match"):
        rollout_returns(load_policy(models["Pendulum"]), task, [{}], episodes=1)
    with pytest.raises(RlflatError, match=r"expected \(K, 2\)"):
        rollout_returns(policy, task, [{}], episodes=1, params={"action_net.bias": policy.params["action_net.bias"]})


def test_evaluate_table_and_metrics(models: dict[str, Path], tmp_path: Path) -> None:
    run = models["CartPole"]
    out = tmp_path / "eval"
    out.mkdir()
    (out / "metrics.json").write_text(json.dumps({"train": {"final_return": 1.0}}))
    suite = SuiteSpec(
        parameters=("length",),
        grids=(("length", "masscart"),),
        points=3,
        grid_points=3,
        severities=(),
        random=2,
        action_noise=(0.5,),
    )
    table, block = evaluate_run(run, out=out, suite=suite, episodes=3)
    assert len(table) == 1 + 3 + 9 + 2 + 2
    written = pd.read_parquet(out / "robustness.parquet")
    for column in ("family", "factor", "length", "masscart", "episodes", "return_mean", "return_std",
                   "return_ci_low", "return_ci_high", "normalized_return", "collapsed"):  # fmt: skip
        assert column in written.columns
    families = written["family"].value_counts()
    assert families["nominal"] == 1 and families["length"] == 3 and families["length:masscart"] == 9
    assert families["random"] == 2 and families["action_noise"] == 2
    assert written.loc[written["family"] == "length", "length"].tolist() == pytest.approx([0.125, 0.5, 2.0])
    nominal = written[written["family"] == "nominal"].iloc[0]
    length_nominal = written[(written["family"] == "length") & (written["factor"] == 1.0)].iloc[0]
    assert nominal["episodes"] == 100 and length_nominal["episodes"] == 3  # the nominal row gets more episodes
    assert list(length_nominal["returns"]) == list(nominal["returns"][:3])  # same seeds, same physics
    reference = load_task("CartPole").reference_returns
    assert reference is not None  # task-level normalisation by default: the spec's R_low / R_ref
    assert nominal["normalized_return"] == pytest.approx(
        (nominal["return_mean"] - reference.low) / (reference.ref - reference.low)
    )
    assert not written["inert"].any() and not written["saturated"].any()  # every CartPole factor acts
    assert block["unsolved"] == (nominal["return_mean"] < 475.0)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["train"] == {"final_return": 1.0}
    assert metrics["robustness"]["nominal_return"] == pytest.approx(nominal["return_mean"])
    assert set(metrics["robustness"]["parameters"]) == {"length"}
    assert metrics["robustness"]["worst_return"] == pytest.approx(written["return_mean"].min())
    assert block["parameters"]["length"]["factors"] == pytest.approx([0.25, 1.0, 4.0])


def test_default_suite(models: dict[str, Path]) -> None:
    task, policy = load_task("Pendulum"), load_policy(models["Pendulum"])
    table = evaluate(policy, task, episodes=1, progress=False, normalization="nominal")
    assert set(table["family"]) == {"nominal", *task.default_suite}
    assert table.attrs["return_floor"] == RETURN_FLOORS["Pendulum-v1"]
    assert (table["normalized_return"] >= -1e-9).all()  # the floor really is a floor


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir()} if folder.exists() else {}


@pytest.mark.parametrize(
    "args",
    [
        ["--suite", "length,bogus"],
        ["--factors", "length=0.1"],
        ["--factors", "length=-1"],
        ["--episodes", "0"],
        ["--grid", "length"],
        ["--task", "Pendulum"],  # the run records CartPole
        ["--episodes", "many"],  # a usage error: one line too, not argparse's usage text and exit
        ["--bogus"],
    ],
)
def test_cli_bad_input_exits_2_writing_nothing(
    models: dict[str, Path], args: list[str], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    from rlflat.cli import run_cli

    before = _snapshot(models["CartPole"])
    out = tmp_path / "out"
    assert run_cli(main, [str(models["CartPole"]), "--out", str(out), "--no-progress", *args]) == 2
    assert capsys.readouterr().err.startswith("error: ")
    assert not out.exists() and _snapshot(models["CartPole"]) == before


def test_cli_bare_zip_and_mismatched_spaces(
    models: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from rlflat.cli import run_cli

    zip_path = str(models["Pendulum"] / "model.zip")
    out = tmp_path / "mine"
    base = [zip_path, "--out", str(out), "--episodes", "1", "--no-progress"]
    assert run_cli(main, base) == 2 and "--task" in capsys.readouterr().err and not out.exists()
    assert run_cli(main, [*base, "--task", "CartPole"]) == 2
    assert "do not match" in capsys.readouterr().err and not out.exists()
    # the real entry point, end to end, in a fresh interpreter
    command = [sys.executable, "-m", "rlflat.evaluate", *base, "--task", "Pendulum", "--suite", "l"]
    command += ["--points", "2", "--obs-noise", "0:0.2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    ok = subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO, check=False)
    assert ok.returncode == 0, ok.stderr
    table = pd.read_parquet(out / "robustness.parquet")
    assert sorted(set(table["family"])) == ["l", "nominal", "obs_noise"]
    assert "noise" in json.loads((out / "metrics.json").read_text())["robustness"]


def _table(curves: dict[str, tuple[list[float], list[float]]], noise: list[tuple[float, float]] = ()) -> pd.DataFrame:
    """A hand-made CartPole robustness table: nominal, a sweep per parameter, an action-noise family."""
    task = load_task("CartPole")
    names = list(curves)
    rows = [{"family": "nominal", "factor": 1.0, "action_noise": 0.0, "normalized_return": 1.0}]
    for name, (factors, normalized) in curves.items():
        rows += [{"family": name, "factor": f, name: task.parameters[name].nominal * f, "action_noise": 0.0,
                  "normalized_return": v} for f, v in zip(factors, normalized, strict=True)]  # fmt: skip
    rows += [{"family": "action_noise", "action_noise": level, "normalized_return": v} for level, v in noise]
    table = pd.DataFrame(rows)
    for name in names:
        table[name] = table[name].fillna(task.parameters[name].nominal)
    table["obs_noise"] = 0.0
    table["return_mean"] = 100.0 * table["normalized_return"]
    table["return_std"] = 0.0
    table["collapsed"] = table["normalized_return"] < 0.5
    return table


def test_metrics_count_each_distinct_setting_once() -> None:
    """Every sweep's factor-1 row and the noise family's level-0 row copy nominal: counted once, not four times."""
    table = _table({"length": ([0.25, 1.0, 4.0], [0.2, 1.0, 0.8]), "masspole": ([0.1, 1.0, 10.0], [0.9, 1.0, 0.9])},
                   noise=[(0.0, 1.0), (0.5, 0.3)])  # fmt: skip
    block = robustness_block(table, load_task("CartPole"))
    assert block["n_settings"] == 5  # length x0.25, x4; masspole x0.1, x10; action noise 0.5
    assert block["collapsed_fraction"] == pytest.approx(2 / 5)
    table.attrs["quantity_columns"] = ["length", "masspole", "action_noise", "obs_noise"]  # as evaluate() sets
    assert robustness_block(table, load_task("CartPole"))["n_settings"] == 5


def test_censored_collapse_keys() -> None:
    task = load_task("CartPole")
    collapsing = ([0.25, 1.0, 4.0], [0.2, 1.0, 0.8])  # low side crosses 0.5 at 5/8 of the way to log 0.25
    steady = ([0.1, 1.0, 10.0], [0.9, 1.0, 0.9])
    block = robustness_block(_table({"length": collapsing, "masspole": steady}), task)
    length, masspole = block["parameters"]["length"], block["parameters"]["masspole"]
    assert length["collapsed_within_range"] and length["collapse_log_factor"] == pytest.approx(0.625 * math.log(4))
    assert length["max_log_factor"] == pytest.approx(math.log(4))
    assert not masspole["collapsed_within_range"] and masspole["collapse_log_factor"] is None
    assert masspole["max_log_factor"] == pytest.approx(math.log(10))
    assert block["collapse_log_factor_min"] == pytest.approx(0.625 * math.log(4)) and block["censored"] is False
    assert block["collapse_log_factor_min_parameter"] == "length"
    # nothing collapses: the minimum is the smallest bound, and it is censored
    block = robustness_block(_table({"length": ([0.25, 1.0, 4.0], [0.6, 1.0, 0.7]), "masspole": steady}), task)
    assert block["collapse_log_factor_min"] == pytest.approx(math.log(4)) and block["censored"] is True
    assert block["collapse_log_factor_min_parameter"] == "length"
    # a never-collapsing parameter whose bound lies below another's observed collapse censors the minimum
    late = ([0.1, 1.0, 10.0], [1.0, 1.0, 0.4])  # crosses at 5/6 of log 10 (1.92) > log 4 (1.39)
    block = robustness_block(_table({"length": ([0.25, 1.0, 4.0], [0.6, 1.0, 0.7]), "masspole": late}), task)
    assert block["parameters"]["masspole"]["collapse_log_factor"] == pytest.approx(5 / 6 * math.log(10))
    assert block["collapse_log_factor_min"] == pytest.approx(math.log(4)) and block["censored"] is True
    json.dumps(block)  # every key is JSON-ready


def _untrained(task: TaskSpec, folder: Path) -> FunctionalPolicy:
    PPO("MlpPolicy", make_env(task), seed=0).save(folder / "model.zip")
    return load_policy(folder / "model.zip")


@pytest.mark.parametrize(("name", "extra"), [("Hopper", "mujoco"), ("LunarLander", "Box2D")])
def test_gym_fallback_at_nominal_matches_plain_gymnasium(name: str, extra: str, tmp_path: Path) -> None:
    """Tasks without a batched simulator (MuJoCo model parameters, LunarLander's constructor gravity)."""
    pytest.importorskip(extra)
    task = load_task(name)
    policy = _untrained(task, tmp_path)
    assert not has_batched_simulator(task)
    expected = plain_returns(policy, task, {}, range(3, 5), pure=True)
    got = rollout_returns(policy, task, [{}], episodes=2, seed=3)[0, 0]
    if policy.discrete:
        np.testing.assert_array_equal(got, expected)
    else:  # batched forwards round differently from one-row ones (see test_nominal_matches_plain_gym_loop)
        np.testing.assert_allclose(got, expected, rtol=1e-6)
        assert rollout_returns(policy, task, [{}], episodes=1, seed=3)[0, 0, 0] == expected[0]
    parameter = task.default_suite[0]
    low = task.parameters[parameter].nominal * task.parameters[parameter].range[0]
    perturbed = rollout_returns(policy, task, [{parameter: low}], episodes=2, seed=3)[0, 0]
    np.testing.assert_allclose(perturbed, plain_returns(policy, task, {parameter: low}, range(3, 5)), rtol=1e-6)
    assert not np.array_equal(perturbed, got)


def test_bare_zip_gets_its_own_folder_and_a_rerun_needs_force(
    models: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from rlflat.cli import run_cli

    zip_path = tmp_path / "cart.zip"
    zip_path.write_bytes((models["CartPole"] / "model.zip").read_bytes())
    argv = [str(zip_path), "--task", "CartPole", "--suite", "length", "--points", "2", "--episodes", "1"]
    argv.append("--no-progress")
    assert run_cli(main, argv) == 0
    out = tmp_path / "cart-evaluate"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cart-evaluate", "cart.zip"]
    assert sorted(p.name for p in out.iterdir()) == ["metrics.json", "robustness.parquet"]
    before = _snapshot(out)
    capsys.readouterr()
    assert run_cli(main, argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--force" in err and _snapshot(out) == before
    assert run_cli(main, [*argv, "--force", "--seed", "5"]) == 0
    assert json.loads(before["metrics.json"])["robustness"]["seed"] == 0
    assert json.loads((out / "metrics.json").read_text())["robustness"]["seed"] == 5  # replaced
    assert sorted(p.name for p in out.iterdir()) == ["metrics.json", "robustness.parquet"]
