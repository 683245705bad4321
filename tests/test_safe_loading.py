"""Loading is safe by default: nothing in a model file runs, and the safe path gives the trusted path's numbers.

The reference is SB3's own loader (``--trust``): every policy rebuilt from readable fields must have bit-identical
parameters, actions, log-probabilities, values, normalisation and returns. The malicious files are real attacks:
a zip whose ``learning_rate`` unpickles to ``os.system``, and a ``vecnormalize.pkl`` that does the same; the marker
file they create must appear only when the user says ``--trust`` (which proves the files do attack).
"""

from __future__ import annotations

import base64
import json
import os
import pickle
import shlex
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from stable_baselines3 import A2C, PPO
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.vec_env import VecNormalize

from rlflat.cli import run_cli
from rlflat.errors import RlflatError
from rlflat.evaluate import rollout_returns
from rlflat.evaluate.__main__ import main as evaluate_main
from rlflat.io import write_json
from rlflat.normalization import NORMALIZATION_FILE, PICKLE_FILE, NormalizationStats
from rlflat.policy import load_policy
from rlflat.probe.__main__ import main as probe_main
from rlflat.tasks import load_task, make_env


def _train(tmp: Path, algo: type, task: str, activation: type, normalize: bool, **kwargs: Any) -> Path:
    """A tiny foreign (plain SB3) model, trained 128 steps; with ``normalize``, its pickle and rlflat's JSON."""
    env = make_vec_env(lambda: make_env(load_task(task)), n_envs=2, seed=0)
    if normalize:
        env = VecNormalize(env)
    policy_kwargs = {"net_arch": [16, 16], "activation_fn": activation}
    model = algo("MlpPolicy", env, seed=0, n_steps=32, policy_kwargs=policy_kwargs, device="cpu", **kwargs)
    model.learn(128)
    tmp.mkdir(parents=True, exist_ok=True)
    model.save(tmp / "model.zip")
    if normalize:
        assert isinstance(env, VecNormalize)
        env.save(str(tmp / PICKLE_FILE))
        write_json(tmp / NORMALIZATION_FILE, NormalizationStats.from_vec_normalize(env).to_json())
    return tmp


def _states(task: str, n: int = 64) -> np.ndarray:
    space = make_env(load_task(task)).observation_space
    space.seed(1)
    return np.stack([space.sample() for _ in range(n)]).astype(np.float32).clip(-5, 5)


@pytest.mark.parametrize("algo", [PPO, A2C])
@pytest.mark.parametrize("activation", [torch.nn.Tanh, torch.nn.ReLU])
@pytest.mark.parametrize("task", ["CartPole", "Pendulum"])
@pytest.mark.parametrize("normalize", [False, True])
def test_safe_path_equals_trusted_path(
    tmp_path: Path, algo: type, activation: type, task: str, normalize: bool
) -> None:
    run = _train(tmp_path, algo, task, activation, normalize)
    spec = load_task(task)
    safe = load_policy(run, spec)  # the run dir's normalization.json, nothing unpickled
    trusted = load_policy(run / "model.zip", spec, trust=True, vecnormalize=run / PICKLE_FILE if normalize else None)
    assert safe.params.keys() == trusted.params.keys()
    for name, value in trusted.params.items():
        assert torch.equal(safe.params[name], value), name
    assert (safe.normalizer is None) == (not normalize)
    if normalize:
        assert safe.normalizer is not None and trusted.normalizer is not None
        np.testing.assert_array_equal(safe.normalizer.mean, trusted.normalizer.mean)
        np.testing.assert_array_equal(safe.normalizer.var, trusted.normalizer.var)
        assert (safe.normalizer.clip, safe.normalizer.epsilon) == (trusted.normalizer.clip, trusted.normalizer.epsilon)
    assert safe.reward_scaling == trusted.reward_scaling
    assert safe.observation_space == trusted.observation_space
    assert safe.action_space == trusted.action_space
    raw = _states(task)
    np.testing.assert_array_equal(safe.act(raw), trusted.act(raw))
    x = safe.preprocess(raw)
    torch.testing.assert_close(safe.value({}, x), trusted.value({}, x), rtol=0, atol=0)
    actions = torch.as_tensor(safe.act(raw))
    torch.testing.assert_close(safe.log_prob({}, x, actions), trusted.log_prob({}, x, actions), rtol=0, atol=0)
    returns = [rollout_returns(p, spec, [{}], episodes=2, seed=3) for p in (safe, trusted)]
    np.testing.assert_array_equal(*returns)


