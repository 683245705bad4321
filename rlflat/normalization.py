"""Normalisation statistics (SB3's ``VecNormalize``) as plain data: rlflat's ``normalization.json``.

SB3 saves ``VecNormalize`` by pickling the whole wrapper, and unpickling a file runs whatever code it names. rlflat
writes the numbers that matter (observation mean/variance, return variance, clips, epsilon) as JSON beside the
pickle at train time and reads only that by default. A foreign ``vecnormalize.pkl`` is read only when the user
names it *and* says they trust it (:func:`load_trusted_pickle`). JSON floats round-trip float64 exactly, so the
statistics are bit-identical to the pickle's.
"""

from __future__ import annotations

import math
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rlflat.errors import RlflatError
from rlflat.io import load_json_text

__all__ = ["FORMAT", "NORMALIZATION_FILE", "PICKLE_FILE", "NormalizationStats", "load_stats", "load_trusted_pickle"]

NORMALIZATION_FILE = "normalization.json"
PICKLE_FILE = "vecnormalize.pkl"
FORMAT = "rlflat.normalization/1"
_MAX_JSON_BYTES = 64 * 2**20
"""A statistics file is a few numbers per observation dimension; anything larger is not one."""


@dataclass(frozen=True)
class NormalizationStats:
    """What ``VecNormalize`` applies: ``clip((obs - mean) / sqrt(var + eps), +-clip_obs)`` and
    rewards divided by ``sqrt(ret_var + eps)`` then clipped to ``+-clip_reward``."""

    norm_obs: bool
    norm_reward: bool
    obs_mean: np.ndarray
    obs_var: np.ndarray
    ret_var: float
    clip_obs: float
    clip_reward: float
    epsilon: float

    def reward_scaling(self) -> tuple[float, float]:
        """(scale, clip) of reward normalisation, or (1, inf) when rewards were not normalised."""
        if not self.norm_reward:
            return 1.0, math.inf
        return 1.0 / float(np.sqrt(self.ret_var + self.epsilon)), float(self.clip_reward)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "norm_obs": self.norm_obs,
            "norm_reward": self.norm_reward,
            "obs_mean": self.obs_mean.tolist(),
            "obs_var": self.obs_var.tolist(),
            "ret_var": self.ret_var,
            "clip_obs": self.clip_obs,
            "clip_reward": self.clip_reward,
            "epsilon": self.epsilon,
        }

    def check_observations(self, shape: tuple[int, ...] | None, source: str) -> None:
        """Refuse statistics whose shape is not the observation space's ``shape`` (a 1-element ``obs_mean`` on
        4-D CartPole would broadcast silently into a wrong normalisation; 3 or 4x1 would fail mid-rollout)."""
        if shape is not None and self.norm_obs and tuple(self.obs_mean.shape) != tuple(shape):
            raise RlflatError(
                f"{source}: obs_mean and obs_var have shape {list(self.obs_mean.shape)}, the policy's observations "
                f"{list(shape)}; these statistics belong to another task"
            )

    @classmethod
    def from_json(cls, data: Any, source: str) -> NormalizationStats:
        """Validate a parsed ``normalization.json``; every problem is one line naming ``source`` and the field."""
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise RlflatError(f"{source}: not an rlflat normalisation file (expected format {FORMAT!r})")
        for key in ("norm_obs", "norm_reward"):
            if not isinstance(data.get(key), bool):
                raise RlflatError(f"{source}: {key} must be true or false, got {data.get(key)!r}")
        arrays = {key: _float_array(data.get(key), f"{source}: {key}") for key in ("obs_mean", "obs_var")}
        if arrays["obs_mean"].shape != arrays["obs_var"].shape or np.any(arrays["obs_var"] < 0):
            raise RlflatError(f"{source}: obs_mean and obs_var must have one shape and obs_var must be >= 0")
        numbers = {key: _number(data.get(key), f"{source}: {key}") for key in ("ret_var", "epsilon")}
        clips = {key: _number(data.get(key), f"{source}: {key}", allow_inf=True) for key in ("clip_obs", "clip_reward")}
        return cls(data["norm_obs"], data["norm_reward"], arrays["obs_mean"], arrays["obs_var"], **numbers, **clips)

    @classmethod
    def from_vec_normalize(cls, vec: Any, source: str = "VecNormalize") -> NormalizationStats:
        """The statistics of a live (or unpickled) ``VecNormalize``; Dict observation spaces are refused."""
        from stable_baselines3.common.running_mean_std import RunningMeanStd
        from stable_baselines3.common.vec_env import VecNormalize

        if not isinstance(vec, VecNormalize):
            raise RlflatError(f"{source}: holds a {type(vec).__name__}, not a VecNormalize")
        if not isinstance(vec.obs_rms, RunningMeanStd):
            raise RlflatError(f"{source}: per-key (Dict observation) statistics are not supported")
        return cls(
            norm_obs=bool(vec.norm_obs),
            norm_reward=bool(vec.norm_reward),
            obs_mean=np.asarray(vec.obs_rms.mean, dtype=np.float64),
            obs_var=np.asarray(vec.obs_rms.var, dtype=np.float64),
            ret_var=float(vec.ret_rms.var),
            clip_obs=float(vec.clip_obs),
            clip_reward=float(vec.clip_reward),
            epsilon=float(vec.epsilon),
        )


def load_stats(path: str | Path) -> NormalizationStats:
    """Read an rlflat ``normalization.json`` (plain data: safe whatever its origin)."""
    path = Path(path)
    try:
        if path.stat().st_size > _MAX_JSON_BYTES:
            raise RlflatError(f"{path}: {path.stat().st_size} bytes is too large for a normalisation file")
        data = load_json_text(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        if isinstance(exc, RlflatError):
            raise
        nested = "nested" in str(exc) or isinstance(exc, RecursionError)
        why = "nested too deeply" if nested else type(exc).__name__
        raise RlflatError(f"{path}: not readable as rlflat normalisation JSON ({why})") from None
    return NormalizationStats.from_json(data, str(path))


def load_trusted_pickle(path: str | Path) -> NormalizationStats:
    """Unpickle SB3's ``vecnormalize.pkl``. This runs any code the file names: call it only on ``--trust``."""
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            vec = pickle.load(handle)  # the user passed --trust for this file
    except Exception as exc:  # a corrupt or foreign pickle: one line
        raise RlflatError(f"{path}: not a readable VecNormalize pickle ({type(exc).__name__}: {exc})") from None
    return NormalizationStats.from_vec_normalize(vec, str(path))


def _float_array(value: Any, what: str) -> np.ndarray:
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise RlflatError(f"{what} must be a list of numbers") from None
    if array.ndim < 1 or not np.all(np.isfinite(array)):
        raise RlflatError(f"{what} must be a non-empty list of finite numbers")
    return array


def _number(value: Any, what: str, allow_inf: bool = False) -> float:
    if value is None and allow_inf:  # rlflat writes strict JSON: an infinite clip is stored as null
        return math.inf
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    if not ok or math.isnan(value) or value < 0 or (math.isinf(value) and not allow_inf):
        raise RlflatError(f"{what} must be a number >= 0, got {value!r}")
    return float(value)


if __name__ == "__main__":  # python -m rlflat.normalization import PKL --trust (rlflat.normalization_import)
    import sys

    from rlflat.cli import run_cli
    from rlflat.normalization_import import main

    sys.exit(run_cli(main))
