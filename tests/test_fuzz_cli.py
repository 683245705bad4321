"""Issue 23 item 6: property-based fuzzing of the command lines and the sweep schema, bounded in time.

The contract for every generated input: exit 0, or exit 2 with exactly one ``error:`` line on stderr and the file
tree unchanged; never a traceback, and never half-written output (no staging folder or temporary file left, and
a finished command's output folder complete). A run that the example's time budget interrupts must unwind as a
Ctrl-C does (exit 130) and leave the same clean tree. Examples are few and small (``max_examples``), so the file
runs in about a minute; ``FUZZ_EXAMPLES`` raises the count for a longer hunt.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import signal
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rlflat.cli import run_cli
from rlflat.sweep.pipeline import _working_directory

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "12"))
BUDGET_S = 20
"""Seconds one example may run before it is interrupted (as Ctrl-C): a valid but large request is not a failure."""
TINY = {"n_envs": 2, "n_steps": 32, "batch_size": 32, "n_epochs": 1}

NASTY = st.sampled_from(
    ["-1", "0", "1", "2", "3", "1e308", "nan", "inf", "-inf", "abc", "", "1000000000000", "0.5", "*", "a,b", "1:2",
     "length", "length:masscart", "masscart", "--", "\xff", "[[[[", "1e-300", "-0.0", "0x10", "filter", "kl"]
) | st.text(max_size=6)  # fmt: skip

COMMANDS = {
    "probe": ("rlflat.probe.__main__", ["--quick", "--batch", "64", "--batches", "1", "--measures", "keskar"]),
    "evaluate": ("rlflat.evaluate.__main__", ["--suite", "length", "--points", "2", "--episodes", "1"]),
    "train": ("rlflat.train", ["--steps", "64", *[f"--set={k}={v}" for k, v in TINY.items()]]),
}
SKIPPED_FLAGS = {"-h", "--help", "--list", "--trust", "--out", "--no-progress", "--threads", "--workers", "--connect"}
EXPECTED = {
    "probe": {"probe.json", "probe.npz", "metrics.json"},
    "evaluate": {"robustness.parquet", "metrics.json"},
    "train": {"config.json", "model.zip", "metrics.json", "train.csv"},
}
FOUND: dict[str, int] = {}
"""Outcome counts over the run (printed by the last test: the figures of the closing note)."""


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from rlflat.train import resolve_run_config, train_run

    config = resolve_run_config("ppo", "CartPole", steps=64, overrides=TINY)
    return train_run(config, out=tmp_path_factory.mktemp("fuzz") / "run", progress=False)


def _flags(command: str) -> list[tuple[str, bool]]:
    """(option, takes a value) for every option of the command's parser but the skipped ones."""
    import importlib

    module = importlib.import_module(COMMANDS[command][0])
    parser = (getattr(module, "_parser", None) or module.build_parser)()
    return [
        (action.option_strings[-1], action.nargs != 0)
        for action in parser._actions
        if action.option_strings and not set(action.option_strings) & SKIPPED_FLAGS
    ]


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() if p.is_file() else b"/" for p in sorted(root.rglob("*"))}


def _litter(root: Path) -> list[str]:
    return [str(p) for p in root.rglob("*") if p.name.endswith((".rlflat-staging", ".tmp"))]


class _Budget(KeyboardInterrupt):
    """The example ran out of time: unwinds like Ctrl-C (run_cli answers 130)."""


