"""Lee & Yoon (ICLR 2025) beside rlflat: their update rule (``lysam``), their evaluation protocol
(``protocol: lee_yoon``) against direct edits of the MuJoCo model, the fingerprint that must not group settings
that differ only after the first fall, and the study config (loaded, not run)."""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest
import torch as th
from torch.func import functional_call

from rlflat.algos.hyperparameters import validate_hyperparameters
from rlflat.algos.rules import LeeYoonSAM, TrainingDiverged, make_rule
from rlflat.errors import RlflatError

th.set_num_threads(1)

# -- ppo_lysam: the step against a hand computation -----------------------------------------------------------


class _Tiny(th.nn.Module):
    """An actor (``action_net`` + ``log_std``) and a critic (``value_net``) with SB3's parameter names."""

    def __init__(self) -> None:
        super().__init__()
        gen = th.Generator().manual_seed(3)
        self.action_net = th.nn.Linear(3, 2).double()
        self.value_net = th.nn.Linear(3, 1).double()
        self.log_std = th.nn.Parameter(th.tensor([0.3, -0.2], dtype=th.float64))
        with th.no_grad():
            for p in self.parameters():
                p.copy_(th.randn(p.shape, generator=gen, dtype=th.float64))


_X = th.tensor([[0.5, -1.0, 2.0], [1.5, 0.2, -0.7], [-0.3, 0.8, 0.1], [0.9, -0.4, -1.2]], dtype=th.float64)
_Y = th.tensor([[0.2, -0.5], [1.0, 0.3], [-0.7, 0.4], [0.1, 0.9]], dtype=th.float64)


def _loss(params: dict[str, th.Tensor], module: _Tiny) -> th.Tensor:
    """Curved in both networks (tanh, exp), with the two networks' terms separate as PPO's are."""
    mean = th.tanh(
        functional_call(module.action_net, {k[11:]: v for k, v in params.items() if k[:11] == "action_net."}, (_X,))
    )
    actor = ((mean - _Y) ** 2 * th.exp(-params["log_std"])).mean() + params["log_std"].sum() ** 2
    value = functional_call(module.value_net, {k[10:]: v for k, v in params.items() if k[:10] == "value_net."}, (_X,))
    critic = ((th.tanh(value) - _Y[:, :1]) ** 2).mean()
    return actor + 0.7 * critic


def _hand_direction(params: dict[str, th.Tensor], module: _Tiny, groups: list[list[str]], rho: float
                    ) -> dict[str, th.Tensor]:  # fmt: skip
    """g + (g(w + e) - g)/s per group, s = rho/||g_group||, e = s g, by torch.autograd on the pure loss."""
    names = list(params)
    leaves = {k: v.detach().clone().requires_grad_(True) for k, v in params.items()}
    g = dict(zip(names, th.autograd.grad(_loss(leaves, module), [leaves[k] for k in names]), strict=True))
    shifted = dict(params)
    scales = {}
    for group in groups:
        s = rho / th.sqrt(sum((g[k] ** 2).sum() for k in group))
        for k in group:
            scales[k] = s
            shifted[k] = params[k] + s * g[k]
    leaves2 = {k: v.detach().clone().requires_grad_(True) for k, v in shifted.items()}
    g2 = dict(zip(names, th.autograd.grad(_loss(leaves2, module), [leaves2[k] for k in names]), strict=True))
    return {k: g[k] + (g2[k] - g[k]) / scales[k] if k in scales else g[k] for k in names}


def _rule_step(rule: LeeYoonSAM, module: _Tiny, lr: float, max_grad_norm: float | None = None) -> None:
    optimizer = th.optim.SGD(module.parameters(), lr=lr)
    params = list(module.parameters())

    def closure() -> th.Tensor:
        return _loss(dict(module.named_parameters()), module)

    rule.step(optimizer, closure(), closure, params, params, max_grad_norm)


@pytest.mark.parametrize(
    ("scope", "groups"),
    [
        ("all", [["action_net.weight", "action_net.bias", "log_std"], ["value_net.weight", "value_net.bias"]]),
        ("actor", [["action_net.weight", "action_net.bias"]]),  # rlflat's actor scope: log_std, critic plain
    ],
)
def test_lysam_step_is_the_hand_computed_difference_quotient(scope: str, groups: list[list[str]]) -> None:
    module, lr, rho = _Tiny(), 0.1, 0.01
    before = {k: v.detach().clone() for k, v in module.named_parameters()}
    rule = make_rule("lysam", rho=rho)
    assert isinstance(rule, LeeYoonSAM)
    rule.bind(dict(module.named_parameters()), scope)
    _rule_step(rule, module, lr)
    direction = _hand_direction(before, module, groups, rho)
    for name, p in module.named_parameters():
        assert th.allclose(p.detach(), before[name] - lr * direction[name], rtol=0, atol=1e-13), name


