"""Learning-rate and clip-range schedules written as strings in task specs and ``--set`` overrides.

Forms (SB3 calls a schedule with ``progress_remaining``, 1 at the start of training, 0 at the end):

* a number (or a numeric string: YAML 1.1 reads ``3e-3`` as a string) -- constant;
* ``lin_X`` -- rl-baselines3-zoo's linear schedule, X at the start decaying to 0 at the end;
* ``warmcos_X_W`` -- linear warmup from 0 to X over the first fraction W of training, then cosine decay to
  0 (Loshchilov & Hutter 2017, SGDR; the warmup of Goyal et al. 2017). Schedules change the noise scale of
  SGD, one of the flatness knobs this testbed compares with SAM.

SB3's ``progress_remaining`` goes *negative* when the last rollout overshoots ``total_timesteps`` (30000
steps in rollouts of 256 end at -0.0069), which would give the final update a negative learning rate and an
inverted clip range; every schedule therefore clamps it at 0 (:func:`clamp_progress`).

Strings are parsed with a regular expression, never ``eval``. The schedule objects are small classes, not
closures, so a saved model unpickles anywhere rlflat is importable.
"""

from __future__ import annotations

import math
import re

from rlflat.errors import RlflatError

_NUMBER = r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?"
_NUMBER_RE = re.compile(rf"^{_NUMBER}$")
_LIN_RE = re.compile(rf"^lin_({_NUMBER})$")
_WARMCOS_RE = re.compile(rf"^warmcos_({_NUMBER})_({_NUMBER})$")

SCHEDULE_FORMS = ("a number", "lin_X", "warmcos_X_W (0 <= W < 1)")


def clamp_progress(progress_remaining: float) -> float:
    """``progress_remaining`` limited to [0, 1]: past the end of training the schedule stays at its end value."""
    return min(max(progress_remaining, 0.0), 1.0)


class LinearSchedule:
    """``lin_X``: X * progress_remaining, the zoo's ``linear_schedule``, but never below 0 past the end."""

    def __init__(self, start: float) -> None:
        self.start = start

    def __call__(self, progress_remaining: float) -> float:
        return clamp_progress(progress_remaining) * self.start

    def __repr__(self) -> str:
        return f"lin_{self.start!r}"


class WarmupCosineSchedule:
    """``warmcos_X_W``: linear warmup to X over the first fraction W of training, then cosine decay to 0."""

    def __init__(self, peak: float, warmup: float) -> None:
        self.peak = peak
        self.warmup = warmup

    def __call__(self, progress_remaining: float) -> float:
        done = 1.0 - clamp_progress(progress_remaining)
        if done < self.warmup:
            return self.peak * done / self.warmup
        decay = (done - self.warmup) / (1.0 - self.warmup)
        return self.peak * 0.5 * (1.0 + math.cos(math.pi * decay))

    def __repr__(self) -> str:
        return f"warmcos_{self.peak!r}_{self.warmup!r}"


Schedule = float | LinearSchedule | WarmupCosineSchedule


def _malformed(key: str, value: object) -> RlflatError:
    return RlflatError(f"{key} {value!r} is not a schedule; valid forms: {', '.join(SCHEDULE_FORMS)}")


def normalize_schedule(key: str, value: object, *, positive: bool = True) -> float | str:
    """Validate a schedule spec and return its canonical, JSON-friendly form (a float or the string)."""
    if isinstance(value, bool):
        raise _malformed(key, value)
    if isinstance(value, int | float):
        number = float(value)
    elif isinstance(value, str) and _NUMBER_RE.match(value.strip()):
        number = float(value.strip())
    elif isinstance(value, str):
        parse_schedule(key, value, positive=positive)  # raises if malformed
        return value.strip()
    else:
        raise _malformed(key, value)
    _check_value(key, value, number, positive)
    return number


def _check_value(key: str, spec: object, number: float, positive: bool) -> None:
    if not math.isfinite(number) or number < 0 or (positive and number == 0):
        bound = "> 0" if positive else ">= 0"
        raise RlflatError(f"{key} {spec!r}: the value must be finite and {bound}")


def parse_schedule(key: str, value: object, *, positive: bool = True) -> Schedule:
    """Turn a schedule spec into what SB3 accepts: a float or a picklable callable of progress_remaining."""
    if isinstance(value, bool):
        raise _malformed(key, value)
    if isinstance(value, int | float) or (isinstance(value, str) and _NUMBER_RE.match(value.strip())):
        number = float(value)
        _check_value(key, value, number, positive)
        return number
    if not isinstance(value, str):
        raise _malformed(key, value)
    text = value.strip()
    if match := _LIN_RE.match(text):
        start = float(match.group(1))
        _check_value(key, value, start, positive)
        return LinearSchedule(start)
    if match := _WARMCOS_RE.match(text):
        peak, warmup = float(match.group(1)), float(match.group(2))
        _check_value(key, value, peak, positive)
        if not 0.0 <= warmup < 1.0:
            raise RlflatError(f"{key} {value!r}: warmup fraction W must satisfy 0 <= W < 1, got {warmup}")
        return WarmupCosineSchedule(peak, warmup)
    raise _malformed(key, value)
