"""Task specs load and validate, and envs built with perturbed dynamics follow the physics they describe."""

from __future__ import annotations

import inspect
import math
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest

from rlflat.errors import RlflatError
from rlflat.tasks import TaskSpec, env_attributes, list_tasks, load_spec_file, load_task, make_env, set_dynamics
from rlflat.tasks.expressions import evaluate
from rlflat.tasks.sims import PARAMETER_DEFAULTS, SIMULATORS, make_simulator
from rlflat.tasks.spec import _index


@pytest.fixture(autouse=True)
def _scratch_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """MuJoCo writes compiler warnings (HalfCheetah's deprecated ``settotalmass``) to MUJOCO_LOG.TXT in the cwd."""
    monkeypatch.chdir(tmp_path)


SHIPPED = [
    "CartPole",
    "Acrobot",
    "Pendulum",
    "MountainCar",
    "MountainCarContinuous",
    "LunarLander",
    "Hopper",
    "HalfCheetah",
    "Walker2d",
]


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


EXTRA_MODULES = {"box2d": "Box2D", "mujoco": "mujoco"}


def _require_extra(spec: TaskSpec) -> None:
    """Skip cleanly when the task's extra (box2d, mujoco) is not installed."""
    if spec.requires:
        pytest.importorskip(EXTRA_MODULES[spec.requires])


def _gymnasium_default(env: gym.Env[Any, Any], spec: TaskSpec, name: str) -> float:
    """What Gymnasium itself builds for parameter ``name``, read from a plain ``gym.make`` env."""
    from rlflat.tasks.model_params import model_entries

    parameter = spec.parameters[name]
    if parameter.set == "attr":
        return float(getattr(env.unwrapped, spec.attribute(name)))
    if parameter.set == "kwarg":
        return float(inspect.signature(type(env.unwrapped).__init__).parameters[spec.attribute(name)].default)
    assert parameter.single_entry, "scale parameters have nominal 1 by construction"
    (value,) = model_entries(env, spec, name)
    return float(value)


@pytest.mark.parametrize("alias", SHIPPED)
def test_nominal_is_gymnasium_default(alias: str) -> None:
    """make_env always assigns every nominal, so a wrong one would silently perturb the 'nominal' task."""
    spec = load_task(alias)
    _require_extra(spec)
    env = gym.make(spec.id)
    checked = 0
    for name, parameter in spec.parameters.items():
        if parameter.set == "model" and not parameter.single_entry:
            assert parameter.nominal == 1.0
            continue
        assert _gymnasium_default(env, spec, name) == pytest.approx(parameter.nominal, rel=1e-12), name
        checked += 1
    assert checked


@pytest.mark.parametrize("env_id", sorted(SIMULATORS))
def test_simulator_defaults_are_gymnasium_defaults_and_spec_nominals(env_id: str) -> None:
    spec, defaults = load_task(env_id), PARAMETER_DEFAULTS[env_id]
    base = gym.make(env_id).unwrapped
    for attribute, value in defaults.items():
        assert getattr(base, attribute) == value, attribute
    for name, parameter in spec.parameters.items():
        assert defaults[spec.attribute(name)] == parameter.nominal, name


