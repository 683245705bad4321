"""The probe's interpolation path and exact spectrum route against closed forms: a path between two *different*
policies through a loss with a known bump, and eigenvectors checked as H v = lambda v on a known matrix."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from stable_baselines3 import PPO

from rlflat.errors import RlflatError
from rlflat.policy import FunctionalPolicy, load_policy
from rlflat.probe.batch import collect_batch
from rlflat.probe.directions import layer_normalize, random_direction
from rlflat.probe.hvp import HessianOperator, Params
from rlflat.probe.landscape import barrier, interpolate, plane, slice_1d, slice_2d
from rlflat.probe.losses import make_loss, scope_params
from rlflat.probe.perturbation import average_case, perturbed_returns, stack_params, worst_case
from rlflat.probe.spectrum import eigenpairs, extreme_eigenpairs
from rlflat.probe.worst_case import sam_sharpness
from rlflat.tasks import TaskSpec, load_task, make_env

torch.set_num_threads(1)
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
CARTPOLE = load_task("CartPole")


def _saved_policy(path: Path, task: TaskSpec = CARTPOLE, seed: int = 0, net_arch: Any = None) -> FunctionalPolicy:
    """An untrained SB3 PPO of ``task`` (one hidden layer of 8 unless told), saved to ``path`` and loaded back as
    the probe loads a run's model."""
    PPO("MlpPolicy", make_env(task), seed=seed, policy_kwargs={"net_arch": net_arch or [8]}).save(path)
    return load_policy(path)


@pytest.fixture(scope="module")
def two_policies(tmp_path_factory: pytest.TempPathFactory) -> tuple[FunctionalPolicy, FunctionalPolicy]:
    one, two = (tmp_path_factory.mktemp(f"interp{seed}") / "model.zip" for seed in (1, 2))
    return _saved_policy(one, seed=1), _saved_policy(two, seed=2)


def _actor_setup(policy: FunctionalPolicy) -> tuple[Params, torch.Tensor, Any]:
    """The actor's parameters, a 64-transition batch's observations and its nll loss: the probe's inputs."""
    batch = collect_batch(policy, CARTPOLE, 64, seed=0, n_envs=2)
    return scope_params(policy, "actor"), policy.preprocess(batch.observations), make_loss(policy, batch, "nll")


def _flat(params: Params) -> torch.Tensor:
    return torch.cat([v.detach().double().reshape(-1) for v in params.values()])


def test_interpolation_between_two_policies_follows_a_known_bump(
    two_policies: tuple[FunctionalPolicy, FunctionalPolicy],
) -> None:
    """loss(theta) = ||theta - A||^2 ||theta - B||^2 + <B - A, theta - A>: along theta = A + alpha (B - A) it is
    alpha^2 (1 - alpha)^2 d^4 + alpha d^2, asymmetric in alpha, with points outside [0, 1] higher than the bump."""
    a, b = two_policies
    fa, fb = _flat(a.params), _flat(b.params)
    d = float((fb - fa).norm())
    assert d > 0.1  # two different policies

    def loss(params: Params) -> torch.Tensor:
        x = _flat(params)
        return (x - fa).pow(2).sum() * (x - fb).pow(2).sum() + (fb - fa) @ (x - fa)

    alphas = np.array([-0.3, 0.0, 0.2, 0.5, 0.7, 1.0, 1.4])
    scalars, arrays = interpolate(a, b, CARTPOLE, loss, alphas, episodes=2, eval_seed=3)
    expected = alphas**2 * (1 - alphas) ** 2 * d**4 + alphas * d**2
    np.testing.assert_allclose(scalars["loss"], expected, rtol=1e-4)
    np.testing.assert_allclose(arrays["interpolation_loss"], expected, rtol=1e-4)
    inside = expected[1:6]
    assert scalars["loss_barrier"] == pytest.approx(inside.max() - 0.5 * (expected[1] + expected[5]), rel=1e-4)
    assert scalars["distance"] == pytest.approx(d, rel=1e-6)
    assert scalars["same_observation_normalizer"] is True
    # the returns at the ends are the two policies' own returns (same episodes seeds)
    own_a = perturbed_returns(a, CARTPOLE, [a.params], 2, seed=3).mean()
    own_b = perturbed_returns(b, CARTPOLE, [b.params], 2, seed=3).mean()
    returns = np.array(scalars["return"])
    assert returns[1] == own_a and returns[5] == own_b
    assert scalars["return_barrier"] == pytest.approx(0.5 * (own_a + own_b) - returns[1:6].min())
    np.testing.assert_array_equal(arrays["interpolation_return"], returns)
    assert scalars["alphas"] == alphas.tolist()


def test_barrier_reads_only_the_inside_of_the_path() -> None:
    alphas = np.array([-0.5, 0.0, 0.25, 0.5, 1.0, 1.5])
    values = np.array([9.0, 1.0, 4.0, 2.0, 3.0, -7.0])
    assert barrier(values, alphas) == pytest.approx(4.0 - 2.0)  # max inside 4, ends mean 2
    assert barrier(values, alphas, higher_is_worse=False) == pytest.approx(2.0 - 1.0)  # ends mean 2, min inside 1
    with pytest.raises(Exception, match="alpha = 0 and alpha = 1"):
        barrier(values[:4], alphas[:4])


# -- exact spectrum route: eigenvectors ------------------------------------------------------------------------

_SPECTRUM = [9.0, 4.0, 2.5, 1.0, 0.3, 0.0, -0.2, -1.5, -6.0, -11.0]


