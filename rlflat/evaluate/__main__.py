"""``python -m rlflat.evaluate RUN``: robustness of a trained policy under shifted dynamics and noise.

Without family options the task's default suite is swept; with any of --suite/--grid/--random/--action-noise/
--obs-noise only the requested families run (plus the nominal reference row).
"""

from __future__ import annotations

if __name__ == "__main__":  # --help and argument errors answer before the heavy imports below (rlflat.fastcli)
    from rlflat.fastcli import answer_early

    answer_early("evaluate")

import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from rlflat.cli import ArgumentParser, add_loading_flags, run_cli, set_torch_threads
from rlflat.errors import RlflatError
from rlflat.evaluate.api import METRICS_FILE, NOMINAL_EPISODES, TABLE_FILE, default_out, evaluate_run, resolve_task
from rlflat.evaluate.budget import check_rollout_memory
from rlflat.evaluate.metrics import NORMALIZATIONS
from rlflat.evaluate.rollout import BACKENDS
from rlflat.evaluate.suites import SuiteSpec, count_settings, level_count, parse_grids, parse_levels, parse_suite
from rlflat.tasks.spec import PROTOCOLS


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog="python -m rlflat.evaluate",
        description="Evaluate a policy under perturbed dynamics and noise; write robustness.parquet and the "
        "robustness block of metrics.json.",
    )
    parser.add_argument("path", help="run directory (model.zip + config.json) or any SB3 on-policy .zip")
    parser.add_argument("--task", help="task name (required for a bare .zip; a run dir records its own)")
    parser.add_argument("--out", help="output folder (default: the run dir; <stem>-evaluate/ beside a zip)")
    parser.add_argument("--force", action="store_true", help="replace an earlier evaluation at the output")
    parser.add_argument("--suite", help="parameters to sweep one at a time: a,b,c | default | all")
    parser.add_argument("--grid", action="append", default=[], help="2-D grid over a:b (repeatable)")
    parser.add_argument("--factors", action="append", default=[], metavar="NAME=F1,F2,...",
                        help="explicit factors for one parameter's sweep (repeatable)")  # fmt: skip
    parser.add_argument("--points", type=int,
                        help="factors per 1-D sweep, log-spaced, and noise levels (default 21); with --grid and no 1-D "
                             "family, factors per grid axis")  # fmt: skip
    parser.add_argument("--grid-points", type=int, help="factors per 2-D grid axis (default 11)")
    parser.add_argument(
        "--severities",
        default="0.5,2",
        help="declared severities (factors): reported per parameter, always evaluated, and their [min, max] is the "
        "box of collapsed_fraction_box (default 0.5,2)",
    )
    parser.add_argument("--random", type=int, default=0, help="random settings, log-uniform in the box")
    parser.add_argument("--random-seed", type=int, default=0, help="seed drawing the --random settings (default 0)")
    parser.add_argument("--action-noise", help="levels lo:hi | a,b,c (sigma; probability for discrete)")
    parser.add_argument("--obs-noise", help="levels lo:hi | a,b,c (Gaussian sigma on the raw observation)")
    parser.add_argument(
        "--protocol", choices=PROTOCOLS, default="default",
        help="how perturbations are applied: default (MuJoCo-consistent) or lee_yoon (Lee & Yoon's code; "
        "docs/hopper_lee_yoon.md)",
    )  # fmt: skip
    parser.add_argument("--episodes", type=int, default=20, help="episodes per setting (default 20)")
    parser.add_argument("--seed", type=int, default=0, help="episode j of every setting resets with seed+j")
    parser.add_argument("--rng-seed", type=int, default=0, help="seed of the noise/sampling generator")
    parser.add_argument(
        "--stochastic",
        action="store_true",
        help="sample actions from the policy instead of its mode (gSDE policies: independent per-step Gaussian "
        "noise with gSDE's std, not SB3's exploration matrix held for sde_sample_freq steps)",
    )
    parser.add_argument("--collapse-frac", type=float, default=0.5, help="collapse threshold (default 0.5)")
    parser.add_argument(
        "--normalization",
        choices=NORMALIZATIONS,
        default="task",
        help="task: (R - R_low) / (R_ref - R_low) with the spec's constants, comparable across runs (default); "
        "nominal: per run, 1 at its own nominal return",
    )
    parser.add_argument(
        "--nominal-episodes", type=int, default=NOMINAL_EPISODES, help="episodes of the nominal row (default 100)"
    )
    parser.add_argument("--no-inert", action="store_true", help="skip the inert/saturated settings check")
    parser.add_argument("--backend", choices=BACKENDS, default="auto",
                        help="simulator: batched (rlflat's vectorised sims), gym (Gymnasium's env), auto (batched where available)")  # fmt: skip
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help="processes stepping Gymnasium envs (MuJoCo, Box2D; default: every usable core; 1: none)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_loading_flags(parser)
    return parser


