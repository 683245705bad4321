"""The report's figure sections: robustness curves and grids, Hessian spectra, landscapes, learning curves."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import TypeVar

from rlflat.report import figures as F
from rlflat.report import probe_data as P
from rlflat.report import robustness_data as RD
from rlflat.report.captions import normalized_return_words
from rlflat.report.context import Context, add_figure, label
from rlflat.report.study import load_learning_curves, load_robustness, median_run

T = TypeVar("T")
_DENSITY_WORDS = {"slq": "stochastic Lanczos quadrature", "exact": "exact eigenvalues, Gaussian-smoothed"}
_SOLVER_WORDS = {"eigsh": "Lanczos (scipy eigsh)", "exact": "exact eigendecomposition"}


def _method_words(methods: set[str], words: Mapping[str, str], neutral: str) -> str:
    if not methods:
        return neutral
    return " / ".join(words.get(m, m) for m in sorted(methods))


def section_robustness(ctx: Context) -> None:
    ctx.doc.heading("Robustness under shifted dynamics")
    robust = load_robustness(ctx.study)
    curves, labels = RD.robustness_curves(robust)
    add_figure(
        ctx,
        "robustness_curves",
        f"{normalized_return_words(ctx.runs)} vs perturbation, per algorithm: mean over runs with a "
        f"95% bootstrap CI band (descriptive); dashed: the evaluator's collapse threshold {ctx.collapse_frac:g}.",
        lambda: F.plot_robustness_curves(
            curves, ctx.palette, labels, threshold=ctx.collapse_frac, seed=ctx.seed, n_boot=ctx.fig_boot
        ),
    )
    grids = RD.robustness_grids(robust)
    if not grids:
        ctx.doc.note("Figure 'dynamics_grid' skipped: no 2-D dynamics grid was evaluated.")
    for g in grids:
        title = f"{g.task}: {g.family.replace(':', ' × ')}"
        add_figure(
            ctx,
            f"dynamics_grid_{g.task}_{g.family.replace(':', '-')}",
            f"{title}: mean normalised return over the grid of factors, per algorithm (mean over runs).",
            functools.partial(F.plot_dynamics_grid, g.data, g.x_label, g.y_label, title),
        )


def section_sharpness(ctx: Context) -> None:
    study = ctx.study
    run_algo = dict(zip(study.runs["run_id"].astype(str), study.runs["algo"].astype(str), strict=True))
    ctx.doc.heading("Sharpness: spectra and landscapes")
    probes = P.probe_arrays(study)
    solvers, densities = P.spectrum_methods(ctx.probe_meta)
    add_figure(
        ctx,
        "hessian_density",
        "Hessian eigenvalue density of the policy loss ("
        + _method_words(densities, _DENSITY_WORDS, "as computed by the probe")
        + "), one line per run, log scale.",
        lambda: F.plot_hessian_density(probes, run_algo, ctx.palette),
    )
    add_figure(
        ctx,
        "hessian_top_eigenvalues",
        "Top Hessian eigenvalues of each run ("
        + _method_words(solvers, _SOLVER_WORDS, "probe's eigensolver")
        + ", dots) with the per-algorithm mean and bootstrap 95% CI (bars, descriptive).",
        lambda: F.plot_top_eigenvalues(probes, run_algo, ctx.palette, seed=ctx.seed, n_boot=ctx.fig_boot),
    )
    pick = ctx.primary
    seeds = dict(zip(study.runs["run_id"].astype(str), study.runs.get("seed", study.runs["run_id"]), strict=True))
    why = f"the run with the median {label(pick) if pick else 'seed'} per algorithm, as change from the trained "
    why += "parameters along filter-normalised random directions."

    def representative(data: dict[str, T]) -> tuple[dict[str, T], dict[str, str]]:
        chosen = median_run(ctx.runs, pick, data)
        names = {algo: f"{algo} (seed {seeds.get(run, '?')})" for algo, run in chosen.items()}
        return {algo: data[run] for algo, run in chosen.items()}, names

    one_d = {}
    one_labels: dict[str, str] = {}
    for kind in F.LANDSCAPE_KINDS:
        found = {r: c for r, a in probes.items() if (c := F.landscape_1d(a, kind)) is not None}
        one_d[kind], names = representative(found)
        one_labels.update(names)
    add_figure(
        ctx,
        "landscape_1d",
        "1-D loss (left) and episode-return (right) landscapes of " + why,
        lambda: F.plot_landscape_1d(one_d, one_labels, ctx.palette),
    )
    for kind, name in (("loss", "landscape_2d"), ("return", "landscape_2d_return")):
        two_d, two_labels = representative(
            {r: s for r, a in probes.items() if (s := F.landscape_2d(a, kind)) is not None}
        )
        add_figure(
            ctx,
            name,
            f"2-D {kind} landscape of " + why,
            functools.partial(F.plot_landscape_2d, two_d, two_labels, kind),
        )


def section_training(ctx: Context) -> None:
    ctx.doc.heading("Training")
    learning = load_learning_curves(ctx.study)
    add_figure(
        ctx,
        "learning_curves",
        "Episode return during training vs environment steps, binned onto a common grid per task: mean over "
        "runs with a 95% bootstrap CI band (descriptive).",
        lambda: F.plot_learning_curves(learning, ctx.palette, seed=ctx.seed, n_boot=ctx.fig_boot),
    )