class _KnownHessian:
    """0.5 x^T H x with H = Q diag(spectrum) Q^T on params {'w': (2, 3), 'b': (4,)}: the Hessian is H."""

    def __init__(self) -> None:
        g = torch.Generator().manual_seed(4)
        q, r = torch.linalg.qr(torch.randn(10, 10, generator=g, dtype=torch.float64))
        q = q * torch.sign(torch.diagonal(r))
        self.h = q @ torch.diag(torch.tensor(_SPECTRUM, dtype=torch.float64)) @ q.T
        self.h = 0.5 * (self.h + self.h.T)
        x0 = torch.randn(10, generator=g, dtype=torch.float64)
        self.params: Params = {"w": x0[:6].reshape(2, 3).clone(), "b": x0[6:].clone()}

    def loss(self, p: Params) -> torch.Tensor:
        x = torch.cat([p["w"].reshape(-1), p["b"].reshape(-1)])
        return 0.5 * x @ (self.h @ x)


def _check_pairs(h: torch.Tensor, values: torch.Tensor, vectors: torch.Tensor | None, want: list[float]) -> None:
    assert vectors is not None and vectors.shape == (10, len(want))
    torch.testing.assert_close(values, torch.tensor(want, dtype=torch.float64), rtol=0, atol=1e-10)
    torch.testing.assert_close(h @ vectors, vectors * values, rtol=0, atol=1e-10)  # H v = lambda v, column-wise
    torch.testing.assert_close(vectors.T @ vectors, torch.eye(len(want), dtype=torch.float64), rtol=0, atol=1e-10)


@pytest.mark.parametrize("k", [1, 3])
def test_exact_route_eigenvectors_satisfy_h_v_equals_lambda_v(k: int) -> None:
    known = _KnownHessian()
    op = HessianOperator(known.loss, known.params)
    top = eigenpairs(op, k, which="largest")
    bottom = eigenpairs(op, k, which="smallest")
    assert top.method == bottom.method == "exact" and top.hvps == 10
    _check_pairs(known.h, top.values, top.vectors, _SPECTRUM[:k])
    _check_pairs(known.h, bottom.values, bottom.vectors, _SPECTRUM[::-1][:k])
    both_top, both_bottom = extreme_eigenpairs(op, k)
    assert both_top.method == "exact" and both_top.hvps == 10 and both_bottom.hvps == 0
    _check_pairs(known.h, both_top.values, both_top.vectors, _SPECTRUM[:k])
    _check_pairs(known.h, both_bottom.values, both_bottom.vectors, _SPECTRUM[::-1][:k])
    values_only, _ = extreme_eigenpairs(op, k, vectors=False)
    assert values_only.vectors is None
    torch.testing.assert_close(values_only.values, top.values, rtol=0, atol=1e-10)
    assert eigenpairs(op, k, which="smallest", vectors=False).values.tolist() == pytest.approx(_SPECTRUM[::-1][:k])


def test_layer_normalisation_keeps_every_tensor_of_two_or_more_dimensions() -> None:
    """With ignore_1d only 0-D and 1-D tensors are zeroed; 2-D and 4-D tensors get their parameter's norm."""
    g = torch.Generator().manual_seed(8)
    params = {n: torch.randn(s, generator=g, dtype=torch.float64) for n, s in
              (("conv", (2, 3, 2, 2)), ("w", (4, 3)), ("b", (4,)), ("scale", ()))}  # fmt: skip
    direction = {n: torch.randn(p.shape, generator=g, dtype=torch.float64) for n, p in params.items()}
    for ignore_1d in (True, False):
        out = layer_normalize(direction, params, ignore_1d=ignore_1d)
        for name in ("conv", "w") + (() if ignore_1d else ("b", "scale")):
            assert float(out[name].norm()) == pytest.approx(float(params[name].norm()), rel=1e-9), name
            cosine = float((out[name] * direction[name]).sum() / (out[name].norm() * direction[name].norm()))
            assert cosine == pytest.approx(1.0, rel=1e-12), name
        if ignore_1d:
            assert not out["b"].any() and not out["scale"].any()


def test_plane_and_slices_evaluate_theta_plus_a_d1_plus_b_d2() -> None:
    known = _KnownHessian()
    g = torch.Generator().manual_seed(9)
    d1 = {k: torch.randn(v.shape, generator=g, dtype=torch.float64) for k, v in known.params.items()}
    d2 = {k: torch.randn(v.shape, generator=g, dtype=torch.float64) for k, v in known.params.items()}
    point = plane(known.params, d1, d2, 0.7, -1.3)
    for k, v in known.params.items():
        torch.testing.assert_close(point[k], v + 0.7 * d1[k] - 1.3 * d2[k], rtol=0, atol=1e-14)
    alphas = np.array([-1.0, -0.25, 0.5, 2.0])
    losses, returns = slice_1d(None, None, known.loss, known.params, d1, alphas)  # type: ignore[arg-type]
    expected = [float(known.loss({k: v + a * d1[k] for k, v in known.params.items()})) for a in alphas]
    np.testing.assert_allclose(losses, expected, rtol=1e-12)
    assert returns is None
    grid, _ = slice_2d(None, None, known.loss, known.params, d1, d2, alphas)  # type: ignore[arg-type]
    for i, a in enumerate(alphas):
        for j, b in enumerate(alphas):
            want = float(known.loss({k: v + a * d1[k] + b * d2[k] for k, v in known.params.items()}))
            assert grid[i, j] == pytest.approx(want, rel=1e-12)  # rows indexed by a, columns by b


