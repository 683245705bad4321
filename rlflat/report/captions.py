"""Caption words that must match the data they describe (read from the runs table, never assumed)."""

from __future__ import annotations

import pandas as pd

MODE_COLUMN = "robustness.normalization.mode"


def normalized_return_words(runs: pd.DataFrame) -> str:
    """What "normalised return" means for these runs: the task-level scale, each run's own nominal, or a mix."""
    modes = set(runs[MODE_COLUMN].dropna().astype(str)) if MODE_COLUMN in runs else set()
    if modes == {"task"}:
        return (
            "Normalised return on each task's scale, (R − R_low) / (R_ref − R_low): 0 = a uniformly random policy, "
            "1 = the task's reference return R_ref"
        )
    if modes == {"nominal"}:
        return "Normalised return (1 = the run's own nominal return)"
    if modes:
        return f"Normalised return (runs normalised on different scales: {', '.join(sorted(modes))}; compare with care)"
    return "Normalised return (scale not recorded in the runs table)"
