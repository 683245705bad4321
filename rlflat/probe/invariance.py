"""Which probe measures are invariant to which reparametrisations: one machine-readable table, read by the tests
(``tests/test_probe_invariance.py``) and rendered into the README (:func:`invariance_markdown`), so the claims and
the code cannot drift apart.

Two function-preserving reparametrisations of an MLP policy are tested:

* **Per-neuron rescaling of a ReLU layer** (Dinh et al., 2017): hidden unit i's incoming weights and bias times
  c_i > 0, its outgoing weights times 1 / c_i; the action distribution is unchanged. Sharpness can change
  arbitrarily under it, so a measure is called invariant only if the test holds it to 1e-5 relative with c_i drawn
  from [1/4, 4], under the option values in ``condition``.
* **Hidden-unit sign flips of a tanh layer** (tanh is odd): incoming weights and bias and outgoing weights of unit
  i negated. Deterministic measures must be unchanged (to float32 rounding); Monte-Carlo measures (random
  directions or noise draws, same seeds) change their draw relative to the network, so they must agree within
  their reported standard errors (``|a - b| <= t sqrt(se_a^2 + se_b^2)``, t a Student-t quantile with the
  replicates' degrees of freedom, Bonferroni-corrected over the Monte-Carlo measures at 1%).

Keys are those of the ``probe`` block of ``metrics.json`` (:func:`rlflat.probe.output.metrics_block`), with
``<s>`` standing for a sigma (``kl_sigma<s>`` covers ``kl_sigma0p1``, ...); ``<key>_se`` keys are the standard
errors of ``<key>``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = [
    "INVARIANCE",
    "NOT_MEASURES",
    "Invariance",
    "family",
    "invariance_markdown",
    "rescaling_words",
    "sign_flip_words",
]


@dataclass(frozen=True)
class Invariance:
    """What a measure is, what it is claimed to be invariant to, and why."""

    what: str
    """The definition in one line, with its source: the README and the report's glossary print it."""
    rescaling: bool
    """Invariant under per-neuron rescaling of a ReLU layer (under ``condition``)."""
    sign_flip: Literal["exact", "monte_carlo"]
    """'exact': deterministic, unchanged by tanh sign flips; 'monte_carlo': agrees within its reported SE."""
    why: str
    condition: Mapping[str, Any] = field(default_factory=dict)
    """Probe options under which ``rescaling`` holds (e.g. ``eta = 0`` for the adaptive ball)."""
    witness: str | None = None
    """For a boolean measure not claimed invariant: the magnitude key whose change shows it."""


_HESSIAN = "the Hessian of a reparametrised net is J^T H J with J = diag(c), which changes its spectrum"
_FILTER = (
    "filter normalisation is per output row: rows of the layer after a rescaled one mix columns scaled by 1/c_i, "
    "so the direction is not carried along (it is invariant only to a uniform rescaling of a layer)"
)
_ADAPTIVE = "per-weight |theta_i| scaling is carried along by the rescaling, so the perturbed nets correspond"
_GRADIENT = _FILTER + "; the gradient scales by 1/c_i"
_SPECTRUM = "of the Hessian of the probe loss (default: the PPO surrogate) on the probe batch"
_AVERAGE = (
    "over random filter-normalised directions (Li et al., 2018: per output row, biases zeroed) at sigma = s: an "
    "average, not Keskar et al.'s maximum"
)
_RETURN_DROP = (
    "expected return drop at sigma = s (0.05, 0.1, 0.2) along random {} directions, paired per episode with the "
    "unperturbed policy, divided by the task's R_ref - R_low; SE over directions x episodes"
)
_FISHER = "the Fisher of a reparametrised net is T^-T F T^-1, which changes its spectrum and trace"
_FISHER_ADAPTIVE = (
    "under a diagonal reparametrisation T that keeps pi (per-neuron rescaling), D F D maps to itself exactly"
)
_ASAM = "ASAM's ball ||eps / |theta| || <= rho maps onto itself (Kwon et al., 2021)"
_CLIFF = (
    "Sullivan et al. (2022) cliff test along the filter-normalised policy gradient: return at the 10th grid point "
    "<= 50% of the start and the drop > 25% of the line's range"
)
_JIANG = (
    "Jiang et al. (2020, App. C) magnitude-aware sigma': noise N(0, sigma'^2 w_i^2 + eps^2), eps = 1e-3, largest "
    "sigma' with expected action-change rate <= 0.1 on the probe batch (bisection)"
)
_JIANG_WHY = _ADAPTIVE + " when eps = 0 (Jiang's eps = 1e-3 breaks it)"

