"""Numerical core of the sharpness probe, checked against known spectra and torch.func.hessian."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from torch.func import functional_call

from rlflat.errors import RlflatError
from rlflat.probe.directions import (
    add_scaled,
    dict_dot,
    dict_norm,
    filter_normalize,
    layer_normalize,
    random_direction,
    raw_direction,
)
from rlflat.probe.hvp import HessianOperator, Params
from rlflat.probe.perturbation import return_halving_sigma
from rlflat.probe.seeding import subseed
from rlflat.probe.spectrum import (
    density_from_eigenvalues,
    eigenpairs,
    exact_eigenvalues,
    extreme_eigenpairs,
    hutchinson_trace,
    lambda_max_over_abs_sum,
    lambda_max_over_trace,
    lanczos,
    negative_abs_mass_fraction,
    negative_count_fraction,
    power_iteration,
    slq_density,
)
from rlflat.probe.worst_case import pgd_sharpness, sam_sharpness

torch.set_num_threads(1)
# torch.func.hessian's jvp decompositions call torch.jit.script internally (a torch deprecation).
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")

# ----- fixtures -------------------------------------------------------------------------------------

TOP = [10.0, 7.0, 5.0, 3.5, 2.6]
BOTTOM = [-4.0, -2.5, -1.5, -1.0, -0.7]


def _orthogonal(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    q, r = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r))


class Quadratic:
    """0.5 x^T A x + c^T x over params {'w': (5, 10), 'b': (10,)}, A with a chosen spectrum."""

    def __init__(self, seed: int = 0):
        n = 60
        g = torch.Generator().manual_seed(seed + 1)
        bulk = torch.rand(n - 10, generator=g, dtype=torch.float64) * 2.3 - 0.4  # in [-0.4, 1.9]
        self.eigs = torch.sort(torch.cat([torch.tensor(TOP + BOTTOM, dtype=torch.float64), bulk])).values
        q = _orthogonal(n, seed)
        self.a = q @ torch.diag(self.eigs) @ q.T
        self.a = 0.5 * (self.a + self.a.T)
        self.c = torch.randn(n, generator=g, dtype=torch.float64)
        x0 = torch.randn(n, generator=g, dtype=torch.float64)
        self.params: Params = {"w": x0[:50].reshape(5, 10).clone(), "b": x0[50:].clone()}
        self.n = n

    @staticmethod
    def flat(p: Params) -> torch.Tensor:
        return torch.cat([p["w"].reshape(-1), p["b"].reshape(-1)])

    def loss(self, p: Params) -> torch.Tensor:
        x = self.flat(p)
        return 0.5 * x @ (self.a @ x) + self.c @ x


@pytest.fixture(scope="module")
def quad() -> Quadratic:
    return Quadratic()


class SmallPolicy:
    """A 4-16-16-2 tanh policy, softmax cross-entropy on a fixed random batch (float32)."""

    def __init__(self) -> None:
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(
            torch.nn.Linear(4, 16), torch.nn.Tanh(), torch.nn.Linear(16, 16), torch.nn.Tanh(), torch.nn.Linear(16, 2)
        )
        g = torch.Generator().manual_seed(1)
        self.x = torch.randn(256, 4, generator=g)
        self.y = torch.randint(0, 2, (256,), generator=g)
        self.params: Params = {k: v.detach().clone() for k, v in self.net.named_parameters()}
        names = list(self.params)
        shapes = [p.shape for p in self.params.values()]
        sizes = [p.numel() for p in self.params.values()]

        def f(flat: torch.Tensor) -> torch.Tensor:
            return self.loss(
                dict(zip(names, (t.view(s) for t, s in zip(flat.split(sizes), shapes, strict=True)), strict=True))
            )

        flat0 = torch.cat([p.reshape(-1) for p in self.params.values()])
        self.h_ref = torch.func.hessian(f)(flat0).to(torch.float64)
        self.n = flat0.numel()

    def loss(self, p: Params) -> torch.Tensor:
        logits = functional_call(self.net, p, (self.x,))
        return torch.nn.functional.cross_entropy(logits, self.y)


@pytest.fixture(scope="module")
def pol() -> SmallPolicy:
    return SmallPolicy()


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


# ----- HVP --------------------------------------------------------------------------------------------


def test_hvp_matches_func_hessian(pol: SmallPolicy) -> None:
    op = HessianOperator(pol.loss, pol.params)
    assert op.n == pol.n == 386
    g = torch.Generator().manual_seed(3)
    for _ in range(3):
        v = torch.randn(op.n, generator=g)
        assert _rel(op.matvec(v).double(), pol.h_ref @ v.double()) < 1e-5
    assert op.hvp_count == 3


@pytest.mark.parametrize("chunk", [1, 50])
def test_dense_matches_func_hessian(pol: SmallPolicy, chunk: int) -> None:
    op = HessianOperator(pol.loss, pol.params, chunk_size=chunk)
    h = op.dense().double()
    assert op.hvp_count == op.n
    assert _rel(h, pol.h_ref) < 1e-5
    assert torch.equal(h, h.T)


def test_matmat_linear_operator_gradient(pol: SmallPolicy) -> None:
    op = HessianOperator(pol.loss, pol.params, chunk_size=4)
    v = torch.randn(op.n, 6, generator=torch.Generator().manual_seed(0))
    hv = op.matmat(v)
    for j in range(6):
        assert _rel(hv[:, j].double(), op.matvec(v[:, j]).double()) < 1e-6
    lin = op.as_linear_operator()
    out = lin.matvec(v[:, 0].double().numpy())
    assert out.dtype.name == "float64" and out.shape == (op.n,)
    assert _rel(torch.from_numpy(out), pol.h_ref @ v[:, 0].double()) < 1e-5
    grad_ref = torch.func.grad(pol.loss)(pol.params)
    assert torch.allclose(op.gradient(), op.flatten(grad_ref), atol=1e-7)
    round_trip = op.flatten(op.unflatten(op.gradient()))
    assert torch.equal(round_trip, op.gradient())
    assert op.unflatten(op.gradient())["0.weight"].shape == (16, 4)


def test_unused_and_linear_params_give_zero_rows() -> None:
    params = {"x": torch.tensor([1.0, 2.0]), "lin": torch.tensor([3.0]), "unused": torch.zeros(2)}
    op = HessianOperator(lambda p: (p["x"] ** 3).sum() + 5.0 * p["lin"].sum(), params)
    h = op.dense()
    expected = torch.zeros(5, 5)
    expected[0, 0], expected[1, 1] = 6.0, 12.0
    assert torch.equal(h, expected)
    assert torch.equal(op.gradient(), torch.tensor([3.0, 12.0, 5.0, 0.0, 0.0]))


def test_operator_is_a_snapshot(pol: SmallPolicy) -> None:
    params = {k: v.clone() for k, v in pol.params.items()}
    op = HessianOperator(pol.loss, params)
    v = torch.randn(op.n, generator=torch.Generator().manual_seed(9))
    before = op.matvec(v)
    for p in params.values():
        p.mul_(3.0)  # the caller moves on; the operator must keep the Hessian at the old point
    assert torch.equal(op.matvec(v), before)
    assert _rel(HessianOperator(pol.loss, params).matvec(v), before) > 1e-2


def test_probes_leave_params_grad_and_mode_untouched(pol: SmallPolicy) -> None:
    net = pol.net
    net.train()
    live = dict(net.named_parameters())  # requires_grad=True, as in a real policy
    before = {k: v.detach().clone() for k, v in live.items()}
    op = HessianOperator(pol.loss, live)
    op.matvec(torch.ones(op.n))
    op.dense()
    extreme_eigenpairs(op, 2, exact_threshold=0, seed=0)
    hutchinson_trace(op, 4, seed=0)
    slq_density(op, n_probes=1, steps=10, seed=0)
    sam_sharpness(pol.loss, live, 0.05, adaptive=True)
    pgd_sharpness(pol.loss, live, 0.05, steps=2)
    random_direction(live, "filter", seed=0)
    for k, v in live.items():
        assert v.grad is None, k
        assert torch.equal(v.detach(), before[k]), k
        assert v.requires_grad
    assert net.training


# ----- eigenpairs -------------------------------------------------------------------------------------


def test_eigsh_matches_eigvalsh_on_policy(pol: SmallPolicy) -> None:
    ref = torch.linalg.eigvalsh(pol.h_ref)
    scale = float(ref.abs().max())
    op = HessianOperator(pol.loss, pol.params)
    top, bottom = extreme_eigenpairs(op, 5, exact_threshold=0, seed=1)
    assert top.method == "eigsh" and 0 < top.hvps < op.n
    assert torch.allclose(top.values, ref.flip(0)[:5], rtol=1e-4, atol=0)
    assert torch.allclose(bottom.values, ref[:5], rtol=1e-4, atol=1e-5 * scale)
    assert top.vectors is not None
    hv = pol.h_ref @ top.vectors
    assert _rel(hv, top.vectors * top.values) < 1e-3
    exact_top = eigenpairs(op, 5, which="largest", exact_threshold=10_000)
    assert exact_top.method == "exact" and exact_top.hvps == op.n
    assert torch.allclose(exact_top.values, ref.flip(0)[:5], rtol=1e-5)


def test_quadratic_extremes_both_routes(quad: Quadratic) -> None:
    op = HessianOperator(quad.loss, quad.params)
    want_top = torch.tensor(TOP, dtype=torch.float64)
    want_bottom = torch.tensor(BOTTOM, dtype=torch.float64)
    for threshold in (0, 10_000):
        top = eigenpairs(op, 5, which="largest", exact_threshold=threshold, seed=2)
        bottom = eigenpairs(op, 5, which="smallest", exact_threshold=threshold, seed=2)
        assert torch.allclose(top.values, want_top, atol=1e-8)
        assert torch.allclose(bottom.values, want_bottom, atol=1e-8)
        assert bottom.vectors is not None
        assert torch.allclose(quad.a @ bottom.vectors, bottom.vectors * bottom.values, atol=1e-7)
    assert torch.allclose(exact_eigenvalues(op), quad.eigs, atol=1e-10)


def test_power_iteration_with_deflation(quad: Quadratic) -> None:
    op = HessianOperator(quad.loss, quad.params)
    top = power_iteration(op, 3, tol=1e-10, maxiter=3000, seed=0)
    assert torch.allclose(top.values, torch.tensor(TOP[:3], dtype=torch.float64), rtol=1e-6)
    neg = power_iteration(op, 2, tol=1e-10, maxiter=3000, shift=10.0, seed=0)
    assert torch.allclose(neg.values, torch.tensor(BOTTOM[:2], dtype=torch.float64), rtol=1e-6)


def test_bad_arguments_raise(quad: Quadratic) -> None:
    op = HessianOperator(quad.loss, quad.params)
    with pytest.raises(RlflatError):
        eigenpairs(op, 0)
    with pytest.raises(RlflatError):
        eigenpairs(op, 3, which="middle")  # type: ignore[arg-type]
    with pytest.raises(RlflatError):
        op.matvec(torch.ones(3))
    with pytest.raises(RlflatError):
        HessianOperator(quad.loss, {})
    with pytest.raises(RlflatError):
        random_direction(quad.params, "spherical", seed=0)  # type: ignore[arg-type]
    with pytest.raises(RlflatError):
        sam_sharpness(quad.loss, quad.params, -1.0)


# ----- trace ------------------------------------------------------------------------------------------


def test_hutchinson_quadratic_within_3se_and_converging(quad: Quadratic) -> None:
    op = HessianOperator(quad.loss, quad.params)
    true = float(quad.eigs.sum())
    offdiag2 = float((quad.a**2).sum() - (torch.diagonal(quad.a) ** 2).sum())
    prev_se = math.inf
    for m in (50, 200, 800):
        est = hutchinson_trace(op, m, seed=m)
        assert est.hvps == m and est.n_probes == m
        assert abs(est.estimate - true) < 3 * est.stderr
        # Rademacher probes: Var(z^T A z) = 2 sum_{i != j} A_ij^2 (Hutchinson, 1989).
        assert 0.75 < est.stderr / math.sqrt(2 * offdiag2 / m) < 1.25
        assert est.stderr < 0.6 * prev_se
        prev_se = est.stderr


def test_hutchinson_policy_within_3se(pol: SmallPolicy) -> None:
    op = HessianOperator(pol.loss, pol.params)
    est = hutchinson_trace(op, 200, seed=torch.Generator().manual_seed(5))
    true = float(torch.trace(pol.h_ref))
    assert est.stderr > 0
    assert abs(est.estimate - true) < 3 * est.stderr
    lam = float(torch.linalg.eigvalsh(pol.h_ref)[-1])
    assert lambda_max_over_trace(lam, true) == pytest.approx(lam / true)


def test_lambda_max_over_trace_is_none_without_positive_trace() -> None:
    assert lambda_max_over_trace(2.0, 8.0) == 0.25
    assert lambda_max_over_trace(0.3, -0.109) is None  # a smoke run's trace: the ratio would be -2.75
    assert lambda_max_over_trace(0.3, 0.0) is None
    eigs = torch.tensor([-3.0, -1.0, 0.0, 2.0, 4.0], dtype=torch.float64)  # trace 2, sum |lambda| 10
    assert lambda_max_over_abs_sum(eigs) == pytest.approx(0.4)
    assert lambda_max_over_abs_sum(torch.zeros(3)) is None


# ----- Lanczos and SLQ -----------------------------------------------------------------------------------


def test_lanczos_full_reorthogonalisation() -> None:
    n = 200
    eigs = torch.cat([torch.tensor([100.0, 50.0]), torch.linspace(-1.0, 1.0, n - 2)]).double()
    q = _orthogonal(n, 7)
    a = q @ torch.diag(eigs) @ q.T
    v0 = torch.randn(n, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    res = lanczos(lambda v: a @ v, v0, 120)
    basis = res.basis
    assert basis.shape == (120, n)
    assert float((basis @ basis.T - torch.eye(120, dtype=torch.float64)).abs().max()) < 1e-10
    t = torch.diag(res.alpha) + torch.diag(res.beta, 1) + torch.diag(res.beta, -1)
    assert torch.allclose(basis @ a @ basis.T, t, atol=1e-9)
    nodes, weights = res.ritz()
    assert nodes[-1] == pytest.approx(100.0, rel=1e-10) and nodes[-2] == pytest.approx(50.0, rel=1e-10)
    assert float(weights.sum()) == pytest.approx(1.0, abs=1e-12)
    # Without reorthogonalisation the basis loses orthogonality (ghost copies of 100 appear).
    plain = lanczos(lambda v: a @ v, v0, 120, reorthogonalize=False)
    assert float((plain.basis @ plain.basis.T - torch.eye(120, dtype=torch.float64)).abs().max()) > 1e-2


def test_lanczos_stops_on_invariant_subspace() -> None:
    q = _orthogonal(30, 2)
    a = q @ torch.diag(torch.tensor([3.0] * 10 + [-1.0] * 10 + [0.5] * 10, dtype=torch.float64)) @ q.T
    res = lanczos(lambda v: a @ v, torch.ones(30, dtype=torch.float64), 25)
    assert res.alpha.numel() == 3
    assert torch.allclose(res.ritz()[0], torch.tensor([-1.0, 0.5, 3.0], dtype=torch.float64), atol=1e-10)


def test_slq_density_recovers_known_spectrum(quad: Quadratic) -> None:
    op = HessianOperator(quad.loss, quad.params)
    sd = slq_density(op, n_probes=30, steps=40, grid_size=4000, seed=0)
    assert sd.hvps == 30 * 40
    assert torch.allclose(sd.weights.sum(1), torch.ones(30, dtype=torch.float64), atol=1e-10)
    mass = float(torch.trapezoid(sd.density, sd.grid))
    mean = float(torch.trapezoid(sd.grid * sd.density, sd.grid))
    second = float((sd.weights * sd.nodes**2).sum() / 30)
    assert mass == pytest.approx(1.0, abs=1e-3)
    # mean of v^T A v over normalised Rademacher v: sd = sqrt(2 sum_{i!=j} A_ij^2) / n / sqrt(m)
    offdiag2 = float((quad.a**2).sum() - (torch.diagonal(quad.a) ** 2).sum())
    se = math.sqrt(2 * offdiag2) / quad.n / math.sqrt(30)
    assert abs(mean - float(quad.eigs.mean())) < 4 * se
    assert second == pytest.approx(float((quad.eigs**2).mean()), rel=0.1)
    # extreme Ritz values converge to the extreme eigenvalues
    assert float(sd.nodes.max()) == pytest.approx(TOP[0], rel=1e-6)
    assert float(sd.nodes.min()) == pytest.approx(BOTTOM[0], rel=1e-6)
    e = quad.eigs
    true_neg = float((e < -1e-3 * e.abs().max()).double().mean())  # counted independently of the function
    assert negative_count_fraction(sd.nodes, sd.weights) == pytest.approx(true_neg, abs=0.08)
    true_abs = float(e[e < 0].abs().sum() / e.abs().sum())
    assert negative_abs_mass_fraction(sd.nodes, sd.weights) == pytest.approx(true_abs, abs=0.08)


def test_density_from_eigenvalues_is_exact(quad: Quadratic) -> None:
    sd = density_from_eigenvalues(quad.eigs, grid_size=20_000)
    assert float(torch.trapezoid(sd.density, sd.grid)) == pytest.approx(1.0, abs=1e-6)
    assert float(torch.trapezoid(sd.grid * sd.density, sd.grid)) == pytest.approx(float(quad.eigs.mean()), abs=1e-6)
    e = quad.eigs
    assert negative_count_fraction(sd.nodes, sd.weights) == pytest.approx(
        float((e < -1e-3 * e.abs().max()).double().mean())
    )


# ----- directions ------------------------------------------------------------------------------------


def test_filter_normalised_rows_match_weight_rows(pol: SmallPolicy) -> None:
    d = random_direction(pol.params, "filter", seed=3)
    for k, p in pol.params.items():
        if p.ndim == 2:
            assert torch.allclose(d[k].norm(dim=1), p.norm(dim=1), rtol=1e-5)
            assert not torch.allclose(d[k], p)
        else:
            assert torch.equal(d[k], torch.zeros_like(p))
    d2 = random_direction(pol.params, "filter", seed=3, ignore_1d=False)
    for k, p in pol.params.items():
        if p.ndim == 1:
            assert float(d2[k].norm()) == pytest.approx(float(p.norm()), rel=1e-5)
    assert all(torch.equal(d[k], d2[k]) for k in d if pol.params[k].ndim == 2)
    raw = raw_direction(pol.params, seed=3)
    manual = filter_normalize(raw, pol.params)
    assert all(torch.equal(manual[k], d[k]) for k in d)
    other = random_direction(pol.params, "filter", seed=4)
    assert not torch.equal(other["0.weight"], d["0.weight"])


def test_raw_direction_has_the_parameters_norm(pol: SmallPolicy) -> None:
    """Raw directions are isotropic, scaled to ||theta|| (an unscaled N(0, I) has norm ~sqrt(n) >> ||theta||)."""
    raw = random_direction(pol.params, "raw", seed=3)
    assert float(dict_norm(raw)) == pytest.approx(float(dict_norm(pol.params)), rel=1e-5)
    gaussian = raw_direction(pol.params, seed=3)
    ratio = float(dict_norm(pol.params)) / float(dict_norm(gaussian))
    assert all(torch.allclose(raw[k], gaussian[k] * ratio, rtol=1e-5) for k in raw)


def test_direction_streams_do_not_overlap_between_probe_seeds() -> None:
    """``seed + kind index`` gave seed 0's 'filter' stream to seed 1's 'raw'; named sub-seeds never collide."""
    streams = {subseed(seed, kind) for seed in range(50) for kind in ("raw", "filter", "layer")}
    assert len(streams) == 150
    assert subseed(0, "filter") == subseed(0, "filter")


def test_layer_normalised_and_helpers(quad: Quadratic) -> None:
    d = random_direction(quad.params, "layer", seed=0)
    for k, p in quad.params.items():
        assert float(d[k].norm()) == pytest.approx(float(p.norm()), rel=1e-10)
    z = layer_normalize(d, quad.params, ignore_1d=True)
    assert torch.equal(z["b"], torch.zeros(10, dtype=torch.float64))
    moved = add_scaled(quad.params, d, 0.5)
    diff = {k: moved[k] - quad.params[k] for k in moved}
    assert float(dict_norm(diff)) == pytest.approx(0.5 * float(dict_norm(d)), rel=1e-10)
    flat = Quadratic.flat
    assert float(dict_dot(d, quad.params)) == pytest.approx(float(flat(d) @ flat(quad.params)), rel=1e-12)


# ----- worst case -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("adaptive", [False, True])
def test_rho_zero_gives_zero_sharpness(quad: Quadratic, adaptive: bool) -> None:
    for res in (
        sam_sharpness(quad.loss, quad.params, 0.0, adaptive=adaptive),
        pgd_sharpness(quad.loss, quad.params, 0.0, steps=3, adaptive=adaptive),
    ):
        assert res.sharpness == 0.0 and res.eps_norm == 0.0


@pytest.mark.parametrize("adaptive", [False, True])
def test_one_step_sam_matches_closed_form(quad: Quadratic, adaptive: bool) -> None:
    rho, eta = 0.3, 0.05
    x = Quadratic.flat(quad.params)
    g = quad.a @ x + quad.c
    t = x.abs() + eta if adaptive else torch.ones_like(x)
    eps = rho * t**2 * g / (t * g).norm()
    want = float(g @ eps + 0.5 * eps @ (quad.a @ eps))
    res = sam_sharpness(quad.loss, quad.params, rho, adaptive=adaptive, eta=eta)
    assert res.sharpness == pytest.approx(want, rel=1e-9)
    assert res.eps_norm == pytest.approx(float(eps.norm()), rel=1e-12)
    assert res.scaled_norm == pytest.approx(rho, rel=1e-12)
    assert torch.allclose(Quadratic.flat(res.perturbation), eps, atol=1e-14)


@pytest.mark.parametrize("adaptive", [False, True])
def test_multi_step_never_below_one_step(quad: Quadratic, pol: SmallPolicy, adaptive: bool) -> None:
    lam_max = float(quad.eigs.max())
    for rho in (0.05, 0.5, 2.0):
        one = sam_sharpness(quad.loss, quad.params, rho, adaptive=adaptive)
        multi = pgd_sharpness(quad.loss, quad.params, rho, steps=20, adaptive=adaptive)
        assert multi.sharpness >= one.sharpness
        assert multi.scaled_norm <= rho * (1 + 1e-12)
        assert multi.grad_evals == 21
        if not adaptive:  # upper bound on the ball: rho ||g|| + rho^2 lambda_max / 2
            g = quad.a @ Quadratic.flat(quad.params) + quad.c
            assert multi.sharpness <= rho * float(g.norm()) + 0.5 * rho**2 * lam_max + 1e-9
    # on a strongly curved quadratic with a large ball, ascent strictly improves on one step
    big = pgd_sharpness(quad.loss, quad.params, 2.0, steps=30, adaptive=adaptive)
    assert big.sharpness > sam_sharpness(quad.loss, quad.params, 2.0, adaptive=adaptive).sharpness * 1.01
    pol_one = sam_sharpness(pol.loss, pol.params, 0.1, adaptive=adaptive)
    pol_multi = pgd_sharpness(pol.loss, pol.params, 0.1, steps=5, adaptive=adaptive)
    assert pol_multi.sharpness >= pol_one.sharpness > 0


def test_multi_step_returns_best_iterate_on_rugged_loss() -> None:
    """With steps as long as the ball, ascent on sin() overshoots; the best iterate must be kept."""
    params = {"x": torch.randn(8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)}

    def loss(p: Params) -> torch.Tensor:
        return torch.sin(3 * p["x"]).sum()

    one = sam_sharpness(loss, params, 2.0)
    for steps, step_size in itertools.product((2, 3, 5, 8), (1.0, 4.0)):
        res = pgd_sharpness(loss, params, 2.0, steps=steps, step_size=step_size)
        assert res.sharpness >= one.sharpness
        moved = float(loss(add_scaled(params, res.perturbation, 1.0)))
        assert res.perturbed_loss == pytest.approx(moved, rel=1e-12)
        assert res.sharpness == pytest.approx(moved - float(loss(params)), rel=1e-12)


def test_one_step_after_a_vanishing_gradient_follows_curvature(quad: Quadratic) -> None:
    """At a stationary point the SAM direction g / ||g|| is noise: the one-step search must use curvature."""
    x_star = torch.linalg.solve(quad.a, -quad.c)  # the quadratic's stationary point (a saddle)
    at_star = {"w": x_star[:50].reshape(5, 10).clone(), "b": x_star[50:].clone()}
    rho = 0.1
    eigs, vecs = torch.linalg.eigh(quad.a)
    top = {"w": vecs[:50, -1].reshape(5, 10), "b": vecs[50:, -1]}
    along = sam_sharpness(quad.loss, at_star, rho, direction=top)
    assert along.start == "eigenvector"
    assert along.sharpness == pytest.approx(0.5 * rho**2 * float(eigs[-1]), rel=1e-6)  # the ball's exact maximum
    lazy = sam_sharpness(quad.loss, at_star, rho, direction=lambda: top)
    assert lazy.sharpness == along.sharpness
    rand = sam_sharpness(quad.loss, at_star, rho, seed=0)
    assert rand.start == "random" and rand.grad_evals == 2
    assert rand.sharpness > 0.2 * along.sharpness
    multi = pgd_sharpness(quad.loss, at_star, rho, steps=30, seed=0)
    assert multi.sharpness >= rand.sharpness and multi.sharpness > 0.9 * along.sharpness
    # a real gradient keeps the plain SAM step
    assert sam_sharpness(quad.loss, quad.params, rho, direction=top).start == "gradient"


def test_return_halving_sigma_with_zero_sigma_and_negative_returns() -> None:
    sigmas = [0.0, 0.1, 1.0]
    # a grid that starts at sigma = 0 (allowed by average_case): linear interpolation on the first segment
    assert return_halving_sigma(sigmas, [500.0, 100.0, 10.0], 500.0) == pytest.approx(0.0625)
    assert return_halving_sigma(sigmas, [500.0, 400.0, 100.0], 500.0) == pytest.approx(10**-0.5)  # log-midpoint
    # Pendulum-like: nominal -200, floor -1600; half way is -900, not 0.5 * -200 = -100 (better than nominal)
    assert return_halving_sigma(sigmas, [-200.0, -150.0, -1000.0], -200.0, floor=-1600.0) == pytest.approx(
        10 ** (-1 + 750 / 850)  # -150 -> -1000 crosses -900 at 750 / 850 of the way, in log sigma
    )
    assert return_halving_sigma(sigmas, [-200.0, -300.0, -800.0], -200.0, floor=-1600.0) is None
    assert return_halving_sigma(sigmas, [-200.0, -300.0, -800.0], -200.0, floor=None) is None  # cannot normalise
    with pytest.raises(RlflatError):
        return_halving_sigma([0.1, 0.1], [1.0, 1.0], 1.0)


# ----- every spectrum route keeps the Eigenpairs contract ----------------------------------------------------


def _routes(op: HessianOperator) -> dict[str, tuple[object, list[float]]]:
    """Route name -> (a call returning Eigenpairs or a (largest, smallest) pair, the eigenvalues it must find)."""
    return {
        "exact largest": (lambda: eigenpairs(op, 3, which="largest"), TOP[:3]),
        "exact smallest": (lambda: eigenpairs(op, 3, which="smallest"), BOTTOM[:3]),
        "eigsh largest": (lambda: eigenpairs(op, 3, which="largest", exact_threshold=0, seed=4), TOP[:3]),
        "eigsh smallest": (lambda: eigenpairs(op, 3, which="smallest", exact_threshold=0, seed=4), BOTTOM[:3]),
        "extreme exact": (lambda: extreme_eigenpairs(op, 3), TOP[:3] + BOTTOM[:3]),
        "extreme eigsh": (lambda: extreme_eigenpairs(op, 3, exact_threshold=0, seed=4), TOP[:3] + BOTTOM[:3]),
        "power": (lambda: power_iteration(op, 3, tol=1e-12, maxiter=5000, seed=4), TOP[:3]),
        "power shifted": (lambda: power_iteration(op, 2, tol=1e-12, maxiter=5000, shift=10.0, seed=4), BOTTOM[:2]),
    }


ROUTES = ["exact largest", "exact smallest", "eigsh largest", "eigsh smallest", "extreme exact", "extreme eigsh",
          "power", "power shifted"]  # fmt: skip


@pytest.mark.parametrize("route", ROUTES)
def test_every_spectrum_route_returns_unit_eigenvectors_its_label_and_its_cost(quad: Quadratic, route: str) -> None:
    """Values most extreme first, (n, k) float64 unit columns with H v = lambda v, the route's method label, and
    hvps equal to the products the operator counted (the exact route's shared dense build on the first result)."""
    op = HessianOperator(quad.loss, quad.params)
    routes = _routes(op)
    assert sorted(routes) == sorted(ROUTES)
    call, want = routes[route]
    before = op.hvp_count
    out = call()  # type: ignore[operator]
    spent = op.hvp_count - before
    pairs = list(out) if isinstance(out, tuple) else [out]
    label = {"exact": "exact", "eigsh": "eigsh", "extreme": None, "power": "power"}[route.split()[0]]
    label = label or route.split()[1]
    got = torch.cat([p.values for p in pairs])
    torch.testing.assert_close(got, torch.tensor(want, dtype=torch.float64), rtol=0, atol=1e-7)
    for p in pairs:
        assert p.method == label and p.values.dtype == torch.float64
        assert p.vectors is not None and p.vectors.shape == (quad.n, p.values.numel())
        torch.testing.assert_close(p.vectors.norm(dim=0), torch.ones(p.values.numel(), dtype=torch.float64))
        torch.testing.assert_close(quad.a @ p.vectors, p.vectors * p.values, rtol=0, atol=1e-5)
    assert sum(p.hvps for p in pairs) == spent
    if route == "extreme exact":
        assert (pairs[0].hvps, pairs[1].hvps) == (quad.n, 0)
    elif len(pairs) == 2:
        assert pairs[0].hvps > 0 and pairs[1].hvps > 0


def test_seeded_spectrum_routes_repeat_bit_for_bit(quad: Quadratic) -> None:
    op = HessianOperator(quad.loss, quad.params)
    for call in (
        lambda s: power_iteration(op, 2, tol=1e-3, seed=s),
        lambda s: eigenpairs(op, 2, exact_threshold=0, seed=s),
    ):
        a, b, other = call(7), call(7), call(8)
        assert torch.equal(a.values, b.values) and a.vectors is not None and b.vectors is not None
        assert torch.equal(a.vectors, b.vectors) and a.hvps == b.hvps
        assert other.vectors is not None and not torch.equal(a.vectors, other.vectors)  # the seed is used


def test_power_iteration_spends_maxiter_products_per_vector_when_never_converged(quad: Quadratic) -> None:
    """tol = 0 never counts as converged, so each vector costs exactly maxiter products (default 1000)."""
    op = HessianOperator(quad.loss, quad.params)
    assert power_iteration(op, 2, tol=0.0, maxiter=7).hvps == 14
    assert power_iteration(op, 1, tol=0.0).hvps == 1000
    assert power_iteration(op, 1, tol=1e-3).hvps < 1000


def test_eigsh_default_tolerance_follows_the_operator_s_precision(pol: SmallPolicy, quad: Quadratic) -> None:
    """1e-5 for float32 products (above their round-off), 1e-8 for float64: the default is exactly that value."""
    op32 = HessianOperator(pol.loss, pol.params)
    assert op32.dtype == torch.float32
    default = eigenpairs(op32, 5, which="smallest", exact_threshold=0, seed=1)
    assert default.hvps == eigenpairs(op32, 5, which="smallest", exact_threshold=0, seed=1, tol=1e-5).hvps
    assert default.hvps != eigenpairs(op32, 5, which="smallest", exact_threshold=0, seed=1, tol=1e-8).hvps
    op64 = HessianOperator(quad.loss, quad.params)
    d64 = eigenpairs(op64, 4, which="smallest", exact_threshold=0, seed=1)
    assert torch.equal(d64.values, eigenpairs(op64, 4, which="smallest", exact_threshold=0, seed=1, tol=1e-8).values)


def test_density_of_one_eigenvalue_and_refusal_of_none() -> None:
    one = density_from_eigenvalues(torch.tensor([2.0]), grid_size=101)
    assert one.nodes.shape == (1, 1) and float(one.weights.sum()) == 1.0
    assert float(one.grid[torch.argmax(one.density)]) == pytest.approx(2.0, abs=4 * one.sigma)
    for bad in (torch.tensor([]), torch.ones(2, 2)):
        with pytest.raises(RlflatError, match="^eigenvalues must be a non-empty 1-D tensor$"):
            density_from_eigenvalues(bad)


def test_hutchinson_is_exact_on_a_diagonal_hessian_and_keeps_float64() -> None:
    """z^T D z = tr(D) for every Rademacher z: each sample is the trace, so the estimate equals sum(d) to float64
    round-off (a float32 store would miss by ~1e-7 relative) and the standard error is 0."""
    d = torch.linspace(0.3, 7.1, 37, dtype=torch.float64) * torch.tensor([1.0, -1.0]).repeat(19)[:37]
    params = {"a": torch.zeros(20, dtype=torch.float64), "b": torch.zeros(17, dtype=torch.float64)}

    def loss(p: Params) -> torch.Tensor:
        x = torch.cat([p["a"], p["b"]])
        return 0.5 * (d * x * x).sum()

    op = HessianOperator(loss, params)
    est = hutchinson_trace(op, 5, seed=3)
    assert est.estimate == pytest.approx(float(d.sum()), rel=1e-13) and est.stderr == 0.0
    assert (est.n_probes, est.hvps) == (5, 5)
    with pytest.raises(RlflatError, match="^n_probes must be >= 2 to give a standard error; got 1$"):
        hutchinson_trace(op, 1)


def test_negative_mass_fraction_by_hand() -> None:
    nodes, ones = torch.tensor([-0.25, 0.75]), torch.ones(2)
    assert negative_abs_mass_fraction(nodes, ones) == pytest.approx(0.25)  # total |lambda| happens to be 1
    assert negative_abs_mass_fraction(torch.tensor([-1.0, 2.0, -3.0]), torch.tensor([0.5, 0.25, 0.25])) == (
        pytest.approx((0.5 + 0.75) / (0.5 + 0.5 + 0.75)))  # fmt: skip
    assert negative_abs_mass_fraction(torch.zeros(3), torch.ones(3)) is None


def test_extreme_pairs_without_vectors_charge_the_dense_build_once(quad: Quadratic) -> None:
    op = HessianOperator(quad.loss, quad.params)
    top, bottom = extreme_eigenpairs(op, 2, vectors=False)
    assert (top.hvps, bottom.hvps) == (quad.n, 0) and top.vectors is None and bottom.vectors is None
    torch.testing.assert_close(torch.cat([top.values, bottom.values]), torch.tensor(TOP[:2] + BOTTOM[:2],
                               dtype=torch.float64), rtol=0, atol=1e-10)  # fmt: skip


def test_spectrum_refusals_say_what_to_change(quad: Quadratic) -> None:
    op = HessianOperator(quad.loss, quad.params)
    with pytest.raises(RlflatError, match=r"^unknown which 'middle'; valid choices: largest, smallest$"):
        eigenpairs(op, 3, which="middle")  # type: ignore[arg-type]
    with pytest.raises(RlflatError, match=r"^eigsh did not converge for k=5 largest \(tol=1e-12, maxiter=1\); "
                       r"raise maxiter or tol, or use the exact route$"):  # fmt: skip
        eigenpairs(op, 5, exact_threshold=0, tol=1e-12, maxiter=1)


def test_density_is_the_gaussian_mixture_of_its_nodes() -> None:
    """phi(t) = mean_i N(t; lambda_i, sigma) on [min - 8 sigma, max + 8 sigma] (scipy's normal pdf), for more
    nodes than one chunk of the kernel sum, with a given sigma and with the default sigma^2 = 1e-5 x half-range^2."""
    from scipy import stats as sps

    eigs = torch.from_numpy(np.random.default_rng(5).gamma(2.0, 1.0, 300) - 1.5)
    for sigma in (0.05, None):
        d = density_from_eigenvalues(eigs, grid_size=501, sigma=sigma)
        want_sigma = 0.05 if sigma else math.sqrt(1e-5) * 0.5 * float(eigs.max() - eigs.min())
        assert d.sigma == pytest.approx(want_sigma, rel=1e-12)
        assert float(d.grid[0]) == pytest.approx(float(eigs.min()) - 8 * want_sigma)
        assert float(d.grid[-1]) == pytest.approx(float(eigs.max()) + 8 * want_sigma)
        want = sps.norm.pdf(d.grid.numpy()[:, None], eigs.numpy()[None], want_sigma).mean(1)
        np.testing.assert_allclose(d.density.numpy(), want, rtol=1e-10, atol=1e-12)
        assert d.hvps == 0 and torch.equal(d.weights, torch.full((1, 300), 1 / 300, dtype=torch.float64))


def test_lanczos_quadrature_reproduces_the_start_vector_s_moments(quad: Quadratic) -> None:
    """s steps of Lanczos give a Gauss rule exact to degree 2s - 1: sum_j w_j theta_j^k = q^T H^k q."""
    v0 = torch.from_numpy(np.random.default_rng(2).normal(size=quad.n))
    q = v0 / v0.norm()
    res = lanczos(lambda v: quad.a @ v, v0, 6)
    nodes, weights = res.ritz()
    assert nodes.shape == weights.shape == (6,) and float(weights.sum()) == pytest.approx(1.0, rel=1e-12)
    hk_q = q.clone()
    for k in range(12):
        assert float((weights * nodes**k).sum()) == pytest.approx(float(q @ hk_q), rel=1e-8, abs=1e-10), k
        hk_q = quad.a @ hk_q
    torch.testing.assert_close(res.basis @ res.basis.T, torch.eye(6, dtype=torch.float64), rtol=0, atol=1e-12)


def test_slq_first_moment_is_hutchinson_with_the_same_probes(quad: Quadratic) -> None:
    """Each SLQ probe is a normalised Rademacher z drawn as Hutchinson draws it, so n sum_j w_j theta_j = z^T H z:
    averaged over probes, exactly the Hutchinson estimate with the same seed."""
    op = HessianOperator(quad.loss, quad.params)
    sd = slq_density(op, n_probes=5, steps=8, grid_size=50, seed=9)
    assert sd.hvps == 5 * 8 and sd.nodes.shape == sd.weights.shape == (5, 8)
    torch.testing.assert_close(sd.weights.sum(1), torch.ones(5, dtype=torch.float64))
    per_probe = quad.n * (sd.weights * sd.nodes).sum(1)
    assert float(per_probe.mean()) == pytest.approx(hutchinson_trace(op, 5, seed=9).estimate, rel=1e-10)


def test_extreme_pairs_solve_float32_hessians_in_float64(pol: SmallPolicy) -> None:
    """The dense route casts the float32 Hessian to float64 before the solve, as eigenpairs() does: both give the
    same numbers to float64 round-off (a float32 solve would differ at ~1e-6)."""
    op = HessianOperator(pol.loss, pol.params)
    top, bottom = extreme_eigenpairs(op, 3)
    torch.testing.assert_close(top.values, eigenpairs(op, 3).values, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(bottom.values, eigenpairs(op, 3, which="smallest").values, rtol=1e-12, atol=1e-14)
    assert top.values.dtype == bottom.values.dtype == torch.float64


def test_power_iteration_on_a_zero_hessian_returns_zero_eigenvalues() -> None:
    """A linear loss has H = 0: the first product is the zero vector and iteration stops with lambda = 0."""
    params = {"w": torch.ones(3, dtype=torch.float64), "b": torch.ones(2, dtype=torch.float64)}
    op = HessianOperator(lambda p: 2.0 * p["w"].sum() - p["b"].sum(), params)
    out = power_iteration(op, 2, seed=1)
    assert out.method == "power" and out.values.tolist() == [0.0, 0.0] and out.hvps == 2
    assert out.vectors is not None and out.vectors.shape == (5, 2)


def test_layer_normalize_keeps_one_d_tensors_by_default() -> None:
    params = {"w": torch.full((2, 2), 3.0), "b": torch.tensor([3.0, 4.0])}
    direction = {"w": torch.ones(2, 2), "b": torch.tensor([1.0, 0.0])}
    out = layer_normalize(direction, params)
    assert out["b"].tolist() == [5.0, 0.0] and torch.allclose(out["w"], torch.full((2, 2), 3.0))
    assert layer_normalize(direction, params, ignore_1d=True)["b"].tolist() == [0.0, 0.0]


def test_route_choice_at_its_boundaries_and_without_vectors(quad: Quadratic) -> None:
    """n <= exact_threshold and k >= n take the dense route (eigsh cannot give k = n pairs); without vectors the
    dense route still labels itself and orders values most extreme first; eigsh passes ncv on."""
    op = HessianOperator(quad.loss, quad.params)
    n = quad.n
    assert eigenpairs(op, 2, exact_threshold=n).method == "exact"
    assert extreme_eigenpairs(op, 2, exact_threshold=n)[0].method == "exact"
    everything = eigenpairs(op, n, exact_threshold=0, vectors=False)
    assert everything.method == "exact" and torch.allclose(everything.values, quad.eigs.flip(0), atol=1e-9)
    both = extreme_eigenpairs(op, n, exact_threshold=0, vectors=False)
    assert both[0].method == both[1].method == "exact"
    for which, want in (("largest", TOP[:3]), ("smallest", BOTTOM[:3])):
        out = eigenpairs(op, 3, which=which, vectors=False)  # type: ignore[arg-type]
        assert out.method == "exact" and out.vectors is None
        torch.testing.assert_close(out.values, torch.tensor(want, dtype=torch.float64), rtol=0, atol=1e-9)
    narrow = eigenpairs(op, 2, exact_threshold=0, ncv=5, seed=1)
    assert narrow.hvps != eigenpairs(op, 2, exact_threshold=0, seed=1).hvps  # default ncv is 20 here
    torch.testing.assert_close(narrow.values, torch.tensor(TOP[:2], dtype=torch.float64), rtol=0, atol=1e-7)


def test_exact_eigenvalues_of_a_float32_hessian_are_solved_in_float64(pol: SmallPolicy) -> None:
    op = HessianOperator(pol.loss, pol.params)
    want = torch.linalg.eigvalsh(op.dense().to(torch.float64))
    torch.testing.assert_close(exact_eigenvalues(op), want, rtol=0, atol=1e-14)


def test_negative_fraction_with_a_unit_scale() -> None:
    assert negative_count_fraction(torch.tensor([-1.0, 0.5]), torch.ones(2)) == 0.5
    assert negative_count_fraction(torch.zeros(2), torch.ones(2)) is None
