"""Task specs load and validate, and envs built with perturbed dynamics follow the physics they describe."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from rlflat.errors import RlflatError
from rlflat.tasks import env_attributes, list_tasks, load_spec_file, load_task, make_env
from rlflat.tasks.expressions import evaluate

SHIPPED = ["CartPole", "Acrobot", "Pendulum", "MountainCar", "MountainCarContinuous", "LunarLander"]


@pytest.mark.parametrize("alias", SHIPPED)
def test_alias_and_id_resolve_to_the_same_spec(alias: str) -> None:
    spec = load_task(alias)
    assert load_task(spec.id) is spec
    assert load_task(alias.lower()) is spec
    assert spec.alias == alias


def test_every_shipped_spec_has_ppo_and_pg_hyperparameters() -> None:
    assert {s.alias for s in list_tasks()} == set(SHIPPED)
    for spec in list_tasks():
        assert {"ppo", "pg"} <= set(spec.hyperparameters), spec.alias
        assert spec.default_suite, spec.alias


def test_cartpole_carries_the_zoo_hyperparameters() -> None:
    ppo = load_task("CartPole").hyperparameters["ppo"]
    assert ppo["n_envs"] == 8 and ppo["n_steps"] == 32 and ppo["batch_size"] == 256
    assert ppo["learning_rate"] == "lin_1e-3" and ppo["clip_range"] == "lin_0.2"
    assert ppo["total_timesteps"] == 100_000


def test_unknown_task_lists_the_valid_ones() -> None:
    with pytest.raises(RlflatError, match=r"unknown task 'Cartpol'.*CartPole \(CartPole-v1\)"):
        load_task("Cartpol")


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "Bad.yaml"
    path.write_text(text)
    return path


BASE = "id: CartPole-v1\nalias: X\nsolved_threshold: 1\n"


@pytest.mark.parametrize(
    ("body", "key"),
    [
        ("parameters:\n  length: {nominal: 0.5, range: [2.0, 4.0]}\n", "parameters.length.range"),
        ("parameters:\n  length: {nominal: 0.5, range: [0.5, 2.0], colour: red}\n", "parameters.length.colour"),
        ("parameters: {}\nderived:\n  total: mass + 1\n", "<root>"),
        ("parameters: {}\nnoise: [wind]\n", "noise.0"),
    ],
)
def test_bad_spec_names_file_and_key(tmp_path: Path, body: str, key: str) -> None:
    path = _write(tmp_path, BASE + body)
    with pytest.raises(RlflatError) as info:
        load_spec_file(path)
    message = str(info.value)
    assert str(path) in message and repr(key) in message


def test_spec_that_is_not_yaml_mapping(tmp_path: Path) -> None:
    with pytest.raises(RlflatError, match="must be a mapping"):
        load_spec_file(_write(tmp_path, "- a\n- b\n"))


def test_expressions_are_arithmetic_only() -> None:
    assert evaluate("a * b + 2 ** c / 4", {"a": 2.0, "b": 3.0, "c": 2.0}) == 7.0
    with pytest.raises(RlflatError, match="unsupported syntax"):
        evaluate("__import__('os')", {})
    with pytest.raises(RlflatError, match="unknown name 'd'"):
        evaluate("d + 1", {"a": 1.0})


def test_derived_quantities_follow_the_parameters() -> None:
    attributes = env_attributes(load_task("CartPole"), {"length": 1.0, "masspole": 0.3})
    assert attributes["polemass_length"] == pytest.approx(0.3)
    assert attributes["total_mass"] == pytest.approx(1.3)


def test_unknown_parameter_names_the_valid_ones() -> None:
    with pytest.raises(RlflatError, match=r"'lenght'.*length, masspole"):
        make_env(load_task("CartPole"), {"lenght": 1.0})


def _cartpole_step(state: np.ndarray, force: float, length: float, masspole: float = 0.1) -> np.ndarray:
    """Barto, Sutton & Anderson (1983) cart-pole equations with Euler integration, written from the paper."""
    x, x_dot, theta, theta_dot = state
    gravity, masscart, tau = 9.8, 1.0, 0.02
    total = masscart + masspole
    sin, cos = math.sin(theta), math.cos(theta)
    temp = (force + masspole * length * theta_dot**2 * sin) / total
    theta_acc = (gravity * sin - cos * temp) / (length * (4.0 / 3.0 - masspole * cos**2 / total))
    x_acc = temp - masspole * length * theta_acc * cos / total
    return np.array([x + tau * x_dot, x_dot + tau * x_acc, theta + tau * theta_dot, theta_dot + tau * theta_acc])


@pytest.mark.parametrize("length", [0.5, 1.0, 2.0])
def test_cartpole_built_with_a_longer_pole_follows_the_equations(length: float) -> None:
    env = make_env(load_task("CartPole"), {"length": length})
    obs, _ = env.reset(seed=3)
    state = np.asarray(obs, dtype=np.float64)
    for action in [1, 1, 0, 1, 0, 0, 1]:
        obs, *_ = env.step(action)
        state = _cartpole_step(state, 10.0 if action == 1 else -10.0, length)
        np.testing.assert_allclose(obs, state, rtol=1e-5, atol=1e-6)


def test_setting_length_alone_on_gymnasium_would_be_stale() -> None:
    """Guard the bug this module exists for: plain setattr leaves polemass_length at its nominal value."""
    spec = load_task("CartPole")
    plain = make_env(spec)
    plain.unwrapped.length = 2.0  # type: ignore[attr-defined]
    fixed = make_env(spec, {"length": 2.0})
    plain.reset(seed=0)
    fixed.reset(seed=0)
    a, *_ = plain.step(1)
    b, *_ = fixed.step(1)
    assert plain.unwrapped.polemass_length == pytest.approx(0.05)  # type: ignore[attr-defined]
    assert fixed.unwrapped.polemass_length == pytest.approx(0.2)  # type: ignore[attr-defined]
    assert not np.allclose(a, b)


def test_task_needing_a_missing_extra_says_which(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None if name == "Box2D" else real(name))
    with pytest.raises(RlflatError, match=r"rlflat\[box2d\]"):
        make_env(load_task("LunarLander"))
