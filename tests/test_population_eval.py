"""Probe and evaluate K runs at once (rlflat.population.evaluate / .probe) against doing each run alone.

The reference is the single-run code itself, run on a copy of each run directory: evaluation must give
bit-identical returns and the same files; the probe every scalar within ``RTOL``.
"""

from __future__ import annotations

import json
import math
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from rlflat.evaluate import evaluate_run
from rlflat.evaluate.rollout import _rollout
from rlflat.policy import load_policy
from rlflat.population.evaluate import evaluate_runs, population_rollout
from rlflat.population.probe import RTOL, probe_runs
from rlflat.population.rendezvous import Rendezvous, intercepted, run_members
from rlflat.probe.run import probe_run
from rlflat.tasks import load_task
from rlflat.train import resolve_run_config, train_run

TINY = {"n_envs": 2, "n_steps": 64, "batch_size": 64, "n_epochs": 1}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, list[Path]]]:
    """Three barely trained CartPole runs and two Pendulum ones (different seeds: different policies)."""
    root = tmp_path_factory.mktemp("population_runs")
    out: dict[str, list[Path]] = {"CartPole": [], "Pendulum": []}
    for task, seeds in (("CartPole", (0, 1, 2)), ("Pendulum", (0, 1))):
        for seed in seeds:
            config = resolve_run_config("ppo", task, seed=seed, steps=128, overrides=TINY)
            out[task].append(train_run(config, out=root / f"{task}-{seed}", progress=False))
    yield out


def _copies(paths: list[Path], root: Path, tag: str) -> list[Path]:
    return [Path(shutil.copytree(p, root / f"{tag}-{p.name}")) for p in paths]


@pytest.mark.parametrize(
    ("task", "noise", "deterministic", "protocol"),
    [
        ("CartPole", (0.2, 0.05), True, "default"),
        ("Pendulum", (0.3, 0.1), True, "default"),
        ("Pendulum", (0.0, 0.0), False, "default"),
        ("Pendulum", (2.5, 0.0), True, "lee_yoon"),  # noise on the clipped action: each member under the protocol
    ],
)
def test_population_rollout_is_each_single_rollout_bit_for_bit(
    runs: dict[str, list[Path]], task: str, noise: tuple[float, float], deterministic: bool, protocol: str
) -> None:
    spec = load_task(task).with_protocol(protocol)
    policies = [load_policy(p, spec) for p in runs[task]]
    if protocol == "lee_yoon":  # means past the bounds, where clipping before the noise changes the action
        for policy in policies:
            policy.params["action_net.bias"] += 3.0
    first = next(iter(spec.parameters))
    settings = [{}, {first: spec.parameters[first].nominal * 1.5}, {first: spec.parameters[first].nominal * 0.7}]
    action_noise, obs_noise = np.array([0.0, noise[0], noise[0]]), np.array([noise[1], 0.0, noise[1]])
    options: dict[str, Any] = {"seed": 3, "deterministic": deterministic, "rng_seed": 5}
    together = population_rollout(policies, spec, settings, action_noise, obs_noise, 4, **options)
    for k, policy in enumerate(policies):
        alone = _rollout(policy, spec, settings, action_noise, obs_noise, 4, **options)
        np.testing.assert_array_equal(together[k], alone[0])
    if protocol == "default":  # (the shifted lee_yoon policies saturate alike: their returns may coincide)
        assert len({together[k].tobytes() for k in range(len(policies))}) == len(policies)  # the policies differ


def test_evaluate_runs_writes_exactly_what_evaluate_run_writes(runs: dict[str, list[Path]], tmp_path: Path) -> None:
    options: dict[str, Any] = {"episodes": 3, "nominal_episodes": 5, "suite": None}
    alone_dirs = _copies(runs["CartPole"], tmp_path, "alone")
    together_dirs = _copies(runs["CartPole"], tmp_path, "together")
    alone = [evaluate_run(d, progress=False, **options) for d in alone_dirs]
    together = evaluate_runs(together_dirs, **options)
    for (table, block), result, a, b in zip(alone, together, alone_dirs, together_dirs, strict=True):
        assert not isinstance(result, BaseException), result
        pd.testing.assert_frame_equal(result[0], table, check_exact=True)
        assert result[0].attrs == table.attrs
        assert _moved(block, a, b) == _moved(result[1], b, b) and result[1]["policy"] == str(b)
        saved_a, saved_b = pd.read_parquet(a / "robustness.parquet"), pd.read_parquet(b / "robustness.parquet")
        pd.testing.assert_frame_equal(saved_a, saved_b, check_exact=True)
        metrics_a, metrics_b = (json.loads((d / "metrics.json").read_text()) for d in (a, b))
        assert _moved(metrics_a["robustness"], a, b) == _moved(metrics_b["robustness"], b, b)


