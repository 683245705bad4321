"""Which way is sharper, which way is more robust: the one table every sentence, caption and P(improvement) reads.

A rank correlation's sign means nothing until both axes are oriented: a positive rho between the return-halving
sigma (higher = *flatter*) and the robust AUC (higher = *more robust*) says flatter runs were more robust, the
opposite of what the same sign says for lambda_max. ``SHARPNESS`` maps a column pattern to +1 (higher =
sharper) or -1 (higher = flatter); ``ROBUSTNESS`` to +1 (higher = more robust) or -1 (higher = less robust);
0 means the column has no such direction (a ratio that can change sign, a two-sided factor), and sentences
about it then only say "higher ... went with higher ...". First matching pattern wins.
"""

from __future__ import annotations

import re

SHARPNESS: tuple[tuple[str, int], ...] = (
    (r"return_halving_sigma", -1),  # the perturbation size that halves the return: larger = flatter
    (r"magnitude_aware_sigma", -1),  # Jiang's sigma': larger = flatter (its 1 / sigma'^2 is sharper-is-higher)
    (r"cliff_return_ratio", -1),  # share of the return kept at the cliff test's 10th point
    (r"return_drop|cliff|keskar_sharpness|magnitude_aware_flatness", 1),
    (r"lambda_max_over_(trace|abs_sum)", 0),  # shape ratios of the spectrum (the first follows the trace's sign)
    (r"lambda_min", -1),  # the negative end of the spectrum of the surrogate: farther below 0 = sharper
    (r"negative_(mass|count)_fraction", 0),
    (r"fisher_", 1),  # Fisher curvature (lambda_max, trace, adaptive) and the Fisher-Rao norm: larger = sharper
    (r"lambda_max|top_eigen|(^|\.)trace$|hessian\.trace", 1),
    (r"worst_case|sam_sharpness|pgd", 1),  # loss increase of the worst perturbation in a ball
    (r"loss_increase|kl|action_change", 1),
)
ROBUSTNESS: tuple[tuple[str, int], ...] = (
    (r"collapsed_fraction|frac_collapsed|fraction_collapsed", -1),
    (r"collapse_low$", -1),  # the collapse factor below nominal: smaller = survives more shrinking
    (r"collapse_high$|collapse_log_factor|collapse_point|collapse_level", 1),
    (r"collapse_factor$", 0),  # the nearer side's factor: below or above 1, no single direction
    (r"auc|return|mean_normalized_return", 1),
)


def _lookup(table: tuple[tuple[str, int], ...], column: str) -> int:
    for pattern, sign in table:
        if re.search(pattern, column):
            return sign
    return 0


def sharpness_sign(column: str) -> int:
    """+1: higher values are sharper; -1: higher values are flatter; 0: no direction."""
    return _lookup(SHARPNESS, column)


def robustness_sign(column: str) -> int:
    """+1: higher values are more robust (or perform better); -1: less robust; 0: no direction."""
    return _lookup(ROBUSTNESS, column)


def better_sign(column: str) -> int:
    """Direction of *improvement* for an algorithm comparison: more robust, or flatter, is better."""
    if column.startswith("probe."):
        return -sharpness_sign(column)
    return robustness_sign(column)


def direction_word(column: str) -> str:
    """``"↑ sharper"``, ``"↑ flatter"``, ``"↑ more robust"``, ``"↑ less robust"`` or ``""``: for axis labels."""
    if column.startswith("probe."):
        sign = sharpness_sign(column)
        return {1: "↑ sharper", -1: "↑ flatter"}.get(sign, "")
    sign = robustness_sign(column)
    if not column.startswith("robustness."):
        return {1: "↑ better", -1: "↑ worse"}.get(sign, "")
    return {1: "↑ more robust", -1: "↑ less robust"}.get(sign, "")


def association_sentence(measure: str, metric: str, estimate: float) -> str:
    """What a correlation of sign ``estimate`` between ``measure`` and ``metric`` means, both axes oriented."""
    s, r = sharpness_sign(measure), robustness_sign(metric)
    if s == 0 or r == 0 or estimate == 0:
        return "higher values of the measure went with " + ("higher" if estimate > 0 else "lower") + " values"
    return "sharper runs were more robust" if estimate * s * r > 0 else "sharper runs were less robust"


def improvement_words(column: str) -> tuple[str, str]:
    """(word for a change in the better direction, word for the worse one) of a compared column."""
    if better_sign(column) == 0:
        return "higher", "lower"
    if column.startswith("probe."):
        return "flatter", "sharper"
    if column.startswith("robustness."):
        return "more robust", "less robust"
    return "better", "worse"
