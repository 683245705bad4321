"""Speed of the sharpness probe: numerics (folded in from ``probe_numerics_speed``) and batched perturbed returns.

Prints, in one run:
  1. one HVP vs one gradient (target <= 3x), eigsh top-5 both ends vs power iteration with deflation at 1e-4
     relative accuracy (target <= 1/2 the HVPs), the exact spectrum of a 4-64-64-2 actor (target <= 15 s, <= 3 GiB),
     all from ``benchmarks/probe_numerics_speed.py`` (synthetic cross-entropy loss);
  2. the exact spectrum of a real CartPole 64x64 PPO actor on the probe's surrogate loss and batch (seconds, peak RSS);
  3. returns of 20 perturbed copies x 10 episodes: one batched ``rollout_returns`` call (K stacked parameter sets)
     vs a loop over perturbed SB3 policy copies stepping a Gymnasium env with ``predict`` (target >= 50x), with the
     returns checked identical;
  4. the default probe of a CartPole PPO run against that run's training (the task spec's 100k steps, trained
     here): probe / training CPU-seconds ratio (target <= 1.0) and seconds per probe stage (``--probe-only``
     runs just this part; ``--train-steps`` shortens the training for a smoke run, which makes the ratio
     meaningless).

Usage: OMP_NUM_THREADS=1 python benchmarks/probe_speed.py [--run RUN_DIR_OR_ZIP] [--quick] [--batch 4096]
Times are CPU seconds of this process (robust to other jobs on shared cores); peak memory is VmHWM, reset per stage.
Without --run an untrained 64x64 PPO policy is used (short episodes: the batched speed-up is then a lower bound).
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from stable_baselines3 import PPO

from rlflat.evaluate import rollout_returns
from rlflat.policy import FunctionalPolicy, load_policy
from rlflat.probe.batch import collect_batch
from rlflat.probe.hvp import HessianOperator
from rlflat.probe.losses import make_loss, scope_params
from rlflat.probe.perturbation import draw_directions, perturbed_returns
from rlflat.probe.run import last_timing, probe_run
from rlflat.tasks import load_task, make_env
from rlflat.train import resolve_run_config, train_run

CARTPOLE = load_task("CartPole")


def _numerics(quick: bool) -> dict[str, Any]:
    path = Path(__file__).with_name("probe_numerics_speed.py")
    spec = importlib.util.spec_from_file_location("probe_numerics_speed", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    result: dict[str, Any] = module.main(["--quick"] if quick else [])
    return result


def _model_zip(run: str | None, tmp: Path) -> Path:
    if run is not None:
        p = Path(run)
        return p / "model.zip" if p.is_dir() else p
    path = tmp / "untrained.zip"
    PPO("MlpPolicy", make_env(CARTPOLE), seed=0).save(path)
    return path


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (Linux ``clear_refs`` 5), so a later stage's peak is its own."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _proc_status_mib(field: str) -> float | None:
    """A ``/proc/self/status`` memory field (``VmHWM``, ``VmRSS``) in MiB; None where /proc lacks it."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return float(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def _peak_rss_mib() -> float:
    """VmHWM (peak RSS since the last reset) where /proc has it, else getrusage's lifetime peak."""
    peak = _proc_status_mib("VmHWM")
    return peak if peak is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _rss_mib() -> float:
    rss = _proc_status_mib("VmRSS")
    return rss if rss is not None else _peak_rss_mib()


def exact_spectrum(policy: FunctionalPolicy, batch_size: int) -> dict[str, float]:
    """Dense Hessian of the surrogate on the probe batch + eigvalsh, the probe's exact route."""
    batch = collect_batch(policy, CARTPOLE, batch_size, seed=0)
    op = HessianOperator(make_loss(policy, batch, "surrogate"), scope_params(policy, "actor"))
    v = torch.randn(op.n, generator=torch.Generator().manual_seed(0))
    c0 = time.process_time()
    for _ in range(10):
        op.matvec(v)
    hvp = (time.process_time() - c0) / 10
    leaves = {k: p.detach().requires_grad_(True) for k, p in scope_params(policy, "actor").items()}
    loss = make_loss(policy, batch, "surrogate")
    c0 = time.process_time()
    for _ in range(10):
        torch.autograd.grad(loss(leaves), list(leaves.values()))
    grad = (time.process_time() - c0) / 10
    _reset_peak_rss()
    rss0 = _rss_mib()
    c0, w0 = time.process_time(), time.perf_counter()
    h = op.dense()
    c1 = time.process_time()
    eig = torch.linalg.eigvalsh(h.to(torch.float64))
    out = {
        "hvp_ms": hvp * 1e3,
        "grad_ms": grad * 1e3,
        "n": op.n,
        "cpu_s": time.process_time() - c0,
        "dense_cpu_s": c1 - c0,
        "eigvalsh_cpu_s": time.process_time() - c1,
        "wall_s": time.perf_counter() - w0,
        "rss_growth_mib": _peak_rss_mib() - rss0,
        "lambda_max": float(eig[-1]),
    }
    return {**out, **_generic_rows(op, h)}


