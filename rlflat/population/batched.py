"""The batched engine's main loop: build K learners, collect and update them together, publish each one.

Per learner the loop is SB3's ``OnPolicyAlgorithm.learn``: ``_setup_learn`` (the env reset with seeds
``seed + i``), then rollouts of ``n_steps`` and one ``train()`` each until ``total_timesteps``, with
``progress_remaining`` updated in between. What is batched is the arithmetic (one forward call per env step and
one forward/backward per minibatch for all K, matrix products per learner inside them, see
:mod:`rlflat.population.network`); what stays per learner is everything that draws randomness or reads a
learner's own hyperparameters.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from typing import Any

import torch as th
from tqdm.auto import tqdm

from rlflat.algos.names import parse_algorithm
from rlflat.population.envs import CartPoleGroup, VecEnvGroup
from rlflat.population.learners import Learner, build_learner, finish_model, now, publish
from rlflat.population.members import Member, MemberResult
from rlflat.population.network import StackedActorCritic, check_policy
from rlflat.population.optim import StackedAdam
from rlflat.population.rollout import Rollout, collect
from rlflat.population.update import Shared, Trainer

BATCHED_RULES = ("plain", "sam", "asam")
"""The update rules the batched trainer implements (:mod:`rlflat.population.update`); others train alone."""

UNSUPPORTED = {
    "swa_start": "stochastic weight averaging",
    "dropout": "consistent dropout (masks stored with the rollout: rlflat.algos.dropout)",
    "critic_dropout": "consistent dropout (masks stored with the rollout: rlflat.algos.dropout)",
}


def unsupported(config: dict[str, Any], device: str) -> str | None:
    """Why the batched engine cannot train ``config`` (None if it can); such populations train one run each."""
    if th.device(device).type != "cpu":
        return f"device {device}"
    base, rule = parse_algorithm(config["algo"])
    if base not in ("ppo", "pg"):
        return f"algorithm {config['algo']}"
    if rule not in BATCHED_RULES:  # e.g. lysam: its step is not SAM's, and the batched update knows only these
        return f"update rule {rule}"
    from rlflat.train_monitoring import Monitoring

    if Monitoring.from_json(config.get("monitoring")).active:
        return "training monitoring (tensorboard, checkpoints, periodic evaluation)"
    hyperparameters = config["hyperparameters"]
    for key, what in UNSUPPORTED.items():
        if hyperparameters.get(key) not in (None, False):
            return what
    return None


def supports(config: dict[str, Any], device: str) -> bool:
    return unsupported(config, device) is None


def train_batched(
    members: list[Member], extra: dict[str, str], *, progress: bool, device: str, episodes: int | None = None
) -> list[MemberResult] | None:
    """Train ``members`` together; None if their policy cannot be stacked (the caller trains them one by one)."""
    from rlflat.train import EVAL_EPISODES

    learners = prepare(members, extra, device)
    if check_policy(learners[0].model.policy) is not None:  # type: ignore[arg-type]
        return None
    total = int(members[0].config["hyperparameters"]["total_timesteps"])
    wall = run(learners, total, progress=progress)
    for learner in learners:
        if not learner.failed:
            publish(learner, wall / len(learners), episodes or EVAL_EPISODES)
    return [MemberResult(lr.member.run_dir, "failed" if lr.failed else "ok", lr.error) for lr in learners]


def prepare(members: list[Member], extra: dict[str, str], device: str = "cpu") -> list[Learner]:
    """Build every learner and reset its env as SB3's ``_setup_learn`` does at the start of ``learn``."""
    learners = [build_learner(m, extra, device) for m in members]
    for learner in learners:
        total = int(learner.member.config["hyperparameters"]["total_timesteps"])
        learner.model._setup_learn(total, None, True, "population", False)
        learner.last_obs = learner.model._last_obs  # type: ignore[assignment]
        learner.last_episode_starts = learner.model._last_episode_starts
    return learners


