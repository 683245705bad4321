"""End-to-end study throughput: populations (``--population auto``) against one SB3 run per process (``1``).

A CartPole PPO study of ``--runs`` seeds (zoo hyperparameters from the task spec, ``--steps`` each, the default
probe and the default robustness suite) is swept twice from scratch, in the same invocation, on the same
``--workers``: once as today's per-run pipeline and once with populations. Each sweep is a child process with
one torch/BLAS thread per worker; its CPU time (user + system of the sweep and every process under it, sampled
from ``/proc`` every 0.2 s: pool workers are children of the fork server, which ``getrusage`` of this process
never sees) gives the throughput in **runs per core-hour**, which other load on the machine inflates less than
wall time does; wall time is printed beside it. The per-stage seconds come from the sweep logs (``--- <stage> done ... in X s``).

    python benchmarks/study_speed.py                       # the issue's study: 64 runs x 1e5 steps (~1 h on 2 cores)
    python benchmarks/study_speed.py --runs 8 --steps 20000  # a small check (minutes)

The projection for 1,000 runs on 2 cores is 1000 / (2 x runs per core-hour) hours, assuming the 2 cores are
as busy as in this measurement (populations of K = runs / workers; a larger study makes larger populations up to
``rlflat.population.grouping.AUTO_MAX``, so the projection is conservative for populations).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import yaml

REPO = Path(__file__).resolve().parents[1]
STAGE_LINE = re.compile(r"^--- (train|probe|evaluate) done(?: for (\d+) runs)? in ([0-9.]+) s", re.MULTILINE)


def _study(runs: int, steps: int, algo: str) -> dict[str, object]:
    return {"name": "study_speed", "tasks": ["CartPole"], "algos": [algo], "seeds": runs, "steps": steps}


def _sweep(config: Path, out: Path, population: str, workers: int) -> dict[str, float]:
    """One sweep as a child process; its wall and CPU seconds and the per-stage seconds from its logs."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "rlflat.sweep", str(config), "--out", str(out), "--workers", str(workers),
               "--population", population, "--no-progress"]  # fmt: skip
    start = time.perf_counter()
    with tempfile.TemporaryFile("w+") as output:
        child = subprocess.Popen(command, cwd=REPO, env=env, stdout=output, stderr=subprocess.STDOUT, text=True)
        seen: dict[int, float] = {}  # pid -> latest CPU seconds (exited processes keep their last sample)
        while child.poll() is None:
            for pid, seconds in _tree_cpu(child.pid).items():
                seen[pid] = max(seen.get(pid, 0.0), seconds)
            time.sleep(0.2)
        wall = time.perf_counter() - start
        if child.returncode != 0:
            output.seek(0)
            sys.exit(f"sweep --population {population} failed ({child.returncode}):\n{output.read()}")
    table = pd.read_parquet(out / "runs.parquet")
    if not (table["status"] == "ok").all():
        sys.exit(f"sweep --population {population}: not every run is ok")
    cpu = sum(seen.values())
    stages = dict.fromkeys(("train", "probe", "evaluate"), 0.0)
    for log in (out / "logs").glob("*.log"):
        for stage, _, seconds in STAGE_LINE.findall(log.read_text()):
            stages[stage] += float(seconds)
    return {"wall": wall, "cpu": cpu, "runs": float(len(table)), **stages,
            "solved": float(table["train.solved"].mean()) if "train.solved" in table else float("nan")}  # fmt: skip


def _tree_cpu(root: int) -> dict[int, float]:
    """CPU seconds (user + system) of ``root`` and every process below it, from ``/proc/<pid>/stat``."""
    tick = os.sysconf("SC_CLK_TCK")
    parents: dict[int, int] = {}
    cpu: dict[int, float] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # exited meanwhile
            continue
        parents[int(entry)] = int(fields[1])
        cpu[int(entry)] = (int(fields[11]) + int(fields[12])) / tick  # utime, stime
    tree, frontier = {root}, [root]
    while frontier:
        parent = frontier.pop()
        children = [pid for pid, ppid in parents.items() if ppid == parent and pid not in tree]
        tree.update(children)
        frontier.extend(children)
    return {pid: cpu[pid] for pid in tree if pid in cpu}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=64, help="seeds in the study (default 64)")
    parser.add_argument("--steps", type=int, default=100_000, help="training steps per run (default 1e5)")
    parser.add_argument("--workers", type=int, default=2, help="sweep workers = cores used (default 2)")
    parser.add_argument("--algo", default="ppo", help="algorithm (default ppo)")
    parser.add_argument("--keep", type=Path, help="keep both study directories under this folder")
    args = parser.parse_args()
    if args.runs < 1 or args.steps < 1 or args.workers < 1:
        parser.error("--runs, --steps and --workers must be >= 1")
    with tempfile.TemporaryDirectory(prefix="study_speed-") as tmp:
        root = args.keep or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        config = root / "study.yaml"
        config.write_text(yaml.safe_dump(_study(args.runs, args.steps, args.algo), sort_keys=False))
        results = {}
        for mode in ("1", "auto"):
            results[mode] = _sweep(config, root / f"population-{mode}", mode, args.workers)
            r = results[mode]
            print(f"--population {mode:>4}: {int(r['runs'])} runs, wall {r['wall']:.0f} s, CPU {r['cpu']:.0f} s, "
                  f"stages (worker seconds) train {r['train']:.0f} / probe {r['probe']:.0f} / evaluate "
                  f"{r['evaluate']:.0f}", flush=True)  # fmt: skip
    per_run, population = results["1"], results["auto"]
    rate = {k: r["runs"] / (r["cpu"] / 3600) for k, r in results.items()}
    wall_rate = {k: r["runs"] / (r["wall"] * args.workers / 3600) for k, r in results.items()}
    print(f"\nCartPole {args.algo}, {args.runs} runs x {args.steps} steps, default probe + default suite, "
          f"{args.workers} workers:")  # fmt: skip
    print(f"runs per core-hour (CPU time): per-run {rate['1']:.1f}, population {rate['auto']:.1f}: "
          f"ratio {rate['auto'] / rate['1']:.2f}x")  # fmt: skip
    print(f"runs per core-hour (wall x workers): per-run {wall_rate['1']:.1f}, population {wall_rate['auto']:.1f}: "
          f"ratio {wall_rate['auto'] / wall_rate['1']:.2f}x")  # fmt: skip
    for stage in ("train", "probe", "evaluate"):
        if population[stage] > 0:
            print(f"  {stage:>8}: {per_run[stage]:.0f} -> {population[stage]:.0f} worker-seconds "
                  f"({per_run[stage] / population[stage]:.2f}x)")  # fmt: skip
    for name, per_core_hour in (("per-run", rate["1"]), ("population", rate["auto"])):
        print(f"projection, 1,000 such runs on 2 cores ({name}): {1000 / (2 * per_core_hour):.1f} h")


if __name__ == "__main__":
    main()