def _generic_rows(op: HessianOperator, h: torch.Tensor, stride: int = 20) -> dict[str, float]:
    """The former dense route, one full HVP per row (every tensor's gradient backpropagated), timed on every
    ``stride``-th row and extrapolated to n rows; its rows are checked against ``dense()``'s."""
    rows = range(0, op.n, stride)
    e = torch.zeros(op.n)
    c0, err = time.process_time(), 0.0
    for j in rows:
        e[j] = 1.0
        err = max(err, float((op.matvec(e) - h[j]).abs().max()))
        e[j] = 0.0
    per_row = (time.process_time() - c0) / len(rows)
    return {"generic_dense_cpu_s": per_row * op.n, "generic_max_abs_diff": err, "h_max_abs": float(h.abs().max())}


def _loop_returns(model_zip: Path, points: list[dict[str, torch.Tensor]], episodes: int) -> np.ndarray:
    """The naive baseline: per perturbed copy, per episode, step a Gymnasium env with SB3 ``predict``."""
    model = PPO.load(model_zip, device="cpu")
    out = np.zeros((len(points), episodes))
    env = make_env(CARTPOLE)
    for k, point in enumerate(points):
        policy = copy.deepcopy(model.policy)
        with torch.no_grad():
            for name, p in policy.named_parameters():
                if name in point:
                    p.copy_(point[name])
        for e in range(episodes):
            obs, _ = env.reset(seed=e)
            done, total = False, 0.0
            while not done:
                action, _ = policy.predict(obs, deterministic=True)
                obs, r, term, trunc, _ = env.step(int(action))
                total += float(r)
                done = term or trunc
            out[k, e] = total
    env.close()
    return out


def batched_vs_loop(model_zip: Path, k: int, episodes: int, sigma: float) -> dict[str, Any]:
    policy = load_policy(model_zip)
    params = scope_params(policy, "actor")
    points = [{n: v + sigma * d[n] for n, v in params.items()} for d in draw_directions(params, "filter", k, seed=0)]
    rollout_returns(policy, CARTPOLE, [{}], 1)  # warm-up (imports, simulator)
    times = []
    for _ in range(3):  # best of 3: the batched call is cheap, and the best is the least disturbed by other jobs
        c0 = time.process_time()
        batched = perturbed_returns(policy, CARTPOLE, points, episodes, seed=0)
        times.append(time.process_time() - c0)
    t_batched = min(times)
    c0 = time.process_time()
    looped = _loop_returns(model_zip, points, episodes)
    t_loop = time.process_time() - c0
    return {
        "batched_s": t_batched,
        "loop_s": t_loop,
        "speedup": t_loop / t_batched,
        "identical": bool(np.array_equal(batched, looped)),
        "mean_return": float(batched.mean()),
        "steps": float(looped.sum()),
    }


