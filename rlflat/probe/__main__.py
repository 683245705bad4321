"""``python -m rlflat.probe RUN``: sharpness measures of one trained policy (Hessian, perturbation, worst case).

Bad input (a path that is neither a run dir nor an SB3 zip, a bad flag or option) is one line on stderr and exit
code 2, with nothing written.
"""

from __future__ import annotations

if __name__ == "__main__":  # --help and argument errors answer before the heavy imports below (rlflat.fastcli)
    from rlflat.fastcli import answer_early

    answer_early("probe")

import argparse
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rlflat.cli import ArgumentParser, add_loading_flags, run_cli, set_torch_threads
from rlflat.probe.directions import KINDS
from rlflat.probe.losses import LOSSES, SCOPES
from rlflat.probe.options import DEFAULT_MEASURES, MEASURES, ProbeOptions
from rlflat.probe.output import PROBE_JSON
from rlflat.probe.run import default_out, last_timing, probe_run

__all__ = ["main"]


_DESCRIPTION = "Sharpness measures of one trained policy: Hessian spectrum, perturbation, worst case, landscape."


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _parser() -> ArgumentParser:
    d = ProbeOptions()
    p = ArgumentParser(prog="python -m rlflat.probe", description=_DESCRIPTION)
    p.add_argument("path", help="run directory (from rlflat.train) or any SB3 PPO/A2C model .zip")
    p.add_argument("--task", help="task alias or Gymnasium id (default: the run's config.json task)")
    p.add_argument("--out", type=Path, help="output directory (default: the run dir; <stem>-probe/ beside a zip)")
    p.add_argument("--measures", help=f"comma list of {','.join(MEASURES)} (default {','.join(DEFAULT_MEASURES)})")
    p.add_argument("--loss", help=f"{'/'.join(LOSSES)} (default {d.loss})")
    p.add_argument("--scope", help=f"{'/'.join(SCOPES)} (default {d.scope}; critic params do not enter the losses)")
    p.add_argument("--batches", type=int, help=f"independent probe batches B, each measure's SE is over them "
                   f"(default {d.batches})")  # fmt: skip
    p.add_argument("--batch", type=int, help=f"transitions per probe batch, whole episodes (default {d.batch})")
    p.add_argument("--seed", type=int, help=f"seed of the probe batches and the random directions (default {d.seed})")
    p.add_argument("--gamma", type=float,
                   help="discount of the batch's advantages (default: the run's, or the zip's readable gamma, else 0.99)")  # fmt: skip
    p.add_argument("--gae-lambda", type=float,
                   help="GAE lambda of the batch's advantages (default: the run's, or the zip's readable value, else 0.95)")  # fmt: skip
    p.add_argument("--top-k", type=int, help=f"eigenvalues at each end (default {d.top_k})")
    p.add_argument("--exact-threshold", type=int,
                   help=f"dense Hessian + full spectrum when n_params <= this (default {d.exact_threshold})")  # fmt: skip
    p.add_argument("--directions", help=f"{'/'.join(KINDS)} for average-case sharpness (default {d.directions})")
    p.add_argument(
        "--normalize-1d", action="store_true", help="normalise biases in filter directions (default: zeroed)"
    )
    p.add_argument("--n-directions", type=int, help=f"random directions K (default {d.n_directions})")
    p.add_argument("--sigmas", type=_floats, help=f"ascending sigma grid (default {','.join(map(str, d.sigmas))})")
    p.add_argument("--reference-sigmas", type=_floats,
                   help=f"sigmas reported as single numbers (default {','.join(map(str, d.reference_sigmas))})")  # fmt: skip
    p.add_argument("--episodes", type=int, help=f"episodes per perturbed policy (default {d.episodes})")
    p.add_argument("--rho", type=float, help=f"raw worst-case radius (default {d.rho})")
    p.add_argument("--adaptive-rho", type=float, help=f"adaptive (ASAM) worst-case radius (default {d.adaptive_rho})")
    p.add_argument("--return-sigmas", type=_floats,
                   help=f"sigmas of the return drop (default {','.join(map(str, d.return_sigmas))})")  # fmt: skip
    p.add_argument("--return-episodes", type=int, help=f"episodes per return-drop policy (default {d.return_episodes})")
    p.add_argument("--keskar-eps", type=float, help=f"Keskar et al.'s box size epsilon (default {d.keskar_eps})")
    p.add_argument("--landscape-points", type=int, help=f"1-D slice points (default {d.landscape_points})")
    p.add_argument("--landscape-span", type=float, help=f"slice half-width (default {d.landscape_span})")
    p.add_argument("--interpolate", metavar="RUN_B", help="also probe the linear path to this policy")
    p.add_argument(
        "--connect",
        metavar="RUN_B",
        help="instead of the sharpness probe: loss and return barriers along the line and a fitted Bezier curve "
        "to this policy (rlflat.probe.connect; uses --batches, --batch, --seed, --episodes, --quick)",
    )
    p.add_argument("--connect-steps", type=int, help="Adam steps of the curve's control point (default 400)")
    p.add_argument("--quick", action="store_true", help="smaller sizes for smoke tests")
    p.add_argument("--no-metrics", action="store_true", help="do not add the probe block to metrics.json")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--force", action="store_true", help="replace an earlier probe at the output")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    add_loading_flags(p)
    return p


