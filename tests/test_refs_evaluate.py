"""Robustness metrics against independent computations (scipy's trapezoid and root finder, scipy.stats' t
interval), on non-uniform, asymmetric grids and on the committed study's real robustness tables."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import integrate, optimize, stats

from rlflat.evaluate import collapse_point, robust_auc, robustness_block
from rlflat.evaluate.metrics import Collapse
from rlflat.evaluate.rollout import episodes_ci
from rlflat.policy import FunctionalPolicy, load_policy
from rlflat.tasks import load_task

REPO = Path(__file__).resolve().parents[1]
REAL_TABLES = sorted((REPO / "results" / "cartpole_sam").glob("*/robustness.parquet"))


def _scipy_auc(factors: list[float], values: list[float], log: bool = True) -> float:
    """Mean of the piecewise-linear curve over its range: scipy's trapezoid over (log-)factor / the width."""
    pairs = sorted((math.log(f) if log else f, v) for f, v in zip(factors, values, strict=True) if not math.isnan(v))
    x, y = np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs])
    return float(integrate.trapezoid(y, x) / (x[-1] - x[0]))


def _brentq_collapse(factors: list[float], values: list[float], frac: float, side: str) -> float | None:
    """First crossing below ``frac`` walking outward from factor 1 on one side, by root finding on the
    piecewise-linear interpolant in log-factor (np.interp + scipy.optimize.brentq)."""
    pairs = sorted((math.log(f), v) for f, v in zip(factors, values, strict=True))
    if side == "low":
        pairs = [(-x, v) for x, v in reversed(pairs)]
    pairs = [(x, v) for x, v in pairs if x >= -1e-12]
    x, y = np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs])
    for i in range(1, len(x)):
        if y[i] < frac:
            root = optimize.brentq(lambda t: np.interp(t, x, y) - frac, x[i - 1], x[i], xtol=1e-14)
            return math.exp(root if side == "high" else -root)
    return None


# -- robust AUC -----------------------------------------------------------------------------------------------


def test_robust_auc_on_a_nonuniform_asymmetric_grid_matches_scipy() -> None:
    """Unsorted, unequally spaced, more points below 1 than above, a NaN point: one value, scipy's."""
    factors = [2.5, 0.3, 1.0, 4.0, 0.55, 1.2, 0.8, 0.42]
    values = [0.4, 0.1, 1.0, 0.05, 0.7, 0.95, math.nan, 0.3]
    expected = _scipy_auc(factors, values)
    assert robust_auc(factors, values) == pytest.approx(expected, rel=1e-12)
    # the same curve on a linear axis differs (the log axis is what is integrated)
    assert abs(_scipy_auc(factors, values, log=False) - expected) > 0.01
    levels, noisy = [0.5, 0.0, 0.05, 0.3], [0.2, 1.0, 0.9, 0.6]
    assert robust_auc(levels, noisy, log=False) == pytest.approx(_scipy_auc(levels, noisy, log=False), rel=1e-12)


def test_robust_auc_degenerate_curves() -> None:
    assert robust_auc([0.5, 2.0], [math.nan, 0.7]) == 0.7  # one point left: its value
    assert math.isnan(robust_auc([0.5, 2.0], [math.nan, math.nan]))


