"""The invariance claims of rlflat.probe.invariance.INVARIANCE, tested on function-preserving reparametrisations.

(a) ReLU policy, per-neuron rescaling with c_i in [1/4, 4] of both hidden layers: every measure claimed invariant
stays within 1e-5 relative, every other measure changes by more than 1e-4 relative (so a wrong claim either way
fails). (b) tanh policy, hidden-unit sign flips: deterministic measures unchanged to float32 rounding, Monte-Carlo
measures within their combined standard error times a Student-t quantile (T_CRIT). Each probe is a whole
``probe_run`` on a run dir, so the keys are the ones users get.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from scipy import stats
from stable_baselines3 import PPO
from torch import nn

from rlflat.probe import probe_run
from rlflat.probe.invariance import INVARIANCE, NOT_MEASURES, family, invariance_markdown
from rlflat.tasks import load_task, make_env

torch.set_num_threads(1)
CARTPOLE = load_task("CartPole")
README = Path(__file__).resolve().parents[1] / "docs" / "measures.md"

CONDITIONS = {k: v for inv in INVARIANCE.values() for k, v in inv.condition.items()}
OPTIONS: dict[str, Any] = {
    "batches": 4,
    "batch": 128,
    "n_directions": 2,
    "episodes": 2,
    "sigmas": (0.03, 0.3, 3.0, 10.0),
    "reference_sigmas": (0.3,),
    "trace_probes": 5,
    "ascent_steps": 3,
    "return_sigmas": (0.1, 0.3),
    "return_directions": 2,
    "return_episodes": 2,
    "cliff_points": 10,
    "cliff_span": 0.2,
    "keskar_iterations": 5,
    "magnitude_aware_samples": 3,
    "magnitude_aware_depth": 8,
    **CONDITIONS,
}
MONTE_CARLO = sum(inv.sign_flip == "monte_carlo" for inv in INVARIANCE.values())
T_CRIT = float(stats.t.ppf(1 - 0.01 / (2 * MONTE_CARLO), 2 * (OPTIONS["batches"] - 1)))
"""Two draws of a Monte-Carlo measure agree when |a - b| <= T_CRIT sqrt(se_a^2 + se_b^2): Student t with the
replicates' 2 (B - 1) degrees of freedom, Bonferroni over the Monte-Carlo measures at a 1% family-wise level."""
Transform = Callable[[dict[str, torch.Tensor], np.random.Generator], None]

HIDDEN = (("mlp_extractor.policy_net.0", "mlp_extractor.policy_net.2"), ("mlp_extractor.policy_net.2", "action_net"))
"""(layer whose units are transformed, the layer reading them) for both hidden layers of the actor."""


def _rescale(state: dict[str, torch.Tensor], rng: np.random.Generator) -> None:
    """Dinh et al. (2017): unit i's incoming row and bias times c_i, its outgoing column times 1 / c_i."""
    for into, out in HIDDEN:
        c = torch.as_tensor(np.exp(rng.uniform(np.log(0.25), np.log(4.0), state[f"{into}.bias"].shape[0])))
        c = c.to(state[f"{into}.bias"])
        state[f"{into}.weight"] *= c[:, None]
        state[f"{into}.bias"] *= c
        state[f"{out}.weight"] /= c[None, :]


def _flip(state: dict[str, torch.Tensor], rng: np.random.Generator) -> None:
    """tanh is odd: negate unit i's incoming row and bias and its outgoing column, for a random half of units."""
    for into, out in HIDDEN:
        s = torch.as_tensor(np.where(rng.random(state[f"{into}.bias"].shape[0]) < 0.5, -1.0, 1.0))
        s = s.to(state[f"{into}.bias"])
        state[f"{into}.weight"] *= s[:, None]
        state[f"{into}.bias"] *= s
        state[f"{out}.weight"] *= s[None, :]


def _run_dir(directory: Path, model: PPO) -> Path:
    directory.mkdir(parents=True)
    model.save(directory / "model.zip")
    config = {"algo": "ppo", "task": "CartPole", "seed": 0, "hyperparameters": {"gamma": 0.98, "gae_lambda": 0.8}}
    (directory / "config.json").write_text(json.dumps(config))
    return directory


