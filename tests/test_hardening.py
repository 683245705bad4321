"""Issue 23: nothing lost, nothing half-written, no traceback.

Staging cleanup touches only folders rlflat created; multi-file results are published as one unit (a kill at any
rename leaves the old set or the new set); bad inputs are one line, exit 2, nothing written.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from rlflat import io as rio
from rlflat.io import STAGING_MARKER, remove_stale_staging, staging_dir


def _tree(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` (hidden ones included) with its bytes: what 'nothing changed' compares."""
    return {
        str(p.relative_to(root)): p.read_bytes() if p.is_file() and not p.is_symlink() else b"<dir>"
        for p in sorted(root.rglob("*"))
    }


# -- 1. staging cleanup touches only folders rlflat created ---------------------------------------------------


@pytest.mark.parametrize("name", ["myrun", "*", "[ab]?", "run.v2"])
def test_cleanup_keeps_decoy_siblings(tmp_path: Path, name: str) -> None:
    out = tmp_path / name
    decoys = [f".{name}.backup", f".{name}.x", f".{name}.{'a' * 32}.rlflat-staging", ".cache.d", ".ssh.keys",
              ".venv.old", f".{name}", f".{name}..", f".{name}.0123456789abcdef0123456789abcdef.rlflat-staging"]  # fmt: skip
    for decoy in decoys:
        (tmp_path / decoy).mkdir()
        (tmp_path / decoy / "f").write_text("precious")
    copied = tmp_path / decoys[-1] / STAGING_MARKER  # a marker copied from another folder names that folder
    copied.write_text(rio._marker_text(f".{name}.{'f' * 32}.rlflat-staging"))
    before = _tree(tmp_path)
    assert remove_stale_staging(out) == []
    with staging_dir(out) as staging:
        (staging / "a").write_text("new")
    assert (out / "a").read_text() == "new"
    after = _tree(tmp_path)
    assert {k: v for k, v in after.items() if k != name and not k.startswith(f"{name}/")} == before