@pytest.mark.skipif(not REAL_TABLES, reason="the committed reference study is not present")
def test_metrics_of_real_robustness_tables_match_scipy() -> None:
    """Every sweep of the committed study's tables: AUC (scipy trapezoid), collapse sides (brentq), CIs (t)."""
    task = load_task("CartPole")
    checked_collapses = 0
    for path in REAL_TABLES[:6]:
        table = pd.read_parquet(path)
        block = robustness_block(table, task, collapse_frac=0.5)
        sweeps = [f for f in table["family"].unique() if f not in ("nominal", "random") and ":" not in f]
        assert set(block["parameters"]) == set(sweeps)
        aucs = [_scipy_auc(*(table.loc[table["family"] == f, c].tolist() for c in ("factor", "normalized_return")))
                for f in sweeps]  # fmt: skip
        assert block["auc_mean"] == pytest.approx(float(np.mean(aucs)), rel=1e-12)
        assert block["collapse_frac"] == 0.5 and "nearest" in block["collapse_side"]
        assert block["deterministic"] is table.attrs["deterministic"] and block["seed"] == table.attrs["seed"]
        assert block["episodes"] == table.attrs["episodes"] == len(table["returns"].iloc[0])
        nominal_returns = np.asarray(table.loc[table["family"] == "nominal", "returns"].iloc[0], dtype=float)
        assert block["nominal_return_se"] == pytest.approx(stats.sem(nominal_returns), rel=1e-12, abs=1e-12)
        worst = table.loc[table["return_mean"].idxmin()]
        assert block["worst_return"] == float(worst["return_mean"])
        assert block["worst_setting"]["family"] == worst["family"]
        grid_families = sorted(f for f in table["family"].unique() if ":" in f)
        assert sorted(block.get("grids", {})) == grid_families
        for family in sweeps:
            rows = table[table["family"] == family]
            factors, values = rows["factor"].tolist(), rows["normalized_return"].tolist()
            curve = block["parameters"][family]
            assert curve["auc"] == pytest.approx(_scipy_auc(factors, values), rel=1e-12, abs=1e-12)
            for side in ("low", "high"):
                expected = _brentq_collapse(factors, values, 0.5, side)
                got = curve[f"collapse_{side}"]
                assert (got is None) == (expected is None), (path.parent.name, family, side)
                if expected is not None:
                    assert got == pytest.approx(expected, rel=1e-9)
                    checked_collapses += 1
        returns = np.array(table["returns"].tolist())
        low, high = episodes_ci(returns)
        for i, sample in enumerate(returns):
            sem = stats.sem(sample)
            ref = (sample.mean(), sample.mean()) if sem == 0 else stats.t.interval(0.95, len(sample) - 1,
                                                                                  sample.mean(), sem)  # fmt: skip
            assert (low[i], high[i]) == pytest.approx(ref, rel=1e-10, abs=1e-9)
    assert checked_collapses > 0  # the tables do contain collapses, so the comparison was made


# -- collapse point: the threshold itself -------------------------------------------------------------------


def test_a_point_exactly_at_the_threshold_is_not_a_collapse() -> None:
    """Collapse means strictly below ``collapse_frac``: touching it and recovering is not one."""
    touch = collapse_point([0.25, 0.5, 1.0, 2.0, 4.0], [0.9, 0.5, 1.0, 0.5, 0.8], 0.5)
    assert touch == Collapse(low=None, high=None)
    # at the threshold, then below: the crossing is the point at the threshold, on both sides
    through = collapse_point([0.2, 0.6, 1.0, 1.5, 3.0], [0.1, 0.5, 1.0, 0.5, 0.3], 0.5)
    assert through.low == pytest.approx(0.6, rel=1e-12) and through.high == pytest.approx(1.5, rel=1e-12)
    # collapse_frac = 1: a flat stretch at exactly the nominal level is not a collapse
    flat = collapse_point([1.0, 2.0, 4.0], [1.0, 1.0, 0.99], 1.0)
    assert flat.high == pytest.approx(2.0, rel=1e-12) and flat.low is None


def test_collapse_sides_on_an_asymmetric_grid_match_root_finding() -> None:
    factors = [0.15, 0.4, 0.7, 1.0, 1.3, 2.2, 5.0]
    values = [0.05, 0.45, 0.85, 1.0, 0.75, 0.62, 0.2]
    for frac in (0.3, 0.5, 0.7):
        got = collapse_point(factors, values, frac)
        for side in ("low", "high"):
            expected = _brentq_collapse(factors, values, frac, side)
            assert getattr(got, side) == pytest.approx(expected, rel=1e-9), (frac, side)
    both = collapse_point(factors, values, 0.5)
    # the nearer side in |log factor| is the reported factor, whichever side it is on
    nearer = min((both.low, both.high), key=lambda f: abs(math.log(f)))  # type: ignore[arg-type]
    assert both.factor == nearer and both.log_distance == pytest.approx(abs(math.log(nearer)))


def test_curves_of_different_lengths_are_refused() -> None:
    with pytest.raises(ValueError, match="zip"):
        collapse_point([0.5, 1.0, 2.0], [0.4, 1.0])
    with pytest.raises(ValueError, match="zip"):
        robust_auc([0.5, 1.0, 2.0], [0.4, 1.0])


def test_collapse_factor_tie_goes_to_the_low_side() -> None:
    assert Collapse(low=0.5, high=2.0).factor == 0.5
    assert Collapse(low=None, high=3.0).factor == 3.0 and Collapse(low=0.2, high=None).factor == 0.2
    assert Collapse(low=None, high=None).log_distance is None


def test_noise_levels_collapse_on_a_linear_axis() -> None:
    got = collapse_point([0.0, 0.1, 0.4, 0.8], [1.0, 0.8, 0.4, 0.1], 0.5, log=False)
    assert got.low is None and got.high == pytest.approx(0.1 + (0.8 - 0.5) / (0.8 - 0.4) * 0.3, rel=1e-12)