def test_lysam_direction_is_gradient_plus_hessian_times_gradient() -> None:
    """Independent of the finite difference: g + H g by double backward, per group, to O(rho)."""
    module, lr, rho = _Tiny(), 1.0, 1e-6
    before = {k: v.detach().clone() for k, v in module.named_parameters()}
    rule = LeeYoonSAM(rho)
    rule.bind(dict(module.named_parameters()), "all")
    _rule_step(rule, module, lr)
    names = list(before)
    leaves = {k: v.clone().requires_grad_(True) for k, v in before.items()}
    g = th.autograd.grad(_loss(leaves, module), [leaves[k] for k in names], create_graph=True)
    # the loss is separable by network, so the full Hessian's product is the per-group one
    hg = th.autograd.grad(g, [leaves[k] for k in names], grad_outputs=[x.detach() for x in g])
    for name, gi, hgi in zip(names, g, hg, strict=True):
        step = before[name] - dict(module.named_parameters())[name].detach()
        assert th.allclose(step, gi.detach() + hgi, rtol=1e-4, atol=1e-6), name
        assert not th.allclose(step, gi.detach(), rtol=1e-2), name  # the penalty term is really there


def test_lysam_restores_theta_and_stops_on_a_non_finite_perturbed_loss() -> None:
    module = _Tiny()
    before = {k: v.detach().clone() for k, v in module.named_parameters()}
    rule = LeeYoonSAM(0.01)
    calls = []
    optimizer = th.optim.SGD(module.parameters(), lr=0.1)

    def closure() -> th.Tensor:
        calls.append(1)
        loss = _loss(dict(module.named_parameters()), module)
        return loss if len(calls) == 1 else loss * float("nan")

    params = list(module.parameters())
    with pytest.raises(TrainingDiverged, match="LYSAM-perturbed"):
        rule.step(optimizer, closure(), closure, params, params, None)
    for name, p in module.named_parameters():
        assert th.equal(p.detach(), before[name])


def test_lysam_rho_must_be_positive_everywhere() -> None:
    with pytest.raises(RlflatError, match="rho must be > 0 for lysam"):
        LeeYoonSAM(0.0)
    with pytest.raises(RlflatError, match="rho must be > 0 for ppo_lysam"):
        validate_hyperparameters("ppo_lysam", {"rho": 0})
    assert validate_hyperparameters("ppo_lysam", {"rho": 0.01, "sam_scope": "all"}) == {"rho": 0.01, "sam_scope": "all"}
    assert validate_hyperparameters("ppo_sam", {"rho": 0}) == {"rho": 0.0}  # Foret's SAM at rho 0 is plain


def test_ppo_lysam_groups_actor_and_critic_as_their_two_optimisers() -> None:
    from stable_baselines3.common.env_util import make_vec_env

    from rlflat.algos import build_model
    from rlflat.algos.hyperparameters import resolve_hyperparameters
    from rlflat.tasks import load_task

    overrides = {
        "n_steps": 64,
        "batch_size": 32,
        "n_epochs": 1,
        "total_timesteps": 64,
        "policy_kwargs": {"net_arch": [8]},
    }
    hyperparameters = resolve_hyperparameters("ppo_lysam", load_task("Pendulum"), overrides)  # as train does
    hyperparameters = {k: v for k, v in hyperparameters.items() if k not in ("n_envs", "normalize", "total_timesteps")}
    model = build_model("ppo_lysam", make_vec_env("Pendulum-v1", n_envs=1, seed=0), hyperparameters, seed=0)
    assert model.rho == 0.01 and model.sam_scope == "all"
    rule = model._rule
    assert isinstance(rule, LeeYoonSAM) and rule.groups is not None
    names = {id(p): n for n, p in model.policy.named_parameters()}
    policy, critic = ({names[id(p)] for p in g} for g in rule.groups)
    assert "log_std" in policy and all(
        n.startswith(("mlp_extractor.policy_net", "action_net", "log_std")) for n in policy
    )
    assert critic and all(n.startswith(("mlp_extractor.value_net", "value_net")) for n in critic)
    model.learn(64)


