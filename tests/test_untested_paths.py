"""Paths no other test runs, end to end: a ``normalize: true`` run trained, saved, probed and evaluated with its
statistics; ``probe --interpolate``; the local executor's restart limit."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from rlflat import algos
from rlflat.cli import run_cli
from rlflat.evaluate import SuiteSpec, evaluate_run, rollout_returns
from rlflat.policy import load_policy
from rlflat.probe import probe_run
from rlflat.probe.__main__ import main as probe_main
from rlflat.probe.seeding import subseed
from rlflat.sweep import executors
from rlflat.sweep.pipeline import RunJob, RunOutcome
from rlflat.tasks import load_task
from rlflat.train import resolve_run_config, train_run, training_env

torch.set_num_threads(1)
CARTPOLE = load_task("CartPole")
TINY = {"n_envs": 2, "n_steps": 64, "batch_size": 64, "n_epochs": 2, "policy_kwargs": {"net_arch": [8]}}
STEPS = 512


@pytest.fixture(scope="module")
def normalized_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """A CartPole PPO run trained with ``normalize: true`` (observations and rewards), and its config."""
    config = resolve_run_config("ppo", "CartPole", seed=0, steps=STEPS, overrides={**TINY, "normalize": True})
    return train_run(config, out=tmp_path_factory.mktemp("norm") / "run", progress=False), config


def _replayed_training(config: dict) -> tuple[object, object]:
    """The run's training replayed from its config and seed: the model and the VecNormalize env it ends with."""
    hp = config["hyperparameters"]
    env = training_env(CARTPOLE, hp, config["seed"])
    model = algos.build_model(config["algo"], env, hp, seed=config["seed"])
    model.learn(STEPS)
    return model, env


def test_normalized_run_saves_applies_and_evaluates_with_its_statistics(
    normalized_run: tuple[Path, dict], tmp_path: Path
) -> None:
    run, config = normalized_run
    model, env = _replayed_training(config)
    for (name, saved), replayed in zip(algos.load_model(run / "model.zip").policy.state_dict().items(),
                                       model.policy.state_dict().values(), strict=True):  # fmt: skip
        assert torch.equal(saved, replayed), name  # the replay is the run's training
    policy = load_policy(run)
    assert policy.normalizer is not None
    obs_rms = env.obs_rms  # type: ignore[attr-defined]
    np.testing.assert_allclose(policy.normalizer.mean, obs_rms.mean, rtol=1e-12)
    np.testing.assert_allclose(policy.normalizer.var, obs_rms.var, rtol=1e-12)
    assert np.ptp(obs_rms.var) > 0 and np.abs(obs_rms.mean).max() > 0  # real statistics, not the identity
    # the statistics are applied: the loaded policy acts as SB3's on VecNormalize's transform of the observation
    obs = np.random.default_rng(0).normal(scale=[1.0, 0.5, 0.1, 0.8], size=(64, 4)).astype(np.float32)
    transformed = np.clip((obs - obs_rms.mean) / np.sqrt(obs_rms.var + env.epsilon), -env.clip_obs, env.clip_obs)  # type: ignore[attr-defined]
    expected, _ = model.policy.predict(transformed.astype(np.float32), deterministic=True)
    np.testing.assert_array_equal(policy.act(obs), expected)
    # train-time evaluation (in-memory statistics) == the evaluator's nominal return (statistics read from disk)
    train_metrics = json.loads((run / "metrics.json").read_text())["train"]
    table, block = evaluate_run(run, out=tmp_path / "eval", suite=SuiteSpec(parameters=("length",), points=3),
                                episodes=train_metrics["episodes"])  # fmt: skip
    nominal = np.array(table.loc[table["family"] == "nominal", "returns"].iloc[0])
    first = nominal[: train_metrics["episodes"]]  # the evaluator's nominal episodes are a superset, same seeds
    assert float(np.mean(first)) == pytest.approx(train_metrics["return_mean"], rel=1e-12)
    assert float(np.std(first)) == pytest.approx(train_metrics["return_std"], rel=1e-12, abs=1e-12)
    assert block["nominal_return"] == pytest.approx(float(nominal.mean()), rel=1e-12)
    # ... and the statistics matter: without them the same parameters act differently
    raw = copy.copy(policy)
    raw.normalizer = None
    assert not np.array_equal(raw.act(obs), policy.act(obs))


def test_probe_of_a_normalized_run_uses_its_reward_scale(normalized_run: tuple[Path, dict], tmp_path: Path) -> None:
    run, config = normalized_run
    _, env = _replayed_training(config)
    ret_rms = env.ret_rms  # type: ignore[attr-defined]
    result = probe_run(run, out=tmp_path / "probe", measures="trace", batch=256, update_metrics=False)
    scale = 1.0 / np.sqrt(ret_rms.var + env.epsilon)  # type: ignore[attr-defined]
    assert scale != pytest.approx(1.0, rel=1e-3)  # rewards were rescaled in training
    assert result["batch"]["reward_scale"] == pytest.approx(float(scale), rel=1e-12)
    assert np.isfinite(result["loss"]["value"]) and np.isfinite(result["hessian"]["trace"])