INVARIANCE: dict[str, Invariance] = {
    "loss_value": Invariance("the probe loss at the trained parameters", True, "exact", "a function of pi only"),
    "nominal_return": Invariance("mean return of the unperturbed policy", True, "exact", "a function of pi only"),
    "lambda_max": Invariance(f"largest eigenvalue {_SPECTRUM}", False, "exact", _HESSIAN),
    "lambda_min": Invariance(f"smallest eigenvalue {_SPECTRUM}", False, "exact", _HESSIAN),
    "trace": Invariance(f"trace {_SPECTRUM}", False, "exact", _HESSIAN),
    "lambda_max_over_trace": Invariance("lambda_max / trace (null unless trace > 0)", False, "exact", _HESSIAN),
    "lambda_max_over_abs_sum": Invariance("lambda_max / sum |lambda| (whole spectrum)", False, "exact", _HESSIAN),
    "negative_mass_fraction": Invariance("share of sum |lambda| on negative eigenvalues", False, "exact", _HESSIAN),
    "negative_count_fraction": Invariance(
        f"spectral mass below -1e-3 max|lambda| {_SPECTRUM} (eigenvalues or SLQ weights, one definition)",
        False,
        "exact",
        _HESSIAN,
    ),
    "fisher_lambda_max": Invariance(
        "largest eigenvalue of the policy's Fisher information (= Hessian of the mean KL at theta0 = Gauss-Newton "
        "of the action distribution; Amari, 1998)",
        False,
        "exact",
        _FISHER,
    ),
    "fisher_trace": Invariance(
        "trace of the Fisher, exact from per-sample Jacobians (Hutchinson in probe files without trace_method)",
        False,
        "exact",
        _FISHER,
    ),
    "fisher_rao_norm": Invariance(
        "Fisher-Rao norm theta^T F theta (Liang et al., 2019)",
        True,
        "exact",
        "F maps to T^-T F T^-1 under any linear reparametrisation theta -> T theta that keeps pi, so theta^T F theta "
        "is unchanged",
    ),
    "fisher_adaptive_lambda_max": Invariance(
        "largest eigenvalue of D F D, D = diag(|theta|): the Fisher in ASAM's scale-normalised coordinates",
        True,
        "exact",
        _FISHER_ADAPTIVE,
    ),
    "fisher_adaptive_trace": Invariance(
        "trace of D F D = sum_i theta_i^2 F_ii, exact as fisher_trace", True, "exact", _FISHER_ADAPTIVE
    ),
    "entropy": Invariance("confound: mean policy entropy on the probe batches", True, "exact", "a function of pi only"),
    "max_action_prob": Invariance(
        "confound: mean probability of the most likely action (Discrete)", True, "exact", "a function of pi only"
    ),
    "log_std": Invariance("confound: mean log-std of the actions (Box)", True, "exact", "a function of pi only"),
    "kl_sigma<s>": Invariance(f"mean KL(pi || perturbed pi) {_AVERAGE}", False, "monte_carlo", _FILTER),
    "action_change_sigma<s>": Invariance(f"share of changed greedy actions {_AVERAGE}", False, "monte_carlo", _FILTER),
    "loss_increase_sigma<s>": Invariance(f"loss increase {_AVERAGE}", False, "monte_carlo", _FILTER),
    "return_halving_sigma": Invariance(
        "first sigma of the probe's grid (log-interpolated) where the expected return along random filter "
        "directions falls below half of nominal (null: never on the grid)",
        False,
        "monte_carlo",
        _FILTER,
    ),
    "return_halving_sigma_raw": Invariance(
        "the same along isotropic directions scaled to ||theta||",
        False,
        "monte_carlo",
        "an isotropic direction is not carried along",
    ),
    "worst_case_raw": Invariance(
        "max loss increase in the ball ||eps|| <= rho (SAM, Foret et al., 2021), projected ascent",
        False,
        "exact",
        "the Euclidean ball is not mapped onto itself",
    ),
    "worst_case_raw_one_step": Invariance(
        "the same, one SAM step", False, "exact", "the Euclidean ball is not mapped onto itself"
    ),
    "worst_case_adaptive": Invariance(
        "max loss increase in ASAM's ball ||eps / (|theta| + eta)|| <= rho (Kwon et al., 2021), projected ascent",
        True,
        "exact",
        _ASAM,
        {"eta": 0.0},
    ),
    "worst_case_adaptive_one_step": Invariance("the same, one ASAM step", True, "exact", _ASAM, {"eta": 0.0}),
    "return_drop_filter_sigma<s>": Invariance(
        _RETURN_DROP.format("filter-normalised (Li et al., 2018)"), False, "monte_carlo", _FILTER
    ),
    "return_drop_adaptive_sigma<s>": Invariance(
        _RETURN_DROP.format("per-weight (d_i = |w_i| z_i)"), True, "monte_carlo", _ADAPTIVE
    ),
    "cliff": Invariance(
        _CLIFF + " (null unless every replicate agrees)", False, "exact", _GRADIENT, witness="cliff_return_ratio"
    ),
    "cliff_fraction": Invariance(
        "share of the probe's replicate lines on which the cliff test fires",
        False,
        "exact",
        _GRADIENT,
        witness="cliff_return_ratio",
    ),
    "cliff_drop_over_range": Invariance(
        "(R_0 - R_9) / (max - min) on the cliff line", False, "exact", _GRADIENT, witness="cliff_return_ratio"
    ),
    "cliff_return_ratio": Invariance("R_9 / R_0 on the cliff line (above the task floor)", False, "exact", _GRADIENT),
    "keskar_sharpness": Invariance(
        "Keskar et al. (2017, Sec. 2.2.2) epsilon-sharpness: 100 (max over |y_i| <= eps (|x_i| + 1) of f(x + y) - "
        "f(x)) / (1 + f(x)), L-BFGS-B, eps = 1e-3",
        False,
        "exact",
        "the box bound eps (|x_i| + 1) is not scaled with x_i",
    ),
    "magnitude_aware_sigma": Invariance(_JIANG, True, "monte_carlo", _JIANG_WHY, {"magnitude_aware_eps": 0.0}),
    "magnitude_aware_flatness": Invariance(
        "Jiang et al.'s pacbayes.mag.flatness, 1 / sigma'^2",
        True,
        "monte_carlo",
        _JIANG_WHY,
        {"magnitude_aware_eps": 0.0},
    ),
    "magnitude_aware_censored": Invariance(
        "sigma' reached the search's upper bound (so sigma' >= it)",
        True,
        "monte_carlo",
        _JIANG_WHY,
        {"magnitude_aware_eps": 0.0},
    ),
}
"""The claims, by metrics key family (see the module docstring)."""

