"""Building a model for an algorithm name, and loading any zip an rlflat algorithm saved."""

from __future__ import annotations

import json
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from stable_baselines3.common.logger import HumanOutputFormat, Logger
from stable_baselines3.common.vec_env import VecEnv

from rlflat.algos.base import FlatOnPolicyAlgorithm
from rlflat.algos.hyperparameters import constructor_kwargs, validate_hyperparameters
from rlflat.algos.names import BASES, parse_algorithm
from rlflat.errors import RlflatError


def build_model(
    algo: str, env: VecEnv, hyperparameters: dict[str, Any], seed: int, device: str = "cpu"
) -> FlatOnPolicyAlgorithm:
    """The model for ``algo`` on ``env`` (run keys ignored; train.py builds the env and calls learn)."""
    base, rule = parse_algorithm(algo)
    kwargs = constructor_kwargs(validate_hyperparameters(algo, hyperparameters))
    factory: Callable[..., FlatOnPolicyAlgorithm] = BASES[base]
    model = factory("MlpPolicy", env, update_rule=rule, seed=seed, device=device, **kwargs)
    # SB3's default logger makes an (empty) /tmp/SB3-<time> folder per learn(); ours writes no files at all
    model.set_logger(Logger(None, [HumanOutputFormat(sys.stdout)] if model.verbose >= 1 else []))
    return model


def load_model(path: str | Path, env: VecEnv | None = None, device: str = "cpu") -> FlatOnPolicyAlgorithm:
    """Load a zip saved by any rlflat algorithm (the class is read from the zip's ``rlflat_algorithm``)."""
    path = Path(path)
    if not path.exists() and path.with_suffix(".zip").exists():
        path = path.with_suffix(".zip")  # SB3's save appends .zip
    try:
        with zipfile.ZipFile(path) as archive:
            data = json.loads(archive.read("data"))
    except (OSError, KeyError, zipfile.BadZipFile, json.JSONDecodeError) as exc:
        raise RlflatError(f"{path}: not a saved SB3 model ({exc})") from None
    name = data.get("rlflat_algorithm")
    if not isinstance(name, str):
        raise RlflatError(f"{path}: not saved by rlflat (no rlflat_algorithm); load it with stable_baselines3")
    base, _ = parse_algorithm(name)
    return BASES[base].load(path, env=env, device=device)
