"""Test-retest reliability of every probe measure: is a measure a property of the policy, or of the probe batch?

Probes each of N policies twice with independent batch sets (probe seeds 0 and 1: disjoint replicate seeds, so
fresh episodes, directions and probe vectors) and, per scalar measure of the ``metrics.json`` probe block
(``probe.<x>`` in runs.parquet), reports over the N policies:

* ICC(2,1): two-way random effects, absolute agreement, single measurement (Shrout & Fleiss, 1979; McGraw &
  Wong, 1996), from pingouin's ``intraclass_corr`` (type ``ICC2``), with its 95% CI;
* the between-policy / within-policy variance ratio: var over policies of the policy means / mean over policies
  of the variance between the two probes (within-policy variance is the test-retest noise of one probe).

A measure with ICC >= 0.9 may headline a report; < 0.8 is marked unfit (README "Probe reliability"). The table
is written as CSV (``--out``, default ``<study>/probe_reliability.csv``), which the report renders when present.

Usage (the reference study's 20 policies, retrained from their configs since their zips are not committed)::

    python -m rlflat.sweep STUDY_TRAIN_ONLY.yaml --out /tmp/ref --workers 1     # train stage only
    OMP_NUM_THREADS=1 python benchmarks/probe_reliability.py /tmp/ref [--batches 4] [--quick]

A measure whose computation changed is re-probed alone and its rows replaced in the committed tables, the others
kept (the ``probes`` column names each row's probe folder), e.g. the exact Fisher trace (docs/corrections.md)::

    OMP_NUM_THREADS=1 python benchmarks/probe_reliability.py /tmp/ref --measures fisher \\
        --work results/cartpole_v2/.reliability_exact_trace --out results/cartpole_v2/probe_reliability.csv \\
        --replace fisher_trace,fisher_adaptive_trace

Every probe goes to a scratch directory (``--work``, default ``<study>/.reliability``); run dirs are not touched.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from rlflat.algos.names import parse_algorithm
from rlflat.io import write_atomic
from rlflat.probe.invariance import NOT_MEASURES, family
from rlflat.probe.output import metrics_block
from rlflat.probe.run import last_timing, make_options, probe_run
from rlflat.report.reliability import HEADLINE_ICC as HEADLINE
from rlflat.report.reliability import UNFIT_ICC as UNFIT
from rlflat.report.reliability import verdicts


def _runs(study: Path, work: Path) -> list[Path]:
    """Published run dirs (hidden names are a sweep's staging areas) with a model, or with both probes already in
    ``work`` (a clone carries the committed probes but no model zips: the tables recompute from those)."""

    def probed(run: Path) -> bool:
        return all((work / run.name / f"seed{seed}" / "probe.json").exists() for seed in (0, 1))

    return sorted(
        p
        for p in study.iterdir()
        if p.is_dir() and not p.name.startswith(".") and ((p / "model.zip").exists() or probed(p))
    )


def algorithm_of(run: str) -> str:
    """``pg_sam-CartPole-s3-...`` -> ``pg_sam``: a sweep's run dir names start with the algorithm."""
    return run.split("-", 1)[0]


def algorithm_family(run: str) -> str:
    """``pg_sam-CartPole-s3-...`` -> ``pg``: the base algorithm, flatness variants pooled with it."""
    return parse_algorithm(algorithm_of(run))[0]


def dealt(runs: list[Path]) -> list[Path]:
    """``runs`` dealt round-robin over their algorithms (in name order within each), so that any prefix
    (``--limit``) is a mixed population rather than the first algorithm's runs."""
    by_algo: dict[str, list[Path]] = {}
    for run in sorted(runs, key=lambda p: p.name):
        by_algo.setdefault(algorithm_of(run.name), []).append(run)
    queues = list(by_algo.values())
    return [q[i] for i in range(max(map(len, queues), default=0)) for q in queues if i < len(q)]


def probe_twice(run: Path, work: Path, options: dict[str, Any]) -> list[dict[str, Any]]:
    """The flat metrics block of two probes of ``run`` with probe seeds 0 and 1. A probe already in ``work`` with
    the same options is reused (an interrupted benchmark resumes; runs still training can be added later)."""
    blocks = []
    for seed in (0, 1):
        out = work / run.name / f"seed{seed}"
        wanted = asdict(make_options(seed=seed, update_metrics=False, **options))
        cached = out / "probe.json"
        result = json.loads(cached.read_text()) if cached.exists() else None
        config = {} if result is None else result["config"]
        stale = any(k in config and config[k] != json.loads(json.dumps(v)) for k, v in wanted.items())
        if result is None or stale:  # (options added since the cached probe are taken at their defaults)
            result = probe_run(run, out=out, seed=seed, update_metrics=False, progress=False, force=True, **options)
        blocks.append(metrics_block(result, out, run, last_timing()))
    return blocks


def reliability(values: pd.DataFrame) -> pd.DataFrame:
    """Per measure: ICC(2,1) with 95% CI (pingouin), variance ratio, N. ``values``: columns run, probe, measure,
    value."""
    import pingouin

    rows = []
    for measure, group in values.groupby("measure", sort=False):
        wide = group.pivot(index="run", columns="probe", values="value").dropna()
        n = len(wide)
        row: dict[str, Any] = {"measure": measure, "n": n, "icc": math.nan, "icc_ci95": "", "variance_ratio": math.nan}
        if n >= 3 and float(wide.to_numpy().std()) > 0:
            long = wide.reset_index().melt(id_vars="run", var_name="probe", value_name="value")
            rounding = pingouin.options.get("round.column.CI95")
            pingouin.options["round.column.CI95"] = None  # pingouin rounds the CI to 2 decimals by default
            try:
                table = pingouin.intraclass_corr(data=long, targets="run", raters="probe", ratings="value")
            finally:
                pingouin.options["round.column.CI95"] = rounding
            types = table.set_index("Type")
            icc2 = types.loc["ICC(A,1)" if "ICC(A,1)" in types.index else "ICC2"]  # McGraw & Wong's name / older
            row["icc"] = float(icc2["ICC"])
            low, high = icc2["CI95"] if "CI95" in icc2 else icc2["CI95%"]
            row["icc_ci95"] = f"[{low:.3f}, {high:.3f}]"  # 2 digits printed [1.00, 1.00] beside an ICC of 0.998
            within = float(wide.var(axis=1, ddof=1).mean())
            between = float(wide.mean(axis=1).var(ddof=1))
            row["variance_ratio"] = between / within if within > 0 else math.inf
        rows.append(row)
    return pd.DataFrame(rows).sort_values("icc", ascending=False, na_position="last").reset_index(drop=True)


def by_family(values: pd.DataFrame) -> pd.DataFrame:
    """:func:`reliability` within each algorithm family of >= 3 policies, stacked with a ``family`` column.

    Reliability is a property of a measure on a population: across a mixed ppo/pg set the families' different
    curvature inflates the between-policy variance, so a measure headlines only if it also holds within each."""
    families = values["run"].map(algorithm_family)
    parts = []
    for name, group in values.groupby(families, sort=True):
        if group["run"].nunique() >= 3:
            parts.append(reliability(group).assign(family=name))
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def _long(blocks: dict[str, list[dict[str, Any]]]) -> pd.DataFrame:
    rows = []
    for run, pair in blocks.items():
        for probe, block in enumerate(pair):
            for key, value in block.items():
                if family(key) in NOT_MEASURES or key.endswith("_se"):
                    continue
                if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
                    rows.append({"run": run, "probe": probe, "measure": key, "value": float(value)})
    return pd.DataFrame(rows)


def probes_label(work: Path, out: Path) -> str:
    """Where a table's rows were probed: ``work`` relative to the table's folder when inside it."""
    return (
        str(work.resolve().relative_to(out.resolve().parent))
        if work.resolve().is_relative_to(out.resolve().parent)
        else str(work)
    )


def merged(
    out: Path, table: pd.DataFrame, families: pd.DataFrame, replaced: list[str]
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The existing tables at ``out`` (and its ``_by_family``) with the rows of ``replaced`` taken from ``table`` /
    ``families``, most reliable first. Tables written before the ``probes`` column name their rows' probes unknown."""
    missing = sorted(set(replaced) - set(table["measure"]))
    if missing:
        raise ValueError(f"--replace names {', '.join(missing)}, not measured here; measured: "
                         f"{', '.join(table['measure'])}")  # fmt: skip
    parts = []
    for new, path in ((table, out), (families, out.with_name(out.stem + "_by_family.csv"))):
        old = pd.read_csv(path, keep_default_na=False, na_values=[""])
        old = old.drop(columns="verdict", errors="ignore")
        if "probes" not in old:
            old["probes"] = "unknown"
        keep = old[~old["measure"].isin(replaced)]
        both = pd.concat([keep, new[new["measure"].isin(replaced)]], ignore_index=True)[list(old.columns)]
        order = ["family", "icc"] if "family" in both else ["icc"]
        both = both.sort_values(order, ascending=[True, False][-len(order) :], na_position="last", kind="stable")
        parts.append(both.reset_index(drop=True))
    return parts[0], parts[1]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("study", type=Path, nargs="+",
                    help="study dirs whose run dirs hold model.zip or are probed in --work (N >= 20)")  # fmt: skip
    ap.add_argument("--batches", type=int, help="replicate batches per probe (default: the probe's)")
    ap.add_argument("--quick", action="store_true", help="the probe's --quick sizes (smoke runs)")
    ap.add_argument("--measures", help="probe measures, comma-separated (default: the probe's)")
    ap.add_argument("--limit", type=int, help="only the first N runs, dealt round-robin over algorithms")
    ap.add_argument("--work", type=Path, help="scratch dir for the probes (default <study>/.reliability)")
    ap.add_argument("--out", type=Path, help="CSV table (default <study>/probe_reliability.csv)")
    ap.add_argument("--replace", help="measures, comma-separated: write only their rows into the existing --out "
                    "tables (pooled and by family), keeping the other rows (a re-probe of changed measures)")  # fmt: skip
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    work = args.work or args.study[0] / ".reliability"
    runs = dealt([run for study in args.study for run in _runs(study, work)])[: args.limit]
    if len(runs) < 3:
        print(f"error: {len(runs)} run dirs with model.zip or both probes in {work} under {args.study}; need at least 3",
              file=sys.stderr)  # fmt: skip
        return 2
    options: dict[str, Any] = {"quick": args.quick}
    if args.batches is not None:
        options["batches"] = args.batches
    if args.measures is not None:
        options["measures"] = args.measures
    blocks: dict[str, list[dict[str, Any]]] = {}
    c0 = time.process_time()
    for i, run in enumerate(runs, 1):
        blocks[run.name] = probe_twice(run, work, options)
        print(f"[{i}/{len(runs)}] {run.name} ({time.process_time() - c0:.0f} s cpu so far)", flush=True)
    values = _long(blocks)
    out = args.out or args.study[0] / "probe_reliability.csv"
    table, families = reliability(values), by_family(values)
    table["probes"] = families["probes"] = probes_label(work, out)
    if args.replace is not None:
        replaced = [m.strip() for m in args.replace.split(",") if m.strip()]
        try:
            table, families = merged(out, table, families, replaced)
        except (ValueError, OSError) as exc:  # nothing written
            print(f"error: {exc}", file=sys.stderr)
            return 2
    table["verdict"] = verdicts(table, families if not families.empty else None)
    batches = blocks[runs[0].name][0]["batches"]
    write_atomic(out, lambda path: table.to_csv(path, index=False))
    family_out = out.with_name(out.stem + "_by_family.csv")
    if not families.empty:
        write_atomic(family_out, lambda path: families.to_csv(path, index=False))
    print(f"N = {len(runs)} policies, 2 probes each of B = {batches} batches; {time.process_time() - c0:.0f} s cpu")
    with pd.option_context("display.width", 160, "display.max_rows", 200):
        print(table.to_string(index=False, float_format=lambda x: f"{x:.3g}"))
        if not families.empty:
            wide = families.pivot(index="measure", columns="family", values="icc")
            print("\nICC(2,1) within each algorithm family:")
            print(wide.reindex(table["measure"]).to_string(float_format=lambda x: f"{x:.3g}"))
    chosen = table.loc[table["verdict"] == "headline", "measure"].tolist()  # most reliable first, as the table
    print(f"headline choice (ICC >= {HEADLINE} pooled, >= {UNFIT} within every family): {', '.join(chosen) or 'none'}")
    print(out, family_out if not families.empty else "")
    return 0


if __name__ == "__main__":
    sys.exit(main())