def test_worst_case_reports_the_kl_and_action_change_of_each_maximiser(
    two_policies: tuple[FunctionalPolicy, FunctionalPolicy],
) -> None:
    """At the raw one-step maximiser: KL(pi_theta || pi_point) by hand from the two softmaxes, and the fraction of
    states whose greedy action changed."""
    policy, _ = two_policies
    params, obs, loss = _actor_setup(policy)
    scalars, arrays = worst_case(policy, None, loss, params, obs, rho=2.0, adaptive_rho=0.5, steps=2)
    assert arrays == {}
    found = sam_sharpness(loss, params, 2.0)
    point = {k: v + found.perturbation[k] for k, v in params.items()}
    with torch.no_grad():
        p = torch.softmax(policy.distribution(params, obs).logits.double(), -1)
        q = torch.softmax(policy.distribution(point, obs).logits.double(), -1)
    kl = float((p * (p.log() - q.log())).sum(-1).mean())
    changed = float((p.argmax(-1) != q.argmax(-1)).double().mean())
    entry = scalars["raw"]["one_step"]
    assert kl > 1e-4 and entry["kl"] == pytest.approx(kl, rel=1e-4)
    assert entry["action_change"] == pytest.approx(changed, abs=1e-12)
    assert entry["sharpness"] == pytest.approx(found.sharpness, rel=1e-9) and entry["eps_norm"] == pytest.approx(2.0)
    assert entry["return"] is None and entry["return_drop"] is None
    assert scalars["raw"]["rho"] == 2.0 and scalars["adaptive"]["rho"] == 0.5


def test_random_direction_defaults_to_filter_and_names_bad_kinds() -> None:
    known = _KnownHessian()
    default = random_direction(known.params, seed=3)
    for k, v in random_direction(known.params, "filter", seed=3).items():
        assert torch.equal(default[k], v)
    with pytest.raises(RlflatError, match=r"direction kind.*'bogus'.*filter"):
        random_direction(known.params, "bogus", seed=3)  # type: ignore[arg-type]
    with pytest.raises(RlflatError, match="^no parameter sets to stack$"):
        stack_params([])


def test_average_case_keeps_the_nominal_returns_it_measured_against(
    two_policies: tuple[FunctionalPolicy, FunctionalPolicy],
) -> None:
    """theta0's own returns (same evaluation episodes) are stored beside the curves, and are the nominal return."""
    policy, _ = two_policies
    params, obs, loss = _actor_setup(policy)
    scalars, arrays = average_case(policy, CARTPOLE, loss, params, obs, [0.5], n_directions=1, episodes=3,
                                   eval_seed=7)  # fmt: skip
    own = perturbed_returns(policy, CARTPOLE, [params], 3, seed=7)[0]
    np.testing.assert_array_equal(arrays["perturbation_nominal_returns"], own)
    assert scalars["nominal_return"] == pytest.approx(float(own.mean()), rel=1e-12) and scalars["return_floor"] == 0.0


# -- edges (survivors of the second mutation sample) ------------------------------------------------------------


def test_density_of_a_single_repeated_eigenvalue_has_the_documented_width() -> None:
    """All eigenvalues equal (hi == lo): the kernel's half-range falls back to max(|lambda|, 1)."""
    from rlflat.probe.spectrum import density_from_eigenvalues

    for value, half in ((3.0, 3.0), (0.2, 1.0), (-5.0, 5.0)):
        d = density_from_eigenvalues(torch.full((4,), value), grid_size=201)
        assert d.sigma == pytest.approx(np.sqrt(1e-5) * half, rel=1e-12)
        assert float(d.grid[torch.argmax(d.density)]) == pytest.approx(value, abs=4 * d.sigma)


def test_projected_ascent_with_one_step_is_allowed_and_stays_in_the_ball() -> None:
    """On f(x) = 0.5 x^T A x at x0 = e1 (gradient 4 e1), one projected step of size rho
    along the gradient reaches the sphere, and its gain is the closed form."""
    from rlflat.probe.worst_case import pgd_sharpness

    a = torch.diag(torch.tensor([4.0, 1.0], dtype=torch.float64))
    x0 = {"x": torch.tensor([1.0, 0.0], dtype=torch.float64)}

    def loss(p: dict[str, torch.Tensor]) -> torch.Tensor:
        return 0.5 * p["x"] @ a @ p["x"]

    with pytest.raises(RlflatError):
        pgd_sharpness(loss, x0, 0.1, steps=0)
    one = pgd_sharpness(loss, x0, 0.1, steps=1)
    # gradient at e1 is 4 e1: the step of norm 0.1 goes to 1.1 e1, f = 0.5 * 4 * 1.21
    assert one.eps_norm == pytest.approx(0.1, rel=1e-9)
    assert one.sharpness == pytest.approx(0.5 * 4 * 1.21 - 2.0, rel=1e-9)


def test_normalisers_with_equal_statistics_count_as_the_same() -> None:
    """Two runs whose observation statistics are equal (distinct objects) interpolate in one input space."""
    from types import SimpleNamespace

    from rlflat.probe.landscape import _same_normalizer

    def stats(mean: float) -> SimpleNamespace:
        return SimpleNamespace(mean=np.array([mean, 1.0]), var=np.array([2.0, 3.0]), clip=10.0)

    def pol(normalizer: object) -> FunctionalPolicy:
        return SimpleNamespace(normalizer=normalizer)  # type: ignore[return-value]

    assert _same_normalizer(pol(stats(0.5)), pol(stats(0.5)))
    assert not _same_normalizer(pol(stats(0.5)), pol(stats(0.6)))
    assert not _same_normalizer(pol(stats(0.5)), pol(None)) and not _same_normalizer(pol(None), pol(stats(0.5)))
    assert _same_normalizer(pol(None), pol(None))