NOT_MEASURES: frozenset[str] = frozenset(
    {
        "file",
        "loss",
        "seed",
        "batches",
        "batch_size",
        "directions",
        "hessian_method",
        "density_method",
        "fisher_trace_method",
        "wall_seconds",
        "param_norm.<name>",
    }
)
"""Families (:func:`family`) of metrics keys that are labels, settings, costs or parameter descriptors (the
per-tensor norms, recorded as confounds), not measures."""


def family(key: str) -> str:
    """The table key of a metrics key: sigmas become ``<s>`` (``kl_sigma0p1`` -> ``kl_sigma<s>``), parameter names
    ``<name>`` (``param_norm.action_net.weight`` -> ``param_norm.<name>``)."""
    key = re.sub(r"^param_norm\..+$", "param_norm.<name>", key)
    return re.sub(r"_sigma[0-9pm]+(?=_|$)", "_sigma<s>", key)


def rescaling_words(inv: Invariance) -> str:
    """'invariant (eta = 0.0)' / 'not invariant'."""
    condition = ", ".join(f"{k} = {v}" for k, v in inv.condition.items())
    return ("invariant" + (f" ({condition})" if condition else "")) if inv.rescaling else "not invariant"


def sign_flip_words(inv: Invariance) -> str:
    return "unchanged" if inv.sign_flip == "exact" else "same within SE (Monte Carlo)"


def invariance_markdown() -> str:
    """The README's table of measures, generated from :data:`INVARIANCE` (``|`` escaped for markdown)."""
    lines = [
        "| `probe.<key>` | what it is | per-neuron ReLU rescaling | tanh sign flips |",
        "| --- | --- | --- | --- |",
    ]
    for key, inv in INVARIANCE.items():
        what = inv.what.replace("|", "\\|")
        lines.append(f"| `{key}` | {what} | {rescaling_words(inv)} | {sign_flip_words(inv)} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":  # python -m rlflat.probe.invariance > table.md: the README's table
    print(invariance_markdown(), end="")