# -- protocol: lee_yoon beside default, each against a direct edit of env.unwrapped.model -----------------------

mujoco = pytest.importorskip("mujoco")

import json  # noqa: E402
from pathlib import Path  # noqa: E402

import gymnasium as gym  # noqa: E402
import numpy as np  # noqa: E402
from stable_baselines3 import PPO  # noqa: E402

from rlflat.evaluate import SuiteSpec, evaluate, rollout_returns  # noqa: E402
from rlflat.evaluate.inert import dynamics_fingerprints, dynamics_groups  # noqa: E402
from rlflat.policy import load_policy  # noqa: E402
from rlflat.tasks import load_task, make_env  # noqa: E402

HOPPER = load_task("Hopper")
TORSO = HOPPER.parameters["torso_mass"].nominal


def _direct_env(mass_factor: float, set_const: bool, **kwargs: object) -> gym.Env:
    """Hopper-v5 with the torso's body_mass written by hand, MuJoCo's derived constants recomputed or not."""
    env = gym.make("Hopper-v5", **kwargs)
    model = env.unwrapped.model  # type: ignore[attr-defined]
    torso = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_BODY, "torso")
    model.body_mass[torso] = model.body_mass[torso] * mass_factor
    if set_const:
        mujoco.mj_setConst(model, mujoco.MjData(model))
    return env


def _trajectory(env: gym.Env, actions: np.ndarray, seed: int) -> np.ndarray:
    obs = [env.reset(seed=seed)[0]]
    obs += [env.step(a)[0] for a in actions]
    env.close()
    return np.array(obs)


