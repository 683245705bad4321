"""``sweep --set key=value``: one setting changed for every run of a study, and recorded in its ``study.yaml``.

The study written to the study directory must say what ran, so an override is applied to the config itself:
a hyperparameter becomes a one-value grid axis (in every sub-grid) and replaces that key in every algorithm's
``overrides``; a study-level key (``steps``, ``seeds``, ``tasks``, ``algos``, ``name``) replaces the key. The
result is re-validated like any config (a key no algorithm takes is one line) and its text, headed by the command
line's overrides, is what ``study.yaml`` records (comments of the original file are not kept).
"""

from __future__ import annotations

from collections.abc import Sequence

import yaml

from rlflat.algos import parse_overrides
from rlflat.errors import RlflatError
from rlflat.sweep.config import LoadedStudy, parse_study_config

STUDY_KEYS = ("name", "tasks", "algos", "seeds", "steps")
"""Keys ``--set`` replaces at the top level of the study; every other key is a hyperparameter."""
REFUSED = ("grid", "overrides", "probe", "evaluate", "report", "preregistration")


def with_overrides(study: LoadedStudy, texts: Sequence[str]) -> LoadedStudy:
    """``study`` with every ``key=value`` of ``texts`` applied to all its runs (unchanged when empty)."""
    if not texts:
        return study
    overrides = parse_overrides(texts)
    data = yaml.safe_load(study.text)
    for key, value in overrides.items():
        if key in REFUSED:
            raise RlflatError(
                f"sweep --set {key}=...: {key} is a section of the study, not a setting; edit {study.source} "
                f"(--set takes a hyperparameter or one of {', '.join(STUDY_KEYS)})"
            )
        if key in STUDY_KEYS:
            data[key] = value
            continue
        grid = data.get("grid") or {}
        for sub in grid if isinstance(grid, list) else [grid]:
            sub[key] = [value]
        data["grid"] = grid if grid != [] else [{key: [value]}]
        for fixed in (data.get("overrides") or {}).values():
            if key in fixed:
                fixed[key] = value
    shown = " ".join(f"--set {text}" for text in texts)
    header = f"# {study.source} with {shown} (command-line overrides, applied to every run)\n"
    return parse_study_config(header + yaml.safe_dump(data, sort_keys=False), source=f"{study.source} ({shown})")