def test_dict_errors_name_what_differs() -> None:
    from rlflat.probe.directions import dict_dot
    from rlflat.probe.perturbation import _check_sigmas

    with pytest.raises(RlflatError, match=r"tensor 'w': shape \(2, 3\) vs \(3, 2\)"):
        dict_dot({"w": torch.zeros(2, 3)}, {"w": torch.zeros(3, 2)})
    with pytest.raises(RlflatError, match="cannot take the inner product of empty dicts"):
        dict_dot({}, {})
    with pytest.raises(RlflatError, match=r"sigmas must be a list of finite values >= 0, got \[0.1, -1.0\]"):
        _check_sigmas([0.1, -1.0], "sigmas")


def test_exact_density_takes_no_hvps_and_bad_inputs_name_the_rule() -> None:
    from rlflat.probe.spectrum import density_from_eigenvalues
    from rlflat.probe.worst_case import pgd_sharpness

    assert density_from_eigenvalues(torch.tensor([1.0, 2.0, 5.0]), grid_size=50).hvps == 0
    with pytest.raises(RlflatError, match="eigenvalues must be a non-empty 1-D tensor"):
        density_from_eigenvalues(torch.zeros(2, 2))
    x0 = {"x": torch.tensor([1.0, 0.0], dtype=torch.float64)}
    with pytest.raises(RlflatError, match=r"step_size must be >= 0; got -0.5"):
        pgd_sharpness(lambda p: (p["x"] ** 2).sum(), x0, 0.1, steps=2, step_size=-0.5)


# -- edges (survivors of the third mutation sample) -------------------------------------------------------------


def test_worst_case_returns_are_those_of_its_maximisers_and_eta_belongs_to_the_adaptive_ball(
    two_policies: tuple[FunctionalPolicy, FunctionalPolicy],
) -> None:
    """With a task: each maximiser's return is the mean over the same evaluation episodes of that perturbed
    policy, and its drop is measured from theta0's own return; eta is recorded for the adaptive ball only."""
    from rlflat.probe.directions import add_scaled

    policy, _ = two_policies
    params, obs, loss = _actor_setup(policy)
    scalars, arrays = worst_case(policy, CARTPOLE, loss, params, obs, rho=0.5, adaptive_rho=0.5, steps=2, eta=0.02,
                                 episodes=2, eval_seed=5)  # fmt: skip
    assert "eta" not in scalars["raw"] and scalars["adaptive"]["eta"] == 0.02
    nominal = float(perturbed_returns(policy, CARTPOLE, [params], 2, seed=5).mean())
    for b, ball in enumerate(("raw", "adaptive")):
        found = sam_sharpness(loss, params, 0.5, adaptive=ball == "adaptive", eta=0.02)
        own = perturbed_returns(policy, CARTPOLE, [add_scaled(params, found.perturbation, 1.0)], 2, seed=5).mean()
        entry = scalars[ball]["one_step"]
        assert entry["return"] == pytest.approx(float(own), abs=1e-12)
        assert entry["return_drop"] == pytest.approx(nominal - float(own), abs=1e-12)
        np.testing.assert_array_equal(arrays["worst_case_returns"][2 * b].mean(), own)


def test_library_defaults_are_the_probe_s_defaults(two_policies: tuple[FunctionalPolicy, FunctionalPolicy]) -> None:
    """A caller of the library functions gets the measure the CLI reports (one set of defaults), seen through
    what the calls return: radii, eta, ascent steps, directions and episodes per evaluated policy."""
    from rlflat.probe.options import ProbeOptions
    from rlflat.probe.worst_case import pgd_sharpness

    options = ProbeOptions()
    policy, _ = two_policies
    params, obs, loss = _actor_setup(policy)
    scalars, arrays = worst_case(policy, CARTPOLE, loss, params, obs)
    assert (scalars["raw"]["rho"], scalars["adaptive"]["rho"], scalars["adaptive"]["eta"]) == (
        options.rho, options.adaptive_rho, options.eta)  # fmt: skip
    assert scalars["raw"]["multi_step"]["grad_evals"] == 1 + options.ascent_steps  # the SAM gradient, then the steps
    assert arrays["worst_case_returns"].shape == (4, options.episodes)
    _, curves = average_case(policy, CARTPOLE, loss, params, obs, [0.1], kinds=("filter",))
    assert curves["perturbation_filter_returns"].shape == (options.n_directions, 1, options.episodes)
    for fn in (sam_sharpness, pgd_sharpness):
        found = fn(loss, params, 0.5, adaptive=True)
        scale = {k: v.abs() + options.eta for k, v in params.items()}  # the ASAM ball |theta| + eta
        norm = sum(float(((found.perturbation[k] / scale[k]) ** 2).sum()) for k in params) ** 0.5
        assert norm == pytest.approx(0.5, rel=1e-6)


