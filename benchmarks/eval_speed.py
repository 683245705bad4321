"""Batched robustness evaluation vs SB3's ``evaluate_policy`` looping over one Gymnasium env per setting.

Usage: ``OMP_NUM_THREADS=1 python benchmarks/eval_speed.py [model.zip | run_dir] [--task CartPole]
[--timesteps 30000] [--episodes 20] [--per-parameter 10] [--workers N] [--throughput]``. Without a model, a PPO
is trained on the task for ``--timesteps`` steps by rlflat's plain ``ppo`` (:func:`rlflat.train.train_run`) with
the spec's rl-baselines3-zoo hyperparameters. Settings: ``--per-parameter`` log-spaced factors of each
default-suite parameter (50 for CartPole, 40 for Hopper) x ``--episodes``; episode j of every setting resets
with seed j in both evaluators. Both print env-steps/s (steps of live episodes). CartPole's discrete actions
make the returns agree exactly; for continuous tasks a batched forward rounds differently from SB3's one-row
forward (~1e-9 in the actions), so the largest relative difference is printed, and the batched evaluator
is also run in-process (``workers=1``) to show the worker processes change no return at all. Tasks without
a numpy simulator (Hopper, LunarLander) step their Gymnasium envs in ``--workers`` processes (default: every
usable core) with one batched policy forward per step. Every run also prints each batched simulator's raw env-steps/s at 1k and 10k rows; ``--throughput`` adds the evaluator's end-to-end row-steps/s
(policy + simulator) per task at 1k and 10k rows; raw simulator rates are in ``benchmarks/sim_speed.py``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from stable_baselines3 import PPO
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import DummyVecEnv, VecEnv, VecNormalize

from rlflat.algos import load_model
from rlflat.errors import RlflatError
from rlflat.evaluate import has_batched_simulator, rollout_returns, sweep_factors
from rlflat.normalization import NormalizationStats
from rlflat.policy import load_policy, normalization_stats
from rlflat.tasks import TaskSpec, load_task, make_env
from rlflat.train import resolve_run_config, train_run

EPISODES = 20
PER_PARAMETER = 10


def train_ppo(task: str, timesteps: int, folder: Path) -> Path:
    """rlflat's plain ``ppo`` (trains exactly as SB3's PPO) with the task spec's zoo hyperparameters."""
    config = resolve_run_config("ppo", task, seed=0, steps=timesteps)
    return train_run(config, out=folder / "run", progress=False) / "model.zip"


def load_sb3(model_path: Path) -> BaseAlgorithm:
    """The model as an SB3 algorithm: rlflat's own class for rlflat zips, SB3's PPO for any other zip."""
    try:
        return load_model(model_path)
    except RlflatError:
        return PPO.load(model_path, device="cpu")


def settings_of(task: TaskSpec, per_parameter: int = PER_PARAMETER) -> list[dict[str, float]]:
    """``per_parameter`` factors per default-suite parameter (log-spaced over its range, nominal excluded)."""
    settings = []
    for name in task.default_suite:
        parameter = task.parameters[name]
        factors = [f for f in sweep_factors(*parameter.range, per_parameter) if f != 1.0]
        settings += [{name: parameter.nominal * f} for f in factors[:per_parameter]]
    return settings


def normalized(env: VecEnv, stats: NormalizationStats | None) -> VecEnv:
    """``env`` behind a frozen ``VecNormalize`` holding the run's observation statistics (as SB3 evaluates a
    normalised run); rewards stay raw, as the evaluator reports them."""
    if stats is None or not stats.norm_obs:
        return env
    wrapped = VecNormalize(env, training=False, norm_obs=True, norm_reward=False, clip_obs=stats.clip_obs,
                           epsilon=stats.epsilon)  # fmt: skip
    wrapped.obs_rms.mean, wrapped.obs_rms.var = stats.obs_mean.copy(), stats.obs_var.copy()
    return wrapped


def looped(
    model_path: Path,
    task: TaskSpec,
    settings: list[dict[str, float]],
    episodes: int = EPISODES,
    stats: NormalizationStats | None = None,
) -> tuple[np.ndarray, int]:
    """SB3's evaluate_policy, one env per setting, re-seeded per episode so episode j starts from seed j; a
    normalised run's observation statistics applied as SB3 applies them (``VecNormalize``, frozen).

    Returns the returns and the env steps taken."""
    model = load_sb3(model_path)
    returns = np.zeros((len(settings), episodes))
    steps = 0
    for i, dynamics in enumerate(settings):
        env = normalized(DummyVecEnv([lambda d=dynamics: Monitor(make_env(task, d))]), stats)  # type: ignore[misc]
        for j in range(episodes):
            env.seed(j)  # applied at the reset evaluate_policy starts the episode with
            rewards, lengths = evaluate_policy(
                model, env, n_eval_episodes=1, deterministic=True, return_episode_rewards=True
            )
            returns[i, j] = rewards[0]  # type: ignore[index]
            steps += int(lengths[0])  # type: ignore[index]
        env.close()
    return returns, steps


