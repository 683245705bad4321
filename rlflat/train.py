"""``python -m rlflat.train ALGO TASK``: train one policy into a self-describing run directory.

A run directory holds ``config.json`` (everything needed to reproduce it), ``model.zip`` (SB3 format),
``vecnormalize.pkl`` and ``normalization.json`` (when trained with normalisation: SB3's pickle, and the same
statistics as data, which is what rlflat reads), ``train.csv`` (learning curve) and
``metrics.json`` (final deterministic evaluation on the nominal task). The directory is assembled under a hidden
temporary name and renamed into place, so a crash never leaves a half-written run behind.
"""

from __future__ import annotations

if __name__ == "__main__":  # --help and argument errors answer before the heavy imports below (rlflat.fastcli)
    from rlflat.fastcli import answer_early

    answer_early("train")

import csv
import hashlib
import json
import math
import platform
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.utils import configure_logger
from stable_baselines3.common.vec_env import VecEnv, VecNormalize
from tqdm.auto import tqdm

from rlflat import algos
from rlflat.algos.sharpness_tracking import COLUMNS as SHARPNESS_COLUMNS
from rlflat.algos.sharpness_tracking import DEFAULT_EVERY as SHARPNESS_EVERY
from rlflat.algos.sharpness_tracking import SharpnessTracker, path_summary
from rlflat.cli import ArgumentParser, run_cli, set_torch_threads
from rlflat.errors import RlflatError
from rlflat.io import check_output_dir, package_versions, read_json, remove_stale_staging, staging_dir, write_json
from rlflat.normalization import NORMALIZATION_FILE, NormalizationStats
from rlflat.policy import MODEL_FILE, NORMALIZER_FILE, FunctionalPolicy, ObservationNormalizer
from rlflat.tasks import TaskSpec, list_tasks, load_task, make_env
from rlflat.train_monitoring import EVAL_FILE, Monitoring, callbacks, check_tensorboard, take_tensorboard_override

RUNS_DIR = Path("results/runs")
MAX_TOTAL_TIMESTEPS = 10**8
"""The most environment steps one run may take: 100x the largest budget in any shipped task spec (1e6 for
MuJoCo, Box2D, Acrobot, MountainCar), and 1.4-9 hours at the 3-20k steps/s the reference study measured on one
core. A larger value is a typo (``--steps 1e23`` would train for ever and grow the learning curve without end),
not a study; the limit is in steps, so it holds for ``--steps``, ``--set total_timesteps`` and sweep configs."""
CURVE_ROW_BYTES = 16
"""Learning-curve memory per environment step: a 4-field row (~160 B) per episode, episodes >= 10 steps."""
EVAL_EPISODES = 20
VERSIONED_PACKAGES = ("rlflat", "torch", "gymnasium", "stable-baselines3", "numpy")


