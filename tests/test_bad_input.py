"""Bad input, command by command: exit code 2, exactly one line on stderr, and the file tree left as it was.

Every case runs the command's ``main`` in-process through :func:`rlflat.cli.run_cli` (what ``python -m`` runs),
inside a scratch workspace that is hashed (paths, modes, bytes) before and after. The inputs are the ones a
careless user or a hostile file gives: corrupt, truncated and foreign zips, a zip without ``policy.pth`` or
with a corrupt one, a malicious ``vecnormalize.pkl`` (in a run dir, or named without ``--trust``: the marker
file it would create must not appear), corrupt ``config.json`` / ``metrics.json``, an ``--out`` that is a file or cannot be
written, results that exist already (no ``--force``), sizes that cannot fit in memory (refused from an estimate
before anything is allocated), and a Ray head that is not there.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import shlex
import shutil
import warnings
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path

import pandas as pd
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rlflat.cli import run_cli
from rlflat.evaluate.__main__ import main as evaluate_main
from rlflat.probe.__main__ import main as probe_main
from rlflat.report.__main__ import main as report_main
from rlflat.sweep.__main__ import main as sweep_main
from rlflat.train import main as train_main
from rlflat.train import resolve_run_config, train_run

Main = Callable[[Sequence[str] | None], int]
TINY = {"n_envs": 2, "n_steps": 32, "batch_size": 32, "n_epochs": 1}
UNWRITABLE = "/proc/rlflat-cannot-write-here/out"  # not writable even for root


class _Touch:
    """Unpickles to ``os.system("touch <marker>")``: a malicious pickle, harmless in a scratch folder."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, ...]:
        return os.system, (f"touch {shlex.quote(str(self.marker))}",)