def throughput() -> None:
    """End-to-end evaluator rates (untrained MLP policy + batched simulator), 1k and 10k rows.

    ``row-steps/s`` counts every row every batched step (what the simulator computes); ``live steps/s`` only
    the steps of episodes still running (the env steps a Gymnasium loop would take).
    """
    from rlflat.tasks.sims import SIMULATORS

    print(f"\n{'task':<26}{'rows':>7}{'row-steps/s':>14}{'live steps/s':>14}{'steps':>7}")
    with tempfile.TemporaryDirectory() as tmp:
        for env_id in SIMULATORS:
            task = load_task(env_id)
            path = Path(tmp) / f"{task.alias}.zip"
            PPO("MlpPolicy", make_env(task), seed=0).save(path)
            policy = load_policy(path)
            for rows in (1000, 10_000):
                # rows = settings x episodes; every row runs to its own end, so count actual steps
                settings: list[dict[str, float]] = [{}] * (rows // 100)
                stats: dict[str, int] = {}
                start = time.perf_counter()
                rollout_returns(policy, task, settings, episodes=100, stats=stats)
                elapsed = time.perf_counter() - start
                rate = stats["rows"] * stats["steps"] / elapsed
                print(f"{env_id:<26}{rows:>7}{rate:>14,.0f}{stats['env_steps'] / elapsed:>14,.0f}{stats['steps']:>7}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?", help="model.zip or run dir of --task (default: train one)")
    parser.add_argument("--task", default="CartPole", help="task (default CartPole; e.g. Hopper, LunarLander)")
    parser.add_argument("--timesteps", type=int, default=30_000, help="PPO steps when training (default 30k)")
    parser.add_argument("--episodes", type=int, default=EPISODES, help=f"episodes per setting (default {EPISODES})")
    parser.add_argument("--per-parameter", type=int, default=PER_PARAMETER, help="factors per parameter (10)")
    parser.add_argument("--workers", type=int, default=None, help="env worker processes (default: usable cores)")
    parser.add_argument("--throughput", action="store_true", help="also time every batched task")
    args = parser.parse_args()
    if args.per_parameter < 2:  # both ends of each range, at least
        parser.error(f"--per-parameter must be >= 2 (factors over each parameter's range), got {args.per_parameter}")
    if args.episodes < 1:
        parser.error(f"--episodes must be >= 1, got {args.episodes}")
    torch.set_num_threads(1)
    task = load_task(args.task)
    with tempfile.TemporaryDirectory() as tmp:
        if args.model:
            source = Path(args.model)
        else:
            start = time.perf_counter()
            source = train_ppo(task.alias, args.timesteps, Path(tmp)).parent
            print(f"trained {task.alias} PPO ({args.timesteps} steps) in {time.perf_counter() - start:.1f} s")
        # a run dir brings its normalisation.json (both evaluators apply it); a bare zip is evaluated as is
        model_path = source / "model.zip" if source.is_dir() else source
        norm_stats = normalization_stats(source)
        normalised = norm_stats is not None and norm_stats.norm_obs
        print(f"model {source}; observation normalisation: {'yes' if normalised else 'no'}")
        settings = settings_of(task, args.per_parameter)
        policy = load_policy(source)
        rollout_returns(policy, task, settings[:1], episodes=1, workers=1)  # warm-up (imports, first forward)
        stats: dict[str, int] = {}
        start = time.perf_counter()
        batched = rollout_returns(policy, task, settings, episodes=args.episodes, workers=args.workers, stats=stats)
        t_batched = time.perf_counter() - start
        start = time.perf_counter()
        reference, ref_steps = looped(model_path, task, settings, args.episodes, norm_stats)
        t_looped = time.perf_counter() - start
        in_process = None
        if args.workers != 1 and not has_batched_simulator(task):
            in_process = rollout_returns(policy, task, settings, episodes=args.episodes, workers=1)
    batched = batched[0]
    rate_looped, rate_batched = ref_steps / t_looped, stats["env_steps"] / t_batched
    print(f"{task.alias}: {len(settings)} settings x {args.episodes} episodes; mean return {batched.mean():.1f}")
    print(f"(a) SB3 evaluate_policy, one env per setting: {t_looped:8.2f} s {rate_looped:>10,.0f} env-steps/s")
    print(f"(b) rlflat rollout_returns (batched policy):  {t_batched:8.2f} s {rate_batched:>10,.0f} env-steps/s")
    print(f"speed-up {rate_batched / rate_looped:.1f}x env-steps/s (same episodes: {stats['env_steps'] == ref_steps})")
    print(f"returns agree exactly with (a): {np.array_equal(batched, reference)}", end="")
    if not np.array_equal(batched, reference):
        rel = np.abs(batched - reference) / np.maximum(np.abs(reference), 1e-12)
        print(f"; largest relative difference {rel.max():.2e}", end="")
    print()
    if in_process is not None:
        print(f"worker processes vs in-process (workers=1), bit-identical: {np.array_equal(batched, in_process[0])}")
    if task.alias == "CartPole":
        simulator_rates()
    if args.throughput:
        throughput()


def simulator_rates() -> None:
    """Raw env-steps/s of each batched simulator at 1k and 10k rows (physics only, random actions)."""
    sys.path.insert(0, str(Path(__file__).parent))
    from sim_speed import batched_rate

    from rlflat.tasks.sims import SIMULATORS

    rng = np.random.default_rng(0)
    print(f"\n{'simulator':<26}{'1k rows':>14}{'10k rows':>14}  (env-steps/s, physics only)")
    for env_id in SIMULATORS:
        rates = [batched_rate(env_id, rows, 50, rng) for rows in (1000, 10_000)]
        print(f"{env_id:<26}{rates[0]:>14,.0f}{rates[1]:>14,.0f}")


if __name__ == "__main__":
    main()
