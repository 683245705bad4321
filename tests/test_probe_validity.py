"""The probe as an instrument: replicate batches pooled into mean +- SE (checked against scipy and an independent
torch.func Hessian per batch), the Fisher stage against an independent Gauss-Newton J^T F_out J, its documented
invariances under per-neuron rescaling, one negative_count_fraction on both routes, and the confounds against SB3."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import scipy.stats
import torch
from stable_baselines3 import PPO
from torch import nn

from rlflat.policy import FunctionalPolicy, load_policy
from rlflat.probe import probe_run
from rlflat.probe.batch import ProbeBatch, collect_batch
from rlflat.probe.fisher import confounds, fisher_measures
from rlflat.probe.hvp import HessianOperator
from rlflat.probe.losses import make_loss, scope_params
from rlflat.probe.pooling import pool
from rlflat.probe.spectrum import negative_count_fraction, slq_density
from rlflat.tasks import load_task, make_env

torch.set_num_threads(1)
CARTPOLE = load_task("CartPole")


def _run(directory: Path, activation: type[nn.Module] = nn.Tanh, net_arch: list[int] | None = None) -> Path:
    directory.mkdir(parents=True)
    model = PPO("MlpPolicy", make_env(CARTPOLE), seed=0, n_steps=128, batch_size=64,
                policy_kwargs={"net_arch": net_arch or [8, 8], "activation_fn": activation})  # fmt: skip
    model.learn(256)
    model.save(directory / "model.zip")
    (directory / "config.json").write_text(json.dumps({"algo": "ppo", "task": "CartPole", "seed": 0}))
    return directory


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _run(tmp_path_factory.mktemp("validity") / "run")


def test_pool_is_mean_and_standard_error_of_the_replicates() -> None:
    reps = [
        {"a": 1.0, "rho": 0.05, "s": "x", "curve": {"mean": [1.0, 2.0], "stderr": [9.0, 9.0]}, "c": None, "d": 1.0},
        {"a": 2.0, "rho": 0.05, "s": "x", "curve": {"mean": [3.0, 5.0], "stderr": [9.0, 9.0]}, "c": None, "d": None},
        {"a": 4.5, "rho": 0.05, "s": "y", "curve": {"mean": [2.0, 2.0], "stderr": [9.0, 9.0]}, "c": None, "d": 3.0},
    ]
    out, arrays = pool(reps)
    assert out["a"] == pytest.approx(np.mean([1, 2, 4.5])) and out["a_se"] == pytest.approx(
        scipy.stats.sem([1, 2, 4.5])
    )
    assert out["rho"] == 0.05 and "rho_se" not in out  # a setting, not an estimate
    assert out["s"] == ["x", "x", "y"]
    assert out["curve"]["mean"] == pytest.approx([2.0, 3.0])
    assert out["curve"]["mean_se"] == pytest.approx(scipy.stats.sem([[1, 2], [3, 5], [2, 2]], axis=0).tolist())
    assert "stderr" not in out["curve"]  # within-replicate SEs are superseded
    assert out["c"] is None and out["d"] is None  # undefined on a replicate: undefined
    np.testing.assert_array_equal(arrays["d_batches"], [1.0, np.nan, 3.0])
    assert list(out) == ["a", "a_se", "rho", "s", "curve", "c", "d", "d_se"]  # x_se right beside x


def _flat_hessian(policy: FunctionalPolicy, batch: ProbeBatch, kind: str) -> torch.Tensor:
    """The loss Hessian by torch.func.hessian on a flat float64 vector: independent of HessianOperator."""
    params = scope_params(policy, "actor")
    loss = make_loss(policy, batch, kind)
    shapes = {k: v.shape for k, v in params.items()}
    sizes = [v.numel() for v in params.values()]
    flat = torch.cat([v.reshape(-1) for v in params.values()])

    def f(x: torch.Tensor) -> torch.Tensor:
        parts = torch.split(x, sizes)
        return loss({k: p.reshape(shapes[k]) for k, p in zip(shapes, parts, strict=True)})

    return torch.func.hessian(f)(flat).double()


def test_every_batch_is_an_independent_exact_hessian_and_the_pool_its_mean(tmp_path: Path, run_dir: Path) -> None:
    options = {"measures": "hessian", "batch": 200, "top_k": 2, "update_metrics": False}
    result = probe_run(run_dir, out=tmp_path / "b3", batches=3, **options)
    probe_run(run_dir, out=tmp_path / "b2", batches=2, **options)
    arrays = dict(np.load(tmp_path / "b3" / "probe.npz"))
    two = dict(np.load(tmp_path / "b2" / "probe.npz"))
    lam = arrays["hessian.lambda_max_batches"]
    np.testing.assert_array_equal(lam[:2], two["hessian.lambda_max_batches"])  # replicate b is the same whatever B
    assert len(set(lam.tolist())) == 3  # distinct seeds, distinct batches
    policy = load_policy(run_dir)
    for b in range(3):
        rows = arrays["batch_index"] == b
        batch = ProbeBatch.from_arrays({k: arrays[k][rows] for k in ProbeBatch.__dataclass_fields__})
        exact = torch.linalg.eigvalsh(_flat_hessian(policy, batch, "surrogate"))
        assert lam[b] == pytest.approx(float(exact[-1]), rel=1e-4, abs=1e-6 * float(exact.abs().max()))
    hess = result["hessian"]
    assert hess["lambda_max"] == pytest.approx(lam.mean()) and hess["lambda_max_se"] == pytest.approx(
        scipy.stats.sem(lam)
    )
    assert result["config"]["batches"] == 3 and len(result["config"]["replicate_seeds"]) == 3


def _categorical_ggn(policy: FunctionalPolicy, batch: ProbeBatch) -> torch.Tensor:
    """E_s[J^T (diag p - p p^T) J], J = d logits / d theta by torch.func.jacrev: the Gauss-Newton of the action
    distribution, built without any KL or HVP."""
    params = scope_params(policy, "actor")
    names = list(params)
    obs = policy.preprocess(batch.observations)

    def logits(*flat: torch.Tensor) -> torch.Tensor:
        dist = policy.distribution(dict(zip(names, flat, strict=True)), obs)
        assert isinstance(dist, torch.distributions.Categorical)
        return dist.logits

    jac = torch.func.jacrev(logits, argnums=tuple(range(len(names))))(*params.values())
    j = torch.cat([t.reshape(t.shape[0], t.shape[1], -1) for t in jac], dim=-1).double()  # (N, A, n)
    with torch.no_grad():
        p = policy.distribution({}, obs).probs.double()  # type: ignore[attr-defined]
    f_out = torch.diag_embed(p) - p[:, :, None] * p[:, None, :]
    return torch.einsum("nai,nab,nbj->ij", j, f_out, j) / obs.shape[0]


def test_fisher_equals_the_gauss_newton_and_its_measures_match_dense_ones(run_dir: Path) -> None:
    policy = load_policy(run_dir)
    batch = collect_batch(policy, CARTPOLE, 300, seed=3)
    ggn = _categorical_ggn(policy, batch)
    kl_hessian = _flat_hessian(policy, batch, "kl")
    torch.testing.assert_close(kl_hessian, ggn, rtol=1e-4, atol=1e-6 * float(ggn.abs().max()))
    params = scope_params(policy, "actor")
    theta = torch.cat([v.reshape(-1) for v in params.values()]).double()
    out = fisher_measures(policy, batch, params, seed=0)
    eig = torch.linalg.eigvalsh(ggn)
    assert out["lambda_max"] == pytest.approx(float(eig[-1]), rel=1e-3)
    assert out["rao_norm"] == pytest.approx(float(theta @ ggn @ theta), rel=1e-4)
    scaled = theta.abs()[:, None] * ggn * theta.abs()[None, :]
    assert out["adaptive_lambda_max"] == pytest.approx(float(torch.linalg.eigvalsh(scaled)[-1]), rel=1e-3)
    for key, matrix in (("trace", ggn), ("adaptive_trace", scaled)):  # exact: per-sample Jacobians
        assert out[key] == pytest.approx(float(torch.trace(matrix)), rel=1e-6), key
    assert out["trace_method"] == "exact" and out["trace"] >= out["lambda_max"] * (1 - 1e-3)


def test_documented_fisher_invariances_hold_and_the_rest_do_not(tmp_path: Path) -> None:
    """Per-neuron rescaling of a ReLU layer (rows and bias by c_i in [1/4, 4], the next layer's columns by 1/c_i)
    leaves the policy, the Fisher-Rao norm and the adaptive Fisher measures unchanged; lambda_max and the trace move."""
    directory = _run(tmp_path / "relu", nn.ReLU, [16])
    policy = load_policy(directory)
    batch = collect_batch(policy, CARTPOLE, 256, seed=0)
    c = torch.exp(torch.empty(16).uniform_(np.log(0.25), np.log(4.0), generator=torch.Generator().manual_seed(0)))
    model = PPO.load(directory / "model.zip", device="cpu")
    with torch.no_grad():
        first, head = model.policy.mlp_extractor.policy_net[0], model.policy.action_net
        first.weight.mul_(c[:, None])
        first.bias.mul_(c)
        head.weight.div_(c[None, :])
    rescaled = FunctionalPolicy(model.policy)
    obs = policy.preprocess(batch.observations)
    with torch.no_grad():
        torch.testing.assert_close(
            rescaled.distribution({}, obs).probs,  # type: ignore[attr-defined]
            policy.distribution({}, obs).probs,  # type: ignore[attr-defined]
            rtol=1e-5,
            atol=1e-6,
        )
    a = fisher_measures(policy, batch, scope_params(policy, "actor"), seed=1)
    b = fisher_measures(rescaled, batch, scope_params(rescaled, "actor"), seed=1)
    for key in ("rao_norm", "adaptive_lambda_max", "adaptive_trace"):
        assert b[key] == pytest.approx(a[key], rel=1e-4), key
    for key in ("lambda_max", "trace"):
        assert abs(b[key] / a[key] - 1) > 0.01, key  # 100x the tolerance the invariant ones meet


def test_negative_count_fraction_is_one_definition_on_both_routes() -> None:
    """A spectrum with a large cluster at zero carrying rounding-level negatives (as a policy Hessian has) and
    a few clear negatives: the exact eigenvalues and SLQ's quadrature give the same fraction."""
    n = 400
    g = torch.Generator().manual_seed(0)
    eig = torch.cat(
        [
            torch.linspace(1.0, 10.0, 40, dtype=torch.float64),
            -torch.linspace(0.5, 3.0, 20, dtype=torch.float64),
            1e-7 * torch.randn(n - 60, generator=g, dtype=torch.float64),
        ]
    )
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    a = q @ torch.diag(eig) @ q.T
    a = 0.5 * (a + a.T)
    op = HessianOperator(lambda p: 0.5 * p["x"] @ (a @ p["x"]), {"x": torch.zeros(n, dtype=torch.float64)})
    exact = negative_count_fraction(eig, torch.ones_like(eig))
    assert exact == pytest.approx(20 / n)  # the 20 clear negatives, not the ~170 rounding-level ones
    sd = slq_density(op, n_probes=20, steps=80, seed=0)
    slq = negative_count_fraction(sd.nodes, sd.weights)
    assert slq == pytest.approx(exact, abs=0.03)


def test_confounds_match_sb3_distribution(run_dir: Path) -> None:
    policy = load_policy(run_dir)
    batch = collect_batch(policy, CARTPOLE, 128, seed=0)
    model = PPO.load(run_dir / "model.zip", device="cpu")
    obs = torch.as_tensor(batch.observations)
    with torch.no_grad():
        dist = model.policy.get_distribution(obs).distribution
    out = confounds(policy, policy.preprocess(batch.observations))
    assert out["entropy"] == pytest.approx(float(dist.entropy().mean()), rel=1e-5)
    assert out["max_action_prob"] == pytest.approx(float(dist.probs.max(-1).values.mean()), rel=1e-5)


def test_whole_episodes_are_the_sampling_unit(run_dir: Path) -> None:
    """Every env finishes its last episode: the batch is at least the requested size and its episodes are whole
    (the final transition of each is terminal or truncated, so its GAE target is not a bootstrapped cut)."""
    policy = load_policy(run_dir)
    whole = collect_batch(policy, CARTPOLE, 100, seed=0, n_envs=1)
    cut = collect_batch(policy, CARTPOLE, 100, seed=0, n_envs=1, whole_episodes=False)
    assert len(cut) == 100 and len(whole) >= 100
    np.testing.assert_array_equal(whole.observations[:100], cut.observations)  # same episodes, same order
    env = make_env(CARTPOLE)  # replay the actions in Gymnasium's own env: the last one ends the episode
    from rlflat.probe.seeding import subseed

    env.reset(seed=subseed(0, "batch-episodes"))
    ends = 0
    for t, action in enumerate(whole.actions):
        _, _, term, trunc, _ = env.step(int(action))
        if term or trunc:
            ends += 1
            if t < len(whole) - 1:
                env.reset(seed=subseed(0, "batch-episodes") + ends)
    assert term or trunc
