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
  their reported standard error (``|a - b| <= 3 sqrt(se_a^2 + se_b^2)``).

Keys are those of the ``probe`` block of ``metrics.json`` (:func:`rlflat.probe.output.metrics_block`), with
``<s>`` standing for a sigma (``kl_sigma<s>`` covers ``kl_sigma0p1``, ...); ``<key>_se`` keys are the standard
errors of ``<key>``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = ["INVARIANCE", "NOT_MEASURES", "Invariance", "family", "invariance_markdown"]


@dataclass(frozen=True)
class Invariance:
    """What a measure is claimed to be invariant to, and why."""

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

INVARIANCE: dict[str, Invariance] = {
    "loss_value": Invariance(True, "exact", "a function of the action distribution only"),
    "nominal_return": Invariance(True, "exact", "a function of the policy's actions only"),
    "lambda_max": Invariance(False, "exact", _HESSIAN),
    "lambda_min": Invariance(False, "exact", _HESSIAN),
    "trace": Invariance(False, "exact", _HESSIAN),
    "lambda_max_over_trace": Invariance(False, "exact", _HESSIAN),
    "lambda_max_over_abs_sum": Invariance(False, "exact", _HESSIAN),
    "negative_mass_fraction": Invariance(False, "exact", _HESSIAN),
    "kl_sigma<s>": Invariance(False, "monte_carlo", _FILTER),
    "action_change_sigma<s>": Invariance(False, "monte_carlo", _FILTER),
    "loss_increase_sigma<s>": Invariance(False, "monte_carlo", _FILTER),
    "return_halving_sigma": Invariance(False, "monte_carlo", _FILTER),
    "return_halving_sigma_raw": Invariance(False, "monte_carlo", "an isotropic direction is not carried along"),
    "worst_case_raw": Invariance(False, "exact", "the Euclidean ball is not mapped onto itself"),
    "worst_case_raw_one_step": Invariance(False, "exact", "the Euclidean ball is not mapped onto itself"),
    "worst_case_adaptive": Invariance(
        True, "exact", "ASAM's ball ||eps / |theta| || <= rho maps onto itself (Kwon et al., 2021)", {"eta": 0.0}
    ),
    "worst_case_adaptive_one_step": Invariance(
        True, "exact", "ASAM's ball ||eps / |theta| || <= rho maps onto itself (Kwon et al., 2021)", {"eta": 0.0}
    ),
    "return_drop_filter_sigma<s>": Invariance(False, "monte_carlo", _FILTER),
    "return_drop_adaptive_sigma<s>": Invariance(True, "monte_carlo", _ADAPTIVE),
    "cliff": Invariance(False, "exact", _FILTER + "; the gradient scales by 1/c_i", witness="cliff_return_ratio"),
    "cliff_drop_over_range": Invariance(
        False, "exact", _FILTER + "; the gradient scales by 1/c_i", witness="cliff_return_ratio"
    ),
    "cliff_return_ratio": Invariance(False, "exact", _FILTER + "; the gradient scales by 1/c_i"),
    "keskar_sharpness": Invariance(False, "exact", "the box bound eps (|x_i| + 1) is not scaled with x_i"),
    "magnitude_aware_sigma": Invariance(
        True, "monte_carlo", _ADAPTIVE + " when eps = 0 (Jiang's eps = 1e-3 breaks it)", {"magnitude_aware_eps": 0.0}
    ),
    "magnitude_aware_flatness": Invariance(
        True, "monte_carlo", _ADAPTIVE + " when eps = 0 (Jiang's eps = 1e-3 breaks it)", {"magnitude_aware_eps": 0.0}
    ),
    "magnitude_aware_censored": Invariance(
        True, "monte_carlo", _ADAPTIVE + " when eps = 0", {"magnitude_aware_eps": 0.0}
    ),
}
"""The claims, by metrics key family (see the module docstring)."""

NOT_MEASURES: frozenset[str] = frozenset(
    {"file", "loss", "seed", "directions", "hessian_method", "density_method", "wall_seconds", "trace_stderr"}
)
"""Keys of the metrics block that are labels, settings or costs, not measures."""


def family(key: str) -> str:
    """The table key of a metrics key: sigmas become ``<s>`` (``kl_sigma0p1`` -> ``kl_sigma<s>``)."""
    return re.sub(r"_sigma[0-9pm]+(?=_|$)", "_sigma<s>", key)


def invariance_markdown() -> str:
    """The README's invariance table, generated from :data:`INVARIANCE`."""
    lines = [
        "| measure (`probe.<key>`) | per-neuron ReLU rescaling | tanh sign flips |",
        "| --- | --- | --- |",
    ]
    for key, inv in INVARIANCE.items():
        condition = ", ".join(f"{k} = {v}" for k, v in inv.condition.items())
        rescaling = ("invariant" + (f" ({condition})" if condition else "")) if inv.rescaling else "not invariant"
        flip = "unchanged" if inv.sign_flip == "exact" else "same within SE (Monte Carlo)"
        lines.append(f"| `{key}` | {rescaling} | {flip} |")
    return "\n".join(lines) + "\n"
