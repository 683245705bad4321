"""The report renders from a synthetic study that follows the sweep/probe/evaluate on-disk formats.

The fixture mimics ``results/<study>/``: ``runs.parquet`` (flat dotted columns, one failed run), and per run
``train.csv``, ``robustness.parquet`` (nominal row, one-axis sweeps, a noise family, a 2-D grid) and
``probe.npz`` (eigenvalues, spectral density, 1-D and 2-D landscapes). Sharpness is built to predict the
robust AUC, and the Hessian trace is pure noise, so the report must state one association and say that the
other's CI spans zero.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from rlflat.cli import run_cli
from rlflat.errors import RlflatError
from rlflat.report import figures as F
from rlflat.report import render as R
from rlflat.report import select
from rlflat.report import stats as S
from rlflat.report import study as D
from rlflat.report.__main__ import main
from rlflat.report.settings import ReportSettings

ALGOS = ("ppo", "ppo_sam", "pg", "pg_sam")
NOMINAL = {"length": 0.5, "masspole": 0.1, "masscart": 1.0}
FAST: dict[str, Any] = {"n_boot": 150, "figure_n_boot": 60}
SURROGATE_HEADLINE = ["probe.lambda_max", "probe.trace", "probe.return_halving_sigma", "probe.kl_sigma0p1"]


def _robustness(rng: np.random.Generator, fragility: float) -> pd.DataFrame:
    """Rows as rlflat.evaluate writes them: absolute parameter values, family, factor, return stats."""
    rows = []

    def row(family: str, factor: float, values: dict[str, float], noise: float = 0.0) -> None:
        shift = abs(np.log(factor)) if factor == factor else 0.0
        norm = float(np.clip(1.0 / (1.0 + fragility * (shift**2 + noise) * 4) + rng.normal(0, 0.03), 0, 1.05))
        rows.append(
            {
                "family": family,
                "factor": factor,
                **{k: NOMINAL[k] * values.get(k, 1.0) for k in NOMINAL},
                "action_noise": noise,
                "obs_noise": 0.0,
                "episodes": 10,
                "return_mean": 500 * norm,
                "return_std": 10.0,
                "return_ci_low": 500 * norm - 5,
                "return_ci_high": 500 * norm + 5,
                "normalized_return": norm,
                "collapsed": norm < 0.5,
            }
        )

    row("nominal", 1.0, {})
    for name in ("length", "masspole"):
        for f in np.geomspace(0.25, 4.0, 7):
            row(name, float(f), {name: float(f)})
    for level in (0.0, 0.1, 0.2, 0.3):
        row("action_noise", float("nan"), {}, noise=level)
    for fa in np.geomspace(0.5, 2.0, 4):
        for fb in np.geomspace(0.5, 2.0, 4):
            rows.append(dict(rows[-1]))
            row("length:masscart", float("nan"), {"length": float(fa), "masscart": float(fb)})
            rows.pop(-2)
            rows[-1]["normalized_return"] = float(np.clip(1 - fragility * abs(np.log(fa * fb)), 0, 1))
    return pd.DataFrame(rows)


def _probe(rng: np.random.Generator, lam: float) -> dict[str, Any]:
    eig = np.sort(lam * np.geomspace(1, 0.01, 10) * rng.uniform(0.9, 1.1, 10))[::-1]
    grid = np.linspace(-0.2 * lam, 1.1 * lam, 200)
    density = np.exp(-((grid / (0.05 * lam)) ** 2)) + 0.01 * np.exp(-(((grid - lam) / (0.05 * lam)) ** 2))
    alphas = np.linspace(-1, 1, 21)
    betas = np.linspace(-1, 1, 15)
    loss1 = 0.5 * lam * alphas[None, :] ** 2 * rng.uniform(0.8, 1.2, (3, 1)) + 1.0
    loss2 = 1.0 + 0.5 * lam * (betas[:, None] ** 2 + 0.5 * betas[None, :] ** 2)
    return {  # key names as rlflat.probe.run writes them
        "hessian_top_eigenvalues": eig,
        "hessian_bottom_eigenvalues": -eig[::-1] / 100,
        "density_grid": grid,
        "density": density / np.trapezoid(density, grid),
        "landscape_alphas": alphas,
        "landscape_alphas_2d": betas,
        "landscape_1d_filter_loss": loss1[0],
        "landscape_1d_eigen_loss": 3 * loss1[0],
        "landscape_1d_filter_return": 500 - loss1[0],
        "landscape_2d_filter_loss": loss2,
        "landscape_2d_filter_return": 500 - loss2,
        "landscape_2d_eigen_loss": 3 * loss2,
        "observations": rng.normal(size=(8, 4)),
    }


def make_study(
    root: Path, algos: tuple[str, ...] = ALGOS, seeds: int = 3, *, failed: int = 1, files: bool = True
) -> Path:
    """A synthetic study: algos x 2 learning rates x seeds runs, plus ``failed`` failed runs."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for algo in algos:
        for lr in (1e-3, 3e-3):
            for seed in range(seeds):
                run_id = f"{algo}-lr{lr:g}-s{seed}"
                lam = float(np.exp(rng.normal(np.log(40 if algo.endswith("_sam") else 120), 0.6)))
                fragility = 0.3 * lam / 100 * rng.uniform(0.7, 1.3)
                robust = _robustness(rng, fragility)
                sweeps = robust[robust["family"].isin(["length", "masspole"])]
                point = float(0.5 / max(fragility, 0.05) ** 0.5)
                collapse = point if point < np.log(4.0) else float("nan")  # flat runs never collapse in range
                rows.append(
                    {
                        "run_id": run_id,
                        "algo": algo,
                        "task": "CartPole",
                        "seed": seed,
                        "status": "ok",
                        "hp.learning_rate": lr,
                        "hp.rho": 0.05 if algo.endswith("_sam") else np.nan,
                        "hp.update_rule": "sam" if algo.endswith("_sam") else "plain",
                        "train.return_mean": float(480 + rng.normal(0, 10)),
                        "probe.hessian.lambda_max": lam,
                        "probe.hessian.trace": float(rng.uniform(50, 500)),
                        "probe.hessian.trace_stderr": 3.0,
                        "probe.n_params": 4610,
                        "robustness.auc": float(sweeps["normalized_return"].mean()),
                        "robustness.worst_return": float(robust["return_mean"].min()),
                        "robustness.parameters.length.collapse_log_factor": collapse,
                        "robustness.parameters.length.collapsed_within_range": bool(np.isfinite(collapse)),
                        "robustness.frac_collapsed": float(robust["collapsed"].mean()),
                    }
                )
                if not files:
                    continue
                run_dir = root / run_id
                run_dir.mkdir(exist_ok=True)
                steps = np.sort(rng.integers(100, 30_000, 120))
                curve = 500 / (1 + np.exp(-(steps - 12_000) / 3000)) + rng.normal(0, 25, steps.size)
                pd.DataFrame(
                    {
                        "timesteps": steps,
                        "episode_return": curve,
                        "episode_length": curve.astype(int),
                        "wall_seconds": steps / 1e3,
                    }
                ).to_csv(run_dir / "train.csv", index=False)
                robust.to_parquet(run_dir / "robustness.parquet")
                np.savez(run_dir / "probe.npz", **_probe(rng, lam))
    for i in range(failed):
        rows.append({"run_id": f"broken-{i}", "algo": "ppo", "task": "CartPole", "seed": 99 + i, "status": "failed"})
    pd.DataFrame(rows).to_parquet(root / "runs.parquet")
    # the synthetic runs carry the surrogate Hessian only: declare it the headline, as a study config can
    (root / "study.yaml").write_text(
        f"name: {root.name}\ntasks: [CartPole]\nalgos: [{', '.join(algos)}]\n"
        f"report: {{headline_measures: [{', '.join(SURROGATE_HEADLINE)}]}}\n"
    )
    return root


