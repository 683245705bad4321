"""The confirmatory study's preregistration: the committed file, its schema, its power, its hash lock, its tests.

Fast: nothing here trains. The sweep's refusal is exercised through ``python -m rlflat.sweep --dry-run`` and through
``run_sweep`` with the executor replaced by a no-op (the lock is written before any run starts).
"""

from __future__ import annotations

import itertools
import json
import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml
from scipy import stats as sps

from rlflat.cli import run_cli
from rlflat.errors import RlflatError
from rlflat.report.stats.registered import matched_difference_test, stratified_rank_test
from rlflat.study.__main__ import main as study_main
from rlflat.study.lock import LOCK_FILE, check_preregistration, read_lock
from rlflat.study.power import correlation_power_one_sided, design_power_rows, difference_power_one_sided
from rlflat.study.preregistration import body_hash, load_preregistration, parse_preregistration
from rlflat.study.render import render_markdown
from rlflat.sweep import load_study_config

ROOT = Path(__file__).resolve().parent.parent
PREREG = ROOT / "studies" / "confirmatory" / "preregistration.yaml"


@pytest.fixture(scope="module")
def loaded() -> Any:
    return load_preregistration(PREREG)


# --- the committed preregistration ------------------------------------------------------------------------------


def test_committed_preregistration_registers_h1_h2_h3_with_directions(loaded: Any) -> None:
    p = loaded.prereg
    by_id = {h.id: h for h in p.hypotheses}
    assert by_id["H1"].measure == "probe.fisher_adaptive_lambda_max" and by_id["H1"].direction == "negative"
    assert by_id["H2"].measure == "probe.fisher_adaptive_trace" and by_id["H2"].requires == {
        "probe.fisher_trace_method": "exact"
    }
    assert (by_id["H3"].treatment, by_id["H3"].control, by_id["H3"].direction) == ("ppo_sam", "ppo", "positive")
    assert {h.family for h in p.hypotheses} == set(p.analysis.families)
    assert p.amendments == [] and p.status == "registered"


def test_each_task_config_is_the_registered_design(loaded: Any) -> None:
    design = loaded.prereg.design
    total = 0
    for task in design.tasks:
        config = load_study_config(ROOT / task.config).config
        assert config.preregistration == "studies/confirmatory/preregistration.yaml"
        assert config.tasks == [task.task] and config.algos == task.algos
        assert config.seed_list == design.seeds
        assert config.grid == task.levels
        assert all(config.overrides.get(a, {}) == task.fixed for a in task.algos)
        assert config.probe == design.probe and config.evaluate == design.evaluate
        assert f"results/{config.name}" == task.study_dir
        total += 12 * len(design.seeds)
    assert total == 600


def test_registered_suites_and_thresholds_are_the_task_specs(loaded: Any) -> None:
    from rlflat.tasks import load_task

    for task in loaded.prereg.design.tasks:
        spec = load_task(task.task)
        assert list(spec.default_suite) == task.suite
        assert spec.solved_threshold == task.solved_threshold


def test_registered_seeds_were_never_used_by_a_committed_study(loaded: Any) -> None:
    """Fresh seeds: no committed study other than this preregistration's own blocks ever used them."""
    used: set[int] = set()
    for path in ROOT.glob("results/*/runs.parquet"):
        lock = path.parent / "preregistration.lock.json"
        if lock.exists() and json.loads(lock.read_text()).get("preregistration") == str(PREREG.relative_to(ROOT)):
            continue  # a block of the registered study itself
        used |= set(pd.read_parquet(path, columns=["seed"])["seed"].astype(int))
    assert used, "no committed runs table found"
    assert not used & set(loaded.prereg.design.seeds)


def test_rendered_markdown_is_the_yaml(loaded: Any) -> None:
    assert PREREG.with_suffix(".md").read_text() == render_markdown(loaded)


