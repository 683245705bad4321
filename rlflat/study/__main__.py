"""``python -m rlflat.study {check,render,power} PREREG``: validate, render to Markdown, recompute the power table.

* ``check``: validate the file and print its body hash;
* ``render``: write ``preregistration.md`` beside it (``--out`` elsewhere; ``--check`` exits 1 when it differs);
* ``power``: recompute the power rows from the design (``--no-simulate`` for the analytic ones only) and print
  them as YAML; ``--check`` exits 1 when the file's analytic values differ from the recomputed ones.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import yaml

from rlflat.cli import ArgumentParser, run_cli
from rlflat.io import write_text
from rlflat.study.preregistration import load_preregistration


def _parser() -> ArgumentParser:
    parser = ArgumentParser(prog="python -m rlflat.study", description=__doc__)
    parser.add_argument("command", choices=["check", "render", "power"])
    parser.add_argument("preregistration", help="studies/<name>/preregistration.yaml")
    parser.add_argument("--out", default=None, help="render: Markdown path (default: beside the YAML)")
    parser.add_argument("--check", action="store_true", help="compare instead of writing (exit 1 on a difference)")
    parser.add_argument("--no-simulate", action="store_true", help="power: analytic rows only")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    loaded = load_preregistration(args.preregistration)
    if args.command == "check":
        print(f"{loaded.path}: valid; body sha256 {loaded.body_hash}; {len(loaded.prereg.amendments)} amendment(s)")
        return 0
    if args.command == "render":
        from rlflat.study.render import render_markdown

        out = Path(args.out) if args.out else loaded.path.with_suffix(".md")
        text = render_markdown(loaded)
        if args.check:
            same = out.exists() and out.read_text() == text
            print(f"{out}: {'up to date' if same else 'differs from the YAML: re-render it'}")
            return 0 if same else 1
        write_text(out, text)
        print(out)
        return 0
    from rlflat.study.power import design_power_rows

    rows = design_power_rows(loaded.prereg, simulate=not args.no_simulate)
    if args.check:
        stored = [(r.hypothesis, r.solve_rate, r.analytic) for r in loaded.prereg.power.rows]
        fresh = [(r.hypothesis, r.solve_rate, r.analytic) for r in rows]
        print("power rows match the design" if stored == fresh else f"power rows differ: file {stored}, now {fresh}")
        return 0 if stored == fresh else 1
    print(yaml.safe_dump([r.model_dump() for r in rows], sort_keys=False), end="")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
