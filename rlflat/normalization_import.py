"""``python -m rlflat.normalization import PKL --trust``: SB3's ``vecnormalize.pkl`` into ``normalization.json``.

A zoo or SB3 user's statistics exist only as a pickle, which rlflat reads only with ``--trust``. Converting them
once (the one time the pickle is trusted) gives the plain-data file every later ``probe`` / ``evaluate`` takes
with ``--vecnormalize normalization.json`` and no ``--trust``. The JSON holds the same float64 numbers (they
round-trip exactly). Also here: where a bare zip's statistics probably lie (beside it, or in the zoo's
``<run>/<env>/vecnormalize.pkl``), for the note a command prints when it does not apply them.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

from rlflat.cli import ArgumentParser, run_cli
from rlflat.errors import RlflatError
from rlflat.io import write_json
from rlflat.normalization import NORMALIZATION_FILE, PICKLE_FILE, load_stats, load_trusted_pickle


def convert(pickle_path: Path, out: Path | None = None, force: bool = False) -> Path:
    """Read the trusted pickle and write its statistics as rlflat JSON (atomically); the JSON's path."""
    if not pickle_path.is_file():
        raise RlflatError(f"{pickle_path}: no such file")
    target = out if out is not None else pickle_path.with_name(NORMALIZATION_FILE)
    if target.exists() and not force:
        raise RlflatError(f"{target} already exists; add --force to replace it, or choose --out")
    stats = load_trusted_pickle(pickle_path)
    write_json(target, stats.to_json())
    load_stats(target)  # what later commands will read: refuse now, not then, if it does not validate
    return target


def stray_statistics(zip_path: Path) -> Iterator[Path]:
    """Statistics files that probably belong to a bare zip: beside it (SB3's habit) or in the zoo's layout
    (``logs/<algo>/<Env>_<n>/<Env>.zip`` with ``<Env>/vecnormalize.pkl``; ``best_model.zip`` shares it)."""
    folder = zip_path.parent
    candidates = [folder / NORMALIZATION_FILE, folder / PICKLE_FILE]
    zoo = [zip_path.with_suffix("") / NORMALIZATION_FILE, zip_path.with_suffix("") / PICKLE_FILE]
    if folder.is_dir():  # best_model.zip and friends: the run's one <Env>/ folder, marked by the zoo's args.yml
        zoo += sorted(
            p
            for d in folder.iterdir()
            if d.is_dir() and (d / "args.yml").is_file()
            for p in (d / NORMALIZATION_FILE, d / PICKLE_FILE)
        )
    seen: set[Path] = set()
    for path in [*candidates, *zoo]:
        if path not in seen and path.is_file():
            seen.add(path)
            yield path


def stray_note(zip_path: Path) -> str | None:
    """The note a command prints when statistics lie near a bare zip it evaluates without them (None if none)."""
    found = list(stray_statistics(zip_path))
    if not found:
        return None
    json = next((p for p in found if p.name == NORMALIZATION_FILE), None)
    if json is not None:
        return f"note: {json} lies near {zip_path.name} but is not applied; pass --vecnormalize {json} to use it"
    pkl = found[0]
    return (
        f"note: {pkl} (SB3's VecNormalize statistics) lies near {zip_path.name} but is not applied; convert it once "
        f"with 'python -m rlflat.normalization import {pkl} --trust', then pass --vecnormalize "
        f"{pkl.with_name(NORMALIZATION_FILE)}"
    )


def _parser() -> ArgumentParser:
    parser = ArgumentParser(prog="python -m rlflat.normalization", description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["import"], help="import: convert SB3's vecnormalize.pkl")
    parser.add_argument("pickle", type=Path, help="SB3's vecnormalize.pkl (e.g. a zoo run's <Env>/vecnormalize.pkl)")
    parser.add_argument("--trust", action="store_true",
                        help="required: reading a pickle can run code it names; only for files you trust")  # fmt: skip
    parser.add_argument("--out", type=Path, help=f"output file (default: {NORMALIZATION_FILE} beside the pickle)")
    parser.add_argument("--force", action="store_true", help="replace an existing output file")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if not args.trust:
        raise RlflatError(
            f"{args.pickle}: reading a pickle can run code it names; add --trust if you trust the file "
            f"(the conversion is the only time it is read)"
        )
    target = convert(args.pickle, args.out, args.force)
    print(f"wrote {target}; use it with --vecnormalize {target} (no --trust needed)")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