def test_power_table_is_recomputed_from_the_design(loaded: Any) -> None:
    rows = design_power_rows(loaded.prereg, simulate=False)
    assert [(r.hypothesis, r.solve_rate, r.strata, r.analytic) for r in rows] == [
        (r.hypothesis, r.solve_rate, r.strata, r.analytic) for r in loaded.prereg.power.rows
    ]
    # the targets: >= 80% for |rho| = 0.3 pooled and 0.5 per task, at the planning solve rate too
    assert all(r.analytic >= 0.8 and (r.simulated is None or r.simulated >= 0.8) for r in loaded.prereg.power.rows)


# --- power by hand ------------------------------------------------------------------------------------------------


def test_correlation_power_by_hand() -> None:
    # 12 strata of 7: n_eq = 3 + 12 * 4 = 51; se = sqrt((1 + 0.125) / 48); one-sided level 0.005
    se = math.sqrt(1.125 / 48)
    expected = sps.norm.cdf(math.atanh(0.5) / se - sps.norm.ppf(0.995))
    assert correlation_power_one_sided(0.5, [7] * 12, 0.005) == pytest.approx(expected, rel=1e-12)


def test_difference_power_by_hand() -> None:
    # 4 cells of 20 vs 10: sum w = 4 * 200 / 30
    expected = sps.norm.cdf(0.5 * math.sqrt(4 * 200 / 30) - sps.norm.ppf(0.99))
    assert difference_power_one_sided(0.5, [(20, 10)] * 4, 0.01) == pytest.approx(expected, rel=1e-12)


# --- schema refusals ------------------------------------------------------------------------------------------------


def _data() -> dict[str, Any]:
    return yaml.safe_load(PREREG.read_text())


def _refusal(data: dict[str, Any]) -> str:
    with pytest.raises(RlflatError) as info:
        parse_preregistration(yaml.safe_dump(data, sort_keys=False), "p.yaml")
    assert "\n" not in str(info.value)
    return str(info.value)


def test_schema_refuses_unknown_keys_families_and_undated_amendments() -> None:
    data = _data()
    data["hypothesis"] = []
    assert "unknown key 'hypothesis'" in _refusal(data)
    data = _data()
    data["hypotheses"][0]["family"] = "secondary"
    assert "unknown family 'secondary'; valid choices: primary, per_task" in _refusal(data)
    data = _data()
    data["amendments"] = [{"reason": "the LunarLander runs need box2d", "changes": "dropped LunarLander"}]
    assert "amendments.0.date" in _refusal(data) and "amendments.0.body_sha256" in _refusal(data)
    data = _data()
    data["design"]["seeds"] = [1, 2, 3]
    assert "design.seeds" in _refusal(data)


def test_body_hash_ignores_layout_and_amendments_but_not_content() -> None:
    data = _data()
    base = body_hash(data)
    assert body_hash(yaml.safe_load(yaml.safe_dump(data, sort_keys=True))) == base
    assert body_hash({**data, "amendments": [{"date": "2027-01-01", "reason": "x" * 12, "changes": "yyy"}]}) == base
    changed = _data()
    changed["analysis"]["alpha"] = 0.1
    assert body_hash(changed) != base