def resolve_run_config(
    algo: str,
    task: str,
    seed: int = 0,
    steps: int | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The fully resolved, hashable description of a run (no versions, paths or times: those don't change it)."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32:
        raise RlflatError(f"seed must be an integer in [0, 2**32), got {seed!r}")
    spec = load_task(task)
    overrides = dict(overrides or {})
    if steps is not None:
        overrides["total_timesteps"] = steps
    hyperparameters = algos.resolve_hyperparameters(algo, spec, overrides)
    check_training_size(spec, hyperparameters)
    return {"algo": algo, "task": spec.alias, "task_id": spec.id, "seed": int(seed), "hyperparameters": hyperparameters}


def check_training_size(spec: TaskSpec, hyperparameters: Mapping[str, Any]) -> None:
    """Refuse, in one line, more than :data:`MAX_TOTAL_TIMESTEPS` steps or a run whose rollout buffer, loss graph,
    envs and learning curve would not fit in the memory available now (:mod:`rlflat.memory`)."""
    from gymnasium import spaces as gym_spaces

    from rlflat.evaluate.budget import GRAPH_COPIES, gym_row_bytes
    from rlflat.memory import mlp_parameters, require_memory

    total = int(hyperparameters["total_timesteps"])
    if total > MAX_TOTAL_TIMESTEPS:
        raise RlflatError(
            f"total_timesteps (--steps) {total:.3g} is over the maximum {MAX_TOTAL_TIMESTEPS:.0e} (100x the largest shipped "
            "task budget; hours of training at measured speeds)"
        )
    epochs = hyperparameters.get("n_epochs", 1)
    if isinstance(epochs, int) and epochs > MAX_EPOCHS:
        raise RlflatError(
            f"n_epochs {epochs} is over the maximum {MAX_EPOCHS} (SB3's default is 10; every epoch is a full pass "
            "over each rollout)"
        )
    env = make_env(spec)
    try:
        obs_dim = math.prod(env.observation_space.shape or (1,))
        act_dim = math.prod(env.action_space.shape or (1,))
        discrete = not isinstance(env.action_space, gym_spaces.Box)
    finally:
        env.close()
    if hyperparameters.get("use_sde") and discrete:
        raise RlflatError(f"use_sde (gSDE) needs continuous (Box) actions; {spec.alias} has discrete actions")
    n_envs, n_steps = int(hyperparameters.get("n_envs", 1)), int(hyperparameters.get("n_steps", 2048))
    net_arch = (hyperparameters.get("policy_kwargs") or {}).get("net_arch", [64, 64]) or []
    widths = _widths(net_arch)
    rows = float(n_envs) * n_steps
    parameters = mlp_parameters(net_arch, obs_dim) + (widths + 1) * act_dim
    need = (
        rows * 4 * (obs_dim + act_dim + 8)  # SB3's float32 rollout buffer
        + rows * 4 * GRAPH_COPIES * (obs_dim + widths)  # a full-batch loss graph (pg; ppo's minibatches are smaller)
        + float(n_envs) * gym_row_bytes(spec)
        + float(total) * CURVE_ROW_BYTES
        + float(parameters) * 4 * PARAMETER_COPIES  # before the network is built (net_arch from --set)
    )
    require_memory(
        need, f"training with n_envs {n_envs} x n_steps {n_steps}, {total} steps and {parameters:,} parameters"
    )


MAX_EPOCHS = 1000
"""The most ``n_epochs`` a run may take: 100x SB3's default; ``n_epochs=1000000000`` would never end."""
PARAMETER_COPIES = 8
"""float32 copies per parameter while training: weights, gradient, Adam's two moments, SAM's saved weights and
perturbation, and slack for the loss graph's parameter-sized intermediates."""


def _widths(net_arch: Any) -> int:
    """Sum of the hidden widths of actor and critic (0 for an unreadable ``net_arch``: the builder refuses it)."""
    branches = [net_arch.get("pi") or [], net_arch.get("vf") or []] if isinstance(net_arch, dict) else [net_arch] * 2
    return sum(
        w for b in branches if isinstance(b, list | tuple) for w in b if isinstance(w, int) and not isinstance(w, bool)
    )


def run_id(config: Mapping[str, Any]) -> str:
    """Content address of a run: a short hash of its resolved config (identical configs share an id)."""
    canonical = json.dumps(
        {k: config[k] for k in ("algo", "task", "seed", "hyperparameters")}, sort_keys=True, default=str
    )
    return hashlib.sha256(canonical.encode()).hexdigest()[:10]


def default_run_dir(config: Mapping[str, Any], root: Path = RUNS_DIR) -> Path:
    return root / f"{config['algo']}-{config['task']}-s{config['seed']}-{run_id(config)}"


def check_device(device: str) -> str:
    """``device`` as torch names it, or a one-line error: not a device name, or not present on this machine.

    SB3 silently trains on the CPU when CUDA is asked for but absent; a run recording ``cuda`` must use it.
    """
    valid = "cpu, cuda, cuda:N, mps"
    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError, TypeError):
        raise RlflatError(f"--device {device!r} is not a torch device; valid forms: {valid}") from None
    if parsed.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0 or (parsed.index is not None and parsed.index >= count):
            raise RlflatError(f"--device {device!r}: this machine has {count} CUDA device(s); valid forms: {valid}")
    elif parsed.type == "mps" and not torch.backends.mps.is_available():
        raise RlflatError(f"--device {device!r}: MPS is not available on this machine; valid forms: {valid}")
    elif parsed.type not in ("cpu", "cuda", "mps"):
        raise RlflatError(f"--device {device!r} is not supported; valid forms: {valid}")
    return str(parsed)


def train_run(
    config: Mapping[str, Any],
    out: str | Path | None = None,
    device: str = "cpu",
    progress: bool = True,
    command: Sequence[str] | None = None,
    force: bool = False,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Train the run ``config`` (from :func:`resolve_run_config`) and return its directory.

    ``extra``: keys added to ``config.json`` outside the hashed part (e.g. the population engine's
    ``engine`` and ``population_id``); they never change the run id.

    ``config.json`` is ``config`` plus the run id, versions, command line, device and, in a block of its own
    that the run id does not hash, ``effective_hyperparameters``: every value the model trains with, SB3's
    and the policy's defaults included (see :func:`rlflat.algos.effective_hyperparameters`).

    On divergence (a non-finite loss or parameter) :class:`rlflat.algos.TrainingDiverged` is raised and nothing
    is written (an existing ``out`` stays as it was; the sweep records its own ``failure.json``). An existing, non-empty ``out`` is refused unless
    ``force``, and then replaced only when the new run is complete (one rename; the old run stays until then).
    Staging folders of killed earlier trainings into ``out`` are removed first.
    """
    out = check_output_dir(Path(out) if out is not None else default_run_dir(config), published=True)
    if out.exists() and any(out.iterdir()) and not force:
        raise RlflatError(f"run directory {out} already exists and is not empty; choose another --out or add --force")
    device = check_device(device)
    remove_stale_staging(out)
    spec = load_task(config["task"])
    full_config = {
        **config,
        "run_id": run_id(config),
        "versions": _versions(),
        "command": list(command) if command is not None else None,
        "device": device,
        "torch_threads": torch.get_num_threads(),
        "reproducibility": REPRODUCIBILITY,
        **(extra or {}),
    }
    with staging_dir(out) as staging:  # a diverged training raises here: nothing is published
        metrics = _train_into(staging, spec, full_config, device, progress)
        write_json(staging / "metrics.json", {"status": "ok", "train": metrics})
    return out


def _train_into(
    directory: Path, spec: TaskSpec, config: Mapping[str, Any], device: str, progress: bool
) -> dict[str, Any]:
    """Build, write config.json (with the effective hyperparameters), train, save, evaluate; the metrics."""
    seed = int(config["seed"])
    hyperparameters = dict(config["hyperparameters"])
    total = int(hyperparameters["total_timesteps"])
    env = training_env(spec, hyperparameters, seed)
    model = algos.build_model(config["algo"], env, hyperparameters, seed=seed, device=device)
    tracker = None
    if hyperparameters.get("track_sharpness"):
        tracker = SharpnessTracker(int(hyperparameters["track_sharpness"]), seed=seed)
        model.update_observer = tracker
    effective = algos.effective_hyperparameters(model, hyperparameters)
    write_json(directory / "config.json", {**config, "effective_hyperparameters": effective})
    curve = _LearningCurve(total, progress=progress, label=f"{config['algo']} {spec.alias} s{seed}")
    monitoring = Monitoring.from_json(config.get("monitoring"))
    name = f"{config['algo']}-{spec.alias}-s{seed}-{config.get('run_id', '')}"
    if monitoring.tensorboard is not None:  # SB3's logger, as SB3 configures it for tensorboard_log
        model.set_logger(configure_logger(model.verbose, monitoring.tensorboard, name))

    def nominal_returns() -> np.ndarray:  # the current policy, with the current normalisation statistics
        stats = NormalizationStats.from_vec_normalize(env) if isinstance(env, VecNormalize) else None
        current = FunctionalPolicy(model.policy, ObservationNormalizer.from_stats(stats) if stats else None)
        return evaluate_nominal(current, spec, monitoring.eval_episodes)

    watchers, evaluation = callbacks(
        monitoring,
        directory,
        n_envs=env.num_envs,
        normalized=isinstance(env, VecNormalize),
        tracked_rows=(lambda: tracker.rows) if tracker is not None else None,
        evaluate=nominal_returns,
    )
    start = time.perf_counter()
    try:
        model.learn(total_timesteps=total, callback=[curve, *watchers])
    finally:
        curve.close()
    wall = time.perf_counter() - start
    model.check_parameters("after training")
    model.save(directory / MODEL_FILE)
    normalizer = None
    if isinstance(env, VecNormalize):
        env.save(str(directory / NORMALIZER_FILE))  # SB3's format, for SB3 users
        stats = NormalizationStats.from_vec_normalize(env)
        write_json(directory / NORMALIZATION_FILE, stats.to_json())  # what rlflat reads: data, not code
        normalizer = ObservationNormalizer.from_stats(stats)
    curve.write_csv(directory / "train.csv", tracker.rows if tracker is not None else None)
    if evaluation is not None:
        evaluation.write_csv(directory / EVAL_FILE)
    policy = FunctionalPolicy(model.policy, normalizer)
    returns = evaluate_nominal(policy, spec, EVAL_EPISODES)
    tracked = {"sharpness_path": path_summary(tracker.rows)} if tracker is not None else {}
    return {
        **tracked,
        "return_mean": float(np.mean(returns)),
        "return_std": float(np.std(returns)),
        "episodes": len(returns),
        "solved": spec.returns_solved(returns),
        "total_timesteps": int(model.num_timesteps),
        "wall_seconds": wall,
        "steps_per_second": model.num_timesteps / wall if wall > 0 else math.nan,
    }


def training_env(spec: TaskSpec, hyperparameters: Mapping[str, Any], seed: int) -> VecEnv:
    """The vectorised training env of a run: ``n_envs`` copies, seeded, VecNormalize'd if ``normalize``."""
    env: VecEnv = make_vec_env(lambda: make_env(spec), n_envs=int(hyperparameters.get("n_envs", 1)), seed=seed)
    if hyperparameters.get("normalize", False):
        env = VecNormalize(env, gamma=float(hyperparameters.get("gamma", 0.99)))
    return env


def evaluate_nominal(policy: FunctionalPolicy, spec: TaskSpec, episodes: int) -> np.ndarray:
    """Deterministic returns on the nominal task, episode j seeded with j (the evaluator's convention)."""
    from rlflat.evaluate import rollout_returns

    return rollout_returns(policy, spec, [{}], episodes=episodes, seed=0)[0, 0]


REPRODUCIBILITY = (
    "bit-identical when retrained from this config and seed on the same machine, torch build and thread count "
    "(torch_threads); on another machine or build the same distribution, not the same numbers: the same run id "
    "retrained elsewhere followed the same learning curve for 3,248 steps, then diverged (lambda_max 4.60 vs 24.33)"
)
"""What ``config.json`` promises about retraining a run (issue 10: floating-point results depend on the CPU's
vector units and torch's kernels, so "reproducible on CPU" in general overstated it)."""


def _versions() -> dict[str, str]:
    return {"python": platform.python_version(), **package_versions(VERSIONED_PACKAGES)}


class _LearningCurve(BaseCallback):
    """Records every finished episode (from SB3's Monitor) and shows a progress bar with the recent return."""

    def __init__(self, total: int, progress: bool, label: str) -> None:
        super().__init__()
        self.rows: list[tuple[int, float, int, float]] = []
        self._start = time.perf_counter()
        self._bar = tqdm(
            total=total, desc=label, unit="step", disable=None if progress else True, leave=False, file=sys.stderr
        )

    def _on_step(self) -> bool:
        for info in self.locals.get("infos", []):
            episode = info.get("episode")
            if episode is not None:
                self.rows.append(
                    (self.num_timesteps, float(episode["r"]), int(episode["l"]), time.perf_counter() - self._start)
                )
        self._bar.n = self.num_timesteps
        if self.rows and self.n_calls % 64 == 0:
            recent = [r[1] for r in self.rows[-20:]]
            self._bar.set_postfix(ret=f"{np.mean(recent):.1f}", refresh=False)
            self._bar.refresh()
        return True

    def close(self) -> None:
        self._bar.close()

    def write_csv(self, path: Path, tracked: Sequence[Mapping[str, float]] | None = None) -> None:
        """Episode rows; with ``tracked`` (sharpness measurements) their rows too, merged in timestep order, each
        kind of row leaving the other kind's columns empty."""
        header = ["timesteps", "episode_return", "episode_length", "wall_seconds"]
        rows: list[list[Any]] = [list(r) for r in self.rows]
        if tracked is not None:
            extra = list(SHARPNESS_COLUMNS)
            rows = [r + [""] * len(extra) for r in rows]
            rows += [[int(t["timesteps"]), "", "", ""] + [_cell(t[c]) for c in extra] for t in tracked]
            rows.sort(key=lambda r: r[0])  # stable: a tracking row follows the episodes that ended before it
            header += extra
        with open(path, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(header)
            writer.writerows(rows)


def _cell(value: float) -> str | float:
    return "" if not math.isfinite(value) else value


def summary_lines(metrics: Mapping[str, Any], spec: TaskSpec, out: Path, monitoring: Monitoring) -> list[str]:
    """What the training computed, for the console: nominal return and whether it solved the task, the
    sharpness path when tracked, and where the monitoring output went (the run directory is printed last)."""
    n, std = int(metrics["episodes"]), float(metrics["return_std"])  # std: numpy's ddof 0
    se = std / math.sqrt(n - 1) if n > 1 else None  # = the ddof-1 standard error the verdict uses
    verdict = spec.verdict(float(metrics["return_mean"]), se)
    lines = [
        f"return {metrics['return_mean']:.1f} +- {std:.1f} (std) over {n} episodes: {verdict} "
        f"(threshold {spec.solved_threshold:g}; unsolved when mean + 1.96 SE is below it)"
    ]
    path = metrics.get("sharpness_path")
    if path and path.get("n_tracked"):
        text = (
            f"sharpness tracked {path['n_tracked']} times: lambda_max final {path['final_sharpness']:.3g}, "
            f"max {path['max_sharpness']:.3g}"
        )
        if "late_adam_ratio" in path:
            text += (
                f"; Adam-preconditioned / threshold late {path['late_adam_ratio']:.2f}, max {path['max_adam_ratio']:.2f}"
                f", at or above the edge in {path['frac_adam_at_edge']:.0%} of measurements"
            )
        lines.append(text)
    if monitoring.eval_every is not None and (out / EVAL_FILE).exists():
        with open(out / EVAL_FILE) as handle:
            rows = list(csv.DictReader(handle))
        if rows:
            best = max(rows, key=lambda r: float(r["return_mean"]))
            lines.append(
                f"evaluated {len(rows)} times during training: best {float(best['return_mean']):.1f} at step "
                f"{best['timesteps']}, last {float(rows[-1]['return_mean']):.1f} ({out / EVAL_FILE})"
            )
    if monitoring.checkpoint_every is not None:
        lines.append(f"checkpoints: {len(list((out / 'checkpoints').glob('*.zip')))} in {out / 'checkpoints'}")
    if monitoring.tensorboard is not None:
        lines.append(f"tensorboard: {monitoring.tensorboard} (tensorboard --logdir {monitoring.tensorboard})")
    return lines


def _parser() -> ArgumentParser:
    parser = ArgumentParser(prog="python -m rlflat.train", description=__doc__.splitlines()[0])
    parser.add_argument("algo", nargs="?", help="algorithm, e.g. ppo, ppo_sam, pg_asam (see --list)")
    parser.add_argument("task", nargs="?", help="task alias or Gymnasium id, e.g. CartPole or CartPole-v1")
    parser.add_argument(
        "--steps",
        type=int,
        help="total environment steps (default: the task spec's; at most 1e8, 100x the largest shipped task budget)",
    )
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the network initialisation, the environments and SB3 (default 0)")  # fmt: skip
    parser.add_argument("--rho", type=float, help="SAM/ASAM neighbourhood radius")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a hyperparameter (repeatable; mapping values such as policy_kwargs merge)")  # fmt: skip
    parser.add_argument("--track-sharpness", type=int, metavar="N", nargs="?", const=SHARPNESS_EVERY,
                        help="every N updates (default N: %(const)s), log the top Hessian and Adam-preconditioned "
                             "Hessian eigenvalues of the training loss to train.csv (the hyperparameter "
                             "track_sharpness; off unless given)")  # fmt: skip
    parser.add_argument("--out", type=Path, help="run directory (default results/runs/<algo>-<task>-s<seed>-<id>)")
    parser.add_argument("--device", default="cpu", help="torch device: cpu, cuda, cuda:N or mps")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest for small policies)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    parser.add_argument("--force", action="store_true", help="replace an existing run directory at --out")
    parser.add_argument("--list", action="store_true", help="list algorithms and tasks, one per line")
    watch = parser.add_argument_group("monitoring (changes nothing the run learns; recorded outside its id)")
    watch.add_argument("--tensorboard", metavar="DIR",
                       help="SB3's TensorBoard logging into DIR (also --set tensorboard_log=DIR); with "
                            "--track-sharpness, the sharpness measurements too")  # fmt: skip
    watch.add_argument("--checkpoint-every", type=int, metavar="N",
                       help="save checkpoints/model_<steps>_steps.zip every N environment steps (SB3's CheckpointCallback)")  # fmt: skip
    watch.add_argument("--eval-every", type=int, metavar="N",
                       help="every N environment steps, deterministic nominal returns into eval.csv and the logger")  # fmt: skip
    watch.add_argument("--eval-episodes", type=int, default=10, metavar="K",
                       help="episodes per --eval-every evaluation (default 10)")  # fmt: skip
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.list:
        for line in algos.describe_algorithms():
            print(f"algo {line}")
        for spec in list_tasks():
            print(f"task {spec.alias:<24} {spec.id}  (parameters: {', '.join(spec.parameters)})")
        return 0
    if not args.algo or not args.task:
        parser.error("ALGO and TASK are required (or --list)")
    if args.steps is not None and args.steps <= 0:
        raise RlflatError(f"--steps must be a positive integer, got {args.steps}")
    overrides = algos.parse_overrides(args.overrides)
    tensorboard = take_tensorboard_override(overrides) or args.tensorboard
    monitoring = Monitoring(tensorboard, args.checkpoint_every, args.eval_every, args.eval_episodes)
    if monitoring.tensorboard is not None:
        check_tensorboard()
    if args.rho is not None:
        overrides["rho"] = args.rho
    if args.track_sharpness is not None:
        overrides["track_sharpness"] = args.track_sharpness
    set_torch_threads(args.threads)
    check_device(args.device)
    config = resolve_run_config(args.algo, args.task, seed=args.seed, steps=args.steps, overrides=overrides)
    out = train_run(config, out=args.out, device=args.device, progress=not args.no_progress, force=args.force,
                    command=["python", "-m", "rlflat.train", *(argv if argv is not None else sys.argv[1:])],
                    extra={"monitoring": monitoring.to_json()} if monitoring.active else None)  # fmt: skip
    for line in summary_lines(read_json(out / "metrics.json")["train"], load_task(config["task"]), out, monitoring):
        print(line)
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