@pytest.fixture(scope="module")
def report_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    study = make_study(tmp_path_factory.mktemp("study") / "cartpole_sam")
    return R.build_report([study], seed=0, **FAST)


def test_report_writes_every_figure_and_references_it(report_dir: Path) -> None:
    md = (report_dir / "report.md").read_text()
    html = (report_dir / "report.html").read_text()
    expected = {
        "correlation_heatmap",
        "sharpness_vs_robustness",
        "robustness_curves",
        "dynamics_grid_CartPole_length-masscart",
        "hessian_density",
        "hessian_top_eigenvalues",
        "landscape_1d",
        "landscape_2d",
        "landscape_2d_return",
        "learning_curves",
        "within_algorithm",
    }
    written = {p.stem for p in (report_dir / "figures").glob("*.png")}
    assert written == expected
    for name in expected:
        assert f"figures/{name}.png" in md
    assert html.count("data:image/png;base64,") == len(expected)
    assert "skipped" not in md and "failed (" not in md
    tables = {p.stem for p in (report_dir / "tables").glob("*.csv")}
    assert {"runs", "correlations", "granulated_kendall", "aggregates", "comparisons", "never_collapsed"} <= tables


def test_html_is_self_contained(report_dir: Path) -> None:
    html = (report_dir / "report.html").read_text()
    sources = re.findall(r"""src\s*=\s*["']([^"']*)""", html)
    assert sources and all(s.startswith("data:") for s in sources)
    links = re.findall(r"""href\s*=\s*["']([^"']*)""", html)  # the contents' anchors and the CSVs beside it
    ids = set(re.findall(r"""id\s*=\s*["']([^"']*)""", html))
    assert all(h[1:] in ids if h.startswith("#") else (report_dir / h).is_file() for h in links)
    assert "<link" not in html and "<script" not in html and "@import" not in html