def test_average_case_standard_errors_are_over_directions_at_each_sigma(
    two_policies: tuple[FunctionalPolicy, FunctionalPolicy],
) -> None:
    policy, _ = two_policies
    params, obs, loss = _actor_setup(policy)
    sigmas = [0.1, 0.4, 1.0]
    scalars, arrays = average_case(policy, CARTPOLE, loss, params, obs, sigmas, kinds=("filter",), n_directions=3,
                                   episodes=2)  # fmt: skip
    curves = arrays["perturbation_filter_loss_increase"]
    assert curves.shape == (3, 3)
    np.testing.assert_allclose(scalars["filter"]["loss_increase"]["mean"], curves.mean(0), rtol=1e-12)
    np.testing.assert_allclose(scalars["filter"]["loss_increase"]["stderr"], curves.std(0, ddof=1) / np.sqrt(3),
                               rtol=1e-12)  # fmt: skip
    drops = scalars["nominal_return"] - arrays["perturbation_filter_returns"].mean(-1)
    np.testing.assert_allclose(scalars["filter"]["return_drop"]["stderr"], drops.std(0, ddof=1) / np.sqrt(3),
                               rtol=1e-12, atol=1e-12)  # fmt: skip


def test_draw_directions_passes_ignore_1d_on() -> None:
    from rlflat.probe.perturbation import draw_directions

    known = _KnownHessian()
    zeroed = draw_directions(known.params, "filter", 2, seed=1, ignore_1d=True)
    kept = draw_directions(known.params, "filter", 2, seed=1, ignore_1d=False)
    for a, b in zip(zeroed, kept, strict=True):
        assert torch.count_nonzero(a["b"]) == 0 and torch.count_nonzero(b["b"]) == 4
        assert torch.equal(a["w"], b["w"])


def test_interpolation_without_a_task_has_no_returns(
    two_policies: tuple[FunctionalPolicy, FunctionalPolicy],
) -> None:
    a, b = two_policies
    params, _, loss = _actor_setup(a)
    scalars, arrays = interpolate(a, b, None, lambda p: loss({k: v for k, v in p.items() if k in params}),
                                  np.array([0.0, 0.5, 1.0]))  # fmt: skip
    assert scalars["return"] is None and scalars["return_barrier"] is None
    assert sorted(arrays) == ["interpolation_alphas", "interpolation_loss"]
    np.testing.assert_array_equal(arrays["interpolation_alphas"], [0.0, 0.5, 1.0])


def test_scaled_to_rescales_as_one_vector_and_refuses_a_zero_direction() -> None:
    from rlflat.probe.landscape import scaled_to

    d = {"w": torch.tensor([3.0, 0.0]), "b": torch.tensor([4.0])}
    out = scaled_to(d, 10.0)
    assert torch.equal(out["w"], torch.tensor([6.0, 0.0])) and torch.equal(out["b"], torch.tensor([8.0]))
    with pytest.raises(RlflatError, match="^cannot rescale a zero direction$"):
        scaled_to({"w": torch.zeros(2)}, 1.0)


class _StationaryCubic:
    """L = 0.5 c (u.x)^2 - k (u.x)^3 + 0.5 ||x - (u.x) u||^2 around x0 over {'w': (2, 2), 'b': (3,)}, x = theta - x0:
    the gradient at x0 is exactly zero, the top curvature is c along u, and -rho u beats +rho u by 2 k rho^3."""

    def __init__(self, c: float = 8.0, k: float = 5.0) -> None:
        g = torch.Generator().manual_seed(11)
        x0 = torch.randn(7, generator=g, dtype=torch.float64)
        u = torch.randn(7, generator=g, dtype=torch.float64)
        self.u, self.c, self.k = u / u.norm(), c, k
        self.params: Params = {"w": x0[:4].reshape(2, 2).clone(), "b": x0[4:].clone()}
        self.x0 = x0

    def loss(self, p: Params) -> torch.Tensor:
        x = torch.cat([p["w"].reshape(-1), p["b"].reshape(-1)]) - self.x0
        s = self.u @ x
        return 0.5 * self.c * s**2 - self.k * s**3 + 0.5 * (x - s * self.u).pow(2).sum()

    def direction(self) -> Params:
        return {"w": self.u[:4].reshape(2, 2).clone(), "b": self.u[4:].clone()}


def test_a_stationary_point_falls_back_to_the_eigenvector_and_keeps_its_better_sign() -> None:
    f = _StationaryCubic()
    rho = 0.1
    found = sam_sharpness(f.loss, f.params, rho, direction=f.direction())
    assert found.start == "eigenvector" and found.grad_evals == 1  # one gradient: the one at theta0
    assert found.sharpness == pytest.approx(0.5 * f.c * rho**2 + f.k * rho**3, rel=1e-12)  # the -rho side
    flat = torch.cat([found.perturbation["w"].reshape(-1), found.perturbation["b"]])
    torch.testing.assert_close(flat, -rho * f.u, rtol=0, atol=1e-12)
    random_start = sam_sharpness(f.loss, f.params, rho, seed=3)
    assert random_start.start == "random" and random_start.grad_evals == 2  # plus the gradient at a random point
    assert 0.5 * rho**2 <= random_start.sharpness <= found.sharpness + 1e-12


def test_parameters_the_loss_does_not_use_get_a_zero_perturbation() -> None:
    """autograd gives None for an unused tensor: it is a zero gradient, so SAM leaves that tensor alone."""
    from rlflat.probe.worst_case import loss_and_grad

    params = {"used": torch.tensor([1.0, -2.0]), "unused": torch.tensor([5.0, 6.0, 7.0])}

    def loss(p: Params) -> torch.Tensor:
        return (p["used"] ** 2).sum()

    value, grads = loss_and_grad(loss, params)
    assert value == 5.0 and torch.equal(grads[1], torch.zeros(3))
    found = sam_sharpness(loss, params, 0.5)
    assert torch.equal(found.perturbation["unused"], torch.zeros(3))
    torch.testing.assert_close(found.perturbation["used"], 0.5 * torch.tensor([1.0, -2.0]) / 5**0.5)


