"""A study's ``probe:`` / ``evaluate:`` options: checked before a sweep starts, converted for each run.

Its own module so that the config (which checks them) and the pipeline (which converts them) both import it,
and neither imports the other's way back: :mod:`rlflat.sweep.config` <- :mod:`rlflat.sweep.pipeline`, with
this module under both.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["check_options", "evaluate_options"]


def evaluate_options(options: Mapping[str, Any], task: str) -> dict[str, Any]:
    """The study's ``evaluate`` settings as ``evaluate_run`` takes them: ``suite`` becomes a ``SuiteSpec``.

    ``suite`` may be a list of parameters (or ``default`` / ``all``), a comma-separated string, or a mapping
    of ``SuiteSpec`` fields (``parameters``, ``grids: [a:b]``, ``points``, ``action_noise: 0:0.5``, ...).
    """
    result = dict(options)
    if result.get("suite") is not None:
        result["suite"] = _suite(task, result["suite"])
    return result


def _suite(task_name: str, value: Any) -> Any:
    from dataclasses import fields

    from rlflat.errors import RlflatError, bad_choice
    from rlflat.evaluate import SuiteSpec
    from rlflat.evaluate.suites import parse_grids, parse_levels, parse_suite  # not (yet) public
    from rlflat.tasks import load_task

    task = load_task(task_name)

    def names(text: Any) -> tuple[str, ...]:
        return parse_suite(task, ",".join(text) if isinstance(text, list | tuple) else str(text))

    if isinstance(value, str | list | tuple):
        return SuiteSpec(parameters=names(value))
    if not isinstance(value, Mapping):
        raise RlflatError(f"evaluate.suite must be a list of parameters or a mapping, got {value!r}")
    valid = [f.name for f in fields(SuiteSpec)]
    spec: dict[str, Any] = {}
    for key, item in value.items():
        if key not in valid:
            raise bad_choice("evaluate.suite key", key, valid)
        if key in ("parameters", "random_parameters"):
            spec[key] = names(item)
        elif key == "grids":
            spec[key] = parse_grids(task, [item] if isinstance(item, str) else list(item))
        elif key in ("action_noise", "obs_noise"):
            points = _count(value.get("points", 11), "evaluate.suite.points")
            if isinstance(item, list | tuple):
                spec[key] = _numbers(item, f"evaluate.suite.{key}")
            else:
                spec[key] = parse_levels(str(item), points, f"evaluate.suite.{key}")
        elif key == "factors":
            if not isinstance(item, Mapping):
                raise RlflatError(f"evaluate.suite.factors must map parameters to lists of factors, got {item!r}")
            spec[key] = {str(k): _numbers(v, f"evaluate.suite.factors.{k}") for k, v in item.items()}
        elif key in ("points", "grid_points", "random", "random_seed"):
            spec[key] = _count(item, f"evaluate.suite.{key}", low=0 if key.startswith("random") else 1)
        elif key == "severities":
            spec[key] = _numbers(item, "evaluate.suite.severities")
        else:
            spec[key] = item
    return SuiteSpec(**spec)


MAX_SUITE_COUNT = 10**12
"""Largest count a suite option takes (points, random settings); the memory estimate refuses far smaller ones."""


def _count(value: Any, where: str, low: int = 1) -> int:
    from rlflat.errors import RlflatError

    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= MAX_SUITE_COUNT:
        raise RlflatError(f"{where} must be an integer in [{low}, {MAX_SUITE_COUNT}], got {value!r}")
    return value


def _numbers(values: Any, where: str) -> tuple[float, ...]:
    """A list of finite numbers, or a one-line error naming ``where`` and the bad item."""
    import math

    from rlflat.errors import RlflatError

    if not isinstance(values, list | tuple):
        values = [values]
    out = []
    for value in values:
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise RlflatError(f"{where} must be a list of finite numbers, got {value!r}")
        out.append(float(value))
    return tuple(out)


def check_options(stage: str, options: Mapping[str, Any], tasks: Sequence[str]) -> None:
    """Validate a stage's study options without running it (raises :class:`RlflatError` naming the bad one)."""
    if stage == "probe":
        from rlflat.probe import validate_probe_options

        validate_probe_options(dict(options))
        for task in tasks:
            _check_probe_memory(options, task)
    elif stage == "evaluate":
        import inspect

        from rlflat.errors import bad_choice
        from rlflat.evaluate import build_settings, evaluate
        from rlflat.evaluate.budget import check_rollout_memory
        from rlflat.evaluate.suites import count_settings

        parameters = inspect.signature(evaluate).parameters
        valid = [n for n, p in parameters.items() if n not in ("policy", "task") and p.kind != p.VAR_KEYWORD]
        for key in options:
            if key not in valid:
                raise bad_choice("evaluate option", key, valid)
        from rlflat.evaluate.api import validate_evaluate_options
        from rlflat.tasks import load_task

        validate_evaluate_options(dict(options))

        for task in tasks:
            spec, suite = load_task(task), evaluate_options(options, task).get("suite")
            episodes = options.get("episodes", 20)
            if isinstance(episodes, int) and not isinstance(episodes, bool) and episodes > 0:
                check_rollout_memory(spec, count_settings(spec, suite), episodes, what=f"evaluate ({task})")
            build_settings(spec, suite)


def _check_probe_memory(options: Mapping[str, Any], task_name: str) -> None:
    """The probe's memory estimate for ``task_name`` with SB3's default 64x64 policy, before any training: a
    ``batch: 1000000000`` is refused up front, not after the first run trained (larger policies need more; the
    probe checks again with the trained one)."""
    from gymnasium import spaces
    from stable_baselines3.common.policies import ActorCriticPolicy

    from rlflat.policy import FunctionalPolicy
    from rlflat.probe.budget import check_probe_memory
    from rlflat.probe.options import make_options
    from rlflat.tasks import load_task, make_env

    spec = load_task(task_name)
    env = make_env(spec)
    try:
        observation_space, action_space = env.observation_space, env.action_space
    finally:
        env.close()
    if not isinstance(observation_space, spaces.Box):
        return
    policy = FunctionalPolicy(ActorCriticPolicy(observation_space, action_space, lambda _: 0.0))
    opts = make_options(**dict(options))
    check_probe_memory(opts, policy, sum(p.numel() for p in policy.params.values()), spec)