def test_cli_check_and_render(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    copy = tmp_path / "preregistration.yaml"
    shutil.copy(PREREG, copy)
    assert run_cli(study_main, ["check", str(copy)]) == 0
    assert "valid; body sha256" in capsys.readouterr().out
    assert run_cli(study_main, ["render", str(copy)]) == 0
    assert copy.with_suffix(".md").exists()
    assert run_cli(study_main, ["render", str(copy), "--check"]) == 0
    copy.write_text(copy.read_text().replace("alpha: 0.05", "alpha: 0.1"))
    assert run_cli(study_main, ["render", str(copy), "--check"]) == 1
    copy.write_text("schema: nope\n")
    assert run_cli(study_main, ["check", str(copy)]) == 2
    assert capsys.readouterr().err.count("\n") == 1


# --- the hash lock --------------------------------------------------------------------------------------------------


def _amend(path: Path, changes: str = "alpha 0.05 -> 0.05 (no change)", body: str | None = None) -> None:
    data = yaml.safe_load(path.read_text())
    digest = body or body_hash(data)
    data["amendments"] = [
        *data.get("amendments", []),
        {"date": "2026-12-09", "reason": "a task could not be run as registered", "changes": changes,
         "body_sha256": digest},
    ]  # fmt: skip
    path.write_text(yaml.safe_dump(data, sort_keys=False))


@pytest.fixture()
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of the preregistration and the CartPole config in a fresh directory (registered dirs resolve there)."""
    (tmp_path / "studies" / "confirmatory").mkdir(parents=True)
    (tmp_path / "configs").mkdir()
    shutil.copy(PREREG, tmp_path / "studies" / "confirmatory" / "preregistration.yaml")
    shutil.copy(ROOT / "configs" / "confirmatory_cartpole.yaml", tmp_path / "configs")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_lock_records_once_refuses_a_changed_body_and_accepts_an_amendment(workdir: Path) -> None:
    prereg = Path("studies/confirmatory/preregistration.yaml")
    study = Path("results/confirmatory_cartpole")
    check_preregistration(prereg, study, tasks=["CartPole"], record=False)
    assert read_lock(study) is None  # a dry check writes nothing
    first = check_preregistration(prereg, study, tasks=["CartPole"], record=True)
    lock = read_lock(study)
    assert lock is not None and lock["body_sha256"] == first.body_hash and lock["amendments"] == 0
    prereg.write_text(prereg.read_text().replace("n_perm: 9999", "n_perm: 19999"))
    with pytest.raises(RlflatError, match="changed after results/confirmatory_cartpole's first run") as info:
        check_preregistration(prereg, study, record=False)
    assert "\n" not in str(info.value)
    # another registered task's first run is refused too: the lock of CartPole's directory is consulted
    with pytest.raises(RlflatError, match="changed after"):
        check_preregistration(prereg, Path("results/confirmatory_acrobot"), tasks=["Acrobot"], record=True)
    _amend(prereg, "n_perm 9999 -> 19999", body="0" * 64)
    with pytest.raises(RlflatError, match="differs from its last amendment's body_sha256 000000000000"):
        check_preregistration(prereg, study)
    data = yaml.safe_load(prereg.read_text())
    data["amendments"][-1]["body_sha256"] = body_hash(data)
    prereg.write_text(yaml.safe_dump(data, sort_keys=False))
    amended = check_preregistration(prereg, study, record=True)
    lock = read_lock(study)
    assert lock is not None and lock["amendments"] == 1 and lock["body_sha256"] == amended.body_hash
    assert len(lock["history"]) == 2 and lock["first_run_started"] == lock["history"][0]["recorded_at"]
    data = yaml.safe_load(prereg.read_text())
    data["amendments"] = []
    prereg.write_text(yaml.safe_dump(data, sort_keys=False))
    with pytest.raises(RlflatError, match="amendments cannot be removed"):
        check_preregistration(prereg, study)
    with pytest.raises(RlflatError, match="task 'Hopper' is not registered"):
        check_preregistration(Path("studies/confirmatory/preregistration.yaml"), study, tasks=["Hopper"])


def test_sweep_refuses_a_changed_preregistration_in_one_line_exit_2(
    workdir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from rlflat.sweep import runner
    from rlflat.sweep.__main__ import main as sweep_main

    monkeypatch.setattr(runner, "run_jobs", lambda *args, **kwargs: None)  # nothing trains: the lock comes first
    config = "configs/confirmatory_cartpole.yaml"
    assert run_cli(sweep_main, [config, "--no-progress"]) == 0
    lock = read_lock("results/confirmatory_cartpole")
    assert lock is not None
    prereg = Path("studies/confirmatory/preregistration.yaml")
    prereg.write_text(prereg.read_text().replace("min_stratum: 4", "min_stratum: 3"))
    capsys.readouterr()
    assert run_cli(sweep_main, [config, "--no-progress", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "add an amendment" in err
    assert run_cli(sweep_main, [config, "--no-progress"]) == 2
    _amend(prereg, "min_stratum 4 -> 3")
    assert run_cli(sweep_main, [config, "--no-progress"]) == 0
    assert json.loads(Path("results/confirmatory_cartpole", LOCK_FILE).read_text())["amendments"] == 1


def test_sweep_refuses_a_config_that_departs_from_the_registered_design(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from rlflat.sweep.__main__ import main as sweep_main

    config = Path("configs/confirmatory_cartpole.yaml")
    config.write_text(config.read_text().replace("1008, 1009]", "1008, 1010]"))
    assert run_cli(sweep_main, [str(config), "--no-progress", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "departs from" in err and "seeds" in err
    assert not Path("results/confirmatory_cartpole").exists()


# --- the registered tests against hand computations -------------------------------------------------------------


def _spearman(x: np.ndarray, y: np.ndarray) -> float:
    return float(sps.spearmanr(x, y).statistic)


def test_stratified_rank_test_estimate_and_p_by_enumeration() -> None:
    rng = np.random.default_rng(3)
    x1, y1 = rng.normal(size=5), rng.normal(size=5)
    x2, y2 = rng.normal(size=4), rng.normal(size=4)
    x = np.r_[x1, x2, [1.0, 2.0]]
    y = np.r_[y1, y2, [3.0, 1.0]]
    strata = ["a"] * 5 + ["b"] * 4 + ["c"] * 2  # c has 2 runs < 4: listed, left out
    res = stratified_rank_test(x, y, strata, alternative="less", seed=0, n_perm=40000)
    r1, r2 = _spearman(x1, y1), _spearman(x2, y2)
    assert res.estimate == pytest.approx((5 * r1 + 4 * r2) / 9, abs=1e-12)
    assert res.n == 9 and res.n_strata == 2 and res.left_out == ["c: 2 runs < 4"]
    # exact one-sided p: every pair of within-stratum orderings (5! x 4! = 2,880)
    null = [
        (5 * _spearman(x1, y1[list(p)]) + 4 * _spearman(x2, y2[list(q)])) / 9
        for p in itertools.permutations(range(5))
        for q in itertools.permutations(range(4))
    ]
    exact = float(np.mean(np.array(null) <= res.estimate + 1e-12))
    assert res.p_value == pytest.approx(exact, abs=4 * math.sqrt(exact * (1 - exact) / 40000) + 1e-4)
    # Fisher-z interval at n_eq = 3 + 2 + 1 = 6
    se = math.sqrt((1 + res.estimate**2 / 2) / 3)
    z = math.atanh(res.estimate)
    assert (res.ci_low, res.ci_high) == pytest.approx((math.tanh(z - 1.959964 * se), math.tanh(z + 1.959964 * se)))


def test_stratified_rank_test_holds_its_level_under_the_null() -> None:
    rng = np.random.default_rng(11)
    rejections = 0
    for _ in range(300):
        x, y = rng.normal(size=40), rng.normal(size=40)
        res = stratified_rank_test(x, y, np.repeat(list("abcd"), 10), alternative="less", seed=rng, n_perm=199)
        rejections += res.p_value <= 0.05
    assert 0.02 <= rejections / 300 <= 0.09


def test_matched_difference_by_hand() -> None:
    values = np.array([1.0, 2.0, 3.0, 0.0, 1.0, 5.0, 7.0, 6.0, 4.0, 4.5, 9.0])
    treated = np.array([1, 1, 1, 0, 0, 1, 1, 0, 0, 0, 1], dtype=bool)
    cells = ["a"] * 5 + ["b"] * 5 + ["c"]  # c has one run: listed, left out
    res = matched_difference_test(values, treated, cells, alternative="greater", seed=0, n_perm=20000)
    # a: 2 - 0.5 = 1.5, w = 3*2/5 = 1.2; b: 6 - 14.5/3, w = 2*3/5 = 1.2
    d_a, d_b = 1.5, 6.0 - 14.5 / 3
    assert res.estimate == pytest.approx((d_a + d_b) / 2)
    var = (1.2**2 * (1.0 / 3 + 0.5 / 2) + 1.2**2 * (2.0 / 2 + np.var([6.0, 4.0, 4.5], ddof=1) / 3)) / 2.4**2
    assert res.ci_high - res.estimate == pytest.approx(1.959964 * math.sqrt(var), rel=1e-5)
    assert (res.n_treatment, res.n_control, res.left_out) == (5, 5, ["c: 1 treated, 0 control (needs >= 2 each)"])
    # exact one-sided p over all 10 x 10 relabellings within cells
    null = []
    for ta in itertools.combinations(range(5), 3):
        for tb in itertools.combinations(range(5), 2):
            la = np.isin(np.arange(5), ta)
            lb = np.isin(np.arange(5), tb)
            da = values[:5][la].mean() - values[:5][~la].mean()
            db = values[5:10][lb].mean() - values[5:10][~lb].mean()
            null.append((da + db) / 2)
    exact = float(np.mean(np.array(null) >= res.estimate - 1e-12))
    assert res.p_value == pytest.approx(exact, abs=4 * math.sqrt(exact * (1 - exact) / 20000) + 1e-4)


# --- the registered analysis end to end on synthetic runs ----------------------------------------------------------


def _synthetic_runs(prereg: Any, *, planted: bool, seed: int = 5) -> pd.DataFrame:
    """Every registered run, with a within-configuration effect (planted) or none; 3% below the threshold."""
    rng = np.random.default_rng(seed)
    rows = []
    bases: dict[tuple[Any, ...], float] = {}
    for task in prereg.design.tasks:
        key = task.minibatch
        for algo in task.algos:
            radii = task.levels["rho"] if algo == "ppo_sam" else [math.nan]
            for lr, mb, rho in itertools.product(task.levels["learning_rate"], task.levels[key], radii):
                cell = bases.setdefault((task.task, lr, mb), rng.uniform(0.3, 0.7))  # shared by plain and SAM
                base = cell + (0.05 if planted and algo == "ppo_sam" else 0.0)
                for s in prereg.design.seeds:
                    z, e = rng.normal(), rng.normal()
                    unsolved = rng.random() < 0.03
                    rows.append({
                        "run_id": f"{task.task}-{algo}-{lr}-{mb}-{rho}-{s}", "task": task.task, "algo": algo,
                        "seed": s, "status": "ok", "hp.learning_rate": lr, f"hp.{key}": mb, "hp.rho": rho,
                        "robustness.solved_threshold": task.solved_threshold,
                        "robustness.nominal_return": task.solved_threshold + (-50.0 if unsolved else 5.0),
                        "robustness.nominal_return_se": 1.0,
                        "probe.fisher_adaptive_lambda_max": math.exp(z),
                        "probe.fisher_adaptive_trace": 3.0 * math.exp(z + 0.1 * rng.normal()),
                        "probe.fisher_trace_method": "exact",
                        "robustness.auc_mean": base + 0.05 * ((-0.6 * z + 0.8 * e) if planted else e),
                    })  # fmt: skip
    return pd.DataFrame(rows)


def _fast(prereg: Any) -> Any:
    return prereg.model_copy(update={"analysis": prereg.analysis.model_copy(update={"n_perm": 999})})


def test_registered_analysis_supports_a_planted_effect_and_not_a_null(loaded: Any) -> None:
    from rlflat.study.analysis import run_registered_analysis

    prereg = _fast(loaded.prereg)
    planted = run_registered_analysis(prereg, _synthetic_runs(prereg, planted=True)).verdicts.set_index("test")
    assert list(planted.loc[["H1", "H2", "H3"], "verdict"]) == ["supported"] * 3
    # E[r_s] at n = 10 of a bivariate normal with r = 0.6: 6 / (pi (n + 1)) (asin r + (n - 2) asin(r / 2)) (Moran 1948)
    expected = 6 / (math.pi * 11) * (math.asin(0.6) + 8 * math.asin(0.3))
    assert planted.loc["H1", "estimate"] == pytest.approx(-expected, abs=0.1)
    assert planted.loc["H1", "ci_low"] < planted.loc["H1", "estimate"] < planted.loc["H1", "ci_high"] < 0
    assert planted.loc["H3", "estimate"] == pytest.approx(0.05, abs=0.03)
    assert len(planted) == 3 + 2 * 5 and (planted.loc[planted["family"] == "per_task", "verdict"] == "supported").all()
    # about 3% of the 600 runs are below the threshold: out of H1/H2, kept in H3
    assert 540 < planted.loc["H1", "n"] < 600 and planted.loc["H3", "n"] == 600
    null = run_registered_analysis(prereg, _synthetic_runs(prereg, planted=False)).verdicts.set_index("test")
    assert list(null.loc[["H1", "H2", "H3"], "verdict"]) == ["not supported"] * 3
    assert abs(null.loc["H1", "estimate"]) < 0.1


def test_h2_needs_the_exact_trace_and_unsolved_runs_follow_the_one_rule(loaded: Any) -> None:
    from rlflat.study.analysis import prepare_runs, run_registered_analysis
    from rlflat.tasks.spec import solved_verdict

    prereg = _fast(loaded.prereg)
    runs = _synthetic_runs(prereg, planted=True)
    runs["probe.fisher_trace_method"] = "hutchinson"
    verdicts = run_registered_analysis(prereg, runs).verdicts.set_index("test")
    assert verdicts.loc["H2", "verdict"] == "not evaluable" and verdicts.loc["H1", "verdict"] == "supported"
    probe = pd.DataFrame({"task": ["CartPole"] * 4, "algo": ["ppo"] * 4, "hp.batch_size": [64] * 4,
                          "robustness.nominal_return": [474.0, 470.0, 476.0, 480.0],
                          "robustness.nominal_return_se": [1.0, 2.0, 0.0, math.nan],
                          "robustness.solved_threshold": [475.0] * 4})  # fmt: skip
    got = list(prepare_runs(prereg, probe)["verdict"])
    assert got == [solved_verdict(m, s, 475.0) for m, s in [(474, 1.0), (470, 2.0), (476, 0.0), (480, None)]]
    assert got == ["borderline", "unsolved", "solved", "solved"]


def _study_dir(root: Path, name: str, prereg: Path, runs: pd.DataFrame) -> Path:
    directory = root / name
    directory.mkdir(parents=True)
    (directory / "study.yaml").write_text(yaml.safe_dump({"name": name, "preregistration": str(prereg)}))
    runs.astype({"hp.learning_rate": str}).to_parquet(directory / "runs.parquet")  # one type per column
    return directory


def test_confirmatory_section_prints_verdicts_amendments_and_withholds_after_an_unamended_change(
    workdir: Path, loaded: Any
) -> None:
    from rlflat.report.confirmatory import confirmatory_blocks
    from rlflat.report.document import Document, to_markdown

    prereg = Path("studies/confirmatory/preregistration.yaml").resolve()
    text = prereg.read_text().replace("n_perm: 9999", "n_perm: 999")
    prereg.write_text(text)
    runs = _synthetic_runs(loaded.prereg, planted=True)
    study = _study_dir(workdir / "results", "confirmatory_cartpole", prereg, runs)
    check_preregistration(prereg, study, record=True)
    doc = Document("t")
    result, summary, _ = confirmatory_blocks(doc, [study], runs)
    assert result is not None and summary is not None
    md = to_markdown(doc, workdir)
    assert "Confirmatory analysis (preregistered)" in md and "**H1: supported.**" in md
    assert "Amendments: none." in md and "first run started" in md
    _amend(prereg, "n_perm 9999 -> 999 for a fast test")
    doc = Document("t")
    confirmatory_blocks(doc, [study], runs)
    assert "2026-12-09: n_perm 9999 -> 999 for a fast test Reason: a task could not be run" in to_markdown(doc, workdir)
    prereg.write_text(prereg.read_text().replace("alpha: 0.05", "alpha: 0.5"))  # a change the lock has not seen
    doc = Document("t")
    result, _, _ = confirmatory_blocks(doc, [study], runs)
    md = to_markdown(doc, workdir)
    assert result is None and "Verdicts withheld" in md and "supported" not in md


# --- granulated Kendall with intervals, pooled over tasks ----------------------------------------------------------


def _granulated_table(noise: float = 0.0, seed: int = 0) -> pd.DataFrame:
    """A 3 x 2 design (factor a with 3 levels, b with 2), 4 seed replicates per configuration.

    Configuration means (m, y): b1: (1,1) (2,3) (3,2) -> tau 1/3; b2: (4,6) (5,5) (6,4) -> tau -1; so psi_a = -1/3.
    Along b every level of a rises in both: psi_b = 1. Psi = 1/3.
    """
    rng = np.random.default_rng(seed)
    means = {("a1", "b1"): (1, 1), ("a2", "b1"): (2, 3), ("a3", "b1"): (3, 2),
             ("a1", "b2"): (4, 6), ("a2", "b2"): (5, 5), ("a3", "b2"): (6, 4)}  # fmt: skip
    rows = []
    for (a, b), (m, y) in means.items():
        e = rng.normal(size=(4, 2)) * noise
        e -= e.mean(axis=0)  # the configuration means stay exact
        rows += [{"a": a, "b": b, "m": m + e[i, 0], "y": y + e[i, 1], "task": "T"} for i in range(4)]
    return pd.DataFrame(rows)


def test_granulated_bootstrap_by_hand() -> None:
    from rlflat.report.stats.granulated import PSI_OVERALL
    from rlflat.report.stats.granulated_summary import granulated_bootstrap

    exact = granulated_bootstrap(_granulated_table(), "m", "y", ["a", "b"], seed=0, n_boot=200).set_index("factor")
    assert exact.loc["a", "psi"] == pytest.approx(-1 / 3) and exact.loc["b", "psi"] == pytest.approx(1.0)
    assert exact.loc[PSI_OVERALL, "psi"] == pytest.approx(1 / 3)
    # identical seed replicates: every resample has the same means, so the interval is the point
    assert np.allclose(exact["se"], 0.0, atol=1e-12) and np.allclose(exact["ci_low"], exact["psi"])
    noisy = granulated_bootstrap(_granulated_table(0.8), "m", "y", ["a", "b"], seed=0, n_boot=400).set_index("factor")
    assert np.allclose(noisy["psi"], exact["psi"])  # the point estimate is granulated_kendall's on the means
    assert noisy.loc["a", "se"] > 0  # psi_b = 1 survives any resample: b moves the means by 3 units
    assert (noisy["ci_low"] <= noisy["psi"]).all() and (noisy["psi"] <= noisy["ci_high"]).all()


def test_fixed_effect_pool_by_hand() -> None:
    from rlflat.report.stats.granulated_summary import SE_FLOOR, fixed_effect_pool

    # weights 1 / se^2: 100 and 25
    est = (100 * 0.2 + 25 * 0.5) / 125  # 0.26
    q = 100 * (0.2 - est) ** 2 + 25 * (0.5 - est) ** 2  # 0.36 + 1.44 = 1.8
    got = fixed_effect_pool([0.2, 0.5], [0.1, 0.2])
    assert got.estimate == pytest.approx(0.26) and q == pytest.approx(1.8)
    assert got.ci_high == pytest.approx(0.26 + 1.959964 / math.sqrt(125), rel=1e-6)
    assert got.q == pytest.approx(1.8) and got.q_p == pytest.approx(sps.chi2.sf(1.8, 1))
    assert got.i2 == pytest.approx(0.8 / 1.8) and got.k == 2
    same = fixed_effect_pool([0.3, 0.3, 0.3], [0.1, 0.2, 0.0])  # an SE of 0 is floored, not an infinite weight
    assert same.q == pytest.approx(0.0) and same.i2 == 0.0 and same.ci_high - same.estimate > 0
    assert same.ci_high - same.estimate <= 1.959964 * SE_FLOOR + 1e-12
    apart = fixed_effect_pool([-0.8, 0.8], [0.05, 0.05])
    assert apart.i2 > 0.95 and apart.q_p < 1e-6
    edge = fixed_effect_pool([1.0, 1.0], [0.0, 0.0])
    assert (edge.estimate, edge.ci_high) == (1.0, 1.0) and edge.ci_low < 1.0


def test_granulated_summary_pools_tasks_and_draws_one_panel_per_task(tmp_path: Path) -> None:
    from rlflat.report.figures.granulated import plot_granulated_kendall
    from rlflat.report.figures.style import save_figure
    from rlflat.report.stats.granulated_summary import granulated_summary

    one, two = _granulated_table(0.5, seed=1), _granulated_table(0.5, seed=2).assign(task="U")
    summary = granulated_summary(pd.concat([one, two]), ["m"], "y", ["a", "b"], seed=0, n_boot=200)
    pooled = summary[summary["task"] == "pooled"].set_index("factor")
    assert pooled.loc["a", "psi"] == pytest.approx(-1 / 3, abs=1e-9) and pooled.loc["a", "k"] == 2
    assert pooled.loc["a", "q"] == pytest.approx(0.0, abs=1e-9)  # both tasks have the same configuration means
    fig, axes = plot_granulated_kendall(summary)
    assert len(axes) == 3 and [ax.get_title().split("\n")[0] for ax in axes] == ["T", "U", "pooled (2 tasks)"]
    assert save_figure(fig, tmp_path / "g.png").stat().st_size > 0


@pytest.mark.slow  # the whole report over 120 runs: ~25 s on a core
def test_report_carries_the_confirmatory_section_first_and_labels_the_rest_exploratory(
    workdir: Path, loaded: Any
) -> None:
    from rlflat.report.render import build_report

    prereg = Path("studies/confirmatory/preregistration.yaml").resolve()
    prereg.write_text(prereg.read_text().replace("n_perm: 9999", "n_perm: 999"))
    runs = _synthetic_runs(loaded.prereg, planted=True)
    runs = runs[runs["task"] == "CartPole"].reset_index(drop=True)
    study = _study_dir(workdir / "results", "confirmatory_cartpole", prereg, runs)
    check_preregistration(prereg, study, record=True)
    out = build_report([study], workdir / "report")
    md = (out / "report.md").read_text()
    assert md.index("## Confirmatory analysis (preregistered)") < md.index("## Exploratory analyses")
    assert "**H1: supported.**" in md and "| H1t:Acrobot | per_task | n/a |" in md  # no Acrobot runs: not evaluable
    verdicts = pd.read_csv(out / "tables" / "confirmatory_verdicts.csv").set_index("test")
    assert verdicts.loc["H1t:Acrobot", "verdict"] == "not evaluable" and verdicts.loc["H3", "n"] == 120
    assert (out / "figures" / "granulated_kendall.png").exists()