_OPTION_FLAGS = (
    "measures",
    "loss",
    "scope",
    "batches",
    "batch",
    "seed",
    "top_k",
    "exact_threshold",
    "directions",
    "n_directions",
    "sigmas",
    "reference_sigmas",
    "episodes",
    "rho",
    "adaptive_rho",
    "return_sigmas",
    "return_episodes",
    "keskar_eps",
    "landscape_points",
    "landscape_span",
    "interpolate",
    "gamma",
    "gae_lambda",
)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    set_torch_threads(args.threads)
    if args.connect is not None:
        return _connect(args)
    options: dict[str, Any] = {name: getattr(args, name) for name in _OPTION_FLAGS}
    options["quick"] = args.quick
    if args.normalize_1d:
        options["ignore_1d"] = False
    if args.no_metrics:
        options["update_metrics"] = False
    options = {k: v for k, v in options.items() if v is not None}
    out_dir = args.out if args.out is not None else default_out(args.path)
    result = probe_run(
        args.path,
        task=args.task,
        out=args.out,
        trust=args.trust,
        vecnormalize=args.vecnormalize,
        force=args.force,
        progress=False if args.no_progress else None,
        **options,
    )
    _print_summary(result, last_timing(), out_dir)
    return 0


_CONNECT_FLAGS = {
    "batches": "batches",
    "batch": "batch",
    "seed": "seed",
    "episodes": "episodes",
    "connect_steps": "steps",
}


def _connect(args: argparse.Namespace) -> int:
    """``--connect RUN_B``: the curve probe alone (rlflat.probe.connect), its JSON, NPZ and figure."""
    from rlflat.errors import RlflatError
    from rlflat.probe.connect import connect_runs
    from rlflat.report.figures.curves import plot_connection
    from rlflat.report.figures.style import save_figure

    other = [
        f"--{k.replace('_', '-')}" for k in _OPTION_FLAGS if k not in _CONNECT_FLAGS and getattr(args, k) is not None
    ]
    other += ["--normalize-1d"] * args.normalize_1d + ["--no-metrics"] * args.no_metrics
    if other:
        raise RlflatError(f"--connect runs the curve probe alone; {', '.join(other)} only apply to the sharpness probe")
    options = {dest: getattr(args, k) for k, dest in _CONNECT_FLAGS.items() if getattr(args, k) is not None}
    result, path = connect_runs(
        args.path,
        args.connect,
        task=args.task,
        out=args.out,
        force=args.force,
        trust=args.trust,
        vecnormalize=args.vecnormalize,
        quick=args.quick,
        **options,
    )
    fig, _ = plot_connection(result, title=f"{Path(result['a']).name} to {Path(result['b']).name}")
    figure = save_figure(fig, path.with_suffix(".png"))
    print(f"connect ({result['config']['batches']} replicates; +- is the SE over them; loss {result['loss_name']})")
    for name in ("line", "curve"):
        entry = result[name]
        print(
            f"{name}: loss barrier {_pm(entry, 'loss_barrier')}  mean loss {_pm(entry, 'loss_mean')}  "
            f"return barrier {_pm(entry, 'return_barrier')}"
        )
    print(f"distance |a - b| {_pm(result, 'distance')}  control offset from midpoint {_pm(result, 'control_offset')}")
    print(path)
    print(figure)
    return 0