def test_report_states_findings_and_spanning_zero(report_dir: Path) -> None:
    md = (report_dir / "report.md").read_text()
    assert "1 failed run(s) excluded" in md
    assert "Hessian λ_max vs robust AUC on CartPole, across runs (between + within algorithms): Spearman ρ = -" in md
    assert "runs entered; this n detects |ρ| ≥" in md  # every correlation sentence states n and its power
    assert "## Flatness or algorithm?" in md  # 3 seeds per (algorithm x learning rate): no stratum of 4 runs
    assert "left out (fewer than 4 runs) pg, learning_rate=0.001 (3)" in md and "No stratum has enough runs" in md
    assert "the CI excludes zero: sharper runs were less robust" in md
    assert "the CI spans zero: no evidence" in md  # the trace is noise
    assert re.search(
        r"- ppo_sam (raised|lowered) nominal return .* lowered Hessian λ_max by [^ ]+ \[CI [^]]+\], flatter.*relative to ppo on CartPole",
        md,
    )
    assert "pg_sam vs pg" in md
    assert re.search(r"had median min collapse log-factor [^,]+, [1-6]/6 vs [0-6]/6 runs never collapsed", md)
    assert "Runs right-censored (never collapsed" in md
    gk = pd.read_csv(report_dir / "tables" / "granulated_kendall.csv")
    assert set(gk["factor"]) == {"algo", "hp.learning_rate", "overall", "kendall_all"}  # rho/update_rule follow algo


def test_describe_correlation_says_when_ci_spans_zero() -> None:
    row = {
        "task": "CartPole",
        "measure": "probe.trace",
        "metric": "robustness.auc_mean",
        "method": "spearman",
        "estimate": 0.1,
        "ci_low": -0.2,
        "ci_high": 0.4,
        "n": 12,
        "p_value": 0.7,
        "reason": "",
    }
    text = S.describe_correlation(row, "Hessian trace", "robust AUC")
    assert "Spearman ρ = 0.10 [CI -0.20, 0.40] over 12 runs (permutation p = 0.7)" in text
    assert "the CI spans zero: no evidence of an association" in text


def test_missing_per_run_files_skip_figures_with_a_note(tmp_path: Path) -> None:
    study = make_study(tmp_path / "bare", algos=("ppo", "ppo_sam"), seeds=2, failed=0, files=False)
    out = R.build_report([study], tmp_path / "out", **FAST)
    md = (out / "report.md").read_text()
    assert "Figure 'learning_curves' skipped" in md and "Figure 'hessian_density' skipped" in md
    assert (out / "figures" / "sharpness_vs_robustness.png").exists()


def test_two_studies_merge_and_need_out(tmp_path: Path) -> None:
    a = make_study(tmp_path / "a", algos=("ppo", "ppo_sam"), seeds=2, failed=0, files=False)
    b = make_study(tmp_path / "b", algos=("pg", "pg_sam"), seeds=2, failed=0, files=False)
    with pytest.raises(RlflatError, match="--out"):
        R.build_report([a, b], **FAST)
    out = R.build_report([a, b], tmp_path / "compare", **FAST)
    md = (out / "report.md").read_text()
    assert "ppo_sam vs ppo" in md and "pg_sam vs pg" in md and "from " in md


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        ("missing", "does not exist"),
        ("empty", "is empty"),
        ("no_table", "has no runs.parquet"),
        ("one_run", "1 successful run"),
    ],
)
def test_unreportable_studies_raise_one_line_errors(tmp_path: Path, setup: str, message: str) -> None:
    study = tmp_path / "s"
    if setup != "missing":
        study.mkdir()
    if setup == "no_table":
        (study / "stray.txt").write_text("x")
    if setup == "one_run":
        pd.DataFrame([{"run_id": "r", "algo": "ppo", "task": "CartPole", "status": "ok"}]).to_parquet(
            study / "runs.parquet"
        )
    with pytest.raises(RlflatError, match=message) as info:
        R.build_report([study], **FAST)
    assert "\n" not in str(info.value)