def probe_vs_training(tmp: Path, steps: int | None, seed: int = 0) -> dict[str, Any]:
    """Train a CartPole PPO run, then probe it with the default options; CPU seconds of each (this process)."""
    config = resolve_run_config("ppo", "CartPole", seed=seed, steps=steps)
    c0 = time.process_time()
    run_dir = train_run(config, tmp / "run", progress=False)
    train_cpu = time.process_time() - c0
    c0 = time.process_time()
    result = probe_run(run_dir, out=tmp / "probe", update_metrics=False, progress=False)
    probe_cpu = time.process_time() - c0
    hess = result["hessian"] or {}
    return {
        "train_cpu_s": train_cpu,
        "probe_cpu_s": probe_cpu,
        "ratio": probe_cpu / train_cpu,
        "stages_wall_s": last_timing(),
        "batches": result["config"]["batches"],
        "lambda_max": (hess.get("lambda_max"), hess.get("lambda_max_se")),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--run", help="run dir or SB3 zip of a CartPole policy (default: an untrained 64x64 PPO)")
    ap.add_argument("--batch", type=int, default=4096, help="probe batch for the real-policy exact spectrum")
    ap.add_argument("--sigma", type=float, default=0.1, help="filter-normalised perturbation scale")
    ap.add_argument("--quick", action="store_true", help="smoke sizes (numerics --quick, batch 512, 5 x 2)")
    ap.add_argument("--skip-numerics", action="store_true", help="skip part 1 (the numerics helper's benchmark)")
    ap.add_argument("--probe-only", action="store_true", help="run only part 4 (probe vs training)")
    ap.add_argument("--train-steps", type=int, help="part 4 training steps (default: the task spec's)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    if args.probe_only:
        _print_probe_vs_training(args.train_steps)
        return 0
    if not args.skip_numerics:
        print("== 1. numerics (benchmarks/probe_numerics_speed.py) ==")
        num = _numerics(args.quick)
        eigs, dense = num["eigs"], num["dense"]
        print(
            f"summary: HVP/gradient {num['hvp']['hvp_over_gradient']:.2f} (<= 3); "
            f"eigsh/power HVPs {eigs['eigsh_over_power_both_ends']:.3f} (<= 0.5); "
            f"exact spectrum n={dense['n']} {dense['total_cpu_s']:.1f} s cpu, "
            f"+{dense['peak_rss_growth_mib']:.0f} MiB (<= 15 s, <= 3072 MiB)"
        )
    with tempfile.TemporaryDirectory() as tmp:
        model_zip = _model_zip(args.run, Path(tmp))
        policy = load_policy(model_zip)
        batch = 512 if args.quick else args.batch
        print(f"== 2. exact spectrum of the real CartPole actor ({model_zip.name}), surrogate, batch {batch} ==")
        ex = exact_spectrum(policy, batch)
        print(
            f"n={ex['n']}: {ex['cpu_s']:.1f} s cpu ({ex['wall_s']:.1f} wall), peak RSS +{ex['rss_growth_mib']:.0f} MiB,"
            f" lambda_max {ex['lambda_max']:.4g} (targets <= 15 s, <= 3072 MiB); one HVP {ex['hvp_ms']:.1f} ms cpu"
            f" vs one gradient {ex['grad_ms']:.1f} ms = {ex['hvp_ms'] / ex['grad_ms']:.2f}x (<= 3x)"
        )
        print(
            f"  dense Hessian {ex['dense_cpu_s']:.1f} s cpu (rows by tensor, pruned backward) + eigvalsh "
            f"{ex['eigvalsh_cpu_s']:.1f} s; one generic HVP per row would take ~{ex['generic_dense_cpu_s']:.1f} s "
            f"(max |row diff| {ex['generic_max_abs_diff']:.1e} of |H| {ex['h_max_abs']:.1e})"
        )
        k, episodes = (5, 2) if args.quick else (20, 10)
        print(f"== 3. returns of {k} perturbed policies x {episodes} episodes (sigma {args.sigma}, filter) ==")
        res = batched_vs_loop(model_zip, k, episodes, args.sigma)
        print(
            f"batched {res['batched_s']:.2f} s cpu vs loop {res['loop_s']:.2f} s cpu: {res['speedup']:.0f}x (>= 50x); "
            f"returns identical: {res['identical']} (mean {res['mean_return']:.1f}, {res['steps']:.0f} env steps)"
        )
    _print_probe_vs_training(args.train_steps)
    return 0


def _print_probe_vs_training(steps: int | None) -> None:
    print("== 4. default probe vs training of a CartPole PPO run (CPU seconds, this process) ==")
    with tempfile.TemporaryDirectory() as tmp:
        res = probe_vs_training(Path(tmp), steps)
    lam, se = res["lambda_max"]
    print(
        f"training {res['train_cpu_s']:.1f} s cpu, probe ({res['batches']} batches) {res['probe_cpu_s']:.1f} s cpu: "
        f"probe/training {res['ratio']:.2f} (target <= 1.0); surrogate lambda_max {lam:.4g} +- {se:.2g}"
    )
    stages = res["stages_wall_s"]
    print("probe seconds per stage (wall, all batches): " + ", ".join(f"{k} {v:.2f}" for k, v in stages.items()))


if __name__ == "__main__":
    sys.exit(main())
