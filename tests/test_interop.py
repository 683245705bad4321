"""Zoo and sb3-contrib habits: the zoo's statistics layout noticed, SB3's pickle converted once into rlflat's
JSON, a bare zip's own gamma / GAE lambda used by the probe, and policies the functional rebuild cannot represent
(recurrent, maskable) refused in one line, with ``--trust`` too."""

from __future__ import annotations

import json
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from stable_baselines3 import PPO
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.vec_env import VecNormalize

from rlflat.cli import run_cli
from rlflat.errors import RlflatError
from rlflat.normalization import load_stats
from rlflat.normalization_import import main as import_main
from rlflat.policy import load_policy, normalization_stats
from rlflat.probe import probe_run
from rlflat.representable import check_representable
from rlflat.sb3_readable import readable_hyperparameters
from rlflat.tasks import load_task

torch.set_num_threads(1)
CARTPOLE = load_task("CartPole")


@pytest.fixture(scope="module")
def zoo_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, VecNormalize]:
    """A zoo-shaped run folder: ``CartPole-v1.zip`` and ``CartPole-v1/{vecnormalize.pkl,args.yml}``."""
    root = tmp_path_factory.mktemp("zoo") / "ppo" / "CartPole-v1_1"
    (root / "CartPole-v1").mkdir(parents=True)
    env = VecNormalize(make_vec_env("CartPole-v1", n_envs=2, seed=0), gamma=0.98)
    model = PPO("MlpPolicy", env, n_steps=32, batch_size=64, gamma=0.98, gae_lambda=0.8, seed=0,
                policy_kwargs={"net_arch": [16]})  # fmt: skip
    model.learn(64)
    model.save(root / "CartPole-v1.zip")
    env.save(str(root / "CartPole-v1" / "vecnormalize.pkl"))
    (root / "CartPole-v1" / "args.yml").write_text("- - algo\n  - ppo\n")
    return root / "CartPole-v1.zip", root / "CartPole-v1" / "vecnormalize.pkl", env


def test_the_zoo_layout_is_noticed_and_named_with_the_conversion(
    zoo_run: tuple[Path, Path, VecNormalize], capsys: pytest.CaptureFixture[str]
) -> None:
    zip_path, pkl, _ = zoo_run
    assert normalization_stats(zip_path) is None  # never applied silently
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(pkl) in err
    assert f"python -m rlflat.normalization import {pkl} --trust" in err


def test_import_converts_the_pickle_once_into_exact_json(
    zoo_run: tuple[Path, Path, VecNormalize], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    zip_path, pkl, _ = zoo_run
    out = tmp_path / "normalization.json"
    assert run_cli(import_main, ["import", str(pkl), "--out", str(out)]) == 2  # no --trust
    assert "add --trust" in capsys.readouterr().err and not out.exists()
    assert run_cli(import_main, ["import", str(pkl), "--trust", "--out", str(out)]) == 0
    stats = load_stats(out)
    with open(pkl, "rb") as handle:
        saved = pickle.load(handle)  # SB3's own object, the reference
    assert np.array_equal(stats.obs_mean, saved.obs_rms.mean) and np.array_equal(stats.obs_var, saved.obs_rms.var)
    assert stats.ret_var == float(saved.ret_rms.var) and stats.clip_obs == saved.clip_obs
    assert run_cli(import_main, ["import", str(pkl), "--trust", "--out", str(out)]) == 2  # exists: --force
    assert "--force" in capsys.readouterr().err
    # later commands need no --trust: the JSON normalises observations as SB3's VecNormalize does
    policy = load_policy(zip_path, CARTPOLE, vecnormalize=out)
    obs = np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32)
    assert policy.normalizer is not None
    mine = policy.normalizer(obs)
    assert np.allclose(mine, saved.normalize_obs(obs), rtol=1e-6, atol=1e-6)