def _policy(env_id: str, obs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Actions that move the system far: pump energy where that is the task, else one random action shared by
    every row (Pendulum's reach +-2, past a weakened motor's clip)."""
    n = obs.shape[0]
    if env_id in ("Acrobot-v1", "MountainCar-v0"):
        return np.where(obs[:, 5 if env_id == "Acrobot-v1" else 1] >= 0, 2, 0)
    if env_id == "MountainCarContinuous-v0":
        return np.where(obs[:, 1] >= 0, 1.0, -1.0).astype(np.float32)[:, None]
    if env_id == "Pendulum-v1":
        return np.full((n, 1), rng.uniform(-2.0, 2.0), dtype=np.float32)
    return np.full(n, rng.integers(0, 2))


def _sim_trajectories(spec: TaskSpec, name: str, values: list[float]) -> np.ndarray:
    """Observations of one batched-simulator row per value of ``name``, same seed and action stream."""
    n = len(values)
    sim = make_simulator(spec.id, {spec.attribute(name): np.array(values)}, n)
    obs, rng, seen = sim.reset(np.full(n, 3)), np.random.default_rng(0), []
    for _ in range(sim.max_episode_steps):
        seen.append(obs)
        obs, *_ = sim.step(_policy(spec.id, obs, rng))
    return np.stack(seen, axis=1)


def _gym_trajectory(spec: TaskSpec, dynamics: dict[str, float], steps: int = 60) -> np.ndarray:
    env = make_env(spec, dynamics)
    env.action_space.seed(0)
    obs, _ = env.reset(seed=3)
    seen = [obs]
    for _ in range(steps):
        obs, _, terminated, truncated, _ = env.step(env.action_space.sample())
        seen.append(obs)
        if terminated or truncated:
            break
    return np.array(seen)


@pytest.mark.parametrize("alias", SHIPPED)
def test_every_parameter_changes_the_dynamics_at_its_range_ends(alias: str) -> None:
    """A parameter the physics ignores (Acrobot's LINK_LENGTH_2, Pendulum's max_torque above the policy's clip)
    would give flat robustness curves that read as robustness; batched tasks are checked on their simulator."""
    spec = load_task(alias)
    _require_extra(spec)
    for name, parameter in spec.parameters.items():
        ends = [parameter.nominal * f for f in parameter.range if f != 1.0]
        if spec.id in SIMULATORS:
            nominal, *perturbed = _sim_trajectories(spec, name, [parameter.nominal, *ends])
        else:
            nominal = _gym_trajectory(spec, {})
            perturbed = [_gym_trajectory(spec, {name: value}) for value in ends]
        for value, trajectory in zip(ends, perturbed, strict=True):
            assert trajectory.shape != nominal.shape or not np.array_equal(trajectory, nominal), f"{name}={value}"


def test_alias_or_id_claimed_by_two_files_names_both(tmp_path: Path) -> None:
    first = BASE + "parameters: {}\n"
    (tmp_path / "A.yaml").write_text(first)
    (tmp_path / "B.yaml").write_text(first.replace("alias: X", "alias: Y"))  # same Gymnasium id
    with pytest.raises(RlflatError, match=r"'CartPole-v1'.*A\.yaml.*B\.yaml"):
        _index(tmp_path)
    (tmp_path / "B.yaml").write_text(first.replace("CartPole-v1", "Pendulum-v1").replace("alias: X", "alias: x"))
    with pytest.raises(RlflatError, match=r"'x'.*A\.yaml.*B\.yaml"):  # lookups fold case, so this collides too
        _index(tmp_path)


def test_range_check_is_one_method() -> None:
    spec = load_task("CartPole")
    assert spec.check_factor("length", 4.0) == 4.0 and spec.check_value("length", 0.5 * 4.0) == 2.0
    assert spec.check_value("length", 0.5 * 0.25 * (1 - 1e-12)) == pytest.approx(0.125)  # rounding at an end
    for bad in (4.01, 0.0, -1.0):
        with pytest.raises(RlflatError, match=r"outside its range; valid factors: \[0.25, 4.0\]"):
            spec.check_factor("length", bad)
    with pytest.raises(RlflatError, match=r"value 2.5 \(factor 5\) of CartPole parameter length .*outside"):
        spec.check_value("length", 2.5)
    for bad in (math.nan, True, "1"):
        with pytest.raises(RlflatError, match="must be a number"):
            spec.check_value("length", bad)


def test_mujoco_model_parameters_scale_the_model_and_its_derived_constants() -> None:
    pytest.importorskip("mujoco")
    spec = load_task("Hopper")
    plain = gym.make(spec.id).unwrapped.model  # Gymnasium's own defaults
    torso = spec.parameters["torso_mass"].nominal
    env = make_env(spec, {"torso_mass": 1.5 * torso, "friction_scale": 0.5, "mass_scale": 0.8})
    model = env.unwrapped.model  # type: ignore[attr-defined]
    np.testing.assert_allclose(model.body_mass[2:], 0.8 * plain.body_mass[2:], rtol=1e-15)
    assert model.body_mass[1] == pytest.approx(torso * 1.5 * 0.8, rel=1e-15)  # parameters compose by product
    np.testing.assert_allclose(model.body_inertia, 0.8 * plain.body_inertia, rtol=1e-15)  # torso_mass: mass only
    np.testing.assert_allclose(model.geom_friction[:, 0], 0.5 * plain.geom_friction[:, 0], rtol=1e-15)
    np.testing.assert_array_equal(model.geom_friction[:, 1:], plain.geom_friction[:, 1:])  # column 0 only
    assert model.body_subtreemass[0] == pytest.approx(model.body_mass.sum(), rel=1e-12)  # mj_setConst ran
    set_dynamics(env, spec, {"foot_friction": 0.8})  # relative to the defaults, not the current model
    np.testing.assert_array_equal(model.body_mass, plain.body_mass)
    assert model.geom_friction[4, 0] == 0.8 and model.geom_friction[0, 0] == plain.geom_friction[0, 0]
    set_dynamics(env, spec)  # back to nominal, exactly
    for field in ("body_mass", "body_inertia", "geom_friction", "body_subtreemass", "dof_invweight0"):
        np.testing.assert_array_equal(getattr(model, field), getattr(plain, field), err_msg=field)


def test_mujoco_nominal_env_steps_exactly_as_gymnasium() -> None:
    pytest.importorskip("mujoco")
    spec = load_task("Hopper")
    ours, plain = make_env(spec), gym.make(spec.id)
    actions = np.random.default_rng(0).uniform(-1, 1, size=(30, 3)).astype(np.float32)
    a, _ = ours.reset(seed=5)
    b, _ = plain.reset(seed=5)
    np.testing.assert_array_equal(a, b)
    for action in actions:
        a, ra, *_ = ours.step(action)
        b, rb, *_ = plain.step(action)
        np.testing.assert_array_equal(a, b)
        assert ra == rb


def test_bad_model_parameters_are_named(tmp_path: Path) -> None:
    hopper = "id: Hopper-v5\nalias: H\nsolved_threshold: 1\nparameters:\n  p: "
    with pytest.raises(RlflatError, match=r"'parameters.p'.*nominal must be 1.0"):
        load_spec_file(
            _write(tmp_path, hopper + "{set: model, attr: body_mass, index: all, nominal: 2, range: [1, 1]}")
        )
    with pytest.raises(RlflatError, match=r"'parameters.p'.*only apply to set: model"):
        load_spec_file(_write(tmp_path, hopper + "{index: torso, nominal: 2, range: [1, 1]}"))
    pytest.importorskip("mujoco")
    spec = load_spec_file(
        _write(tmp_path, hopper + "{set: model, attr: body_mass, index: tors, nominal: 2, range: [1, 1]}")
    )
    with pytest.raises(RlflatError, match=r"unknown body name .*'tors'.*torso, thigh"):
        make_env(spec)
    spec = load_spec_file(
        _write(tmp_path, hopper + "{set: model, attr: body_mass, index: torso, nominal: 2, range: [1, 1]}")
    )
    with pytest.raises(RlflatError, match=r"nominal 2.0 but Gymnasium's Hopper-v5 model has 3.66"):
        make_env(spec)


def test_classic_tasks_build_without_mujoco(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "mujoco", None)  # import mujoco now fails, as on a machine without it
    for alias in ("CartPole", "Pendulum"):
        make_env(load_task(alias), {next(iter(load_task(alias).parameters)): 1.0}).reset(seed=0)