# -- return confidence intervals ------------------------------------------------------------------------------


@pytest.mark.parametrize(("level", "n"), [(0.95, 9), (0.8, 9), (0.95, 2)])
def test_return_cis_match_scipy_t_interval(level: float, n: int) -> None:
    """From two episodes on (one degree of freedom), as scipy's t interval."""
    rng = np.random.default_rng(7)
    returns = np.stack([rng.normal(100, 30, n), rng.exponential(50, n), rng.normal(-40, 2, n)])
    low, high = episodes_ci(returns, level)
    for i, sample in enumerate(returns):
        ref = stats.t.interval(level, len(sample) - 1, loc=sample.mean(), scale=stats.sem(sample))
        assert (low[i], high[i]) == pytest.approx(ref, rel=1e-12)
    single_low, single_high = episodes_ci(returns[:, :1])
    assert np.isnan(single_low).all() and np.isnan(single_high).all()


def test_rollout_stats_count_the_steps_the_returns_imply(tmp_path: Path) -> None:
    """CartPole pays 1 per step, so each return is its episode's length: the batched loop runs max(length) steps
    and simulates sum(length) env steps over rows = settings x episodes."""
    from stable_baselines3 import PPO

    from rlflat.evaluate import rollout_returns
    from rlflat.policy import load_policy
    from rlflat.tasks import make_env

    task = load_task("CartPole")
    PPO("MlpPolicy", make_env(task), seed=3, policy_kwargs={"net_arch": [8]}).save(tmp_path / "m.zip")
    stats: dict[str, int] = {}
    returns = rollout_returns(load_policy(tmp_path / "m.zip"), task, [{}, {"length": 0.3}], 5, stats=stats)
    assert np.ptp(returns) > 0  # episodes of different lengths
    assert stats == {"rows": 10, "steps": int(returns.max()), "env_steps": int(returns.sum())}


@pytest.fixture(scope="module")
def cartpole_policy(tmp_path_factory: pytest.TempPathFactory) -> FunctionalPolicy:
    from stable_baselines3 import PPO

    from rlflat.tasks import make_env

    path = tmp_path_factory.mktemp("policy") / "model.zip"
    PPO("MlpPolicy", make_env(load_task("CartPole")), seed=0, policy_kwargs={"net_arch": [8]}).save(path)
    return load_policy(path)