def test_one_lanczos_step_is_the_rayleigh_quotient_of_the_start() -> None:
    from rlflat.probe.spectrum import lanczos

    known = _KnownHessian()
    v0 = torch.arange(1.0, 11.0, dtype=torch.float64)
    one = lanczos(lambda v: known.h @ v, v0, 1)
    q = v0 / v0.norm()
    assert one.alpha.shape == (1,) and one.beta.numel() == 0
    assert float(one.alpha[0]) == pytest.approx(float(q @ known.h @ q), rel=1e-12)
    with pytest.raises(RlflatError, match="^lanczos needs a 1-D start vector and steps >= 1$"):
        lanczos(lambda v: v, v0, 0)


# -- edges (survivors of the fourth mutation sample) ------------------------------------------------------------


def test_layer_directions_honour_ignore_1d() -> None:
    params = {"w": torch.randn(3, 2, generator=torch.Generator().manual_seed(0)), "b": torch.tensor([1.0, -2.0, 2.0])}
    layer_zeroed = random_direction(params, "layer", seed=0, ignore_1d=True)
    layer_kept = random_direction(params, "layer", seed=0)
    assert torch.count_nonzero(layer_zeroed["b"]) == 0 and torch.equal(layer_zeroed["w"], layer_kept["w"])
    assert float(layer_kept["b"].norm()) == pytest.approx(float(params["b"].norm()), rel=1e-6)


def test_mismatched_dicts_are_refused_naming_the_keys_or_the_shape() -> None:
    from rlflat.probe.directions import add_scaled, dict_dot

    a = {"w": torch.ones(2, 2), "b": torch.ones(2)}
    with pytest.raises(RlflatError, match=r"^dicts have different keys: \['b', 'x'\]$"):
        add_scaled(a, {"w": torch.ones(2, 2), "x": torch.ones(2)}, 1.0)
    with pytest.raises(RlflatError, match=r"^dicts have different keys: \['b'\]$"):
        dict_dot(a, {"w": torch.ones(2, 2)})
    with pytest.raises(RlflatError, match=r"^tensor 'b': shape \(2,\) vs \(3,\)$"):
        add_scaled(a, {"w": torch.ones(2, 2), "b": torch.ones(3)}, 1.0)


def test_average_case_arrays_and_its_refusals(two_policies: tuple[FunctionalPolicy, FunctionalPolicy]) -> None:
    from rlflat.probe.perturbation import draw_directions

    policy, _ = two_policies
    params, obs, loss = _actor_setup(policy)
    _, arrays = average_case(policy, None, loss, params, obs, [0.1, 0.3], kinds=("filter",), n_directions=2)
    assert sorted(arrays) == ["perturbation_filter_action_change", "perturbation_filter_kl",
                              "perturbation_filter_loss_increase", "perturbation_sigmas"]  # fmt: skip
    np.testing.assert_array_equal(arrays["perturbation_sigmas"], [0.1, 0.3])
    scalars, whole = average_case(policy, None, loss, params, obs, [0, 1], kinds=("filter",), n_directions=1)
    assert whole["perturbation_sigmas"].dtype == np.float64 and all(type(s) is float for s in scalars["sigmas"])
    with pytest.raises(RlflatError, match="^sigmas must not be empty$"):
        average_case(policy, None, loss, params, obs, [], n_directions=1)
    with pytest.raises(RlflatError, match=r"^unknown direction kind 'ring'"):
        draw_directions(params, "ring", 1, seed=0)


def _quartic_valley(centre: Params) -> Any:
    """L = ||theta - centre||^4 over every tensor: the gradient at the centre is exactly zero (a stationary point,
    as the kl loss at theta0 is), so the one-step searches fall back, and projected ascent must start there."""

    def loss(p: Params) -> torch.Tensor:
        return sum(((p[k] - centre[k]) ** 2).sum() for k in p) ** 2  # type: ignore[return-value]

    return loss


_VALLEY_CENTRE: Params = {"w": torch.tensor([[0.5, -1.0], [2.0, 0.25]], dtype=torch.float64),
                          "b": torch.tensor([1.5, -0.75], dtype=torch.float64)}  # fmt: skip


def test_multi_step_searches_start_from_the_fallback_at_a_stationary_point() -> None:
    """At a zero gradient, plain ascent from theta would never move (sharpness 0); both balls' projected ascent
    must reach the sphere: rho^4 in the raw ball, and a positive value in the adaptive one."""
    from rlflat.probe.worst_case import pgd_sharpness

    centre, valley = _VALLEY_CENTRE, _quartic_valley(_VALLEY_CENTRE)
    for adaptive in (False, True):
        found = pgd_sharpness(valley, centre, 0.3, steps=3, adaptive=adaptive, seed=2)
        assert found.start == "random" and found.sharpness > 0
    raw = pgd_sharpness(valley, centre, 0.3, steps=3, seed=2)
    assert raw.sharpness == pytest.approx(0.3**4, rel=1e-9)
    # the random start's seed defaults to 0 in both searches
    for fn in (pgd_sharpness, sam_sharpness):
        default, zero, one = (
            fn(valley, centre, 0.3),
            fn(valley, centre, 0.3, seed=0),
            fn(valley, centre, 0.3, seed=1),
        )
        assert all(torch.equal(default.perturbation[k], zero.perturbation[k]) for k in centre)
        assert not all(torch.equal(default.perturbation[k], one.perturbation[k]) for k in centre)


