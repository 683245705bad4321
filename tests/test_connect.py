"""rlflat.probe.connect: the Bezier fit on a valley of known shape, the barrier's definition, the nearer-endpoint KL,
and ``python -m rlflat.probe A --connect B`` end to end (numbers with SEs, files, refusals)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
import pytest
import torch as th
from stable_baselines3 import PPO

from rlflat.errors import RlflatError
from rlflat.policy import load_policy
from rlflat.probe.__main__ import main
from rlflat.probe.batch import collect_batch
from rlflat.probe.connect import (
    ConnectOptions,
    bezier,
    connect,
    fit_bezier,
    line,
    nearer_endpoint_kl,
    path_barrier,
)
from rlflat.tasks import load_task

th.set_num_threads(1)

A = {"w": th.tensor([-1.0, 0.0])}
B = {"w": th.tensor([1.0, 0.0])}
T = np.linspace(0.0, 1.0, 101)


def _valley(params: dict[str, th.Tensor]) -> th.Tensor:
    """Zero exactly on the parabola y = 1 - x^2, which joins A = (-1, 0) and B = (1, 0); the straight line
    y = 0 climbs to (1 - 0)^2 = 1 at x = 0, and the Bezier curve with control point (0, 2) *is* the parabola:
    (1-t)^2 A + 2t(1-t)(0, 2) + t^2 B = (2t - 1, 4t(1 - t)) and 1 - (2t - 1)^2 = 4t(1 - t)."""
    x, y = params["w"][0], params["w"][1]
    return (y - (1.0 - x**2)) ** 2


def _along(points: Any) -> list[float]:
    with th.no_grad():
        return [float(_valley(p)) for p in points]


def test_fitted_bezier_follows_the_known_valley() -> None:
    line_values = _along(line(A, B, float(t)) for t in T)
    assert path_barrier(line_values, T, higher_is_worse=True) == pytest.approx(1.0, abs=1e-12)
    control = fit_bezier(A, B, _valley, steps=300, lr=0.05, seed=0)
    th.testing.assert_close(control["w"], th.tensor([0.0, 2.0]), atol=1e-3, rtol=0)
    curve_barrier = path_barrier(_along(bezier(A, control, B, float(t)) for t in T), T, higher_is_worse=True)
    assert curve_barrier < 1e-6
    # without fitting the curve is the line (control point at the midpoint), barrier 1: the test above can fail
    unfitted = fit_bezier(A, B, _valley, steps=0)
    th.testing.assert_close(unfitted["w"], th.tensor([0.0, 0.0]))
    assert path_barrier(_along(bezier(A, unfitted, B, float(t)) for t in T), T, higher_is_worse=True) == pytest.approx(
        1.0
    )


def test_barrier_is_the_excess_over_the_chord() -> None:
    t = [0.0, 0.5, 1.0]
    assert path_barrier([0.0, 3.0, 1.0], t, higher_is_worse=True) == pytest.approx(3.0 - 0.5)
    assert path_barrier([10.0, 2.0, 6.0], t, higher_is_worse=False) == pytest.approx(8.0 - 2.0)
    assert path_barrier([0.0, -1.0, 2.0], t, higher_is_worse=True) == 0.0  # never above the chord: the ends
    with pytest.raises(RlflatError, match="grid of t from 0 to 1"):
        path_barrier([1.0, 2.0], [0.0, 0.9], higher_is_worse=True)


@pytest.fixture(scope="module")
def zips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Policy A (decisive logits), B = A with its first hidden layer's units permuted (the same function in
    other coordinates: the line between them leaves the function, a curve need not), C of another width."""
    root = tmp_path_factory.mktemp("connect")
    model = PPO("MlpPolicy", "CartPole-v1", seed=0, device="cpu", policy_kwargs={"net_arch": [16, 16]})
    with th.no_grad():
        model.policy.action_net.weight.mul_(100.0)
    model.save(root / "a.zip")
    perm = th.randperm(16, generator=th.Generator().manual_seed(1))
    state = model.policy.state_dict()
    with th.no_grad():
        for name in ("mlp_extractor.policy_net.0.weight", "mlp_extractor.policy_net.0.bias"):
            state[name].copy_(state[name][perm])
        state["mlp_extractor.policy_net.2.weight"].copy_(state["mlp_extractor.policy_net.2.weight"][:, perm])
    model.policy.load_state_dict(state)
    model.save(root / "b.zip")
    PPO("MlpPolicy", "CartPole-v1", seed=0, device="cpu", policy_kwargs={"net_arch": [8]}).save(root / "c.zip")
    return {name: root / f"{name}.zip" for name in "abc"}


def test_nearer_endpoint_kl_is_zero_at_both_ends(zips: dict[str, Path]) -> None:
    task = load_task("CartPole")
    a, b = load_policy(zips["a"], task), load_policy(zips["b"], task)
    loss = nearer_endpoint_kl(a, b, collect_batch(a, task, 128, seed=0), collect_batch(b, task, 128, seed=1))
    names = a.actor_names
    pa, pb = ({k: p.params[k] for k in names} for p in (a, b))
    with th.no_grad():
        assert float(loss(pa)) == 0.0 and float(loss(pb)) == pytest.approx(0.0, abs=1e-7)
        assert float(loss(line(pa, pb, 0.5))) > 1e-4  # the permuted copy: the midpoint is another function


def test_unfitted_curve_is_the_line(zips: dict[str, Path]) -> None:
    task = load_task("CartPole")
    a, b = load_policy(zips["a"], task), load_policy(zips["b"], task)
    result, arrays = connect(a, b, task, ConnectOptions(batches=2, batch=128, points=5, steps=0, episodes=2))
    np.testing.assert_allclose(result["curve"]["loss"], result["line"]["loss"], atol=1e-6)
    assert result["curve"]["return"] == result["line"]["return"]
    assert arrays["curve.loss_barrier_batches"].shape == (2,)


def test_connect_cli_writes_barriers_with_ses_and_a_figure(zips: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    argv = [str(zips["a"]), "--task", "CartPole", "--connect", str(zips["b"]), "--quick", "--out", str(out)]
    assert main(argv) == 0
    result = json.loads((out / "connect-b.json").read_text())
    for path in ("line", "curve"):
        for key in ("loss_barrier", "return_barrier", "loss_mean"):
            assert isinstance(result[path][key], float) and isinstance(result[path][f"{key}_se"], float)
        assert len(result[path]["loss"]) == len(result["t"]) == 5
    # the fit lowers what it minimises, and the permuted copy's line barrier is mostly removed by the curve
    assert result["curve"]["loss_mean"] < 0.5 * result["line"]["loss_mean"]
    assert result["curve"]["loss_barrier"] < 0.5 * result["line"]["loss_barrier"]
    assert result["aligned"] is False and result["loss_name"] == "kl_nearer_endpoint"
    assert (out / "connect-b.png").stat().st_size > 0 and (out / "connect-b.npz").exists()
    with pytest.raises(RlflatError, match="exists: add --force"):
        main(argv)


def test_connect_refusals(zips: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from rlflat.cli import run_cli

    base = [str(zips["a"]), "--task", "CartPole", "--quick", "--out", str(tmp_path)]
    assert run_cli(main, [*base, "--connect", str(zips["b"]), "--measures", "hessian"]) == 2
    assert "--measures only apply to the sharpness probe" in capsys.readouterr().err
    assert run_cli(main, [*base, "--connect", str(zips["c"])]) == 2
    assert "different architectures" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())  # nothing half-written
    with pytest.raises(RlflatError, match="connect steps must be an integer >= 0"):
        ConnectOptions(steps=-1)