def test_gym_rows_in_passes_return_what_one_pass_returns(
    cartpole_policy: FunctionalPolicy, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CartPole through the Gymnasium fallback (``backend="gym"``), first in one pass, then two settings a pass:
    common random numbers make the split invisible (discrete actions: exactly)."""
    from rlflat.evaluate import budget, rollout_returns

    task = load_task("CartPole")
    policy = cartpole_policy
    settings = [{"length": task.parameters["length"].nominal * f} for f in (0.5, 0.7, 1.0, 1.6, 2.0)]
    kwargs = {"episodes": 3, "seed": 1, "action_noise": 0.3, "rng_seed": 5, "backend": "gym", "workers": 1}
    whole_stats: dict[str, int] = {}
    whole = rollout_returns(policy, task, settings, stats=whole_stats, **kwargs)  # type: ignore[arg-type]
    monkeypatch.setattr(budget, "gym_pass_rows", lambda rows_per_setting: 2 * rows_per_setting)
    split_stats: dict[str, int] = {}
    split = rollout_returns(policy, task, settings, stats=split_stats, **kwargs)  # type: ignore[arg-type]
    np.testing.assert_array_equal(split, whole)
    assert split.shape == (1, 5, 3) and len({tuple(r) for r in split[0]}) > 1
    assert split_stats["rows"] == whole_stats["rows"] == 15 and split_stats["env_steps"] == whole_stats["env_steps"]


def test_standard_error_of_two_returns_is_half_their_distance() -> None:
    from rlflat.evaluate.metrics import _standard_error

    assert _standard_error([1.0, 3.0]) == pytest.approx(1.0)  # sd sqrt(2), / sqrt(2)
    assert _standard_error([4.0]) is None and _standard_error(None) is None


def test_an_undefined_normalisation_gives_nan_of_the_input_s_shape() -> None:
    from rlflat.evaluate.metrics import Normalization

    scale = Normalization(mode="task", zero=10.0, one=30.0, source="test")
    np.testing.assert_allclose(scale.apply(np.array([[10.0, 20.0], [30.0, 40.0]])), [[0.0, 0.5], [1.0, 1.5]])
    for broken in (Normalization("task", None, 30.0, "t"), Normalization("task", 30.0, 30.0, "t")):
        out = broken.apply(np.ones((2, 3)))
        assert out.shape == (2, 3) and np.isnan(out).all()


# -- edges of the robustness block and the rollout loop -----------------------------------------------------------


def test_a_table_with_only_the_nominal_row_is_its_own_worst_case() -> None:
    table = pd.read_parquet(REAL_TABLES[0])
    nominal = table[table["family"] == "nominal"].copy()
    nominal.attrs = table.attrs
    block = robustness_block(nominal, load_task("CartPole"))
    own = float(nominal["return_mean"].iloc[0])
    assert block["worst_return"] == block["worst_dynamics_return"] == block["nominal_return"] == own
    assert block["worst_setting"] == {"family": "nominal"}
    assert (block["n_settings"], block["collapsed_fraction"], block["auc_mean"]) == (0, 0.0, None)
    assert block["parameters"] == {}


def test_return_floor_of_a_task_without_a_known_floor() -> None:
    """Unknown tasks: floor 0 when the nominal return is positive (ratios then mean something), else none."""
    from rlflat.evaluate.metrics import RETURN_FLOORS, return_floor

    task = load_task("CartPole").model_copy(update={"id": "Unlisted-v0"})
    assert task.id not in RETURN_FLOORS
    assert return_floor(task, 12.5) == 0.0
    assert return_floor(task, -3.0) is None and return_floor(task, 0.0) is None
    assert return_floor(load_task("Acrobot"), 12.5) == RETURN_FLOORS["Acrobot-v1"]


def test_discrete_action_noise_is_a_probability_up_to_and_including_1(cartpole_policy: FunctionalPolicy) -> None:
    from rlflat.errors import RlflatError
    from rlflat.evaluate.rollout import rollout_returns

    task = load_task("CartPole")
    always_random = rollout_returns(cartpole_policy, task, [{}], episodes=2, seed=1, action_noise=1.0, rng_seed=4)
    assert always_random.shape == (1, 1, 2) and np.all(always_random >= 1)
    with pytest.raises(RlflatError, match=r"^discrete action_noise is a probability in \[0, 1\], got 1.5$"):
        rollout_returns(cartpole_policy, task, [{}], episodes=1, action_noise=1.5)
    with pytest.raises(RlflatError, match=r"^action_noise must be finite and >= 0, got \[-0.5\]$"):
        rollout_returns(cartpole_policy, task, [{}], episodes=1, action_noise=-0.5)


def test_gym_rows_in_worker_processes_return_what_one_process_returns(cartpole_policy: FunctionalPolicy) -> None:
    """The Gymnasium backend with 2 worker processes (each a share of the rows, each with its dynamics) and in
    this process give the same returns, setting by setting."""
    from rlflat.evaluate.rollout import rollout_returns

    task = load_task("CartPole")
    settings = [{}, {"length": 0.2}, {"length": 2.0, "force_mag": 3.0}]
    one = rollout_returns(cartpole_policy, task, settings, episodes=2, seed=3, backend="gym", workers=1)
    two = rollout_returns(cartpole_policy, task, settings, episodes=2, seed=3, backend="gym", workers=2)
    np.testing.assert_array_equal(one, two)
    assert len({tuple(row) for row in one[0]}) > 1  # the dynamics reached the workers: settings differ


def test_the_rollout_closes_its_simulator_and_leaves_progress_to_tqdm(
    cartpole_policy: FunctionalPolicy, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rlflat.evaluate import rollout

    closed = []
    real_close = rollout.GymRows.close
    monkeypatch.setattr(rollout.GymRows, "close", lambda self: (closed.append(self), real_close(self))[1])
    rollout.rollout_returns(cartpole_policy, load_task("CartPole"), [{}], episodes=1, backend="gym", workers=1)
    assert len(closed) == 1
    # progress: None lets tqdm decide (a bar on a tty only); True shows one; False hides it
    assert rollout._disabled(None) is None and rollout._disabled(True) is False and rollout._disabled(False) is True


def test_stacked_parameter_sets_are_checked_with_errors_that_name_the_tensor(cartpole_policy: FunctionalPolicy) -> None:
    import torch

    from rlflat.errors import RlflatError
    from rlflat.evaluate.rollout import rollout_returns

    task = load_task("CartPole")
    name, value = next(iter(cartpole_policy.params.items()))
    shape = tuple(value.shape)
    stacked = value.detach().unsqueeze(0).repeat(2, *([1] * value.ndim))
    got = rollout_returns(cartpole_policy, task, [{}], episodes=1, params={name: stacked})
    assert got.shape == (2, 1, 1) and got[0, 0, 0] == got[1, 0, 0]  # K = 2 copies of the trained tensor
    cases = [
        ({}, "params is empty; pass None to evaluate the policy's own parameters"),
        ({name: stacked.numpy()}, f"params[{name!r}] must be a torch.Tensor, got ndarray"),
        ({name: value.detach()}, rf"params[{name!r}] has shape {shape}; expected (K, {', '.join(map(str, shape))})"),
        ({name: torch.zeros((0, *shape))}, "params disagree on or lack the leading K axis: sizes [0]"),
    ]
    for params, message in cases:
        with pytest.raises(RlflatError) as err:
            rollout_returns(cartpole_policy, task, [{}], episodes=1, params=params)  # type: ignore[arg-type]
        assert str(err.value) == message


def test_severity_returns_at_the_ends_of_the_evaluated_range_are_read_not_dropped() -> None:
    """A declared severity equal to the smallest or the largest evaluated factor is inside the curve (its own
    row); only factors beyond the ends are None."""
    from rlflat.evaluate.metrics import _at_severities, severity_tag

    rows = pd.DataFrame({"factor": [0.5, 1.0, 2.0, 4.0], "normalized_return": [0.2, 1.0, 0.6, 0.3]})
    got = _at_severities(rows, [0.5, 4.0, 2.0**1.5, 8.0, 0.25])
    assert got[f"severity_return_{severity_tag(0.5)}"] == 0.2 and got[f"severity_return_{severity_tag(4.0)}"] == 0.3
    assert got[f"severity_return_{severity_tag(2.0**1.5)}"] == pytest.approx(0.45)  # halfway in log-factor
    assert got[f"severity_return_{severity_tag(8.0)}"] is None and got[f"severity_return_{severity_tag(0.25)}"] is None


def test_censored_minimum_without_an_acting_parameter_is_all_null() -> None:
    from rlflat.evaluate.metrics import censored_minimum

    empty = dict.fromkeys(("collapse_log_factor_min", "collapse_log_factor_min_parameter",
                           "collapse_log_factor_min_bracket_low", "collapse_log_factor_min_bracket_high", "censored"))  # fmt: skip
    assert censored_minimum({}) == empty
    assert (
        censored_minimum({"length": {"inert": True, "collapsed_within_range": False, "max_log_factor": 1.0}}) == empty
    )


def test_distinct_settings_keep_noise_levels_apart_when_dynamics_are_grouped() -> None:
    """With the evaluator's dynamics groups, rows are compared on (group, action noise, obs noise): two noise
    levels on nominal dynamics are two settings, and the nominal point (group of nominal, no noise) is dropped."""
    from rlflat.evaluate.metrics import distinct_settings

    table = pd.DataFrame({"family": ["nominal", "obs_noise", "obs_noise", "action_noise", "length", "length"],
                          "dynamics_group": [0, 0, 0, 0, 1, 1], "action_noise": [0.0, 0.0, 0.0, 0.2, 0.0, 0.0],
                          "obs_noise": [0.0, 0.1, 0.3, 0.0, 0.0, 0.0], "length": [0.5, 0.5, 0.5, 0.5, 2.0, 4.0],
                          "return_mean": [500.0, 400.0, 300.0, 200.0, 100.0, 100.0]})  # fmt: skip
    table.attrs["quantity_columns"] = ["length", "action_noise", "obs_noise"]
    got = distinct_settings(table)
    assert got["family"].tolist() == ["obs_noise", "obs_noise", "action_noise", "length"]  # 4.0 saturates with 2.0


def test_nominal_normalisation_block_says_what_one_means() -> None:
    from rlflat.evaluate.metrics import normalization

    task = load_task("CartPole")
    nominal = normalization(task, 250.0, "nominal").block()
    assert (
        nominal["above_one"] == "a return above nominal" and nominal["formula"] == "(R - floor) / (R_nominal - floor)"
    )
    assert (nominal["zero"], nominal["one"], nominal["mode"]) == (0.0, 250.0, "nominal")
    assert normalization(task, 250.0).block()["above_one"] == "a return above R_ref (not capped)"


def test_unknown_stacked_parameter_names_the_valid_ones(cartpole_policy: FunctionalPolicy) -> None:
    import torch

    from rlflat.errors import RlflatError
    from rlflat.evaluate.rollout import rollout_returns

    with pytest.raises(RlflatError) as err:
        rollout_returns(cartpole_policy, load_task("CartPole"), [{}], episodes=1, params={"nope": torch.zeros(1, 2)})
    assert str(err.value).startswith("unknown policy parameter 'nope'; valid choices: ")
    assert all(name in str(err.value) for name in cartpole_policy.params)