def test_every_worst_case_search_gets_the_fallback_direction(
    two_policies: tuple[FunctionalPolicy, FunctionalPolicy],
) -> None:
    """At a stationary point (the kl loss at theta0 is one) all four searches, one-step and projected ascent in
    both balls, start from the given fallback direction."""
    policy, _ = two_policies
    params, obs, _ = _actor_setup(policy)
    direction = {k: torch.ones_like(v) for k, v in params.items()}
    scalars, _ = worst_case(
        policy, None, _quartic_valley(params), params, obs, rho=0.2, adaptive_rho=0.2, steps=2, direction=direction
    )
    starts = {(ball, search): scalars[ball][search]["start"] for ball in ("raw", "adaptive")
              for search in ("one_step", "multi_step")}  # fmt: skip
    assert set(starts.values()) == {"eigenvector"}, starts


# -- edges (survivors of the fifth mutation sample) -------------------------------------------------------------


def test_slices_with_a_task_return_the_mean_return_of_each_point(
    two_policies: tuple[FunctionalPolicy, FunctionalPolicy],
) -> None:
    """slice_1d/2d evaluate theta + a d (+ b d2) on the task: the mean over the same episodes (eval_seed 0 unless
    told) of perturbed_returns at those points; the loss is the loss there."""
    policy, _ = two_policies
    params = dict(policy.params)
    d = random_direction(params, "filter", seed=1)
    alphas = np.array([0.0, 0.7])
    loss = make_loss(policy, collect_batch(policy, CARTPOLE, 64, seed=0, n_envs=2), "nll")
    losses, returns = slice_1d(policy, CARTPOLE, loss, params, d, alphas, episodes=2)
    points = [{k: v + a * d[k] for k, v in params.items()} for a in alphas]
    want = perturbed_returns(policy, CARTPOLE, points, 2, seed=0).mean(-1)
    assert returns is not None
    np.testing.assert_array_equal(returns, want)
    np.testing.assert_allclose(losses, [float(loss(p)) for p in points], rtol=1e-6)
    _, grid_returns = slice_2d(policy, CARTPOLE, loss, params, d, d, np.array([0.0, 0.35]), episodes=2)
    assert grid_returns is not None and grid_returns[1, 1] == pytest.approx(float(want[1]))  # 0.35 d + 0.35 d


def test_eigen_direction_is_typed_like_the_parameters() -> None:
    from rlflat.probe.landscape import eigen_direction

    params = {"w": torch.zeros(2, 2), "b": torch.zeros(3)}  # float32, as SB3's
    vectors = torch.arange(14, dtype=torch.float64).reshape(7, 2)
    out = eigen_direction(vectors, 1, params)
    assert {k: v.dtype for k, v in out.items()} == {"w": torch.float32, "b": torch.float32}
    assert out["w"].tolist() == [[1.0, 3.0], [5.0, 7.0]] and out["b"].tolist() == [9.0, 11.0, 13.0]
    with pytest.raises(RlflatError, match="^eigenvector length 7 does not match 6 parameters$"):
        eigen_direction(vectors, 0, {"w": torch.zeros(2, 3)})


def test_interpolation_refusal_names_only_the_parameters_that_differ(
    two_policies: tuple[FunctionalPolicy, FunctionalPolicy], tmp_path: Path
) -> None:
    from rlflat.probe.landscape import check_same_architecture

    a, _ = two_policies
    wider_critic = _saved_policy(tmp_path / "wide.zip", net_arch={"pi": [8], "vf": [16]})
    differ = sorted(k for k in a.params if a.params[k].shape != wider_critic.params.get(k, a.params[k]).shape)
    assert differ and len(differ) < len(a.params)
    with pytest.raises(RlflatError) as err:
        check_same_architecture(a, wider_critic)
    assert str(err.value) == f"cannot interpolate policies of different architectures: parameters differ at {differ[:4]}" + (
        f" and {len(differ) - 4} more" if len(differ) > 4 else "")  # fmt: skip


