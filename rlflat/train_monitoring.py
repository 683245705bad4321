"""Watching a training as SB3 users do: TensorBoard, periodic checkpoints, evaluation along the way.

None of it changes what a run learns, so none of it is in the run's hashed config: the options are recorded in
``config.json`` under ``monitoring`` and a run trained with them is bit-identical to one trained without
(``tests/test_train_monitoring.py``).

* ``tensorboard``: SB3's own logger writes its TensorBoard events (the scalars SB3 logs: ``rollout/``,
  ``train/``, ``time/``) to ``<dir>/<run name>_<n>``; with ``--track-sharpness`` each measurement is added as
  ``sharpness/<column>`` at its timestep.
* ``checkpoint_every``: SB3's ``CheckpointCallback`` saves ``checkpoints/model_<steps>_steps.zip`` (and the
  VecNormalize statistics when the run normalises) every N environment steps.
* ``eval_every``: every N environment steps, ``eval_episodes`` deterministic episodes on the nominal task with
  the evaluator the final ``metrics.json`` uses (episode j seeded with j), logged as ``eval/mean_return`` and
  written to ``eval.csv``.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from stable_baselines3.common.callbacks import BaseCallback, CheckpointCallback

from rlflat.errors import RlflatError

CHECKPOINT_DIR = "checkpoints"
EVAL_FILE = "eval.csv"


@dataclass(frozen=True)
class Monitoring:
    """What to watch during a training (all off by default)."""

    tensorboard: str | None = None
    checkpoint_every: int | None = None
    eval_every: int | None = None
    eval_episodes: int = 10

    def __post_init__(self) -> None:
        for name in ("checkpoint_every", "eval_every", "eval_episodes"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                flag = "--" + name.replace("_", "-")
                raise RlflatError(f"{flag} must be an integer >= 1, got {value!r}")

    @property
    def active(self) -> bool:
        return any(v is not None for v in (self.tensorboard, self.checkpoint_every, self.eval_every))

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None) -> Monitoring:
        return cls(**dict(data or {}))


def take_tensorboard_override(overrides: dict[str, Any]) -> str | None:
    """``--set tensorboard_log=DIR`` (SB3's keyword) as the monitoring option it is: removed from the
    hyperparameters, so a log directory never changes a run's id."""
    value = overrides.pop("tensorboard_log", None)
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise RlflatError(
            f"tensorboard_log must be a directory path, got {value!r}; e.g. --set tensorboard_log=runs/tb"
        )
    return value


def check_tensorboard() -> None:
    """One line, not a traceback from deep inside SB3, when the tensorboard package is missing."""
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        raise RlflatError(
            "--tensorboard needs the tensorboard package: pip install 'rlflat[dev]' (or pip install tensorboard)"
        ) from None


class _SharpnessToLogger(BaseCallback):
    """Sends each new sharpness measurement of the tracker to SB3's logger (so to TensorBoard)."""

    def __init__(self, rows: Callable[[], Sequence[Mapping[str, float]]]) -> None:
        super().__init__()
        self._rows = rows
        self._sent = 0

    def _on_step(self) -> bool:
        return True

    def _on_rollout_start(self) -> None:  # after the previous update, and so after its measurement
        rows = self._rows()
        for row in rows[self._sent :]:
            for key, value in row.items():
                if key != "timesteps" and isinstance(value, int | float) and math.isfinite(value):
                    self.logger.record(f"sharpness/{key}", float(value))
        if len(rows) > self._sent:
            self.logger.dump(int(rows[-1]["timesteps"]))
        self._sent = len(rows)


class _NominalEvaluation(BaseCallback):
    """Every ``every`` steps: deterministic nominal returns with rlflat's evaluator, logged and kept as rows."""

    def __init__(self, every: int, evaluate: Callable[[], np.ndarray]) -> None:
        super().__init__()
        self._every = every
        self._evaluate = evaluate
        self._next = every
        self.rows: list[tuple[int, float, float, int]] = []

    def _on_step(self) -> bool:
        if self.num_timesteps >= self._next:
            while self._next <= self.num_timesteps:
                self._next += self._every
            returns = self._evaluate()
            row = (int(self.num_timesteps), float(np.mean(returns)), float(np.std(returns)), len(returns))
            self.rows.append(row)
            self.logger.record("eval/mean_return", row[1])
            self.logger.record("eval/std_return", row[2])
        return True

    def write_csv(self, path: Path) -> None:
        with open(path, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["timesteps", "return_mean", "return_std", "episodes"])
            writer.writerows(self.rows)


def callbacks(
    monitoring: Monitoring,
    directory: Path,
    n_envs: int,
    normalized: bool,
    tracked_rows: Callable[[], Sequence[Mapping[str, float]]] | None,
    evaluate: Callable[[], np.ndarray],
) -> tuple[list[BaseCallback], _NominalEvaluation | None]:
    """The SB3 callbacks ``monitoring`` asks for, and the evaluation callback (whose rows go to eval.csv)."""
    chosen: list[BaseCallback] = []
    if monitoring.checkpoint_every is not None:
        chosen.append(
            CheckpointCallback(
                save_freq=max(1, monitoring.checkpoint_every // n_envs),  # SB3 counts calls, one per n_envs steps
                save_path=str(directory / CHECKPOINT_DIR),
                name_prefix="model",
                save_vecnormalize=normalized,
            )
        )
    evaluation = None
    if monitoring.eval_every is not None:
        evaluation = _NominalEvaluation(monitoring.eval_every, evaluate)
        chosen.append(evaluation)
    if monitoring.tensorboard is not None and tracked_rows is not None:
        chosen.append(_SharpnessToLogger(tracked_rows))
    return chosen, evaluation