def test_each_protocol_builds_the_model_a_direct_edit_builds() -> None:
    actions = np.random.default_rng(0).uniform(-1, 1, (150, 3)).astype(np.float32)
    runs = {}
    for protocol, set_const in (("default", True), ("lee_yoon", False)):
        task = HOPPER.with_protocol(protocol)
        built = make_env(task, {"torso_mass": TORSO * 1.4}, terminate_when_unhealthy=False)
        direct = _direct_env(1.4, set_const, terminate_when_unhealthy=False)
        assert np.array_equal(built.unwrapped.model.body_subtreemass, direct.unwrapped.model.body_subtreemass)  # type: ignore[attr-defined]
        runs[protocol] = _trajectory(built, actions, seed=3)
        np.testing.assert_array_equal(runs[protocol], _trajectory(direct, actions, seed=3))  # bit for bit
    assert np.abs(runs["default"] - runs["lee_yoon"]).max() > 1e-3  # the two protocols really differ
    nominal = make_env(HOPPER.with_protocol("lee_yoon")).unwrapped.model  # type: ignore[attr-defined]
    assert nominal.body_subtreemass[0] == gym.make("Hopper-v5").unwrapped.model.body_subtreemass[0]  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def saturating_hopper(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained Hopper PPO whose mean leaves [-1, 1] in two dimensions on most steps (biases +-1.2)."""
    run = tmp_path_factory.mktemp("hopper")
    model = PPO("MlpPolicy", make_env(HOPPER), seed=0, policy_kwargs={"net_arch": [16]})
    with th.no_grad():
        model.policy.action_net.weight.mul_(30.0)
        model.policy.action_net.bias.copy_(th.tensor([1.2, -1.2, 0.0]))
    model.save(run / "model.zip")
    (run / "config.json").write_text(json.dumps({"task": "Hopper", "algo": "ppo"}))
    return run


def _hand_returns(run: Path, protocol: str, mass_factor: float, sigma: float, episodes: int, seed: int, rng_seed: int
                  ) -> np.ndarray:  # fmt: skip
    """Episodes stepped by hand on direct-edit envs; noise drawn as the evaluator documents it (one N(0, 1)
    draw per step and episode index from the second of three streams spawned from ``rng_seed``)."""
    model = PPO.load(run / "model.zip", device="cpu")
    envs = [_direct_env(mass_factor, set_const=protocol == "default") for _ in range(episodes)]
    obs = np.stack([env.reset(seed=seed + j)[0] for j, env in enumerate(envs)])
    noise = np.random.default_rng(np.random.SeedSequence(rng_seed).spawn(3)[1])
    returns, alive = np.zeros(episodes), np.ones(episodes, dtype=bool)
    while alive.any():
        with th.no_grad():
            mean = model.policy._predict(th.as_tensor(obs, dtype=th.float32), deterministic=True).numpy()
        z = noise.standard_normal((episodes, 3))
        start = np.clip(mean, -1.0, 1.0) if protocol == "lee_yoon" else mean
        action = np.clip(start + sigma * z, -1.0, 1.0)
        for j in np.flatnonzero(alive):
            obs[j], reward, terminated, truncated, _ = envs[j].step(action[j])
            returns[j] += reward
            alive[j] = not (terminated or truncated)
    return returns


@pytest.mark.parametrize("mass_factor", [1.0, 1.3])  # 1.0: the protocols differ by the noise alone
def test_rollouts_under_each_protocol_equal_a_hand_loop_on_direct_edits(saturating_hopper: Path, mass_factor: float
                                                                        ) -> None:  # fmt: skip
    policy = load_policy(saturating_hopper)
    got = {}
    for protocol in ("default", "lee_yoon"):
        task = HOPPER.with_protocol(protocol)
        setting = [{"torso_mass": TORSO * mass_factor}]
        got[protocol] = rollout_returns(
            policy, task, setting, episodes=3, seed=7, action_noise=0.4, rng_seed=5, workers=1
        )
        hand = _hand_returns(saturating_hopper, protocol, mass_factor, 0.4, episodes=3, seed=7, rng_seed=5)
        # a batched forward rounds differently from SB3's (~1e-9 in the actions): equal to float precision
        np.testing.assert_allclose(got[protocol][0, 0], hand, rtol=1e-6)
    # noise on the clipped mean is another protocol: a hundred times the tolerance above in these short episodes
    assert np.abs(got["default"] - got["lee_yoon"]).max() > 100 * 1e-6 * np.abs(got["default"]).max()


def test_suite_protocol_reaches_the_rollout_and_the_table(saturating_hopper: Path) -> None:
    policy = load_policy(saturating_hopper)
    suite = SuiteSpec(
        parameters=("torso_mass",), factors={"torso_mass": [1.3]}, action_noise=(0.4,), protocol="lee_yoon"
    )
    table = evaluate(
        policy, HOPPER, suite, episodes=2, nominal_episodes=2, detect_inert=False, workers=1, progress=False
    )
    assert table.attrs["protocol"] == "lee_yoon"
    task = HOPPER.with_protocol("lee_yoon")
    mass = rollout_returns(policy, task, [{"torso_mass": TORSO * 1.3}], episodes=2, workers=1)[0, 0]
    noisy = rollout_returns(policy, task, [{}], episodes=2, action_noise=0.4, workers=1)[0, 0]
    # one batch of three settings rounds its forward differently from one-setting batches (~1e-8 here)
    row = table.loc[(table.family == "torso_mass") & (table.factor == 1.3), "returns"].iloc[0]
    np.testing.assert_allclose(row, mass, rtol=1e-6)
    row = table.loc[(table.family == "action_noise") & (table.action_noise == 0.4), "returns"].iloc[0]
    np.testing.assert_allclose(row, noisy, rtol=1e-6)
    default = rollout_returns(policy, HOPPER, [{}], episodes=2, action_noise=0.4, workers=1)[0, 0]
    assert np.abs(default - noisy).max() > 1e-3  # and it is not the default protocol's row
    with pytest.raises(RlflatError, match=r"protocol.*'lee_yon'.*default, lee_yoon"):
        evaluate(policy, HOPPER, SuiteSpec(protocol="lee_yon"), episodes=2)


# -- the fingerprint: settings that differ only after a fall are not grouped ---------------------------------------


def test_fingerprint_steps_past_termination_where_short_horizons_agree() -> None:
    foot = HOPPER.parameters["foot_friction"].nominal
    settings = [{}, {"friction_scale": 1.24}, {"foot_friction": foot * 1.24}, {"foot_friction": foot * 0.4},
                {"foot_friction": foot * 0.5}, {"friction_scale": 1.24}]  # fmt: skip
    # the foot-floor contact is max(2.0 x 1.24, 1.0 x 1.24) = max(2.0 x 1.24, 1.0): equal until another geom lands
    short = dynamics_groups(dynamics_fingerprints(HOPPER, settings[:3], steps=30))
    assert short[1] == short[2]
    groups = dynamics_groups(dynamics_fingerprints(HOPPER, settings))
    assert groups[1] != groups[2]  # torso, thigh and leg on the floor: every contact's friction vs the foot's
    assert groups[3] == groups[4]  # x0.4 and x0.5 are still one contact (max with the floor's 1.0)
    assert groups[5] == groups[1] and len(set(groups)) == 4  # deterministic; nominal apart from all


# -- the study config: loaded and expanded by the sweep, never run here ---------------------------------------------

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "hopper_lee_yoon.yaml"


def _lee_yoon_pass(evaluate_block: dict[str, object]) -> dict[str, object]:
    """The config's second pass (its header's CLI loop): the 1-D suites again under ``lee_yoon``, no grids."""
    suite = {k: v for k, v in dict(evaluate_block["suite"]).items() if k != "grids"}  # type: ignore[call-overload]
    return {**evaluate_block, "suite": {**suite, "protocol": "lee_yoon"}}


def test_study_config_loads_with_their_hyperparameters_and_both_protocols() -> None:
    from rlflat.evaluate import build_settings
    from rlflat.sweep.config import check_stage_options, expand_runs, load_study_config
    from rlflat.sweep.stage_options import check_options, evaluate_options

    study = load_study_config(CONFIG)
    check_stage_options(study)
    runs = expand_runs(study)
    assert sorted({(r.config["algo"], r.config["seed"]) for r in runs}) == [
        (a, s) for a in ("ppo", "ppo_lysam", "ppo_sam") for s in range(5)
    ]
    for run in runs:
        hp = run.config["hyperparameters"]
        assert run.config["task"] == "Hopper" and hp["total_timesteps"] >= 1_000_000
        assert (hp["n_steps"] * hp["n_envs"], hp["batch_size"], hp["n_epochs"]) == (2048, 64, 10)
        assert (hp["clip_range"], hp["ent_coef"], hp["gamma"], hp["gae_lambda"]) == (0.2, 0.01, 0.99, 0.95)
        assert hp["policy_kwargs"]["log_std_init"] == -0.5
        rule = {
            "ppo": {},
            "ppo_lysam": {"rho": 0.01, "sam_scope": "all"},
            "ppo_sam": {"rho": 0.05, "sam_scope": "actor"},
        }
        assert {k: hp[k] for k in ("rho", "sam_scope") if k in hp} == rule[run.config["algo"]]
    options = study.config.stage_options("evaluate")
    assert options["episodes"] >= 50
    default = evaluate_options(options, "Hopper")["suite"]
    second = _lee_yoon_pass(options)
    check_options("evaluate", second, ["Hopper"])
    lee_yoon = evaluate_options(second, "Hopper")["suite"]
    assert (default.protocol, lee_yoon.protocol) == ("default", "lee_yoon") and not lee_yoon.grids
    settings = build_settings(HOPPER, default)
    families = {s.family for s in settings}
    assert {"torso_mass", "foot_friction", "friction_scale", "action_noise"} <= families
    assert {"foot_friction:torso_mass", "friction_scale:torso_mass"} <= families
    assert sum(s.family == "foot_friction:torso_mass" for s in settings) == 12 * 11  # x0.5 kept in the grid too
    assert {s.factor for s in settings if s.family == "foot_friction"} >= {0.4, 0.5}
    assert len([s for s in settings if s.family == "action_noise"]) == 11
    text = CONFIG.read_text()  # the header's CLI pass is the pass validated above
    for name in ("torso_mass", "foot_friction", "friction_scale"):
        assert f"--factors {name}=" + ",".join(str(float(f)) for f in options["suite"]["factors"][name]) in text


def test_evaluate_cli_takes_the_protocol(
    saturating_hopper: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import pandas as pd

    from rlflat.cli import run_cli
    from rlflat.evaluate.__main__ import main

    argv = [str(saturating_hopper), "--factors", "torso_mass=1.3", "--episodes", "2", "--nominal-episodes", "2"]
    argv += ["--no-inert", "--workers", "1", "--no-progress", "--out", str(tmp_path / "ly"), "--protocol", "lee_yoon"]
    assert run_cli(main, argv) == 0
    table = pd.read_parquet(tmp_path / "ly" / "robustness.parquet")
    got = table.loc[(table.family == "torso_mass") & (table.factor == 1.3), "returns"].iloc[0]
    expected = rollout_returns(load_policy(saturating_hopper), HOPPER.with_protocol("lee_yoon"),
                               [{"torso_mass": TORSO * 1.3}], episodes=2, workers=1)[0, 0]  # fmt: skip
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    assert run_cli(main, [*argv[:-1], "lee_yon"]) == 2
    assert "lee_yon" in capsys.readouterr().err
