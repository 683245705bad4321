"""The population engine trains each learner exactly as its single run would (issue 19, item 5a/5b).

(a) K = 1 against ``stable_baselines3.PPO`` and rlflat's single-run PG, ppo_sam and pg_asam: the first
rollout is identical (observations, actions, rewards, episode starts, values, log-probs, advantages, returns)
and the parameters after the updates are equal bit for bit (so within 1e-6 relative, the issue's bound). The
operation order allows bitwise equality everywhere: matrix products call ``nn.Linear``'s own kernels per
learner (``rlflat.population.network.StackedLinear``) and every other operation reproduces the single run's
arithmetic (``test_stacked_adam_and_clipping_are_torch_bit_for_bit``).
(b) Independence: learner k inside a population of 8 with mixed hyperparameters (learning rate and its
schedule, ent_coef, vf_coef, clip_range, clip_range_vf, gamma, gae_lambda, max_grad_norm, target_kl,
weight_decay (AdamW beside Adam), rho) trains bit for bit
as it does alone in the engine; the same learner with its learning rate changed by 1e-6 relative does not (so
the comparison can fail).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch as th
from stable_baselines3 import PPO
from stable_baselines3.common.callbacks import BaseCallback

from rlflat import algos
from rlflat.errors import RlflatError
from rlflat.population import Member, shape_key, train_population
from rlflat.population.batched import prepare, run
from rlflat.population.optim import StackedAdam, clip_by_global_norm
from rlflat.population.rollout import Rollout
from rlflat.tasks import load_task
from rlflat.train import resolve_run_config, train_run, training_env

SMALL = {"n_steps": 16, "batch_size": 64, "n_epochs": 3, "learning_rate": 1e-3, "clip_range": 0.2}
"""Tiny CartPole PPO: 8 envs x 16 steps = 128 samples, 2 minibatches, 3 epochs; constant schedules so the
first update (at progress 0) does not have a zero learning rate."""


def _config(algo: str, seed: int = 3, steps: int = 128, **overrides: Any) -> dict[str, Any]:
    base = dict(SMALL) if algo.startswith("ppo") else {"n_steps": 16, "learning_rate": 1e-3}
    return resolve_run_config(algo, "CartPole", seed=seed, steps=steps, overrides={**base, **overrides})


def _engine(configs: list[dict[str, Any]], simulate: bool = True) -> tuple[list[dict[str, np.ndarray]], list[Rollout]]:
    """Train ``configs`` as one population; each learner's final parameters and every rollout (copied)."""
    learners = prepare([Member(c, Path(f"/nonexistent/{i}")) for i, c in enumerate(configs)], {})
    rollouts: list[Rollout] = []

    def keep(buffer: Rollout) -> None:
        rollouts.append(Rollout(**{k: v.copy() for k, v in vars(buffer).items()}))

    run(learners, int(configs[0]["hyperparameters"]["total_timesteps"]), progress=False, simulate=simulate,
        on_rollout=keep)  # fmt: skip
    assert not any(lr.failed for lr in learners), [lr.error for lr in learners]
    params = [{n: p.detach().numpy().copy() for n, p in lr.model.policy.named_parameters()} for lr in learners]
    return params, rollouts


class _FirstRollout(BaseCallback):
    def __init__(self) -> None:
        super().__init__()
        self.buffer: dict[str, np.ndarray] = {}

    def _on_step(self) -> bool:
        return True

    def _on_rollout_end(self) -> None:
        if not self.buffer:
            b = self.model.rollout_buffer
            self.buffer = {k: getattr(b, k).copy() for k in ("observations", "actions", "rewards", "episode_starts",
                                                                "values", "log_probs", "advantages", "returns")}  # fmt: skip


def _reference(config: dict[str, Any], sb3: bool) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """One rollout and one update on the single-run path: SB3's own PPO (``sb3``) or rlflat's model."""
    spec = load_task(config["task"])
    hp = dict(config["hyperparameters"])
    env = training_env(spec, hp, config["seed"])
    if sb3:
        model = PPO("MlpPolicy", env, seed=config["seed"], **algos.constructor_kwargs(hp))
    else:
        model = algos.build_model(config["algo"], env, hp, seed=config["seed"])
    callback = _FirstRollout()
    model.learn(int(hp["total_timesteps"]), callback=callback)
    return {n: p.detach().numpy().copy() for n, p in model.policy.named_parameters()}, callback.buffer