def test_probe_interpolate_cli_measures_the_path_between_two_runs(
    normalized_run: tuple[Path, dict], tmp_path: Path
) -> None:
    run_a, _ = normalized_run
    config_b = resolve_run_config("ppo", "CartPole", seed=1, steps=128, overrides=TINY)
    run_b = train_run(config_b, out=tmp_path / "b", progress=False)
    out = tmp_path / "probe"
    argv = [str(run_a), "--interpolate", str(run_b), "--measures", "trace", "--batch", "256", "--episodes", "2"]
    assert run_cli(probe_main, [*argv, "--out", str(out), "--no-metrics"]) == 0
    result = json.loads((out / "probe.json").read_text())
    path = result["interpolation"]
    alphas = np.array(path["alphas"])
    np.testing.assert_allclose(alphas, np.arange(-5, 26) / 20)  # the default 20 steps with a 0.25 margin
    ends = [int(np.argmin(np.abs(alphas - e))) for e in (0.0, 1.0)]
    assert path["loss"][ends[0]] == pytest.approx(result["loss"]["value"], rel=1e-5)  # alpha 0 is run A itself
    flat = [torch.cat([p.detach().reshape(-1) for p in algos.load_model(r / "model.zip").policy.parameters()])
            for r in (run_a, run_b)]  # fmt: skip
    assert path["distance"] == pytest.approx(float((flat[0] - flat[1]).norm()), rel=1e-5)
    policy_a = load_policy(run_a)
    replicates = result["config"]["replicate_seeds"]  # the path is measured on each replicate, then averaged
    own = np.mean([rollout_returns(policy_a, CARTPOLE, [{}], episodes=2, seed=subseed(s, "evaluation"))[0, 0].mean()
                   for s in replicates])  # fmt: skip
    assert path["return"][ends[0]] == pytest.approx(own, rel=1e-12)  # alpha 0 is run A, on the probe's episodes
    assert path["same_observation_normalizer"] is False  # A normalises observations, B does not
    # each replicate's barriers by hand from its own curves (max of the loss inside [0, 1] above the ends' mean,
    # the ends' mean return above the lowest inside), then pooled as their mean
    arrays = np.load(out / "probe.npz")
    np.testing.assert_array_equal(arrays["interpolation_alphas"], alphas)
    inside = (alphas >= 0) & (alphas <= 1)
    loss, returns = arrays["interpolation.loss_batches"], arrays["interpolation.return_batches"]
    assert loss.shape == returns.shape == (len(replicates), len(alphas))
    loss_barriers = loss[:, inside].max(1) - 0.5 * (loss[:, ends[0]] + loss[:, ends[1]])
    return_barriers = 0.5 * (returns[:, ends[0]] + returns[:, ends[1]]) - returns[:, inside].min(1)
    np.testing.assert_allclose(arrays["interpolation.loss_barrier_batches"], loss_barriers, rtol=1e-6)
    np.testing.assert_allclose(arrays["interpolation.return_barrier_batches"], return_barriers, rtol=1e-12)
    assert path["loss_barrier"] == pytest.approx(loss_barriers.mean(), rel=1e-6)
    assert path["return_barrier"] == pytest.approx(return_barriers.mean(), rel=1e-12)


# -- the local executor gives up on a pool that keeps dying ------------------------------------------------------


def _always_crash(job: RunJob, study_dir: str) -> RunOutcome:
    """A worker target that kills its worker process, recording each attempt."""
    with open(Path(study_dir) / f"{job.name}.attempts", "a") as handle:
        print("attempt", file=handle, flush=True)
    os._exit(1)


def test_local_executor_stops_after_the_restart_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every run kills its worker: each break costs a pool, and past MAX_POOL_RESTARTS breaks the rest are
    reported lost without being started, instead of looping."""
    monkeypatch.setattr(executors, "MAX_POOL_RESTARTS", 1)
    jobs = [RunJob(config={}, run_id=f"r{i}", name=f"r{i}") for i in range(4)]
    outcomes: list[RunOutcome] = []
    executors.run_local(jobs, tmp_path, 1, lambda job: None, outcomes.append, _always_crash)
    assert [(o.name, o.status) for o in outcomes] == [(f"r{i}", "lost") for i in range(4)]
    assert [o.error for o in outcomes[:2]] == [executors.LOST_WORKER] * 2  # each run alone, then lost
    assert all("not started" in str(o.error) for o in outcomes[2:])
    attempts = {p.stem: len(p.read_text().splitlines()) for p in tmp_path.glob("*.attempts")}
    assert attempts == {"r0": 2, "r1": 2}  # the breaks past the limit: r2 and r3 never ran
