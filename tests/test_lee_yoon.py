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