def test_gsde_policy_safe_equals_trusted(tmp_path: Path) -> None:
    run = _train(tmp_path, PPO, "Pendulum", torch.nn.Tanh, False, use_sde=True)
    safe, trusted = load_policy(run / "model.zip"), load_policy(run / "model.zip", trust=True)
    assert safe.sde and trusted.sde
    x = torch.as_tensor(_states("Pendulum"))
    a, b = safe.distribution({}, x), trusted.distribution({}, x)
    torch.testing.assert_close(a.stddev, b.stddev, rtol=0, atol=0)
    torch.testing.assert_close(a.mean, b.mean, rtol=0, atol=0)


def test_rlflat_trained_run_loads_safely(tmp_path: Path) -> None:
    from rlflat.train import resolve_run_config, train_run

    config = resolve_run_config("ppo", "Pendulum", steps=128, overrides={"normalize": True, "n_steps": 64})
    run = train_run(config, out=tmp_path / "run", progress=False)
    assert (run / NORMALIZATION_FILE).is_file() and (run / PICKLE_FILE).is_file()
    safe = load_policy(run)
    trusted = load_policy(run, trust=True, vecnormalize=run / PICKLE_FILE)
    raw = _states("Pendulum")
    np.testing.assert_array_equal(safe.act(raw), trusted.act(raw))
    assert safe.reward_scaling == trusted.reward_scaling != (1.0, float("inf"))