def test_module_entry_point_runs(zoo_run: tuple[Path, Path, VecNormalize], tmp_path: Path) -> None:
    import subprocess
    import sys

    _, pkl, _ = zoo_run
    out = tmp_path / "n.json"
    done = subprocess.run(
        [sys.executable, "-m", "rlflat.normalization", "import", str(pkl), "--trust", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0 and out.is_file(), done.stderr


def test_a_bare_zips_probe_uses_its_own_gamma_and_gae_lambda(
    zoo_run: tuple[Path, Path, VecNormalize], tmp_path: Path
) -> None:
    zip_path, _, _ = zoo_run
    assert readable_hyperparameters(zip_path) == {"gamma": 0.98, "gae_lambda": 0.8}
    options = {"measures": ["fisher"], "batches": 2, "batch": 100, "progress": False}
    read = probe_run(zip_path, task="CartPole", out=tmp_path / "a", **options)
    assert (read["batch"]["gamma"], read["batch"]["gae_lambda"]) == (0.98, 0.8)
    given = probe_run(zip_path, task="CartPole", out=tmp_path / "b", gamma=0.9, gae_lambda=0.5, **options)
    assert (given["batch"]["gamma"], given["batch"]["gae_lambda"]) == (0.9, 0.5)


def _renamed_policy_class(source: Path, target: Path, module: str, name: str) -> Path:
    """A copy of ``source`` whose readable data names another policy class (nothing else changed)."""
    with zipfile.ZipFile(source) as archive:
        members = {n: archive.read(n) for n in archive.namelist()}
    data = json.loads(members["data"])
    data["policy_class"]["__module__"] = module
    data["policy_class"]["__init__"] = f"<function {name}.__init__ at 0x7f0000000000>"
    members["data"] = json.dumps(data).encode()
    with zipfile.ZipFile(target, "w") as archive:
        for member, content in members.items():
            archive.writestr(member, content)
    return target


def test_a_zip_naming_a_recurrent_policy_is_refused_without_a_trust_hint(
    zoo_run: tuple[Path, Path, VecNormalize], tmp_path: Path
) -> None:
    zip_path, _, _ = zoo_run
    crafted = _renamed_policy_class(
        zip_path, tmp_path / "lstm.zip", "sb3_contrib.common.recurrent.policies", "RecurrentActorCriticPolicy"
    )
    with pytest.raises(RlflatError) as info:
        load_policy(crafted, CARTPOLE)
    message = str(info.value)
    assert "LSTM state" in message and "refused with or without --trust" in message and "\n" not in message
    assert "pass --trust" not in message


class _ChangedForward(ActorCriticPolicy):
    def forward(self, obs: torch.Tensor, deterministic: bool = False):  # type: ignore[override]
        return super().forward(obs, deterministic)


def test_any_policy_overriding_the_forward_path_is_refused() -> None:
    with pytest.raises(RlflatError, match="overrides forward of SB3's ActorCriticPolicy"):
        check_representable(Path("m.zip"), _ChangedForward)
    check_representable(Path("m.zip"), ActorCriticPolicy)  # SB3's own passes


@pytest.mark.parametrize(("algo", "policy"), [("RecurrentPPO", "MlpLstmPolicy"), ("MaskablePPO", "MlpPolicy")])
def test_sb3_contrib_models_are_refused_under_trust(algo: str, policy: str, tmp_path: Path) -> None:
    contrib = pytest.importorskip("sb3_contrib")
    model = getattr(contrib, algo)(policy, "CartPole-v1", n_steps=16, batch_size=16, seed=0,
                                   policy_kwargs={"net_arch": [8]})  # fmt: skip
    model.save(tmp_path / "m.zip")
    for trust in (False, True):
        with pytest.raises(RlflatError) as info:
            load_policy(tmp_path / "m.zip", CARTPOLE, trust=trust)
        assert "refused with or without --trust" in str(info.value) and "\n" not in str(info.value)
