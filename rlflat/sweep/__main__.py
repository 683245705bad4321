"""``python -m rlflat.sweep CONFIG``: run a study (train -> probe -> evaluate per run) into ``results/<name>/``.

Exit status: 0 when every run is finished and ok, 1 when runs failed or were rejected (the summary lists their
logs), 2 for a bad config or flag (one line, before anything is written), 130 when interrupted (rerun the
command to resume).
"""

from __future__ import annotations

if __name__ == "__main__":  # --help and argument errors answer before the heavy imports below (rlflat.fastcli)
    from rlflat.fastcli import answer_early

    answer_early("sweep")

import sys
from collections.abc import Sequence
from pathlib import Path

from rlflat.cli import ArgumentParser, run_cli
from rlflat.errors import RlflatError
from rlflat.sweep.config import load_study_config
from rlflat.sweep.executors import BACKENDS
from rlflat.sweep.overrides import with_overrides
from rlflat.sweep.runner import default_study_dir, run_sweep, summary_lines
from rlflat.sweep.table import RUNS_FILE, collect, skipped_runs


def _parser() -> ArgumentParser:
    parser = ArgumentParser(prog="python -m rlflat.sweep", description=__doc__.splitlines()[0])
    parser.add_argument("config", nargs="?", type=Path, help="study config, e.g. configs/smoke.yaml")
    parser.add_argument("--out", type=Path, help="study directory (default results/<name>)")
    parser.add_argument("--workers", type=int, help="parallel runs (default: the usable cores; ray: cluster CPUs)")
    parser.add_argument("--backend", default="local", choices=BACKENDS,
                        help="local: process pool; ray: Ray tasks; serial: in this process (debugging)")  # fmt: skip
    parser.add_argument("--address", help="Ray cluster address (default $RAY_ADDRESS, else a local Ray)")
    parser.add_argument("--device", default="cpu", help="torch device for training")
    parser.add_argument("--population", default="auto", metavar="auto|K",
                        help="train, probe and evaluate runs of one shape K at a time in one process (default auto: "
                        "K from memory and workers; 1: one SB3 run per process)")  # fmt: skip
    parser.add_argument("--dry-run", action="store_true", help="list the runs and which are done; run nothing")
    parser.add_argument("--collect", type=Path, metavar="STUDY_DIR", help="only rebuild STUDY_DIR/runs.parquet")
    parser.add_argument("--no-progress", action="store_true", help="no progress display")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="change a hyperparameter (or steps, seeds, tasks, algos, name) for every run; recorded "
                             "in the study's study.yaml (repeatable)")  # fmt: skip
    parser.add_argument("--force", action="store_true",
                        help="replace an existing study.yaml that differs only in settings no result depends on")  # fmt: skip
    parser.add_argument("--strict", action="store_true",
                        help="with --collect: refuse (exit 2, nothing written) when a run folder is skipped")  # fmt: skip
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.collect is not None:
        if args.config is not None:
            parser.error("--collect takes a study directory, not a config")
        if not args.collect.is_dir():
            raise RlflatError(f"--collect {args.collect}: not a study directory")
        skipped = skipped_runs(args.collect)
        for name, reason in skipped:
            print(f"skipped {name}: {reason}", file=sys.stderr)
        if skipped and args.strict:
            raise RlflatError(f"{len(skipped)} run folder(s) skipped (listed above); --strict: {RUNS_FILE} not written")
        table = collect(args.collect)
        failed = int((table["status"] == "failed").sum()) if len(table) else 0
        print(f"{args.collect / RUNS_FILE}: {len(table)} runs ({failed} failed, {len(skipped)} skipped)")
        return 0
    if args.config is None:
        parser.error("CONFIG is required (or --collect STUDY_DIR)")
    study = with_overrides(load_study_config(args.config), args.overrides)
    command = ["python", "-m", "rlflat.sweep", *(argv if argv is not None else sys.argv[1:])]
    result = run_sweep(
        study,
        args.out,
        backend=args.backend,
        workers=args.workers,
        address=args.address,
        device=args.device,
        progress=not args.no_progress,
        dry_run=args.dry_run,
        command=command,
        force=args.force,
        population=args.population,
    )
    if args.dry_run:
        study_dir = args.out or default_study_dir(study)
        for planned in result.plan:
            pending = f" (to do: {', '.join(planned.remaining)})" if planned.state == "partial" else ""
            print(f"{planned.state:<8} {planned.spec.label}{pending}")
        states = ("done", "failed", "partial", "todo")
        counts = {s: sum(1 for p in result.plan if p.state == s) for s in states}
        shown = ", ".join(f"{n} {s}" for s, n in counts.items())
        print(f"{study_dir}: {len(result.plan)} runs ({shown}); stages: {', '.join(study.config.stages)}")
        grouped = [len(names) for names in result.populations if len(names) > 1]
        if grouped:
            alone = sum(1 for names in result.populations if len(names) == 1)
            print(f"--population {args.population}: {len(grouped)} populations of {', '.join(map(str, grouped))} runs, "
                  f"{alone} runs alone")  # fmt: skip
        return 0
    for line in summary_lines(result):
        print(line)
    return 1 if result.failed else 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