def test_average_case_returns_per_sigma_and_an_unlisted_task_s_floor(
    two_policies: tuple[FunctionalPolicy, FunctionalPolicy], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Per kind, ``return`` is the mean over directions of each direction's mean return at each sigma, and the
    floor comes from the nominal return when the task has no known worst return (0 for a positive nominal)."""
    policy, _ = two_policies
    params, obs, loss = _actor_setup(policy)
    from rlflat.evaluate import metrics

    monkeypatch.delitem(metrics.RETURN_FLOORS, "CartPole-v1")  # as for a task without a known worst return
    scalars, arrays = average_case(policy, CARTPOLE, loss, params, obs, [0.2, 1.0], kinds=("filter",), n_directions=2,
                                   episodes=2)  # fmt: skip
    per_direction = arrays["perturbation_filter_returns"].mean(-1)
    np.testing.assert_allclose(scalars["filter"]["return"], per_direction.mean(0), rtol=1e-12)
    assert scalars["return_floor"] == 0.0 and scalars["nominal_return"] > 0
    with pytest.raises(RlflatError, match=r"^sigmas must be a list of finite values >= 0, got \[-1.0\]$"):
        average_case(policy, None, loss, params, obs, [-1.0], n_directions=1)


def test_action_change_of_a_box_policy_clips_both_actions_to_the_bounds(tmp_path: Path) -> None:
    """Mean |a - b| / (high - low) on clipped actions: a reference beyond the bound counts from the bound."""
    from rlflat.probe.perturbation import action_change

    policy = _saved_policy(tmp_path / "pendulum.zip", load_task("Pendulum"))
    obs = policy.preprocess(np.random.default_rng(0).normal(size=(6, 3)).astype(np.float32))
    with torch.no_grad():
        actions = policy.mode(policy.params, obs).clamp(-2.0, 2.0)
    far_above = torch.full_like(actions, 50.0)
    want = float(((actions - 2.0).abs() / 4.0).mean())
    assert action_change(policy, obs, far_above, policy.params) == pytest.approx(want, rel=1e-6)
    far_below = torch.full_like(actions, -50.0)
    assert action_change(policy, obs, far_below, policy.params) == pytest.approx(
        float(((actions + 2.0) / 4.0).mean()), rel=1e-6
    )


def test_random_fallback_start_is_the_gradient_at_a_float64_gaussian_point_of_the_sphere() -> None:
    """On L = 0.5 x^T A x around theta (zero gradient at theta), the random fallback draws n ~ N(0, I) in float64
    from the seed, takes g = A (rho n / ||n||) and steps rho g / ||g||: reproduced here with torch's own draws. The
    +rho and -rho points tie on a quadratic, and the first (+) is kept."""
    known = _KnownHessian()
    x0 = {k: v.clone() for k, v in known.params.items()}

    def loss(p: Params) -> torch.Tensor:
        return known.loss({k: p[k] - x0[k] for k in p})

    rho = 0.3
    found = sam_sharpness(loss, x0, rho, seed=5)
    gen = torch.Generator().manual_seed(5)
    noise = torch.cat([torch.randn(x0[k].shape, generator=gen, dtype=torch.float64).reshape(-1) for k in x0])
    g = known.h @ (rho * noise / noise.norm())
    want = rho * g / g.norm()
    got = torch.cat([found.perturbation[k].reshape(-1) for k in x0])
    assert found.start == "random" and found.adaptive is False
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)


def test_adaptive_fallback_moves_along_the_given_direction_in_raw_space() -> None:
    """ASAM ball: the fallback along d puts eps parallel to d (not to d scaled by T^2) with ||eps / T|| = rho."""
    f = _StationaryCubic(c=2.0, k=0.0)
    rho, eta = 0.2, 0.01
    found = sam_sharpness(f.loss, f.params, rho, adaptive=True, eta=eta, direction=f.direction())
    assert found.start == "eigenvector" and found.adaptive is True
    eps = torch.cat([found.perturbation["w"].reshape(-1), found.perturbation["b"]])
    scale = torch.cat([f.params["w"].reshape(-1), f.params["b"]]).abs() + eta
    assert float((eps / scale).norm()) == pytest.approx(rho, rel=1e-12)
    cosine = float(eps @ f.u / eps.norm())
    assert abs(cosine) == pytest.approx(1.0, abs=1e-12)


def test_worst_case_refusals_name_what_is_wrong() -> None:
    known = _KnownHessian()
    stationary = _quartic_valley(known.params)  # zero gradient at theta: the fallback direction is consulted
    with pytest.raises(RlflatError, match=r"^direction keys \['w'\] differ from the parameters' \['b', 'w'\]$"):
        sam_sharpness(stationary, known.params, 0.1, direction={"w": torch.ones(2, 3)})
    with pytest.raises(RlflatError, match=r"^direction 'b' has shape \(3,\); expected \(4,\)$"):
        sam_sharpness(stationary, known.params, 0.1, direction={"w": torch.ones(2, 3), "b": torch.ones(3)})
    with pytest.raises(RlflatError, match="^loss_fn must return a scalar tensor$"):
        sam_sharpness(lambda p: p["b"], known.params, 0.1)


def test_interpolation_refusals_count_the_differences_and_name_the_spaces(
    two_policies: tuple[FunctionalPolicy, FunctionalPolicy], tmp_path: Path
) -> None:
    from rlflat.probe.landscape import check_same_architecture

    a, _ = two_policies
    deep = _saved_policy(tmp_path / "deep.zip", net_arch=[16, 16, 16])
    differ = sorted(k for k in a.params.keys() | deep.params.keys() if a.params.get(k) is None
                    or deep.params.get(k) is None or a.params[k].shape != deep.params[k].shape)  # fmt: skip
    assert len(differ) > 5
    with pytest.raises(RlflatError) as err:
        check_same_architecture(a, deep)
    assert str(err.value).endswith(f"parameters differ at {differ[:4]} and {len(differ) - 4} more")
    other = _saved_policy(tmp_path / "pendulum.zip", load_task("Pendulum"))
    other.params = dict(a.params)  # same names and shapes, other spaces
    with pytest.raises(RlflatError, match=r"^cannot interpolate policies with different spaces: \(Box"):
        check_same_architecture(a, other)


def test_interpolation_alphas_are_floats_whatever_they_are_given_as(
    two_policies: tuple[FunctionalPolicy, FunctionalPolicy],
) -> None:
    a, b = two_policies
    params, _, loss = _actor_setup(a)
    scalars, arrays = interpolate(a, b, None, lambda p: loss({k: v for k, v in p.items() if k in params}), [0, 1])
    assert all(type(x) is float for x in scalars["alphas"]) and arrays["interpolation_alphas"].dtype == np.float64