def _relative_error(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> float:
    return max(float(np.abs(a[n] - b[n]).max() / np.abs(a[n]).max()) for n in a)


@pytest.mark.parametrize(("algo", "sb3"), [("ppo", True), ("pg", False), ("ppo_sam", False), ("pg_asam", False)])
def test_k1_first_rollout_identical_and_updates_bit_for_bit(algo: str, sb3: bool) -> None:
    config = _config(algo, steps=384)  # three rollouts and updates
    expected_params, expected = _reference(config, sb3)
    (params,), (rollout, *_) = _engine([config])
    for name, array in expected.items():
        ours = getattr(rollout, name)[0]
        assert np.array_equal(ours.reshape(array.shape), array), name
    assert _relative_error(params, expected_params) < 1e-6
    assert all(np.array_equal(params[n], expected_params[n]) for n in params)
    before = {n: p.detach().numpy() for n, p in algos.build_model(
        config["algo"], training_env(load_task("CartPole"), config["hyperparameters"], 3),
        dict(config["hyperparameters"]), seed=3).policy.named_parameters()}  # fmt: skip
    assert _relative_error(params, before) > 1e-4  # the update moved the parameters: the check is not vacuous


MIXED = [
    {},
    {"learning_rate": 3e-4, "ent_coef": 0.01},
    {"vf_coef": 0.9, "clip_range": 0.1, "max_grad_norm": 0.3},
    {"gamma": 0.9, "gae_lambda": 0.5},
    {"target_kl": 0.002},  # stops early: masked while the others go on
    {"learning_rate": "lin_2e-3", "clip_range": "lin_0.3", "weight_decay": 0.01},  # AdamW beside Adam
    {"max_grad_norm": 5.0, "learning_rate": 3e-3, "clip_range_vf": 0.2},
    {"ent_coef": 0.05, "vf_coef": 0.1, "weight_decay": 0.1},
]


@pytest.mark.parametrize("algo", ["ppo", "ppo_sam"])
def test_learner_in_population_of_8_is_bit_identical_to_it_alone(algo: str) -> None:
    extra = {"rho": 0.1} if algo == "ppo_sam" else {}
    configs = [_config(algo, seed=10 + i, steps=384, **m, **(extra if i % 2 else {})) for i, m in enumerate(MIXED)]
    together, _ = _engine(configs)
    for k in (0, 4, 6, 7):
        (alone,), _ = _engine([configs[k]])
        for name in alone:
            assert np.array_equal(together[k][name], alone[name]), (k, name)
    lr = float(configs[1]["hyperparameters"]["learning_rate"])
    (nudged,), _ = _engine([_config(algo, seed=11, steps=384, **{**MIXED[1], "learning_rate": lr * (1 + 1e-6)})])
    assert any(not np.array_equal(together[1][n], nudged[n]) for n in nudged)


@pytest.mark.parametrize(
    ("algo", "task", "overrides"),
    [
        ("ppo", "Pendulum", {"n_steps": 32, "batch_size": 64, "n_epochs": 2}),  # gSDE (sde_sample_freq 4), Box
        ("ppo_sam", "Acrobot", {"n_steps": 8, "batch_size": 64, "n_epochs": 2}),  # VecNormalize per learner
        ("pg", "Pendulum", {"n_steps": 32, "use_sde": False}),  # Gaussian with a state-independent log_std
        ("ppo", "MountainCarContinuous", {"n_steps": 64, "batch_size": 32, "n_epochs": 2}),  # gSDE + VecNormalize
    ],
)
def test_other_tasks_match_the_single_run_in_a_population_of_2(algo: str, task: str, overrides: dict[str, Any]) -> None:
    configs = [
        resolve_run_config(algo, task, seed=s, steps=512, overrides={**overrides, "learning_rate": lr})
        for s, lr in ((4, 1e-3), (5, 3e-4))
    ]
    together, _ = _engine(configs)
    expected, _ = _reference(configs[0], sb3=False)
    assert all(np.array_equal(together[0][n], expected[n]) for n in expected)


def test_batched_cartpole_env_equals_the_learners_vecenvs() -> None:
    configs = [_config("ppo", seed=s, steps=1024) for s in (0, 5)]
    simulated, sim_rollouts = _engine(configs, simulate=True)
    reference, ref_rollouts = _engine(configs, simulate=False)
    for a, b in zip(simulated, reference, strict=True):
        assert all(np.array_equal(a[n], b[n]) for n in a)
    for a, b in zip(sim_rollouts, ref_rollouts, strict=True):
        assert np.array_equal(a.observations, b.observations) and np.array_equal(a.rewards, b.rewards)


def test_stacked_adam_and_clipping_are_torch_bit_for_bit() -> None:
    gen = th.Generator().manual_seed(0)
    weight = th.nn.Parameter(th.randn(64, 4, generator=gen))
    bias = th.nn.Parameter(th.randn(64, generator=gen))
    optimizer = th.optim.AdamW([weight, bias], lr=1e-3, eps=1e-5, weight_decay=0.1)
    stacked = {"w": weight.detach().clone()[None], "b": bias.detach().clone()[None]}
    adam = StackedAdam(stacked, (0.9, 0.999), 1e-5, [0.1])
    for step in range(4):
        lr = 7e-4 * (step + 1)
        optimizer.param_groups[0]["lr"] = lr
        weight.grad, bias.grad = th.randn(64, 4, generator=gen), th.randn(64, generator=gen)
        grads = [weight.grad.clone()[None], bias.grad.clone()[None]]
        th.nn.utils.clip_grad_norm_([weight, bias], 0.5)
        clip_by_global_norm(grads, [0.5])
        assert th.equal(grads[0][0], weight.grad) and th.equal(grads[1][0], bias.grad)
        optimizer.step()
        adam.step(stacked, {"w": grads[0], "b": grads[1]}, [lr])
        assert th.equal(stacked["w"][0], weight.detach()) and th.equal(stacked["b"][0], bias.detach())


def test_population_publishes_what_train_run_writes(tmp_path: Path) -> None:
    configs = [_config("ppo", seed=s, steps=256) for s in (1, 2)]
    results = train_population([Member(c, tmp_path / f"pop{i}") for i, c in enumerate(configs)], progress=False)
    assert [r.status for r in results] == ["ok", "ok"]
    single = train_run(configs[0], out=tmp_path / "single", progress=False)
    pop = tmp_path / "pop0"
    assert sorted(p.name for p in pop.iterdir()) == sorted(p.name for p in single.iterdir())
    ours, theirs = json.loads((pop / "config.json").read_text()), json.loads((single / "config.json").read_text())
    assert ours["engine"] == "population" and len(ours["population_id"]) == 10
    assert set(ours) - {"engine", "population_id"} == set(theirs)
    assert (
        ours["run_id"] == theirs["run_id"] and ours["effective_hyperparameters"] == theirs["effective_hyperparameters"]
    )
    metrics = json.loads((pop / "metrics.json").read_text())
    assert metrics["status"] == "ok" and set(metrics["train"]) == set(
        json.loads((single / "metrics.json").read_text())["train"]
    )
    model, reference = PPO.load(pop / "model.zip"), PPO.load(single / "model.zip")
    loaded = {n: p.detach().numpy() for n, p in model.policy.named_parameters()}
    assert all(np.array_equal(loaded[n], p.detach().numpy()) for n, p in reference.policy.named_parameters())
    for attribute in ("num_timesteps", "_n_updates", "_current_progress_remaining", "_iteration"):
        assert getattr(model, attribute) == getattr(reference, attribute), attribute
    ours_state = model.policy.optimizer.state_dict()
    theirs_state = reference.policy.optimizer.state_dict()
    assert ours_state["param_groups"] == theirs_state["param_groups"]
    for key, state in theirs_state["state"].items():
        assert all(th.equal(ours_state["state"][key][k], v) for k, v in state.items())
    assert metrics["train"]["return_mean"] == json.loads((single / "metrics.json").read_text())["train"]["return_mean"]
    again = train_population([Member(c, tmp_path / f"pop{i}") for i, c in enumerate(configs)], progress=False)
    assert again == results  # published members are not retrained


def test_sharpness_tracking_per_learner_equals_the_single_runs(tmp_path: Path) -> None:
    overrides = {"track_sharpness": 1, "n_steps": 16, "batch_size": 128, "n_epochs": 2, "learning_rate": 1e-3}
    configs = [resolve_run_config("ppo_sam", "CartPole", seed=s, steps=256, overrides=overrides) for s in (1, 2)]
    train_population([Member(c, tmp_path / f"pop{i}") for i, c in enumerate(configs)], progress=False)
    single = train_run(configs[0], out=tmp_path / "single", progress=False)
    ours = list(csv.reader((tmp_path / "pop0" / "train.csv").read_text().splitlines()))
    theirs = list(csv.reader((single / "train.csv").read_text().splitlines()))
    assert ours[0] == theirs[0] and "sharpness" in ours[0] and len(ours) == len(theirs)
    timing = {ours[0].index("wall_seconds"), ours[0].index("tracking_seconds")}
    for a, b in zip(ours, theirs, strict=True):
        assert [v for i, v in enumerate(a) if i not in timing] == [v for i, v in enumerate(b) if i not in timing]
    path = json.loads((tmp_path / "pop0" / "metrics.json").read_text())["train"]["sharpness_path"]
    assert path == json.loads((single / "metrics.json").read_text())["train"]["sharpness_path"]
    assert path["n_tracked"] == 2


def test_a_diverging_learner_fails_alone(tmp_path: Path) -> None:
    """A learner whose loss becomes infinite fails (and, like a diverged single run, publishes nothing) while the
    other trains on exactly as it would alone."""
    wild = _config("ppo", seed=1, steps=384, learning_rate=1e30, max_grad_norm=1e30)
    tame = _config("ppo", seed=2, steps=384)
    with pytest.raises(algos.TrainingDiverged):
        train_run(wild, out=tmp_path / "single", progress=False)
    results = train_population([Member(wild, tmp_path / "wild"), Member(tame, tmp_path / "tame")], progress=False)
    assert [r.status for r in results] == ["failed", "ok"]
    assert results[0].error is not None and "training diverged at iteration" in results[0].error
    assert not (tmp_path / "wild").exists() and not (tmp_path / "single").exists()
    (alone,), _ = _engine([tame])
    loaded = PPO.load(tmp_path / "tame" / "model.zip")
    assert all(np.array_equal(p.detach().numpy(), alone[n]) for n, p in loaded.policy.named_parameters())


def test_what_the_batched_engine_does_not_cover_trains_one_run_each(tmp_path: Path) -> None:
    """swa_start is not batched: the members go through train_run, with the population's config keys."""
    from rlflat.population.batched import unsupported

    configs = [_config("ppo", seed=s, steps=256, swa_start=0.5) for s in (1, 2)]
    assert unsupported(configs[0], "cpu") == "stochastic weight averaging"
    assert unsupported(_config("ppo"), "cpu") is None
    results = train_population([Member(c, tmp_path / f"m{i}") for i, c in enumerate(configs)], progress=False)
    assert [r.status for r in results] == ["ok", "ok"]
    record = json.loads((tmp_path / "m1" / "config.json").read_text())
    assert record["engine"] == "population" and record["seed"] == 2


def test_differing_shapes_are_refused_in_one_line(tmp_path: Path) -> None:
    a, b = _config("ppo"), _config("ppo", n_steps=32)
    assert shape_key(a) != shape_key(b)
    assert shape_key(a) == shape_key(_config("ppo", seed=9, learning_rate=5e-4, gamma=0.9))
    with pytest.raises(RlflatError, match="n_steps 16 != 32") as info:
        train_population([Member(a, tmp_path / "a"), Member(b, tmp_path / "b")], progress=False)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "a").exists()


def test_an_update_rule_the_batched_trainer_lacks_trains_alone(tmp_path: Path) -> None:
    """ppo_lysam's step is not SAM's: the batched trainer (plain/SAM/ASAM) must not take it, or it would train
    Lee & Yoon's learners with Foret's step. Its members go through train_run, equal to a single run."""
    from rlflat.algos import load_model
    from rlflat.population.batched import unsupported
    from rlflat.train import train_run

    configs = [_config("ppo_lysam", seed=s, steps=256, rho=0.01) for s in (1, 2)]
    assert unsupported(configs[0], "cpu") == "update rule lysam"
    assert unsupported(_config("ppo_asam"), "cpu") is None
    results = train_population([Member(c, tmp_path / f"m{i}") for i, c in enumerate(configs)], progress=False)
    assert [r.status for r in results] == ["ok", "ok"]
    train_run(configs[1], out=tmp_path / "alone", progress=False)
    together = load_model(tmp_path / "m1" / "model.zip").policy.state_dict()
    alone = load_model(tmp_path / "alone" / "model.zip").policy.state_dict()
    assert all(th.equal(together[k], alone[k]) for k in alone)
