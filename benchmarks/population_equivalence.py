"""Distributional equivalence of the population engine and the SB3 path (issue 19, item 5c).

For each case (task, algorithm) and seeds 0..n-1, every run is trained twice: by the population engine
(:func:`rlflat.population.train_population`, one population per case) and by the single-run SB3 path
(:func:`rlflat.train.train_run`). Each run is probed for ``fisher_adaptive_lambda_max`` (the probe's Fisher stage
only). Per case and metric the two samples are compared by two one-sided tests (TOST, Schuirmann 1987) at a
stated margin, Welch's (independent samples) and paired (same seed): equivalence is claimed when both
one-sided p-values are below alpha = 0.05, i.e. the 90% confidence interval of the mean difference lies inside
[-margin, margin]. Margins: final nominal return within
5% of the task's normalisation range (``ref - low`` in the task spec), ``log10 fisher_adaptive_lambda_max``
within 0.1 (a factor of 1.26). The number of seeds whose two runs are bit-identical is reported too (the
engine is built to make it all of them). Writes ``report.md``, ``results.csv`` and ``figures/*.png`` under
``--out``; finished runs are reused, so an interrupted benchmark resumes. Usage::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/population_equivalence.py [--seeds 20] [--steps N]
        [--cases CartPole:ppo,CartPole:ppo_sam,CartPole:pg,Pendulum:ppo] [--out results/population_equivalence]
"""

from __future__ import annotations

import argparse
import csv
import math
import os
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
import torch as th
from scipy import stats

from rlflat.io import read_json
from rlflat.population import Member, train_population
from rlflat.tasks import load_task
from rlflat.train import resolve_run_config, train_run

ALPHA = 0.05
RETURN_MARGIN = 0.05
"""Return margin as a fraction of the task's normalisation range (ref - low)."""
FISHER_MARGIN = 0.1
"""Margin on log10 fisher_adaptive_lambda_max."""
DEFAULT_CASES = "CartPole:ppo,CartPole:ppo_sam,CartPole:pg,Pendulum:ppo"


def train_case(task: str, algo: str, seeds: int, steps: int | None, out: Path) -> list[tuple[Path, Path]]:
    """Population and single-run directories of seeds 0..n-1, trained where missing."""
    configs = [resolve_run_config(algo, task, seed=s, steps=steps) for s in range(seeds)]
    pop_dirs = [out / f"{task}-{algo}" / "population" / f"s{s}" for s in range(seeds)]
    single_dirs = [out / f"{task}-{algo}" / "sb3" / f"s{s}" for s in range(seeds)]
    results = train_population([Member(c, d) for c, d in zip(configs, pop_dirs, strict=True)], progress=False)
    failed = [r for r in results if r.status != "ok"]
    if failed:
        print(f"{task} {algo}: {len(failed)} population runs failed: {failed[0].error}")
    for config, directory in zip(configs, single_dirs, strict=True):
        if not (directory / "metrics.json").exists():
            try:
                train_run(config, out=directory, progress=False, force=True)
            except ValueError as exc:  # a diverged single run publishes nothing
                print(f"{task} {algo} s{config['seed']}: single run failed: {exc}")
    return list(zip(pop_dirs, single_dirs, strict=True))


def measures(run_dir: Path) -> dict[str, float]:
    """Final nominal return (metrics.json) and fisher_adaptive_lambda_max (probed once, Fisher stage only)."""
    from rlflat.probe.run import probe_run

    if not (run_dir / "metrics.json").exists():
        return {"return": math.nan, "log10_fisher_adaptive_lambda_max": math.nan}
    probe_file = run_dir / "probe.json"
    probe = read_json(probe_file) if probe_file.exists() else probe_run(run_dir, measures=("fisher",), progress=False)
    fisher = (probe.get("fisher") or {}).get("adaptive_lambda_max")
    return {
        "return": float(read_json(run_dir / "metrics.json")["train"]["return_mean"]),
        "log10_fisher_adaptive_lambda_max": math.log10(fisher) if fisher and fisher > 0 else math.nan,
    }


def tost(a: np.ndarray, b: np.ndarray, margin: float) -> dict[str, float]:
    """Welch TOST of mean(a) - mean(b) within [-margin, margin]: difference, its 90% CI and the TOST p-value.

    Identical samples (zero variance of the difference's estimate) give a CI of width 0 and p = 0."""
    a, b = a[np.isfinite(a)], b[np.isfinite(b)]
    diff = float(a.mean() - b.mean())
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    se = math.sqrt(va + vb)
    if se == 0:
        inside = abs(diff) < margin
        return {"diff": diff, "low": diff, "high": diff, "p": 0.0 if inside else 1.0}
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    p_lower = stats.t.sf((diff + margin) / se, df)  # H0: diff <= -margin
    p_upper = stats.t.cdf((diff - margin) / se, df)  # H0: diff >= +margin
    half = stats.t.ppf(1 - ALPHA, df) * se
    return {"diff": diff, "low": diff - half, "high": diff + half, "p": float(max(p_lower, p_upper))}


