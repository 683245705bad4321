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
            points = int(value.get("points", 11))
            if isinstance(item, list | tuple):
                spec[key] = tuple(float(v) for v in item)
            else:
                spec[key] = parse_levels(str(item), points, f"evaluate.suite.{key}")
        elif key == "factors":
            spec[key] = {str(k): tuple(float(f) for f in v) for k, v in dict(item).items()}
        else:
            spec[key] = item
    return SuiteSpec(**spec)


def check_options(stage: str, options: Mapping[str, Any], tasks: Sequence[str]) -> None:
    """Validate a stage's study options without running it (raises :class:`RlflatError` naming the bad one)."""
    if stage == "probe":
        from rlflat.probe import validate_probe_options

        validate_probe_options(dict(options))
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
        from rlflat.tasks import load_task

        for task in tasks:
            spec, suite = load_task(task), evaluate_options(options, task).get("suite")
            episodes = options.get("episodes", 20)
            if isinstance(episodes, int) and not isinstance(episodes, bool) and episodes > 0:
                check_rollout_memory(spec, count_settings(spec, suite), episodes, what=f"evaluate ({task})")
            build_settings(spec, suite)
