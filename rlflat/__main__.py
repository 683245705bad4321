"""``rlflat COMMAND ...`` (or ``python -m rlflat COMMAND ...``): train, probe, evaluate, sweep or report.

The same commands as ``python -m rlflat.<command>``, under one name; ``--help`` and argument errors answer
before torch is imported (:mod:`rlflat.fastcli`).
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

from rlflat.fastcli import COMMANDS, answer_early

USAGE = "usage: rlflat {" + ",".join(COMMANDS) + "} ...   (rlflat COMMAND --help for a command's options)"
SUMMARY = {
    "train": "train one policy into a self-describing run directory",
    "probe": "sharpness measures of a run or any SB3 zip",
    "evaluate": "returns under perturbed dynamics (robustness suites and grids)",
    "sweep": "a study: train, probe and evaluate every run of a config (resumable)",
    "report": "statistics, figures and report.md/.html of one or more studies",
}


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        stream = sys.stdout if args else sys.stderr
        print(USAGE, file=stream)
        print(__doc__.splitlines()[0].replace("``", ""), file=stream)
        for name, text in SUMMARY.items():
            print(f"  {name:<9} {text}", file=stream)
        return 0 if args else 2
    command, rest = args[0], args[1:]
    if command not in COMMANDS:
        print(f"error: rlflat: unknown command {command!r}; valid commands: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    answer_early(command, rest)
    from rlflat.cli import run_cli

    module = importlib.import_module(COMMANDS[command][0])
    return run_cli(module.main, rest)


if __name__ == "__main__":
    sys.exit(main())
