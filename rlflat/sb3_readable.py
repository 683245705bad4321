"""Plain hyperparameters stored in an SB3 zip's readable ``data`` (JSON), read without unpickling anything.

A bare zip's probe builds its batch's advantages with a discount and a GAE lambda; the model was trained with
its own (rl-baselines3-zoo's CartPole PPO: gamma 0.98, lambda 0.8), and SB3 stores both as plain JSON numbers.
Using them, unless ``--gamma`` / ``--gae-lambda`` say otherwise, makes the probe's loss the one the model
was trained on. Pickled fields (``:serialized:``) are never decoded.
"""

from __future__ import annotations

import math
import zipfile
from pathlib import Path
from typing import Any

from rlflat.errors import RlflatError
from rlflat.io import load_json_text

READABLE_KEYS = ("gamma", "gae_lambda")
_MAX_DATA_BYTES = 64 * 2**20


def readable_hyperparameters(path: str | Path) -> dict[str, float]:
    """``gamma`` and ``gae_lambda`` from the zip's ``data`` where stored as finite numbers (others are absent)."""
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as archive:
            if "data" not in archive.namelist():
                return {}
            if archive.getinfo("data").file_size > _MAX_DATA_BYTES:
                raise RlflatError(f"{path}: its data member is over {_MAX_DATA_BYTES} bytes; not an SB3 model")
            data: Any = load_json_text(archive.read("data").decode())  # depth-checked (issue 23)
    except (OSError, zipfile.BadZipFile, UnicodeDecodeError, ValueError, RecursionError) as exc:
        if isinstance(exc, RlflatError):
            raise
        raise RlflatError(f"{path}: not a readable SB3 model zip ({type(exc).__name__})") from None
    if not isinstance(data, dict):
        return {}
    found = {}
    for key in READABLE_KEYS:
        value = data.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            found[key] = float(value)
    return found