def test_cli_exit_code_two_on_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "empty").mkdir()
    assert run_cli(main, [str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
    assert run_cli(main, [str(tmp_path / "empty"), "--n-boot", "0"]) == 2


def test_palette_is_fixed_and_shades_variants_of_one_hue() -> None:
    a = F.algo_palette(["ppo", "ppo_sam", "pg", "pg_sam", "ppo_asam"])
    b = F.algo_palette(["ppo_sam", "ppo", "pg"])
    assert a["ppo_sam"] == b["ppo_sam"] and a["ppo"] == b["ppo"]
    assert len(set(a.values())) == 5
    assert F.split_algo("ppo_asam") == ("ppo", "asam") and F.split_algo("a2c") == ("a2c", "")


def test_factor_columns_skip_seed_and_algo_aliases() -> None:
    runs = pd.DataFrame(
        {
            "algo": ["ppo", "ppo", "ppo_sam", "ppo_sam"],
            "task": "CartPole",
            "hp.rule": ["plain", "plain", "sam", "sam"],
            "hp.rho": [np.nan, np.nan, 0.01, 0.05],
            "hp.seed": [0, 1, 0, 1],
        }
    )
    assert D.factor_columns(runs) == ["algo", "hp.rho"]


def test_columns_as_the_sweep_flattens_metrics_json(tmp_path: Path) -> None:
    """rlflat.sweep writes probe.lambda_max, robustness.auc_mean, per-parameter collapse blocks and bookkeeping."""
    study = make_study(tmp_path / "real", algos=("ppo", "ppo_sam"), seeds=3, failed=0, files=False)
    runs = pd.read_parquet(study / "runs.parquet")
    runs = runs.rename(
        columns={
            "probe.hessian.lambda_max": "probe.lambda_max",
            "probe.hessian.trace": "probe.trace",
            "robustness.auc": "robustness.auc_mean",
        }
    ).drop(columns=["probe.hessian.trace_stderr", "probe.n_params"])
    runs["path"] = runs["run_id"]
    runs["probe.loss"] = "ppo_clip"
    runs["probe.loss_value"] = np.linspace(0, 1, len(runs))
    runs["probe.seed"] = 0
    runs["probe.wall_seconds"] = np.linspace(1, 2, len(runs))
    runs["robustness.collapse_frac"] = 0.5
    runs["robustness.nominal_return_std"] = np.linspace(0, 1, len(runs))
    runs.to_parquet(study / "runs.parquet")
    loaded = D.load_study([study]).runs
    assert select.measure_columns(loaded) == ["probe.lambda_max", "probe.trace"]
    assert "robustness.nominal_return_std" not in select.metric_columns(loaded)
    out = R.build_report([study], tmp_path / "out", **FAST)
    md = (out / "report.md").read_text()
    assert "Hessian λ_max vs robust AUC on CartPole" in md
    assert "min collapse log-factor" in md


def test_cli_rejects_negative_seed_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    study = make_study(tmp_path / "s", algos=("ppo", "ppo_sam"), seeds=2, failed=0, files=False)
    assert run_cli(main, [str(study), "--seed", "-1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "--seed" in err


# ----------------------------------------------------------------------------- a real tiny study

TINY_STUDY = """
name: tiny
tasks: [CartPole]
algos: [ppo, ppo_sam]
seeds: 2
steps: 3000
grid: {n_epochs: [4]}
probe:
  quick: true
  batches: 2
  batch: 256
  batch_envs: 4
  measures: [hessian, trace, density, perturbation, landscape]
  top_k: 2
  trace_probes: 4
  density_probes: 1
  density_steps: 10
  density_grid: 100
  n_directions: 2
  sigmas: [0.1, 1.0]
  episodes: 1
  landscape_points: 5
  landscape_points_2d: 3
  landscape_episodes: 1
evaluate:
  suite: {parameters: [length, masspole], grids: ["length:masscart"], points: 3}
  episodes: 2
report: {n_boot: 50, n_perm: 99, include_unsolved: true}  # a few thousand steps never solve CartPole
"""


@pytest.fixture(scope="module")
def real_study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The whole chain on a tiny CartPole study (serial sweep: train -> probe -> evaluate), ~15 s."""
    from rlflat.sweep import parse_study_config, run_sweep

    out = tmp_path_factory.mktemp("real") / "tiny"
    result = run_sweep(parse_study_config(TINY_STUDY, "tiny.yaml"), out=out, backend="serial", progress=False)
    assert not result.failed
    return out


def _supported_figures(study: Path) -> set[str]:
    """Every figure kind the runs' files can support, decided from the files, not from the report."""
    keys: set[str] = set()
    for npz in study.glob("*/probe.npz"):
        with np.load(npz) as data:
            keys |= set(data.files)
    robust = pd.concat([pd.read_parquet(p) for p in study.glob("*/robustness.parquet")])
    wanted = {"correlation_heatmap", "sharpness_vs_robustness", "robustness_curves", "within_algorithm"}
    wanted |= {f"dynamics_grid_CartPole_{f.replace(':', '-')}" for f in robust["family"].unique() if ":" in f}
    if {"density_grid", "density"} <= keys:
        wanted.add("hessian_density")
    if "hessian_top_eigenvalues" in keys:
        wanted.add("hessian_top_eigenvalues")
    if "landscape_1d_filter_loss" in keys:
        wanted.add("landscape_1d")
    if "landscape_2d_filter_loss" in keys:
        wanted.add("landscape_2d")
    if "landscape_2d_filter_return" in keys:
        wanted.add("landscape_2d_return")
    if list(study.glob("*/train.csv")):
        wanted.add("learning_curves")
    return wanted


def test_report_renders_every_supported_figure_from_a_real_study(real_study: Path, tmp_path: Path) -> None:
    out = R.build_report([real_study], tmp_path / "report", figure_n_boot=50)
    md = (out / "report.md").read_text()
    written = {p.stem for p in (out / "figures").glob("*.png")}
    supported = _supported_figures(real_study)
    assert len(supported) >= 10  # the tiny study exercises every kind of figure
    assert written == supported
    for name in supported:
        assert f"figures/{name}.png" in md
    assert "failed (" not in md
    assert "Hessian eigenvalue density of the policy loss (stochastic Lanczos quadrature)" in md  # probe.json method
    assert "report.n_boot" not in md and "4 successful runs" in md
    corr = pd.read_csv(out / "tables" / "correlations.csv")
    assert set(corr["scope"]) == {S.ACROSS, S.WITHIN_ALGO}
    assert corr["ci_low"].isna().all()  # four runs: too few for any interval


def test_skipped_runs_are_named_and_strict_refuses(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    study = make_study(tmp_path / "study")
    runs = sorted(p for p in study.iterdir() if p.is_dir())
    (runs[0] / "train.csv").write_text("\x00\x01garbage")
    (runs[1] / "probe.npz").unlink()
    (runs[2] / "robustness.parquet").write_bytes(b"PAR1 truncated")
    out = tmp_path / "report"
    assert run_cli(main, [str(study), "--out", str(out), "--strict", "--no-progress"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert not out.exists() and err[-1].startswith("error: 3 run(s) or run file(s) skipped")
    assert f"skipped study/{runs[1].name}: probe.npz missing" in err
    assert any(line.startswith(f"skipped study/{runs[0].name}: train.csv corrupt") for line in err)
    assert any(line.startswith(f"skipped study/{runs[2].name}: robustness.parquet corrupt") for line in err)
    R.build_report([study], out, seed=0, **FAST)  # without --strict: reported, the same three named
    assert sum(line.startswith("skipped ") for line in capsys.readouterr().err.splitlines()) == 3
    assert (out / "report.md").exists()


def test_sharpness_axes_carry_the_probe_standard_error() -> None:
    """Each run's point has a horizontal bar of +- its ``<measure>_se`` (the SE over the probe's batches)."""
    from matplotlib.container import ErrorbarContainer

    runs = pd.DataFrame(
        {
            "run_id": [f"r{i}" for i in range(4)],
            "algo": ["ppo", "ppo", "ppo_sam", "ppo_sam"],
            "task": "CartPole",
            "probe.fisher_lambda_max": [10.0, 20.0, 5.0, 8.0],
            "probe.fisher_lambda_max_se": [1.0, 2.0, 0.5, 0.25],
            "robustness.auc_mean": [0.2, 0.1, 0.5, 0.4],
        }
    )
    empty = pd.DataFrame(columns=["task", "measure", "metric", "method", "estimate", "ci_low", "ci_high"])
    _fig, axes = F.plot_sharpness_vs_robustness(
        runs, ["probe.fisher_lambda_max"], "robustness.auc_mean", empty, F.algo_palette(["ppo", "ppo_sam"]), n_boot=20
    )
    widths = []
    for container in axes[0].containers:
        if isinstance(container, ErrorbarContainer):
            for segment in container.lines[2][0].get_segments():
                widths.append(round(float(segment[1][0] - segment[0][0]), 6))
    assert sorted(widths) == [0.5, 1.0, 2.0, 4.0]  # 2 se per run


def test_reliability_section_marks_unfit_measures(tmp_path: Path) -> None:
    study = make_study(tmp_path / "cartpole_sam", files=False)
    runs = pd.read_parquet(study / "runs.parquet")
    runs["probe.hessian.lambda_max_se"] = 0.1 * runs["probe.hessian.lambda_max"]
    runs.to_parquet(study / "runs.parquet")
    pd.DataFrame(
        {
            "measure": ["hessian.lambda_max", "fisher_lambda_max"],
            "n": [20, 20],
            "icc": [0.5, 0.95],
            "icc_ci95": ["[0.1, 0.8]", "[0.9, 0.98]"],
            "variance_ratio": [1.2, 40.0],
        }
    ).to_csv(study / "probe_reliability.csv", index=False)
    settings = ReportSettings(headline_measures=["probe.hessian.lambda_max", "probe.fisher_lambda_max"])
    out = R.build_report([study], tmp_path / "report", seed=0, settings=settings, **FAST)
    md = (out / "report.md").read_text()
    assert "## Probe uncertainty and reliability" in md
    assert "UNFIT by reliability: Hessian λ_max" in md  # the declared headline measure with ICC 0.5
    table = pd.read_csv(out / "tables" / "probe_reliability.csv")
    assert table.set_index("measure")["verdict"].to_dict() == {
        "hessian.lambda_max": "unfit",
        "fisher_lambda_max": "headline",
    }
    uncertainty = pd.read_csv(out / "tables" / "probe_uncertainty.csv")
    assert uncertainty["median SE / |value|"].tolist() == pytest.approx([0.1])


# -- headline measures chosen by reliability ---------------------------------------------------------------------


def test_headline_choice_needs_pooled_reliability_and_no_unfit_family() -> None:
    from rlflat.report.reliability import headline_choice

    pooled = pd.DataFrame({"measure": ["entropy", "a", "b", "c", "d"], "icc": [0.99, 0.95, 0.97, 0.92, 0.85]})
    families = pd.DataFrame(
        {
            "measure": ["a", "a", "b", "b", "c", "c"],
            "family": ["pg", "ppo"] * 3,
            "icc": [0.85, 0.9, 0.99, 0.79, 0.9, 0.95],
        }
    )
    assert headline_choice(pooled) == ["b", "a", "c"]  # >= 0.9, most reliable first, confounds left out
    assert headline_choice(pooled, families) == ["a", "c"]  # b is unfit inside ppo; d never reached 0.9


def test_default_headline_measures_are_the_committed_reliability_tables_choice() -> None:
    """The report's default headline list is what the committed test-retest tables choose, less the measures that
    qualify but are explicitly left out with a reason: change the tables (a new reliability study) and this fails
    until the list, or that record, follows."""
    from rlflat.report.reliability import FAMILY_FILE, RELIABILITY_FILE, headline_choice
    from rlflat.report.settings import DEFAULT_MEASURES, QUALIFIED_NOT_DECLARED

    study = Path(__file__).resolve().parents[1] / "results" / "cartpole_v2"
    pooled, families = pd.read_csv(study / RELIABILITY_FILE), pd.read_csv(study / FAMILY_FILE)
    assert int(pooled["n"].max()) >= 20 and set(families["family"]) == {"pg", "ppo"}
    chosen = headline_choice(pooled, families)
    left_out = [m.removeprefix("probe.") for m in QUALIFIED_NOT_DECLARED]
    declared = [m.removeprefix("probe.") for m in DEFAULT_MEASURES]
    assert set(left_out) <= set(chosen) and not set(left_out) & set(declared)
    assert declared == [m for m in chosen if m not in left_out]