def paired_tost(a: np.ndarray, b: np.ndarray, margin: float) -> dict[str, float]:
    """Paired TOST on the same-seed differences a - b: mean difference, its 90% CI and the TOST p-value
    (differences all equal: a CI of width 0, p = 0 inside the margin, 1 outside)."""
    d = (a - b)[np.isfinite(a) & np.isfinite(b)]
    mean = float(d.mean())
    se = float(d.std(ddof=1) / math.sqrt(len(d))) if len(d) > 1 else math.inf
    if se == 0:
        return {"diff": mean, "low": mean, "high": mean, "p": 0.0 if abs(mean) < margin else 1.0}
    df = len(d) - 1
    p = max(stats.t.sf((mean + margin) / se, df), stats.t.cdf((mean - margin) / se, df))
    half = stats.t.ppf(1 - ALPHA, df) * se
    return {"diff": mean, "low": mean - half, "high": mean + half, "p": float(p)}


def plot(name: str, metric: str, pop: np.ndarray, sb3: np.ndarray, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(8, 3.2))
    jitter = np.random.default_rng(0).uniform(-0.08, 0.08, size=len(pop))
    left.scatter(np.zeros(len(pop)) + jitter, pop, s=12, label="population")
    left.scatter(np.ones(len(sb3)) + jitter[: len(sb3)], sb3, s=12, label="SB3 path")
    left.set_xticks([0, 1], ["population", "SB3 path"])
    left.set_ylabel(metric)
    right.scatter(sb3, pop, s=12)
    finite = np.concatenate([pop[np.isfinite(pop)], sb3[np.isfinite(sb3)]])
    if finite.size:
        lo, hi = float(finite.min()), float(finite.max())
        right.plot([lo, hi], [lo, hi], color="grey", lw=0.8)
    right.set_xlabel("SB3 path (same seed)")
    right.set_ylabel("population")
    fig.suptitle(f"{name}: {metric}")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--steps", type=int, default=None, help="steps per run (default: each task spec's budget)")
    parser.add_argument("--cases", default=DEFAULT_CASES, help="comma-separated TASK:ALGO")
    parser.add_argument("--out", type=Path, default=Path("results/population_equivalence"))
    args = parser.parse_args()
    th.set_num_threads(1)
    rows = []
    lines = [
        "# Population engine vs SB3 path: equivalence",
        "",
        f"Command: `OMP_NUM_THREADS=1 .venv/bin/python benchmarks/population_equivalence.py --seeds {args.seeds}"
        + (f" --steps {args.steps}" if args.steps else "")
        + f" --cases {args.cases} --out {args.out}`",
        "",
        f"Welch TOST at alpha {ALPHA} (equivalent when the 90% CI of the difference lies inside the margin). "
        f"Margins: return {RETURN_MARGIN:.0%} of the task's normalisation range; log10 fisher_adaptive_lambda_max "
        f"{FISHER_MARGIN}.",
        "",
        "Two tests per row: Welch TOST treats the two sets of runs as independent samples (the question 'same "
        "distribution?'); paired TOST uses that both runs of a seed share it (the question 'same run?').",
        "",
        "| case | metric | n | population mean | SB3 mean | Welch difference [90% CI] | margin | Welch TOST p | "
        "paired difference [90% CI] | paired TOST p | equivalent (Welch / paired) | bit-identical seeds |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for case in args.cases.split(","):
        task, algo = case.split(":")
        pairs = train_case(task, algo, args.seeds, args.steps, args.out)
        spec = load_task(task)
        span = spec.reference_returns.ref - spec.reference_returns.low  # type: ignore[union-attr]
        pop = [measures(p) for p, _ in pairs]
        sb3 = [measures(s) for _, s in pairs]
        for metric, margin in (
            ("return", RETURN_MARGIN * abs(span)),
            ("log10_fisher_adaptive_lambda_max", FISHER_MARGIN),
        ):
            a = np.array([m[metric] for m in pop])
            b = np.array([m[metric] for m in sb3])
            result = tost(a, b, margin)
            paired = paired_tost(a, b, margin)
            identical = int(np.sum(a == b))
            verdict = "/".join("yes" if r["p"] < ALPHA else "no" for r in (result, paired))
            rows.append({"case": case, "metric": metric, "n": len(a), **result, "margin": margin,
                         "paired_diff": paired["diff"], "paired_low": paired["low"], "paired_high": paired["high"],
                         "paired_p": paired["p"], "identical": identical, "population_mean": float(np.nanmean(a)),
                         "sb3_mean": float(np.nanmean(b))})  # fmt: skip
            lines.append(
                f"| {task} {algo} | {metric} | {len(a)} | {np.nanmean(a):.4g} | {np.nanmean(b):.4g} | "
                f"{result['diff']:.3g} [{result['low']:.3g}, {result['high']:.3g}] | {margin:.3g} | "
                f"{result['p']:.2g} | {paired['diff']:.3g} [{paired['low']:.3g}, {paired['high']:.3g}] | "
                f"{paired['p']:.2g} | {verdict} | {identical}/{len(a)} |"
            )
            plot(f"{task} {algo}", metric, a, b, args.out / "figures" / f"{task}-{algo}-{metric}.png")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "report.md").write_text("\n".join(lines) + "\n")
    with open(args.out / "results.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
