"""Mutation score of the numeric core, per module (``make mutation``; not part of ``make test``).

mutmut 3 (configured in ``pyproject.toml`` under ``[tool.mutmut]``) plants one small bug at a time (a flipped
operator, a changed constant, a dropped argument) in a copy of the package under ``mutants/`` and runs only the
tests that executed the mutated function. A mutant is *killed* when a test fails (or it times out), *survives*
when every test passes. The score of a module is killed / (tried - equivalent): the share of plausible bugs the
suite catches. Equivalent mutants (no behaviour change: nothing any test could catch) are listed with the reason
in ``benchmarks/mutation_equivalent.toml`` and left out of the denominator.

Running every mutant of the core (~8,600) takes hours on 2 cores, so ``--sample N`` draws N mutants per module
with a fixed seed and the score is stated with its Wilson 95% interval over that sample. Modules run one at a
time, each mutant in a forked child (mutmut), under ``nice``.

    python benchmarks/mutation.py --sample 30 --seed 8 --together   # draw, run the drawn mutants not yet killed, report
    python benchmarks/mutation.py --modules algos/pg.py --together  # every mutant of a module: its exact score
    python benchmarks/mutation.py --survivors          # re-run only the sampled mutants that survived
    python benchmarks/mutation.py --report             # report the stored results, run nothing
    python benchmarks/mutation.py --report --show-survivors  # the diff of every sampled survivor
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]
MUTANTS = ROOT / "mutants"
SAMPLE_FILE = MUTANTS / "rlflat-sample.json"
EQUIVALENT_FILE = ROOT / "benchmarks" / "mutation_equivalent.toml"

MODULES: dict[str, str] = {
    "algos/rules.py": "rlflat/algos/rules.py",
    "algos/pg.py": "rlflat/algos/pg.py",
    "algos/ppo.py": "rlflat/algos/ppo.py",
    "evaluate/metrics.py": "rlflat/evaluate/metrics.py",
    "evaluate/rollout.py": "rlflat/evaluate/rollout.py",
    "tasks/sims/": "rlflat/tasks/sims/",
    "probe/spectrum.py": "rlflat/probe/spectrum.py",
    "probe/directions.py": "rlflat/probe/directions.py",
    "probe/perturbation.py": "rlflat/probe/perturbation.py",
    "probe/worst_case.py": "rlflat/probe/worst_case.py",
    "probe/landscape.py": "rlflat/probe/landscape.py",
    "report/stats/": "rlflat/report/stats/",
}
"""Report label -> source path (a file, or a folder whose every file counts as one module)."""

TIMEOUT = {36, -24, 24, 152}
"""mutmut exit codes of a timeout (36, SIGXCPU): a kill by the clock, not by an assertion (shown in its own column)."""
KILLED = {1, 3, 37} | TIMEOUT
"""mutmut exit codes that count as caught: a failing test (1, 3), the type checker (37), a timeout."""
NOT_RUN = {None}


def _mutmut() -> list[str]:
    exe = Path(sys.executable).with_name("mutmut")
    return [str(exe) if exe.exists() else "mutmut"]


def _meta_files(source: str) -> list[Path]:
    base = MUTANTS / source
    if source.endswith("/"):
        return sorted(base.glob("**/*.py.meta"))
    meta = base.with_name(base.name + ".meta")
    return [meta] if meta.exists() else []


def _results(source: str) -> dict[str, int | None]:
    """Every mutant of ``source`` and its exit code (None: not run yet)."""
    out: dict[str, int | None] = {}
    for meta in _meta_files(source):
        out.update(json.loads(meta.read_text())["exit_code_by_key"])
    return out


def generate() -> None:
    """Write every mutant under mutants/ (mutmut's own generation step; a no-op for unchanged files)."""
    os.chdir(ROOT)
    try:
        from mutmut.__main__ import copy_also_copy_files, copy_src_dir, create_mutants
    except ImportError as exc:  # the generation step is mutmut 3's internal API
        raise SystemExit(f"mutation: needs mutmut 3.x (pip install -e '.[dev]'): {exc}") from None
    MUTANTS.mkdir(exist_ok=True)
    copy_src_dir()
    copy_also_copy_files()
    create_mutants(2)


def refresh_stale_stats() -> None:
    """Make mutmut re-record which tests call which function whenever the test files changed since it last did.

    mutmut re-records coverage only for test *names* it has not seen: a test edited to call more of the core keeps
    its old record, so mutants of the newly called functions would not run it (a kill missed, never a kill
    invented). A hash of the test files, kept beside mutmut's record, says when deleting the record (and so a full
    re-recording, a few minutes) is due.
    """
    import hashlib

    stats, stamp = MUTANTS / "mutmut-stats.json", MUTANTS / "rlflat-tests.sha256"
    digest = hashlib.sha256(b"".join(p.read_bytes() for p in sorted((ROOT / "tests").glob("*.py")))).hexdigest()
    if stats.exists() and (not stamp.exists() or stamp.read_text() != digest):
        print("mutation: the tests changed since mutmut recorded their coverage: recording it again", flush=True)
        stats.unlink()
    stamp.write_text(digest)


def draw(n: int, seed: int) -> dict[str, list[str]]:
    """A seeded sample of ``n`` mutant names per module (all of them where a module has fewer)."""
    import random

    sample = {}
    for label, source in MODULES.items():
        names = sorted(_results(source))
        random.Random(f"{seed}:{label}").shuffle(names)
        sample[label] = sorted(names[:n])  # a prefix of one seeded order: --sample 24 extends --sample 12
    SAMPLE_FILE.write_text(json.dumps({"seed": seed, "n": n, "mutants": sample}, indent=1))
    return sample


def load_sample() -> dict[str, list[str]] | None:
    return json.loads(SAMPLE_FILE.read_text())["mutants"] if SAMPLE_FILE.exists() else None


def mutant_change(name: str) -> tuple[str, str]:
    """The (original, mutated) lines of a mutant's diff, stripped and joined with " / "."""
    from mutmut.mutation.diff_apply import get_diff_for_mutant

    lines = get_diff_for_mutant(name).splitlines()
    old = [line[1:].strip() for line in lines if line.startswith("-") and not line.startswith("---")]
    new = [line[1:].strip() for line in lines if line.startswith("+") and not line.startswith("+++")]
    return " / ".join(old), " / ".join(new)


def load_equivalent(check: bool = True) -> dict[str, str]:
    """Mutant name -> why it is equivalent (benchmarks/mutation_equivalent.toml).

    Mutant numbers shift when a function is edited, so each entry records the change it excuses; an entry
    whose mutant now makes a different change is not applied (and is named), so a stale list cannot hide a kill.
    """
    if not EQUIVALENT_FILE.exists():
        return {}
    entries = tomllib.loads(EQUIVALENT_FILE.read_text()).get("equivalent", [])
    out = {}
    os.chdir(ROOT)
    for entry in entries:
        try:
            change = mutant_change(entry["mutant"]) if check else (entry["before"], entry["after"])
        except Exception:  # the mutant no longer exists
            change = None
        if change != (entry["before"], entry["after"]):
            print(f"mutation: stale equivalent entry (not applied): {entry['mutant']}", file=sys.stderr)
            continue
        out[entry["mutant"]] = entry["reason"]
    return out


def run_module(label: str, names: Iterable[str], max_children: int) -> float:
    """Run the named mutants of one module under nice; the wall time it took."""
    names = list(names)
    if not names:
        return 0.0
    start = time.monotonic()
    command = ["nice", "-n", "5", *_mutmut(), "run", "--max-children", str(max_children), *names]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("PYTHONPATH", None)  # the tests must import the mutated copy under mutants/, not the checkout
    print(f"mutation: {label}: {len(names)} mutants", flush=True)
    with open(MUTANTS / "rlflat-run.log", "a") as log:  # mutmut's own progress, for `tail -f`
        subprocess.run(command, cwd=ROOT, env=env, check=False, stdout=log, stderr=subprocess.STDOUT)
    return time.monotonic() - start


def wilson(k: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion k/n."""
    if n == 0:
        return math.nan, math.nan
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def report(sample: dict[str, list[str]] | None, show: bool = False, labels: Iterable[str] | None = None) -> list[str]:
    """Print the per-module table (of ``labels``, default every module); return the survivors' names."""
    equivalent = load_equivalent()
    survivors: list[str] = []
    print(f"{'module':22s} {'tried':>6s} {'equiv':>6s} {'killed':>7s} {'score':>7s}  95% CI (Wilson)   not run"
          "  timeouts")  # fmt: skip
    total_k = total_n = 0
    for label, source in MODULES.items():
        if labels is not None and label not in labels:
            continue
        results = _results(source)
        names = sample[label] if sample is not None else sorted(results)
        equiv = [m for m in names if m in equivalent]  # known equivalent: left out, whether or not it was run
        tried = [m for m in names if results.get(m) is not None or m in equivalent]
        counted = [m for m in tried if m not in equivalent]
        killed = [m for m in counted if results[m] in KILLED]
        survivors += [m for m in counted if results[m] not in KILLED]
        n, k = len(counted), len(killed)
        total_n, total_k = total_n + n, total_k + k
        lo, hi = wilson(k, n)
        score = f"{k / n:7.1%}" if n else "      -"
        ci = f"[{lo:5.1%}, {hi:5.1%}]" if n else ""
        timeouts = sum(results[m] in TIMEOUT for m in killed)
        print(f"{label:22s} {len(tried):6d} {len(equiv):6d} {k:7d} {score}  {ci:17s} {len(names) - len(tried):6d}"
              f"  {timeouts:8d}")  # fmt: skip
    lo, hi = wilson(total_k, total_n)
    if total_n:
        print(f"{'all':22s} {total_n:13d} {total_k:7d} {total_k / total_n:7.1%}  [{lo:5.1%}, {hi:5.1%}]"
              "   (killed / (tried - equiv))")  # fmt: skip
    if show and survivors:
        os.chdir(ROOT)
        for name in survivors:
            before, after = mutant_change(name)
            print(f'\n[[equivalent]]\nmutant = "{name}"\nbefore = {json.dumps(before)}\nafter = {json.dumps(after)}')
    elif survivors:
        print("\nsurvivors:", *survivors, sep="\n  ")
    return survivors


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sample", type=int, help="mutants drawn per module (default: every mutant)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sample")
    parser.add_argument("--max-children", type=int, default=2, help="mutants run in parallel (default 2)")
    parser.add_argument("--modules", nargs="+", choices=list(MODULES), help="only these modules")
    parser.add_argument(
        "--together",
        action="store_true",
        help="one mutmut run for all modules: one clean-test pass instead of one per module",
    )
    parser.add_argument("--survivors", action="store_true", help="re-run only the stored sample's survivors")
    parser.add_argument("--report", action="store_true", help="print the stored results; run nothing")
    parser.add_argument("--show-survivors", action="store_true", help="with --report: print each survivor's change")
    parser.add_argument("--all", action="store_true", help="with --report: every mutant with a result, not the sample")
    args = parser.parse_args(argv)
    if args.sample is not None and args.sample < 1:
        parser.error(f"--sample must be a positive number of mutants, got {args.sample}")
    if args.report:
        report(None if args.all else load_sample(), show=args.show_survivors, labels=args.modules)
        return 0
    generate()
    refresh_stale_stats()
    if args.survivors:
        sample = load_sample()
        if sample is None:
            parser.error("--survivors needs a stored sample: run with --sample N first")
        equivalent = load_equivalent()
        todo = {}
        for label, names in sample.items():
            results = _results(MODULES[label])
            todo[label] = [m for m in names if m not in equivalent and results.get(m) not in KILLED]
    elif args.sample is not None:
        sample = draw(args.sample, args.seed)
        # a killed mutant stays killed (mutmut resets the results of functions whose code changed); the rest run
        # (again): unrun ones, and survivors that new tests may now kill
        equivalent = load_equivalent()
        todo = {}
        for label, names in sample.items():
            results = _results(MODULES[label])
            todo[label] = [m for m in names if m not in equivalent and results.get(m) not in KILLED]
    else:
        sample = None
        todo = {label: sorted(_results(source)) for label, source in MODULES.items()}
        SAMPLE_FILE.unlink(missing_ok=True)
    start = time.monotonic()
    labels = args.modules or list(MODULES)
    if args.together:
        run_module(", ".join(labels), [m for label in labels for m in todo.get(label, [])], args.max_children)
    else:
        for label in labels:
            seconds = run_module(label, todo.get(label, []), args.max_children)
            print(f"mutation: {label}: {seconds:.0f} s", flush=True)
    print(f"mutation: total {time.monotonic() - start:.0f} s wall\n")
    report(sample, labels=labels if sample is None else None)  # a whole-module run reports those modules only
    return 0


if __name__ == "__main__":
    sys.exit(main())