def test_cleanup_removes_only_dead_marked_staging(tmp_path: Path) -> None:
    import fcntl

    out = tmp_path / "run"
    dead = rio._new_staging(out)
    (dead / "new" / "half.json").write_text("{")
    live = rio._new_staging(out)
    other = rio._new_staging(tmp_path / "other")  # another output's staging: not ours to touch
    fd = os.open(live, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # what a running writer holds
        assert remove_stale_staging(out) == [dead]
        assert live.is_dir() and other.is_dir() and not dead.exists()
    finally:
        os.close(fd)


def test_cleanup_puts_back_the_old_set_left_between_two_renames(tmp_path: Path) -> None:
    """The no-exchange fallback renames out away, then new in: a kill in between leaves no out; cleanup restores
    the old set instead of deleting it."""
    out = tmp_path / "run"
    staging = rio._new_staging(out)
    out.mkdir()
    (out / "f").write_text("old")
    os.replace(out, staging / "old")
    remove_stale_staging(out)
    assert (out / "f").read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_train_keeps_decoys(tmp_path: Path) -> None:
    from rlflat.train import main

    decoy = tmp_path / ".myrun.backup"
    decoy.mkdir()
    (decoy / "f").write_text("precious")
    star = tmp_path / "gl"
    for d in (".cache.d", ".ssh.keys", ".venv.old"):
        (star / d).mkdir(parents=True)
    argv = ["ppo", "CartPole", "--steps", "64", "--no-progress", "--set=n_steps=32", "--set=batch_size=32",
            "--set=n_epochs=1"]  # fmt: skip
    assert main([*argv, "--out", str(tmp_path / "myrun")]) == 0
    assert (decoy / "f").read_text() == "precious"
    assert main([*argv, "--out", str(star / "*")]) == 0
    assert sorted(p.name for p in star.iterdir()) == ["*", ".cache.d", ".ssh.keys", ".venv.old"]


# -- 2. multi-file results are one unit: a kill at every rename leaves the old set or the new set ---------------

TINY = {"n_envs": 2, "n_steps": 32, "batch_size": 32, "n_epochs": 1}
PROBE = ["--quick", "--batch", "64", "--batches", "1", "--no-progress"]
EVAL = ["--points", "2", "--episodes", "1", "--nominal-episodes", "1", "--no-progress"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from rlflat.train import resolve_run_config, train_run

    config = resolve_run_config("ppo", "CartPole", steps=64, overrides=TINY)
    return train_run(config, out=tmp_path_factory.mktemp("trained") / "run", progress=False)


def _killed_at(n: int, action: Callable[[], object], after_publish: bool = False) -> int:
    """Run ``action`` in a forked child killed (``os._exit``: no clean-up runs, as ``kill -9``) just before its
    ``n``-th rename (or, ``after_publish``, when it starts removing its staging folder); the child's exit code:
    137 killed, 0 finished before reaching the n-th rename."""
    import shutil

    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        calls = [0]

        def hook(kind: str, src: Path, dst: Path) -> None:
            calls[0] += 1
            if calls[0] == n and not after_publish:
                os._exit(137)

        rio.RENAME_HOOK = hook
        if after_publish:
            rio.shutil.rmtree = lambda *a, **k: os._exit(137)  # type: ignore[assignment]
        try:
            action()
        except BaseException:
            os._exit(3)
        rio.shutil.rmtree = shutil.rmtree
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def _kill_everywhere(
    target: Path, action: Callable[[], object], is_new: Callable[[Path], bool], limit: int = 40
) -> list[str]:
    """Kill ``action`` at each of its renames in turn (and once after publishing); after every kill ``target`` must
    be exactly as before or wholly new, and the next cleanup must leave no staging litter. Returns the states."""
    import shutil

    before = _tree(target) if target.exists() else None
    siblings = sorted(p.name for p in target.parent.iterdir())
    pristine = target.parent / f"{target.name}.pristine"
    if target.exists():
        shutil.copytree(target, pristine, symlinks=True)
    states: list[str] = []
    finished = False
    for n in [*range(1, limit + 1)]:
        after = finished  # once a run finished untouched: one more, killed after its publishing rename
        code = _killed_at(n, action, after_publish=after)
        state = "old" if (_tree(target) if target.exists() else None) == before else "new"
        if state == "new":
            assert is_new(target), f"kill at rename {n}: a mix of old and new files"
        removed = remove_stale_staging(target)
        assert sorted(p.name for p in target.parent.iterdir() if p != pristine) == sorted(
            {*siblings, target.name} if state == "new" or before is not None else siblings
        ), f"litter after kill at rename {n}: {removed}"
        states.append(state)
        if target.exists():  # back to the old set for the next kill
            shutil.rmtree(target)
        if pristine.exists():
            shutil.copytree(pristine, target, symlinks=True)
        if after:
            assert code == 137 and state == "new", f"killed after publishing: exit {code}, {state}"
            break
        finished = code == 0  # it finished: every rename has been a kill point
        assert finished or code == 137, f"kill at rename {n}: exit {code}"
    shutil.rmtree(pristine, ignore_errors=True)
    assert states.count("old") == len(states) - 2 and states[-2:] == ["new", "new"], states
    return states


def _blocks(run: Path) -> set[str]:
    import json

    return set(json.loads((run / "probe.json").read_text())["provenance"])


def test_probe_kill_at_every_rename_leaves_old_or_new(trained: Path, tmp_path: Path) -> None:
    """An accumulating probe (keskar added to fisher): probe.json, probe.npz and metrics.json change together."""
    import json
    import shutil

    import numpy as np

    from rlflat.probe.__main__ import main as probe_main

    run = tmp_path / "run"
    shutil.copytree(trained, run)
    assert probe_main([str(run), *PROBE, "--measures", "fisher"]) == 0

    def is_new(target: Path) -> bool:
        metrics = json.loads((target / "metrics.json").read_text())["probe"]
        arrays = np.load(target / "probe.npz")
        return (
            _blocks(target) == {"fisher", "keskar"}
            and metrics["keskar_sharpness"] is not None
            and metrics["fisher_trace"] is not None
            and any(k.startswith("keskar.") for k in arrays.files)
        )

    states = _kill_everywhere(run, lambda: probe_main([str(run), *PROBE, "--measures", "keskar"]), is_new)
    assert len(states) >= 3


def test_evaluate_kill_at_every_rename_leaves_old_or_new(trained: Path, tmp_path: Path) -> None:
    import json
    import shutil

    import pandas as pd

    from rlflat.evaluate.__main__ import main as evaluate_main

    run = tmp_path / "run"
    shutil.copytree(trained, run)
    assert evaluate_main([str(run), "--suite", "length", *EVAL]) == 0

    def is_new(target: Path) -> bool:
        table = pd.read_parquet(target / "robustness.parquet")
        block = json.loads((target / "metrics.json").read_text())["robustness"]
        return set(table["family"]) >= {"length", "masscart"} and len(block["provenance"]) == 2

    _kill_everywhere(run, lambda: evaluate_main([str(run), "--suite", "masscart", *EVAL]), is_new)


def test_train_force_kill_at_every_rename_leaves_old_or_new(trained: Path, tmp_path: Path) -> None:
    import json
    import shutil

    from rlflat.train import main as train_main

    run = tmp_path / "run"
    shutil.copytree(trained, run)
    argv = ["ppo", "CartPole", "--steps", "64", "--seed", "7", "--no-progress", "--force", "--out", str(run)]
    argv += [f"--set={k}={v}" for k, v in TINY.items()]

    def is_new(target: Path) -> bool:
        config = json.loads((target / "config.json").read_text())
        return config["seed"] == 7 and (target / "model.zip").exists() and (target / "metrics.json").exists()

    _kill_everywhere(run, lambda: train_main(argv), is_new)


def test_report_kill_at_every_rename_leaves_old_or_new(tmp_path: Path) -> None:
    import pandas as pd

    from rlflat.report.__main__ import main as report_main

    study = tmp_path / "study"
    study.mkdir()
    rows = [{"run_id": f"r{i}", "algo": "ppo", "task": "CartPole", "seed": i, "status": "ok"} for i in range(2)]
    pd.DataFrame(rows).to_parquet(study / "runs.parquet")
    report = study / "report"
    report.mkdir()
    (report / "notes.txt").write_text("mine")  # a user's file in the report folder is kept
    (report / "report.md").write_text("old report")

    def is_new(target: Path) -> bool:
        return (
            (target / "notes.txt").read_text() == "mine"
            and (target / "report.md").read_text() != "old report"
            and (target / "report.html").exists()
        )

    _kill_everywhere(report, lambda: report_main([str(study), "--no-progress"]), is_new)


# -- issue 22 item 3: results accumulate; --force replaces ------------------------------------------------------


def _one_line_refusal(main: Callable[[list[str]], int], argv: list[str], root: Path, fragment: str) -> None:
    import contextlib
    import io

    from rlflat.cli import run_cli

    before = _tree(root)
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = run_cli(main, argv)  # type: ignore[arg-type]
    text = err.getvalue()
    assert code == 2 and text.startswith("error: ") and text.count("\n") == 1 and fragment in text, text
    assert _tree(root) == before, "a refused command changed files"


def test_probe_measures_accumulate_as_one_probe(trained: Path, tmp_path: Path) -> None:
    """fisher then keskar in two probes == one probe of fisher,keskar (blocks, arrays, flat metrics)."""
    import json
    import shutil

    import numpy as np

    from rlflat.probe.__main__ import main as probe_main

    run, once = tmp_path / "run", tmp_path / "once"
    shutil.copytree(trained, run)
    shutil.copytree(trained, once)
    assert probe_main([str(run), *PROBE, "--measures", "fisher"]) == 0
    assert probe_main([str(run), *PROBE, "--measures", "keskar"]) == 0
    assert probe_main([str(once), *PROBE, "--measures", "fisher,keskar"]) == 0
    two, one = (json.loads((d / "probe.json").read_text()) for d in (run, once))
    assert two["fisher"] == one["fisher"] and two["keskar"] == one["keskar"]
    assert two["config"]["measures"] == ["fisher", "keskar"] == one["config"]["measures"]
    assert two["provenance"]["fisher"]["measures"] == ["fisher"]
    assert two["provenance"]["keskar"]["measures"] == ["keskar"]
    a, b = np.load(run / "probe.npz"), np.load(once / "probe.npz")
    assert sorted(a.files) == sorted(b.files)
    for key in a.files:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    ma, mb = (json.loads((d / "metrics.json").read_text())["probe"] for d in (run, once))
    assert {k: v for k, v in ma.items() if k != "wall_seconds"} == {k: v for k, v in mb.items() if k != "wall_seconds"}
    # a measure it has, or other options: one line, nothing changed; --force replaces
    _one_line_refusal(probe_main, [str(run), *PROBE, "--measures", "keskar"], tmp_path, "already has keskar")
    _one_line_refusal(probe_main, [str(run), *PROBE, "--measures", "cliff", "--seed", "3"], tmp_path, "seed")
    assert probe_main([str(run), *PROBE, "--measures", "cliff", "--force"]) == 0
    assert set(json.loads((run / "probe.json").read_text())["provenance"]) == {"cliff"}
    assert json.loads((run / "metrics.json").read_text())["probe"]["fisher_trace"] is None


def test_probe_out_writes_only_under_out(trained: Path, tmp_path: Path) -> None:
    import shutil

    from rlflat.probe.__main__ import main as probe_main

    run = tmp_path / "run"
    shutil.copytree(trained, run)
    before = _tree(run)
    for out in ("a", "b"):  # a second --out is not refused by the first's block (issue 23 item 7)
        assert probe_main([str(run), *PROBE, "--measures", "keskar", "--out", str(tmp_path / out)]) == 0
        assert sorted(p.name for p in (tmp_path / out).iterdir()) == ["metrics.json", "probe.json", "probe.npz"]
    assert _tree(run) == before


def test_evaluate_suites_accumulate_as_one_evaluation(trained: Path, tmp_path: Path) -> None:
    import json
    import shutil

    import pandas as pd

    from rlflat.evaluate.__main__ import main as evaluate_main

    run, once = tmp_path / "run", tmp_path / "once"
    shutil.copytree(trained, run)
    shutil.copytree(trained, once)
    assert evaluate_main([str(run), "--suite", "length", *EVAL]) == 0
    assert evaluate_main([str(run), "--suite", "masscart", *EVAL]) == 0
    assert evaluate_main([str(once), "--suite", "length,masscart", *EVAL]) == 0
    two, one = (pd.read_parquet(d / "robustness.parquet") for d in (run, once))
    columns = ["family", "factor", "length", "masscart", "return_mean", "normalized_return", "collapsed", "inert"]
    key = ["family", "factor"]
    pd.testing.assert_frame_equal(
        two[columns].sort_values(key).reset_index(drop=True), one[columns].sort_values(key).reset_index(drop=True)
    )
    block = json.loads((run / "metrics.json").read_text())["robustness"]
    single = json.loads((once / "metrics.json").read_text())["robustness"]
    assert [p["options"]["suite"]["parameters"] for p in block["provenance"]] == [["length"], ["masscart"]]
    assert block["auc_mean"] == single["auc_mean"] and block["parameters"] == single["parameters"]
    _one_line_refusal(evaluate_main, [str(run), "--suite", "masspole", *EVAL, "--seed", "4"], tmp_path, "seed")
    assert evaluate_main([str(run), "--suite", "masspole", *EVAL, "--force"]) == 0
    assert set(pd.read_parquet(run / "robustness.parquet")["family"]) == {"nominal", "masspole"}