def _severities(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise RlflatError(f"--severities {text!r} must be factors F1,F2,... (e.g. 0.5,2)") from None


def _factors(texts: Sequence[str]) -> dict[str, list[float]]:
    factors: dict[str, list[float]] = {}
    for text in texts:
        name, sep, values = text.partition("=")
        try:
            factors[name.strip()] = [float(v) for v in values.split(",") if v.strip()]
        except ValueError:
            raise RlflatError(f"--factors {text!r} must be NAME=F1,F2,... with numbers") from None
        if not sep or not factors[name.strip()]:
            raise RlflatError(f"--factors {text!r} must be NAME=F1,F2,...")
    return factors


def _resolve_points(args: Any) -> tuple[int, int]:
    """``--points`` and ``--grid-points`` as used: ``--points`` sizes the grids when they are the only sweep
    asked for (it would otherwise change nothing), and is refused where nothing would use it."""
    one_d = bool(args.suite or args.factors or args.action_noise or args.obs_noise)
    default_suite = not (one_d or args.grid or args.random)
    points, grid_points = args.points, args.grid_points
    if points is not None and not (one_d or default_suite):
        if not args.grid:
            raise RlflatError(
                f"--points {points}: no 1-D sweep, noise family or grid to apply it to (--random draws settings)"
            )
        if grid_points is not None:
            raise RlflatError(f"--points {points} with --grid-points {grid_points} and no 1-D sweep: give one of them")
        grid_points = points
    return (21 if points is None else points), (11 if grid_points is None else grid_points)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.points, args.grid_points = _resolve_points(args)
    set_torch_threads(args.threads)
    task = resolve_task(args.path, args.task)
    factors = _factors(args.factors)
    parameters = parse_suite(task, args.suite) if args.suite else ()
    parameters += tuple(name for name in factors if name not in parameters)
    dynamics = SuiteSpec(
        parameters=parameters,
        grids=parse_grids(task, args.grid),
        points=args.points,
        grid_points=args.grid_points,
        severities=_severities(args.severities),
        random=args.random,
        random_seed=args.random_seed,
        factors=factors,
        protocol=args.protocol,
    )
    if args.episodes > 0:  # refuse an oversize suite before any of it is made (the evaluator checks again)
        noise = sum(level_count(text, args.points) + 1 for text in (args.action_noise, args.obs_noise) if text)
        check_rollout_memory(task, count_settings(task, dynamics, extra_levels=noise), args.episodes)
        check_rollout_memory(task, 1, args.nominal_episodes, what="evaluate (nominal row)")
    suite = replace(
        dynamics,
        action_noise=parse_levels(args.action_noise, args.points, "--action-noise") if args.action_noise else (),
        obs_noise=parse_levels(args.obs_noise, args.points, "--obs-noise") if args.obs_noise else (),
    )
    table, block = evaluate_run(
        args.path,
        task,
        args.out,
        suite=suite,
        episodes=args.episodes,
        seed=args.seed,
        deterministic=not args.stochastic,
        rng_seed=args.rng_seed,
        collapse_frac=args.collapse_frac,
        normalization=args.normalization,
        nominal_episodes=args.nominal_episodes,
        detect_inert=not args.no_inert,
        backend=args.backend,
        progress=False if args.no_progress else None,
        force=args.force,
        workers=args.workers,
        trust=args.trust,
        vecnormalize=args.vecnormalize,
    )
    out = Path(args.out) if args.out else default_out(args.path)
    print(_summary(block, len(table), out))
    return 0


def _summary(block: dict[str, Any], rows: int, out: Path) -> str:
    lines = [
        f"{block['task']}: nominal return {block['nominal_return']:.2f} +- {block['nominal_return_std']:.2f} "
        f"over {block.get('nominal_episodes', block['episodes'])} episodes"
        f"{' (UNSOLVED: below ' + format(block['solved_threshold'], 'g') + ')' if block.get('unsolved') else ''}; "
        f"{rows} settings, {block['episodes']} episodes each",
        f"normalised: {block['normalization'].get('formula')} ({block['normalization'].get('mode', 'nominal')})",
    ]
    if block.get("inert_settings") or block.get("saturated_settings"):
        lines.append(
            f"  {block['inert_settings']} inert setting(s) (dynamics equal to nominal) and "
            f"{block['saturated_settings']} saturated one(s) (equal to another factor): see robustness.parquet"
        )
    for name, curve in block["parameters"].items():
        factor = curve["collapse_factor"]
        where = (
            "none within range"
            if factor is None
            else f"x{factor:.3g} in [{', '.join(f'x{f:.3g}' for f in sorted(curve['collapse_bracket']))}]"
        )
        lines.append(f"  {name:<16} auc {curve['auc']:.3f}  collapse {where}")
    for family, curve in block.get("noise", {}).items():
        level = curve["collapse_level"]
        lines.append(f"  {family:<16} auc {curve['auc']:.3f}  collapse {'none' if level is None else f'{level:.3g}'}")
    for family, grid in [
        *block.get("grids", {}).items(),
        *([("random", block["random"])] if "random" in block else []),
    ]:
        lines.append(
            f"  {family:<16} mean normalised {grid['mean_normalized_return']:.3f}  "
            f"collapsed {grid['collapsed_fraction']:.1%}"
        )
    nearest = block.get("collapse_log_factor_min")
    if nearest is not None:
        bound = ">= " if block["censored"] else ""
        lines.append(
            f"nearest collapse |log factor| {bound}{nearest:.3g} ({block['collapse_log_factor_min_parameter']}"
            f"{', never collapsed within range' if block['censored'] else ''})"
        )
    auc = block["auc_mean"]
    lines.append(
        f"worst return {block['worst_return']:.2f}; collapsed {block['collapsed_fraction']:.1%} of settings; "
        f"mean auc {'n/a' if auc is None else f'{auc:.3f}'}"
    )
    lines.append(f"wrote {out / TABLE_FILE} and the robustness block of {out / METRICS_FILE}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(run_cli(main))