@contextlib.contextmanager
def _time_budget(seconds: int) -> Iterator[None]:
    def expire(signum: int, frame: object) -> None:
        raise _Budget

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def _check_contract(main: Callable[..., int], argv: list[str], root: Path, output: Path, expected: set[str]) -> str:
    """Run ``main(argv)`` in-process; assert the contract; return the outcome ('ok', 'refused', 'interrupted')."""
    before = _snapshot(root)
    err = io.StringIO()
    with (
        contextlib.redirect_stderr(err),
        contextlib.redirect_stdout(io.StringIO()),
        _time_budget(BUDGET_S),
        _working_directory(root),  # a relative path a command writes (e.g. tensorboard_log) lands in root
    ):
        code = run_cli(main, argv)
    text = err.getvalue()
    assert "Traceback" not in text, text
    assert code in (0, 2, 130), (code, argv, text)
    assert _litter(root) == [], (argv, _litter(root))
    if code == 2:
        assert text.startswith("error: ") and text.count("\n") == 1, (argv, text)
        assert _snapshot(root) == before, ("a refused command changed files", argv)
        return "refused"
    if code == 0:
        assert expected <= {p.name for p in output.iterdir()}, (argv, sorted(p.name for p in output.iterdir()))
        return "ok"
    return "interrupted"


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data(), command=st.sampled_from(sorted(COMMANDS)))
def test_any_command_line_keeps_the_contract(
    data: st.DataObject, command: str, trained: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    import importlib

    root = tmp_path_factory.mktemp("case")
    run = root / "run"
    shutil.copytree(trained, run)
    flags = data.draw(st.lists(st.sampled_from(_flags(command)), min_size=1, max_size=3, unique=True), label="flags")
    argv = list(COMMANDS[command][1])
    for flag, takes_value in flags:
        argv += [flag, data.draw(NASTY, label=flag)] if takes_value else [flag]
    output = root / "out"
    target = ["ppo", "CartPole"] if command == "train" else [str(run)]
    argv = [*target, *argv, "--out", str(output), "--no-progress"]
    module = importlib.import_module(COMMANDS[command][0])
    expected = EXPECTED[command] - ({"metrics.json"} if "--no-metrics" in argv else set())  # asked not to write it
    outcome = _check_contract(module.main, argv, root, output, expected)
    FOUND[f"{command} {outcome}"] = FOUND.get(f"{command} {outcome}", 0) + 1


_LEAF = (
    st.none()
    | st.booleans()
    | st.sampled_from([-1, 0, 1, 2, 10**9, 10**30, 0.5, float("nan"), float("inf"), 1e308, -1e-300])
    | st.sampled_from(["abc", "", "ppo", "CartPole", "ppo_sam", "length", "*", "\xff", "1e3", "[", "{a: b}"])
)
_VALUE = st.recursive(_LEAF, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
    st.sampled_from(["batch", "episodes", "suite", "factors", "length", "n_boot", "n_perm", "x", "learning_rate"]),
    inner, max_size=3), max_leaves=8)  # fmt: skip
_KEYS = st.sampled_from(
    ["name", "tasks", "algos", "seeds", "steps", "grid", "overrides", "probe", "evaluate", "report", "grd", "x"]
)
BASE = {"name": "s", "tasks": ["CartPole"], "algos": ["ppo"], "steps": 64,
        "grid": {k: [v] for k, v in TINY.items()}}  # fmt: skip


@settings(max_examples=EXAMPLES * 3, deadline=None, suppress_health_check=list(HealthCheck))
@given(changes=st.dictionaries(_KEYS, _VALUE, min_size=1, max_size=3))
def test_any_study_config_keeps_the_contract(
    changes: dict[str, object], tmp_path_factory: pytest.TempPathFactory
) -> None:
    from rlflat.sweep.__main__ import main

    root = tmp_path_factory.mktemp("study")
    path = root / "s.yaml"
    path.write_text(yaml.safe_dump({**BASE, **changes}, allow_unicode=True))
    outcome = _check_contract(main, [str(path), "--out", str(root / "o"), "--dry-run", "--no-progress"], root,
                              root, set())  # fmt: skip
    FOUND[f"sweep schema {outcome}"] = FOUND.get(f"sweep schema {outcome}", 0) + 1


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(text=st.binary(max_size=64) | st.text(max_size=64).map(str.encode))
def test_any_study_file_bytes_keep_the_contract(text: bytes, tmp_path_factory: pytest.TempPathFactory) -> None:
    from rlflat.sweep.__main__ import main

    root = tmp_path_factory.mktemp("bytes")
    path = root / "s.yaml"
    path.write_bytes(text)
    outcome = _check_contract(main, [str(path), "--out", str(root / "o"), "--dry-run", "--no-progress"], root,
                              root, set())  # fmt: skip
    FOUND[f"sweep bytes {outcome}"] = FOUND.get(f"sweep bytes {outcome}", 0) + 1


def test_zz_report_fuzz_figures(capsys: pytest.CaptureFixture[str]) -> None:
    """Prints the outcome counts of this run (``pytest -s``): how many cases ran and how each ended."""
    with capsys.disabled():
        print(f"\nfuzz outcomes: {dict(sorted(FOUND.items()))} ({sum(FOUND.values())} cases)")