def tree_digest(root: Path) -> str:
    """One hash of every path, mode and file content under ``root``."""
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        digest.update(str(path.relative_to(root)).encode() + oct(path.stat().st_mode).encode())
        if path.is_file():
            digest.update(path.read_bytes())
    return digest.hexdigest()


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One tiny trained run directory (a few seconds), shared by every case."""
    config = resolve_run_config("ppo", "CartPole", steps=64, overrides=TINY)
    return train_run(config, out=tmp_path_factory.mktemp("trained") / "run", progress=False)


def _rezip(source: Path, target: Path, drop: str | None = None, replace: dict[str, bytes] | None = None) -> Path:
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(target, "w") as new:
        for item in old.infolist():
            if item.filename != drop:
                new.writestr(item, (replace or {}).get(item.filename, old.read(item.filename)))
    return target


def _study_table(root: Path) -> Path:
    """A study directory the report can load (two ok runs, no per-run files)."""
    root.mkdir()
    rows = [{"run_id": f"r{i}", "algo": "ppo", "task": "CartPole", "seed": i, "status": "ok"} for i in range(2)]
    pd.DataFrame(rows).to_parquet(root / "runs.parquet")
    return root


def workspace(root: Path, trained: Path) -> dict[str, str]:
    """Every input the cases name, made under ``root``; returns name -> path."""
    model = trained / "model.zip"
    good = root / "good.zip"
    shutil.copy(model, good)
    data = model.read_bytes()
    (root / "corrupt.zip").write_bytes(b"PK\x03\x04" + bytes(range(256)) * 4)
    (root / "truncated.zip").write_bytes(data[: len(data) // 2])
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as foreign:
        foreign.writestr("readme.txt", "not a model")
    (root / "foreign.zip").write_bytes(buffer.getvalue())
    _rezip(model, root / "no_policy.zip", drop="policy.pth")
    _rezip(model, root / "bad_policy.zip", replace={"policy.pth": b"\x80\x04 not a torch file"})
    bad_config = root / "bad_config_run"
    shutil.copytree(trained, bad_config)
    (bad_config / "config.json").write_text("{ not json")
    bad_metrics = root / "bad_metrics_run"
    shutil.copytree(trained, bad_metrics)
    (bad_metrics / "metrics.json").write_text("[1, 2")
    probed = root / "probed_run"  # results there already: a rerun without --force must refuse
    shutil.copytree(trained, probed)
    (probed / "probe.json").write_text("{}")
    (probed / "robustness.parquet").write_bytes(b"old")
    (root / "a_file").write_text("in the way")
    evil_run = root / "evil_run"  # a run dir with a pickle that would create root/pwned (the tree hash sees it)
    shutil.copytree(trained, evil_run)
    (evil_run / "vecnormalize.pkl").write_bytes(pickle.dumps(_Touch(root / "pwned")))
    study = _study_table(root / "study")
    (root / "bad_study").mkdir()
    (root / "bad_study" / "runs.parquet").write_bytes(b"PAR1 truncated")
    config = {"name": "s", "tasks": ["CartPole"], "algos": ["ppo"], "steps": 64, "grid": {"n_steps": [32]}}
    (root / "study.yaml").write_text(yaml.safe_dump(config))
    (root / "bad_grid.yaml").write_text(yaml.safe_dump({**config, "grid": {"learning_rate": ["abc"]}}))
    (root / "bad_key.yaml").write_text(yaml.safe_dump({**config, "grd": {}}))
    (root / "bad.yaml").write_text("name: [unclosed\n")
    return {
        "run": str(trained),
        "good": str(good),
        **{name: str(root / f"{name}.zip") for name in ("corrupt", "truncated", "foreign", "no_policy", "bad_policy")},
        "bad_config": str(bad_config),
        "bad_metrics": str(bad_metrics),
        "probed": str(probed),
        "file": str(root / "a_file"),
        "evil_run": str(evil_run),
        "evil_pkl": str(evil_run / "vecnormalize.pkl"),
        "study": str(study),
        "bad_study": str(root / "bad_study"),
        "config": str(root / "study.yaml"),
        "bad_grid": str(root / "bad_grid.yaml"),
        "bad_key": str(root / "bad_key.yaml"),
        "bad_yaml": str(root / "bad.yaml"),
        "missing": str(root / "missing"),
    }


ZIPS = ("corrupt", "truncated", "foreign", "no_policy", "bad_policy")
PROBE_FAST = ["--quick", "--measures", "trace", "--batch", "64", "--no-progress"]
EVAL_FAST = ["--suite", "length", "--points", "2", "--episodes", "1", "--no-progress"]

CASES: list[tuple[str, Main, list[str], str]] = [
    # (case id, command, argv with {placeholders}, a fragment the one-line message must contain)
    *[(f"probe-{z}-zip", probe_main, [f"{{{z}}}", "--task", "CartPole", *PROBE_FAST], "{" + z + "}") for z in ZIPS],
    ("probe-missing-path", probe_main, ["{missing}", *PROBE_FAST], "{missing}"),
    ("probe-corrupt-config-json", probe_main, ["{bad_config}", *PROBE_FAST], "config.json"),
    ("probe-corrupt-metrics-json", probe_main, ["{bad_metrics}", *PROBE_FAST], "metrics.json"),
    ("probe-results-exist", probe_main, ["{probed}", *PROBE_FAST], "--force"),
    ("probe-out-is-a-file", probe_main, ["{run}", "--out", "{file}", *PROBE_FAST], "is a file"),
    ("probe-out-unwritable", probe_main, ["{run}", "--out", UNWRITABLE, *PROBE_FAST], "cannot write"),
    ("probe-bare-zip-no-task", probe_main, ["{good}", *PROBE_FAST], "--task"),
    ("probe-batch-zero", probe_main, ["{run}", "--out", "{missing}", "--batch", "0", "--no-progress"], "batch"),
    *[(f"evaluate-{z}-zip", evaluate_main, [f"{{{z}}}", "--task", "CartPole", *EVAL_FAST], "{" + z + "}") for z in ZIPS],
    ("evaluate-missing-path", evaluate_main, ["{missing}", *EVAL_FAST], "{missing}"),
    ("evaluate-corrupt-config-json", evaluate_main, ["{bad_config}", *EVAL_FAST], "config.json"),
    ("evaluate-corrupt-metrics-json", evaluate_main, ["{bad_metrics}", *EVAL_FAST], "metrics.json"),
    ("evaluate-results-exist", evaluate_main, ["{probed}", *EVAL_FAST], "--force"),
    ("evaluate-out-is-a-file", evaluate_main, ["{run}", "--out", "{file}", *EVAL_FAST], "is a file"),
    ("evaluate-out-unwritable", evaluate_main, ["{run}", "--out", UNWRITABLE, *EVAL_FAST], "cannot write"),
    ("evaluate-points-zero", evaluate_main, ["{run}", "--out", "{missing}", *EVAL_FAST, "--points", "0"], "points"),
    ("probe-pickle-in-run-dir", probe_main, ["{evil_run}", *PROBE_FAST], "--trust"),
    ("evaluate-pickle-in-run-dir", evaluate_main, ["{evil_run}", *EVAL_FAST], "--trust"),
    ("probe-named-pickle-untrusted", probe_main,
     ["{good}", "--task", "CartPole", "--vecnormalize", "{evil_pkl}", *PROBE_FAST], "--trust"),
    ("evaluate-named-pickle-untrusted", evaluate_main,
     ["{good}", "--task", "CartPole", "--vecnormalize", "{evil_pkl}", *EVAL_FAST], "--trust"),
    ("evaluate-points-huge", evaluate_main, ["{run}", "--out", "{missing}", "--points", "100000000", "--no-progress"],
     "memory"),
    ("evaluate-episodes-huge", evaluate_main, ["{run}", "--out", "{missing}", "--episodes", "1000000000",
     "--no-progress"], "memory"),
    ("probe-batch-huge", probe_main, ["{run}", "--out", "{missing}", "--batch", "1000000000000", "--no-progress"],
     "memory"),
    ("probe-directions-huge", probe_main, ["{run}", "--out", "{missing}", "--measures", "perturbation",
     "--n-directions", "1000000000", "--no-progress"], "memory"),
    ("train-steps-huge", train_main, ["ppo", "CartPole", "--steps", str(10**23), "--no-progress"], "maximum"),
    ("train-unknown-algo", train_main, ["ppo_typo", "CartPole", "--no-progress"], "ppo_typo"),
    ("train-unknown-task", train_main, ["ppo", "NoSuchTask", "--no-progress"], "NoSuchTask"),
    ("train-steps-zero", train_main, ["ppo", "CartPole", "--steps", "0", "--no-progress"], "--steps"),
    ("train-steps-not-int", train_main, ["ppo", "CartPole", "--steps", "1e23", "--no-progress"], "--steps"),
    ("train-bad-set", train_main, ["ppo", "CartPole", "--set", "n_steps=x", "--no-progress"], "n_steps"),
    ("train-out-is-a-file", train_main, ["ppo", "CartPole", "--out", "{file}", "--no-progress"], "is a file"),
    ("train-out-unwritable", train_main, ["ppo", "CartPole", "--out", UNWRITABLE, "--no-progress"], "cannot write"),
    ("train-out-exists", train_main, ["ppo", "CartPole", "--out", "{run}", "--no-progress"], "--force"),
    ("sweep-missing-config", sweep_main, ["{missing}", "--no-progress"], "{missing}"),
    ("sweep-invalid-yaml", sweep_main, ["{bad_yaml}", "--no-progress"], "not valid YAML"),
    ("sweep-unknown-key", sweep_main, ["{bad_key}", "--no-progress"], "grd"),
    ("sweep-bad-grid-value", sweep_main, ["{bad_grid}", "--out", "{missing}", "--no-progress"], "abc"),
    ("sweep-out-is-a-file", sweep_main, ["{config}", "--out", "{file}", "--no-progress"], "is a file"),
    ("sweep-out-unwritable", sweep_main, ["{config}", "--out", UNWRITABLE, "--no-progress"], "cannot write"),
    ("sweep-workers-zero", sweep_main, ["{config}", "--out", "{missing}", "--workers", "0"], "--workers"),
    ("sweep-collect-a-file", sweep_main, ["--collect", "{file}"], "{file}"),
    ("sweep-ray-refused", sweep_main,
     ["{config}", "--out", "{missing}", "--backend", "ray", "--address", "127.0.0.1:1", "--no-progress"], "refused"),
    ("report-missing-study", report_main, ["{missing}", "--no-progress"], "{missing}"),
    ("report-study-is-a-file", report_main, ["{file}", "--no-progress"], "{file}"),
    ("report-corrupt-runs-parquet", report_main, ["{bad_study}", "--no-progress"], "runs.parquet"),
    ("report-out-is-a-file", report_main, ["{study}", "--out", "{file}", "--no-progress"], "is a file"),
    ("report-out-unwritable", report_main, ["{study}", "--out", UNWRITABLE, "--no-progress"], "cannot write"),
]  # fmt: skip


def assert_refused(main: Main, argv: list[str], fragment: str, root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = tree_digest(root)
    capsys.readouterr()
    with warnings.catch_warnings(record=True) as caught:  # a warning is another line on a user's stderr
        warnings.simplefilter("always")
        code = run_cli(main, argv)
    err = capsys.readouterr().err + "".join(f"{w.category.__name__}: {w.message}\n" for w in caught)
    assert code == 2, err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert fragment in err, err
    assert tree_digest(root) == before, "the command changed files"


@pytest.mark.parametrize(("case", "main", "argv", "fragment"), CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(
    case: str,
    main: Main,
    argv: list[str],
    fragment: str,
    trained: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)  # default outputs (results/...) would land here, inside the hashed tree
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    names = workspace(tmp_path, trained)
    assert_refused(main, [a.format(**names) for a in argv], fragment.format(**names), tmp_path, capsys)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cut=st.floats(0.0, 0.999), flip=st.integers(0, 2**31 - 1), command=st.sampled_from(["probe", "evaluate"]))
def test_any_damaged_zip_is_refused_cleanly(
    cut: float,
    flip: int,
    command: str,
    trained: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A zip cut anywhere (and with one byte changed before the cut): refused in one line, nothing written."""
    data = bytearray((trained / "model.zip").read_bytes()[: int(cut * (trained / "model.zip").stat().st_size)])
    if data:
        data[flip % len(data)] ^= 0xFF
    root = tmp_path / f"case-{cut}-{flip}-{command}"
    root.mkdir()
    zip_path = root / "damaged.zip"
    zip_path.write_bytes(bytes(data))
    main, fast = (probe_main, PROBE_FAST) if command == "probe" else (evaluate_main, EVAL_FAST)
    assert_refused(main, [str(zip_path), "--task", "CartPole", *fast], str(zip_path), root, capsys)


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(max_size=40).filter(lambda t: _not_a_config_object(t)))
def test_any_broken_config_json_is_refused_by_probe_and_evaluate(
    text: str, trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / hashlib.sha256(text.encode()).hexdigest()[:12]
    shutil.copytree(trained, root / "run")
    (root / "run" / "config.json").write_text(text)
    for main, fast in ((probe_main, PROBE_FAST), (evaluate_main, EVAL_FAST)):
        assert_refused(main, [str(root / "run"), *fast], "config.json", root, capsys)


def _not_a_config_object(text: str) -> bool:
    try:
        return not isinstance(json.loads(text), dict)
    except ValueError:
        return True


@pytest.mark.parametrize("module", ["train", "probe", "evaluate", "sweep", "report"])
def test_every_option_is_explained_in_plain_text(module: str, capsys: pytest.CaptureFixture[str]) -> None:
    import importlib

    target = importlib.import_module("rlflat.train" if module == "train" else f"rlflat.{module}.__main__")
    factory = getattr(target, "_parser", None) or target.build_parser
    parser = factory()
    unexplained = [a.option_strings or a.dest for a in parser._actions if not a.help]
    assert unexplained == []
    parser.print_help()
    shown = capsys.readouterr().out
    assert ":mod:" not in shown and "``" not in shown and ":class:" not in shown