def _pair(
    root: Path, activation: type[nn.Module], transform: Transform, batches: int
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Probe blocks of a briefly trained policy and of its transformed twin (same probe seed, ``batches``
    replicates)."""
    model = PPO(
        "MlpPolicy",
        make_env(CARTPOLE),
        seed=0,
        n_steps=256,
        batch_size=64,
        policy_kwargs={"net_arch": [8, 8], "activation_fn": activation},
    )
    model.learn(1024)
    original = _run_dir(root / "original", model)
    with torch.no_grad():
        state = dict(model.policy.named_parameters())
        obs = torch.randn(64, 4)
        before = model.policy.get_distribution(obs).distribution.probs.clone()
        transform(state, np.random.default_rng(1))
        after = model.policy.get_distribution(obs).distribution.probs
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-6)  # the transform preserves the function
    twin = _run_dir(root / "twin", model)
    blocks = []
    for run in (original, twin):
        probe_run(run, **{**OPTIONS, "batches": batches})
        blocks.append(json.loads((run / "metrics.json").read_text())["probe"])
    return blocks[0], blocks[1]


def _measures(block: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in block.items() if family(k) not in NOT_MEASURES and not k.endswith("_se")}


def _relative(a: float, b: float) -> float:
    return abs(a - b) / max(abs(a), abs(b), 1e-12)


def test_readme_shows_the_invariance_table() -> None:
    assert invariance_markdown() in README.read_text(), (
        "docs/measures.md's table is stale: paste the output of python -m rlflat.probe.invariance"
    )


@pytest.fixture(scope="module")
def rescaled(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], dict[str, Any]]:
    return _pair(tmp_path_factory.mktemp("relu"), nn.ReLU, _rescale, batches=2)  # same seeds: no SE needed


@pytest.fixture(scope="module")
def flipped(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], dict[str, Any]]:
    return _pair(tmp_path_factory.mktemp("tanh"), nn.Tanh, _flip, batches=OPTIONS["batches"])


def test_every_measure_has_a_documented_invariance(rescaled: tuple[dict[str, Any], dict[str, Any]]) -> None:
    undocumented = sorted(k for k in _measures(rescaled[0]) if family(k) not in INVARIANCE)
    assert not undocumented, f"add these probe keys to rlflat.probe.invariance.INVARIANCE: {undocumented}"


def test_relu_rescaling_keeps_exactly_the_claimed_measures(rescaled: tuple[dict[str, Any], dict[str, Any]]) -> None:
    a, b = rescaled
    wrong, checked = [], {True: 0, False: 0}
    for key, va in _measures(a).items():
        inv, vb = INVARIANCE[family(key)], b[key]
        if inv.rescaling:
            if va != vb and (isinstance(va, bool) or va is None or vb is None or _relative(va, vb) > 1e-5):
                wrong.append(f"{key}: claimed invariant, {va} -> {vb}")
            checked[True] += 1
            continue
        witness = inv.witness or key
        wa, wb = a[witness], b[witness]
        if wa is None and wb is None:
            continue  # undefined on this policy (e.g. lambda_max / trace with trace <= 0); one None is a change
        if wa is not None and wb is not None and _relative(wa, wb) <= 1e-4:
            wrong.append(f"{key}: claimed not invariant, but {witness} {wa} -> {wb}")
        checked[False] += 1
    assert not wrong, "\n".join(wrong)
    assert checked[True] >= 8 and checked[False] >= 15, checked


def test_tanh_sign_flips_change_nothing_beyond_monte_carlo_error(
    flipped: tuple[dict[str, Any], dict[str, Any]],
) -> None:
    a, b = flipped
    wrong, checked = [], 0
    for key, va in _measures(a).items():
        inv, vb = INVARIANCE[family(key)], b[key]
        if inv.sign_flip == "monte_carlo" and (va is None) != (vb is None):
            continue  # e.g. a return-halving sigma found on one draw's grid and not on the other's
        if va is None or vb is None or isinstance(va, bool):
            if va != vb:
                wrong.append(f"{key}: {va} -> {vb}")
            continue
        if inv.sign_flip == "exact":
            if _relative(va, vb) > 1e-5 and abs(va - vb) > 1e-9:
                wrong.append(f"{key}: deterministic, {va} -> {vb}")
        elif f"{key}_se" in a:
            se = math.hypot(a[f"{key}_se"], b[f"{key}_se"])
            if abs(va - vb) > T_CRIT * se:
                wrong.append(f"{key}: {va} -> {vb}, more than {T_CRIT:.2g} combined se ({se:.3g})")
        else:
            continue  # a Monte-Carlo measure without a reported SE in the metrics block (see the closing note)
        checked += 1
    assert checked >= 15 and not wrong, "\n".join(wrong)