def _print_summary(result: Mapping[str, Any], seconds: Mapping[str, float], out_dir: Path) -> None:
    """The headline numbers, each as mean +- standard error over the replicate batches."""
    hess = result.get("hessian") or {}
    batches = result["config"].get("batches", 1)
    print(
        f"loss {result['loss']['name']} = {_pm(result['loss'], 'value')}  n_params {result['n_params']}  "
        f"({batches} batches of ~{_fmt((result.get('batch') or {}).get('size'))} transitions; +- is the SE over them)"
    )
    if hess:
        print(
            f"hessian of {result['loss']['name']} ({hess.get('method')}): lambda_max {_pm(hess, 'lambda_max')}  "
            f"lambda_min {_pm(hess, 'lambda_min')}  trace {_pm(hess, 'trace')} ({hess.get('trace_method')})"
        )
    fisher = result.get("fisher")
    if fisher:
        print(
            f"fisher: lambda_max {_pm(fisher, 'lambda_max')}  trace {_pm(fisher, 'trace')}  "
            f"rao_norm {_pm(fisher, 'rao_norm')}  adaptive lambda_max {_pm(fisher, 'adaptive_lambda_max')}"
        )
    confounds = result.get("confounds") or {}
    shown = [f"{k} {_pm(confounds, k)}" for k in ("entropy", "max_action_prob", "log_std") if k in confounds]
    if shown:
        print("confounds: " + "  ".join(shown))
    avg = (result.get("perturbation") or {}).get("average")
    if avg:
        for kind in (k for k in KINDS if k in avg):
            print(f"perturbation {kind}: return-halving sigma {_pm(avg[kind], 'return_halving_sigma')}")
    worst = (result.get("perturbation") or {}).get("worst_case") or {}
    for ball in (b for b in ("raw", "adaptive") if worst.get(b)):
        multi, one = worst[ball].get("multi_step") or {}, worst[ball].get("one_step") or {}
        print(
            f"worst case ({ball} ball): loss increase {_pm(multi, 'sharpness')} (one SAM step: {_pm(one, 'sharpness')})"
        )
    if interpolation := result.get("interpolation"):
        print(
            f"interpolation to {interpolation.get('other')}: loss barrier {_pm(interpolation, 'loss_barrier')}  "
            f"return barrier {_pm(interpolation, 'return_barrier')}"
        )
    _print_return_and_published(result)
    print("seconds: " + ", ".join(f"{k} {v:.2f}" for k, v in seconds.items()))
    print(out_dir / PROBE_JSON)


def _print_return_and_published(result: Mapping[str, Any]) -> None:
    ret = result.get("return_sharpness") or {}
    for kind in ("filter", "adaptive"):
        entry = ret.get(kind) or {}
        for i, sigma in enumerate(ret.get("sigmas") or ()):
            value = {"drop": entry["drop"][i], "drop_se": (entry.get("drop_se") or [None] * (i + 1))[i]}
            print(f"return drop {kind} sigma {sigma:g}: {_pm(value, 'drop')} (of R_ref - R_low)")
    if cliff := result.get("cliff"):
        print(
            f"cliff (Sullivan et al. 2022): share of lines {_pm(cliff, 'indicator')}  drop / range {_pm(cliff, 'drop_over_range')}"
        )
    if keskar := result.get("keskar"):
        print(f"Keskar eps-sharpness (eps {keskar['eps']:g}): {_pm(keskar, 'sharpness')} %")
    if mag := result.get("magnitude_aware"):
        print(f"Jiang magnitude-aware sigma' {_pm(mag, 'sigma')}  1/sigma'^2 {_pm(mag, 'flatness')}")


def _pm(entry: Mapping[str, Any], key: str) -> str:
    """``x +- se`` (just ``x`` without a standard error)."""
    value, se = entry.get(key), entry.get(f"{key}_se")
    return _fmt(value) if se is None or value is None else f"{_fmt(value)} +- {_fmt(se)}"


def _fmt(x: Any) -> str:
    return "null" if x is None else f"{x:.4g}"


if __name__ == "__main__":
    sys.exit(run_cli(main))