def run(
    learners: list[Learner],
    total: int,
    *,
    progress: bool,
    simulate: bool = True,
    on_rollout: Callable[[Rollout], None] | None = None,
) -> float:
    """Train every learner to ``total`` steps (a learner that diverges drops out). Returns the wall time.

    ``simulate``: step CartPole on the batched simulator (False: on the learners' own VecEnvs, the reference).
    ``on_rollout``: called with each filled rollout buffer before the update (tests compare it with SB3's).
    """

    policy = learners[0].model.policy
    net = StackedActorCritic(policy)  # type: ignore[arg-type]
    params = StackedActorCritic.stack([learner.model.policy for learner in learners])  # type: ignore[misc]
    for tensor in params.values():
        tensor.requires_grad_(True)
    optimizer = StackedAdam.from_optimizers(params, [learner.model.policy.optimizer for learner in learners])
    trainer = Trainer(Shared.of(net, learners[0]), params, optimizer, learners)
    model = learners[0].model
    n_envs, n_steps = model.n_envs, model.n_steps
    obs_dim = math.prod(model.observation_space.shape or (1,))
    act_dim = math.prod(model.action_space.shape or (1,))
    buffer = Rollout.empty(len(learners), n_steps, n_envs, obs_dim, act_dim)
    envs = training_envs(learners, simulate)
    bar = tqdm(total=total, desc=f"population K={len(learners)}", unit="step", disable=None if progress else True,
               leave=False, file=sys.stderr)  # fmt: skip
    start = now()
    done = 0
    progress_remaining = 1.0
    try:
        while done < total:
            collect(net, params, learners, envs, n_steps, start, buffer)
            done += n_envs * n_steps
            if on_rollout is not None:
                on_rollout(buffer)
            progress_remaining = 1.0 - float(done) / float(total)
            for learner in learners:
                learner.model._current_progress_remaining = progress_remaining
            trainer.train(buffer, progress_remaining)
            track(learners, params, optimizer, trainer.lrs, buffer)
            bar.n = done
            bar.refresh()
            if all(learner.failed for learner in learners):
                break
    finally:
        bar.close()
    wall = now() - start
    names = list(params)
    for k, learner in enumerate(learners):
        if learner.failed:
            continue
        StackedActorCritic.unstack_into(params, [learner.model.policy], [k])  # type: ignore[list-item]
        optimizer.load_into(learner.model.policy.optimizer, names, params, k, trainer.lrs[k])
        finish_model(learner, done, progress_remaining)
    return wall


def track(
    learners: list[Learner], params: dict[str, th.Tensor], optimizer: StackedAdam, lrs: list[float], buffer: Rollout
) -> None:
    """Sharpness tracking per learner, as a single run's ``update_observer``: learner k's parameters, optimiser
    state and rollout (flattened, as ``get()`` leaves SB3's buffer) go into its SB3 model, then its tracker
    measures that model (reading, never writing, so training is unchanged)."""
    names = list(params)
    for k, learner in enumerate(learners):
        if learner.tracker is None or learner.failed:
            continue
        model = learner.model
        StackedActorCritic.unstack_into(params, [model.policy], [k])  # type: ignore[list-item]
        optimizer.load_into(model.policy.optimizer, names, params, k, lrs[k])
        rollout = model.rollout_buffer
        for name, source in (("observations", "observations"), ("actions", "actions"), ("values", "values"),
                             ("log_probs", "log_probs"), ("advantages", "advantages"), ("returns", "returns")):  # fmt: skip
            setattr(rollout, name, buffer.flat(source)[k].numpy().copy())
        rollout.generator_ready = True
        learner.tracker(model)


def training_envs(learners: list[Learner], simulate: bool = True) -> VecEnvGroup | CartPoleGroup:
    """CartPole on the batched simulator; any other task on the learners' own VecEnvs (already reset)."""
    config = learners[0].member.config
    if simulate and config["task_id"] == "CartPole-v1" and not config["hyperparameters"].get("normalize", False):
        n_envs = int(config["hyperparameters"].get("n_envs", 1))
        group = CartPoleGroup([int(learner.member.config["seed"]) for learner in learners], n_envs)
        first = group.reset()
        for k, learner in enumerate(learners):
            learner.last_obs = first[k]
        return group
    return VecEnvGroup([learner.env for learner in learners])