# -- malicious files ---------------------------------------------------------------------------------------------
class _Touch:
    """Unpickles to ``os.system("touch MARKER")``: the attack from the issue, made harmless."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return os.system, (f"touch {shlex.quote(str(self.marker))}",)


def _evil_zip(tmp: Path, marker: Path) -> Path:
    """A valid CartPole PPO zip whose ``learning_rate`` runs a command when unpickled."""
    good = tmp / "good.zip"
    PPO("MlpPolicy", make_env(load_task("CartPole")), seed=0, policy_kwargs={"net_arch": [8]}).save(good)
    evil = tmp / "evil.zip"
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(evil, "w") as dst:
        for item in src.infolist():
            content = src.read(item.filename)
            if item.filename == "data":
                data = json.loads(content)
                payload = base64.b64encode(pickle.dumps(_Touch(marker))).decode()
                data["learning_rate"] = {":type:": "<class 'function'>", ":serialized:": payload}
                content = json.dumps(data).encode()
            dst.writestr(item, content)
    good.unlink()
    return evil


def _evil_pickle(path: Path, marker: Path) -> Path:
    path.write_bytes(pickle.dumps(_Touch(marker)))
    return path


def _probe(*args: str) -> list[str]:
    return ["--quick", "--measures", "hessian", "--batch", "64", "--no-metrics", *args]


def _evaluate(*args: str) -> list[str]:
    return ["--suite", "length", "--points", "2", "--episodes", "1", "--no-progress", *args]


@pytest.mark.parametrize(("main", "extra"), [(probe_main, _probe), (evaluate_main, _evaluate)])
def test_malicious_zip_runs_nothing_by_default(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], main: Any, extra: Any
) -> None:
    marker = tmp_path / "pwned"
    evil = _evil_zip(tmp_path, marker)
    assert run_cli(main, [str(evil), "--task", "CartPole", "--out", str(tmp_path / "out"), *extra()]) == 0
    assert not marker.exists()
    capsys.readouterr()
    load_policy(evil, trust=True)  # SB3's loader does unpickle it: the file really is an attack
    assert marker.exists()


@pytest.mark.parametrize(("main", "extra"), [(probe_main, _probe), (evaluate_main, _evaluate)])
def test_malicious_vecnormalize_pickle_is_never_read_by_default(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], main: Any, extra: Any
) -> None:
    marker = tmp_path / "pwned"
    bare = _train(tmp_path / "bare", PPO, "CartPole", torch.nn.Tanh, False)
    evil = _evil_pickle(bare / PICKLE_FILE, marker)
    out = ["--out", str(tmp_path / "out")]
    # beside a bare zip: not applied, and said so
    assert run_cli(main, [str(bare / "model.zip"), "--task", "CartPole", "--out", str(tmp_path / "ok"), *extra()]) == 0
    assert "is not applied" in capsys.readouterr().err
    # in a run directory: a one-line refusal naming --trust
    assert run_cli(main, [str(bare), "--task", "CartPole", *out, *extra()]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--trust" in err and PICKLE_FILE in err
    # named without --trust: refused
    named = ["--vecnormalize", str(evil)]
    assert run_cli(main, [str(bare / "model.zip"), "--task", "CartPole", *named, *out, *extra()]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    assert not marker.exists()
    assert not (tmp_path / "out").exists()
    # named with --trust: the user's decision; the pickle runs (proving the attack) and is then rejected
    assert run_cli(main, [str(bare / "model.zip"), "--task", "CartPole", "--trust", *named, *out, *extra()]) == 2
    assert marker.exists()
    assert "not a VecNormalize" in capsys.readouterr().err


# -- what the safe path refuses ----------------------------------------------------------------------------------
def _rewrite(zip_path: Path, edit: Any) -> Path:
    out = zip_path.with_name("edited.zip")
    with zipfile.ZipFile(zip_path) as src, zipfile.ZipFile(out, "w") as dst:
        for item in src.infolist():
            content = src.read(item.filename)
            if item.filename == "data":
                data = json.loads(content)
                edit(data)
                content = json.dumps(data).encode()
            dst.writestr(item, content)
    return out


def _set_activation(data: dict[str, Any]) -> None:
    data["policy_kwargs"]["activation_fn"] = "<class 'os.system'>"


def _set_policy_class(data: dict[str, Any]) -> None:
    data["policy_class"]["__init__"] = "<function MultiInputActorCriticPolicy.__init__ at 0x7f00>"


def _set_net_arch(data: dict[str, Any]) -> None:
    data["policy_kwargs"]["net_arch"] = [32]


def _set_unknown_kwarg(data: dict[str, Any]) -> None:
    data["policy_kwargs"]["features_extractor_kwargs"] = "{'cnn': <class 'x.Evil'>}"


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (_set_activation, r"policy_kwargs.activation_fn = \"<class 'os.system'>\" is not allowed"),
        (_set_policy_class, "policy_class stable_baselines3.common.policies.MultiInputActorCriticPolicy is not"),
        (_set_net_arch, r"policy.pth does not match the architecture .*shape"),
        (_set_unknown_kwarg, "features_extractor_kwargs .* is not rebuilt safely"),
    ],
)
def test_what_cannot_be_rebuilt_safely_is_one_line_naming_trust(tmp_path: Path, edit: Any, message: str) -> None:
    run = _train(tmp_path, PPO, "CartPole", torch.nn.ReLU, False)
    edited = _rewrite(run / "model.zip", edit)
    with pytest.raises(RlflatError, match=message) as info:
        load_policy(edited, load_task("CartPole"))
    assert "\n" not in str(info.value)
    if edit is not _set_net_arch:
        assert "--trust" in str(info.value)


def test_zip_for_another_task_is_refused(tmp_path: Path) -> None:
    run = _train(tmp_path, PPO, "Pendulum", torch.nn.Tanh, False)
    with pytest.raises(RlflatError, match="and the task's .* do not match"):
        load_policy(run / "model.zip", load_task("CartPole"))
