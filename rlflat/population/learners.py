"""One learner of a population: its real SB3 model (built exactly as a single run builds it), its own RNG
streams, its env, its learning curve; and publishing its run directory when it finishes.

The model is built by :func:`rlflat.algos.build_model` with the learner's seed, so its initial parameters and
the RNG consumption of SB3's ``_setup_model`` are the single run's. The global torch and numpy RNG states right
after that build become the learner's own ``torch.Generator`` and ``np.random.RandomState``: learner k then
samples actions and minibatch permutations from exactly the streams SB3 would read from the globals.
"""

from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch as th
from stable_baselines3.common.vec_env import VecEnv, VecNormalize

from rlflat import algos
from rlflat.algos.base import FlatOnPolicyAlgorithm
from rlflat.algos.sharpness_tracking import SharpnessTracker, path_summary
from rlflat.io import remove_stale_staging, staging_dir, write_json
from rlflat.normalization import NORMALIZATION_FILE, NormalizationStats
from rlflat.policy import MODEL_FILE, NORMALIZER_FILE, FunctionalPolicy, ObservationNormalizer
from rlflat.population.members import Member
from rlflat.tasks import TaskSpec, load_task


@dataclass
class Learner:
    """Everything one learner carries besides its slice of the stacked parameters."""

    member: Member
    spec: TaskSpec
    model: FlatOnPolicyAlgorithm
    env: VecEnv
    torch_rng: th.Generator
    numpy_rng: np.random.RandomState
    record: dict[str, Any]
    curve: list[tuple[int, float, int, float]] = field(default_factory=list)
    last_obs: np.ndarray | None = None
    last_episode_starts: np.ndarray | None = None
    error: str | None = None
    n_updates: int = 0
    iteration: int = 0
    tracker: SharpnessTracker | None = None
    exploration: tuple[th.Tensor, th.Tensor] = (th.zeros(0), th.zeros(0))
    """gSDE's exploration matrix and per-env matrices (``sample_weights``), redrawn as SB3 redraws them."""

    @property
    def failed(self) -> bool:
        return self.error is not None


def build_learner(member: Member, extra: dict[str, str], device: str) -> Learner:
    """The learner's model and env as :func:`rlflat.train.train_run` builds them, and its RNG streams."""
    from rlflat.train import training_env

    config = member.config
    spec = load_task(config["task"])
    seed = int(config["seed"])
    env = training_env(spec, config["hyperparameters"], seed)
    model = algos.build_model(config["algo"], env, dict(config["hyperparameters"]), seed=seed, device=device)
    torch_rng = th.Generator()
    torch_rng.set_state(th.get_rng_state())
    numpy_rng = np.random.RandomState()
    numpy_rng.set_state(np.random.get_state())
    tracker = None
    if config["hyperparameters"].get("track_sharpness"):
        tracker = SharpnessTracker(int(config["hyperparameters"]["track_sharpness"]), seed=seed)
        model.update_observer = tracker
    record = run_record(config, device, extra)
    record["effective_hyperparameters"] = algos.effective_hyperparameters(model, config["hyperparameters"])
    return Learner(member, spec, model, env, torch_rng, numpy_rng, record, tracker=tracker)


def run_record(config: dict[str, Any], device: str, extra: dict[str, str]) -> dict[str, Any]:
    """``config.json`` as :func:`rlflat.train.train_run` writes it (a test compares the keys)."""
    from rlflat.train import REPRODUCIBILITY, _versions, run_id

    return {
        **config,
        "run_id": run_id(config),
        "versions": _versions(),
        "command": None,
        "device": device,
        "torch_threads": th.get_num_threads(),
        "reproducibility": REPRODUCIBILITY,
        **extra,
    }


def finish_model(learner: Learner, total_timesteps: int, progress_remaining: float) -> None:
    """Set the counters SB3's ``learn`` would have left on the model, so its zip records the same state."""
    model = learner.model
    model.num_timesteps = model._total_timesteps = total_timesteps
    model._num_timesteps_at_start = 0
    model._n_updates = learner.n_updates
    model._current_progress_remaining = progress_remaining
    model._iteration = learner.iteration
    model._last_obs = learner.last_obs  # type: ignore[assignment]
    model._last_episode_starts = learner.last_episode_starts  # type: ignore[assignment]
    if isinstance(learner.env, VecNormalize):
        model._last_original_obs = learner.env.get_original_obs()  # type: ignore[assignment]
    buffer: deque[dict[str, Any]] = deque(maxlen=model._stats_window_size)
    buffer.extend({"r": r, "l": n, "t": t} for _, r, n, t in learner.curve)
    model.ep_info_buffer = buffer


def publish(learner: Learner, wall_seconds: float, episodes: int) -> None:
    """Write the learner's run directory (staged, then renamed into place) exactly as a single run does.

    A failed (diverged) learner publishes nothing, as :func:`rlflat.train.train_run` does on divergence.
    """
    from rlflat.train import _LearningCurve, evaluate_nominal

    if learner.failed:
        return
    out = Path(learner.member.run_dir)
    remove_stale_staging(out)
    with staging_dir(out) as directory:
        write_json(directory / "config.json", learner.record)
        model = learner.model
        model.check_parameters("after training")
        model.save(directory / MODEL_FILE)
        normalizer = None
        if isinstance(learner.env, VecNormalize):
            learner.env.save(str(directory / NORMALIZER_FILE))
            stats = NormalizationStats.from_vec_normalize(learner.env)
            write_json(directory / NORMALIZATION_FILE, stats.to_json())
            normalizer = ObservationNormalizer.from_stats(stats)
        curve = _LearningCurve(int(model._total_timesteps), progress=False, label="")
        curve.rows = list(learner.curve)
        curve.close()
        tracker = learner.tracker
        curve.write_csv(directory / "train.csv", tracker.rows if tracker is not None else None)
        returns = evaluate_nominal(FunctionalPolicy(model.policy, normalizer), learner.spec, episodes)
        tracked = {"sharpness_path": path_summary(tracker.rows)} if tracker is not None else {}
        metrics = {
            **tracked,
            "return_mean": float(np.mean(returns)),
            "return_std": float(np.std(returns)),
            "episodes": len(returns),
            "solved": learner.spec.returns_solved(returns),
            "total_timesteps": int(model.num_timesteps),
            "wall_seconds": wall_seconds,
            "steps_per_second": model.num_timesteps / wall_seconds if wall_seconds > 0 else math.nan,
        }
        write_json(directory / "metrics.json", {"status": "ok", "train": metrics})


def now() -> float:
    return time.perf_counter()
