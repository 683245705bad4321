"""configs/flatness_roads.yaml (issue 24): the sweep's own loader accepts and expands it, one lever per arm, >= 8 seeds
per arm, a batch-size dose-response from 32 to full batch. No training."""

from __future__ import annotations

import collections
from pathlib import Path
from typing import Any

import pytest

from rlflat.sweep.config import check_stage_options, expand_runs, load_study_config

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "flatness_roads.yaml"
SHARED = {"n_envs": 8, "n_steps": 256, "n_epochs": 10}
LEVERS = {"batch_size", "weight_decay", "swa_start", "learning_rate", "dropout"}


@pytest.fixture(scope="module")
def runs() -> list[Any]:
    study = load_study_config(CONFIG)
    check_stage_options(study)
    return expand_runs(study)


def _arm(run: Any) -> tuple[str, tuple[tuple[str, Any], ...]]:
    settings = {k: v for k, v in run.overrides.items() if k not in SHARED}
    return run.config["task"], tuple(sorted(settings.items()))


def test_every_arm_is_one_lever_with_eight_seeds(runs: list[Any]) -> None:
    arms = collections.defaultdict(set)
    for run in runs:
        arms[_arm(run)].add(run.config["seed"])
        assert {k: run.config["hyperparameters"][k] for k in SHARED} == SHARED  # one rollout for every arm
        assert len(_arm(run)[1]) <= 1 and {k for k, _ in _arm(run)[1]} <= LEVERS
    assert all(len(seeds) >= 8 for seeds in arms.values())
    for task in ("CartPole", "Pendulum"):
        levers = collections.Counter(key for t, setting in arms if t == task for key, _ in setting)
        assert levers["weight_decay"] == 3 and levers["swa_start"] == 2
        assert levers["learning_rate"] == 2 and levers["dropout"] == 2
        assert (task, ()) in arms  # plain ppo


def test_batch_sizes_span_32_to_full_batch(runs: list[Any]) -> None:
    rollout = SHARED["n_envs"] * SHARED["n_steps"]
    for task in ("CartPole", "Pendulum"):
        sizes = {run.config["hyperparameters"].get("batch_size", 64) for run in runs if run.config["task"] == task}
        assert min(sizes) == 32 and max(sizes) == rollout and all(rollout % size == 0 for size in sizes)
        assert len(sizes) == 7


def test_dropout_arms_drop_only_the_actor(runs: list[Any]) -> None:
    rates = {run.config["hyperparameters"].get("dropout") for run in runs} - {None}
    assert rates == {0.1, 0.2}
    assert all("critic_dropout" not in run.config["hyperparameters"] for run in runs)
    assert len(runs) == 264  # CartPole's plain arm is its batch_size 256 arm (one run id)