def _moved(block: dict[str, Any], old: Path, new: Path) -> str:
    """A block as JSON with the run directory's path written as ``new`` (the copies differ only there)."""
    return json.dumps(block, sort_keys=True, default=str).replace(str(old), str(new))


def test_a_failing_run_fails_alone_and_the_others_are_evaluated(runs: dict[str, list[Path]], tmp_path: Path) -> None:
    good = _copies(runs["CartPole"][:2], tmp_path, "ok")
    results = evaluate_runs([good[0], tmp_path / "missing", good[1]], episodes=2, nominal_episodes=2)
    assert isinstance(results[1], BaseException) and "does not exist" in str(results[1])
    assert not isinstance(results[0], BaseException) and not isinstance(results[2], BaseException)
    assert (good[0] / "robustness.parquet").exists() and (good[1] / "robustness.parquet").exists()


PROBE = {
    "batches": 2,
    "batch": 64,
    "batch_envs": 2,
    "measures": ("trace", "fisher", "perturbation", "worst_case", "return_sharpness", "cliff"),
    "trace_probes": 2,
    "n_directions": 2,
    "sigmas": (0.1, 1.0),
    "episodes": 2,
    "ascent_steps": 2,
    "return_directions": 2,
    "return_episodes": 2,
    "cliff_points": 10,
    "exact_threshold": 0,
}


def _scalars(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        return {k: v for key, item in value.items() for k, v in _scalars(item, f"{prefix}.{key}").items()}
    if isinstance(value, list):
        return {k: v for i, item in enumerate(value) for k, v in _scalars(item, f"{prefix}[{i}]").items()}
    return {prefix: value}


def test_probe_runs_equal_probing_each_run_alone_within_tolerance(runs: dict[str, list[Path]], tmp_path: Path) -> None:
    alone_dirs = _copies(runs["CartPole"], tmp_path, "alone")
    together_dirs = _copies(runs["CartPole"], tmp_path, "together")
    alone = [probe_run(d, progress=False, **PROBE) for d in alone_dirs]
    together = probe_runs(together_dirs, **PROBE)
    compared = 0
    for single, batched, a, b in zip(alone, together, alone_dirs, together_dirs, strict=True):
        assert not isinstance(batched, BaseException), batched
        left, right = _scalars(single), _scalars(batched)
        assert left.keys() == right.keys()
        for key, x in left.items():
            y = right[key]
            if isinstance(x, float) and isinstance(y, float):
                compared += 1
                assert (math.isnan(x) and math.isnan(y)) or math.isclose(x, y, rel_tol=RTOL, abs_tol=1e-12), key
            elif isinstance(x, str) and str(a) in x:
                assert y == x.replace(str(a), str(b)), key
            else:
                assert x == y, key
        npz_a, npz_b = np.load(a / "probe.npz"), np.load(b / "probe.npz")
        assert set(npz_a.files) == set(npz_b.files)
        for name in npz_a.files:
            np.testing.assert_allclose(npz_b[name], npz_a[name], rtol=RTOL, atol=1e-12, err_msg=name)
    assert compared > 50  # the comparison covered the measures, not an empty block


def test_rendezvous_batches_equal_calls_and_lets_outsiders_and_failures_through() -> None:
    """Calls meet only when every live member waits; keys split groups; a raising member releases the rest."""

    class Target:
        @staticmethod
        def double(x: int, tag: str) -> int:
            return 2 * x

    batches: list[list[int]] = []

    def batched(requests: Any) -> list[int]:
        batches.append([r.args[0] for r in requests])
        return [2 * r.args[0] for r in requests]

    rendezvous = Rendezvous(4)

    def member(k: int) -> list[int]:
        if k == 3:
            raise RuntimeError("member 3 failed")
        return [Target.double(10 * k + step, "a" if k < 2 else "b") for step in range(2)]

    with intercepted(rendezvous, Target, "double", lambda x, tag: tag, batched):
        assert Target.double(7, "a") == 14  # this thread is no member: the original runs
        results = run_members(rendezvous, [lambda k=k: member(k) for k in range(4)])
        outsider: list[int] = []
        thread = threading.Thread(target=lambda: outsider.append(Target.double(1, "a")))
        thread.start()
        thread.join()
    assert results[:3] == [[0, 2], [20, 22], [40, 42]]
    assert isinstance(results[3], RuntimeError)
    assert sorted(map(sorted, batches)) == [[0, 10], [1, 11]]  # members 0, 1 (key "a") met twice; 2 ran alone
    assert outsider == [2] and Target.double(3, "a") == 6  # restored after the block
