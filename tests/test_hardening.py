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
from rlflat.io import STAGING_MARKER, remove_stale_staging, staging_dir, update_dir


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
    target: Path,
    action: Callable[[], object],
    is_new: Callable[[Path], bool],
    limit: int = 40,
    cleanup_first: bool = False,
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
        removed = remove_stale_staging(target) if cleanup_first else []  # the two-rename fallback: restore first
        state = "old" if (_tree(target) if target.exists() else None) == before else "new"
        if state == "new":
            assert is_new(target), f"kill at rename {n}: a mix of old and new files"
        removed += remove_stale_staging(target)
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


# -- 3/4. every listed input: one line, exit 2, nothing written or changed --------------------------------------


def _nested(depth: int = 100_000) -> str:
    return "[" * depth


def _rezip(source: Path, target: Path, data: Callable[[bytes], bytes] | None = None, weights: str | None = None) -> str:
    """A copy of a model zip with its ``data`` member rewritten and/or every float weight set to ``weights``."""
    import io
    import zipfile

    import torch

    with zipfile.ZipFile(source) as old, zipfile.ZipFile(target, "w") as new:
        for item in old.infolist():
            payload = old.read(item.filename)
            if item.filename == "data" and data is not None:
                payload = data(payload)
            if item.filename == "policy.pth" and weights is not None:
                state = torch.load(io.BytesIO(payload), weights_only=True)
                for tensor in state.values():
                    if tensor.is_floating_point():
                        tensor.fill_(float(weights))
                buffer = io.BytesIO()
                torch.save(state, buffer)
                payload = buffer.getvalue()
            new.writestr(item.filename, payload)
    return str(target)


def _with_net_arch(arch: list[int]) -> Callable[[bytes], bytes]:
    import json

    def edit(payload: bytes) -> bytes:
        data = json.loads(payload)
        data["policy_kwargs"]["net_arch"] = arch
        return json.dumps(data).encode()

    return edit


def _run_copy(root: Path, trained: Path, name: str = "run") -> Path:
    import shutil

    shutil.copytree(trained, root / name)
    return root / name


def _normalization(root: Path, trained: Path, mean: object, var: object) -> str:
    import json

    run = _run_copy(root, trained)
    stats = {"format": "rlflat.normalization/1", "norm_obs": True, "norm_reward": False, "obs_mean": mean,
             "obs_var": var, "ret_var": 1.0, "clip_obs": 10.0, "clip_reward": 10.0, "epsilon": 1e-8}  # fmt: skip
    (run / "normalization.json").write_text(json.dumps(stats))
    return str(run)


def _edit_run(root: Path, trained: Path, name: str, text: str | None = None, directory: bool = False) -> str:
    run = _run_copy(root, trained)
    (run / name).unlink()
    if directory:
        (run / name).mkdir()
    else:
        (run / name).write_text(text or "")
    return str(run)


def _gamma_abc(root: Path, trained: Path) -> str:
    import json

    run = _run_copy(root, trained)
    config = json.loads((run / "config.json").read_text())
    config["hyperparameters"]["gamma"] = "abc"
    (run / "config.json").write_text(json.dumps(config))
    return str(run)


STUDY = {"name": "s", "tasks": ["CartPole"], "algos": ["ppo"], "steps": 64,
         "grid": {"n_steps": [32], "batch_size": [32], "n_envs": [2], "n_epochs": [1]}}  # fmt: skip


def _study(root: Path, **changes: object) -> str:
    import yaml

    path = root / "s.yaml"
    path.write_text(yaml.safe_dump({**STUDY, **changes}))
    return str(path)


def _text_file(root: Path, name: str, data: bytes) -> str:
    (root / name).write_bytes(data)
    return str(root / name)


def _report_study(root: Path, report: dict[str, object] | None = None) -> str:
    import pandas as pd
    import yaml

    study = root / "study"
    study.mkdir()
    rows = [{"run_id": f"r{i}", "algo": "ppo", "task": "CartPole", "seed": i, "status": "ok"} for i in range(2)]
    pd.DataFrame(rows).to_parquet(study / "runs.parquet")
    if report is not None:
        (study / "study.yaml").write_text(yaml.safe_dump({**STUDY, "report": report}))
    return str(study)


_P = ["--quick", "--batch", "64", "--batches", "1", "--no-progress"]
_E = ["--points", "2", "--episodes", "1", "--no-progress"]
_T = ["--no-progress", "--steps", "64", "--set=n_steps=32", "--set=batch_size=32", "--set=n_epochs=1"]
_TEN_KEYS = ("learning_rate", "gamma", "gae_lambda", "ent_coef", "vf_coef", "clip_range", "max_grad_norm",
             "target_kl", "rho", "adaptive_rho")  # fmt: skip
_SIGMAS = ",".join(f"{0.001 * (i + 1):.3f}" for i in range(10_000))

Case = tuple[str, str, Callable[[Path, Path], list[str]], str]
LISTED: list[Case] = [
    # (issue 23 case, command, argv builder (root, trained run), fragment of the one-line message)
    ("normalization.json obs_mean [100.0] on 4-D CartPole", "evaluate",
     lambda r, t: [_normalization(r, t, [100.0], [1.0]), *_E], "shape [1]"),
    ("normalization.json of shape 3", "evaluate", lambda r, t: [_normalization(r, t, [0.0] * 3, [1.0] * 3), *_E],
     "shape [3]"),
    ("normalization.json of shape 4x1", "evaluate",
     lambda r, t: [_normalization(r, t, [[0.0]] * 4, [[1.0]] * 4), *_E], "shape [4, 1]"),
    ("normalization.json nested 1e5 deep", "evaluate",
     lambda r, t: [_nested_normalization(r, t), *_E], "normalization.json"),
    ("zip net_arch [200000, 200000]: probe", "probe",
     lambda r, t: [_rezip(t / "model.zip", r / "big.zip", _with_net_arch([200000, 200000])), "--task", "CartPole",
                   *_P], "net_arch"),
    ("zip net_arch [200000, 200000]: evaluate", "evaluate",
     lambda r, t: [_rezip(t / "model.zip", r / "big.zip", _with_net_arch([200000, 200000])), "--task", "CartPole",
                   *_E], "net_arch"),
    ("zip net_arch [200000, 200000]: --interpolate", "probe",
     lambda r, t: [str(_run_copy(r, t)), "--interpolate",
                   _rezip(t / "model.zip", r / "big.zip", _with_net_arch([200000, 200000])), *_P], "net_arch"),
    ("train --set policy_kwargs={net_arch: [100000, 100000]}", "train",
     lambda r, t: ["ppo", "CartPole", "--set", "policy_kwargs={net_arch: [100000, 100000]}", "--out",
                   str(r / "o"), *_T], "memory"),
    ("train --set n_epochs=1000000000", "train",
     lambda r, t: ["ppo", "CartPole", "--out", str(r / "o"), *_T, "--set", "n_epochs=1000000000"], "n_epochs"),
    ("train --set use_sde=true on discrete CartPole", "train",
     lambda r, t: ["ppo", "CartPole", "--set", "use_sde=true", "--out", str(r / "o"), *_T], "use_sde"),
    ("sweep seeds: 1000000000", "sweep", lambda r, t: [_study(r, seeds=10**9), "--out", str(r / "o")], "seed"),
    ("sweep grid of 1e10 points", "sweep",
     lambda r, t: [_study(r, grid={k: [0.1 + i / 100 for i in range(10)] for k in _TEN_KEYS}), "--out",
                   str(r / "o")], "10,000,000,000 runs"),
    ("sweep of 1e6 runs", "sweep",
     lambda r, t: [_study(r, seeds=1000, grid={"learning_rate": [1e-3 + i * 1e-6 for i in range(1000)]}), "--out",
                   str(r / "o")], "runs"),
    ("sweep probe: {batch: 1000000000}", "sweep",
     lambda r, t: [_study(r, probe={"batch": 10**9}), "--out", str(r / "o")], "memory"),
    ("sweep evaluate: {episodes: abc}", "sweep",
     lambda r, t: [_study(r, evaluate={"episodes": "abc"}), "--out", str(r / "o")], "episodes"),
    ("sweep factors: {length: [abc]}", "sweep",
     lambda r, t: [_study(r, evaluate={"suite": {"factors": {"length": ["abc"]}}}), "--out", str(r / "o")], "abc"),
    ("sweep report: {n_perm: 1e12}", "sweep",
     lambda r, t: [_study(r, report={"n_perm": 10**12}), "--out", str(r / "o")], "n_perm"),
    ("sweep YAML nested 1e5 deep", "sweep", lambda r, t: [_text_file(r, "n.yaml", _nested().encode()), "--out",
                                                           str(r / "o")], "nested"),
    ("sweep YAML starting with bytes \\xff\\xfe", "sweep",
     lambda r, t: [_text_file(r, "b.yaml", b"\xff\xfename: s\n"), "--out", str(r / "o")], "UTF-8"),
    ("sweep /dev/zero", "sweep", lambda r, t: ["/dev/zero", "--out", str(r / "o")], "regular file"),
    ("zip data nested 1e5 deep: evaluate", "evaluate",
     lambda r, t: [_rezip(t / "model.zip", r / "n.zip", lambda _: _nested().encode()), "--task", "CartPole", *_E],
     "n.zip"),
    ("zip data nested 1e5 deep: probe", "probe",
     lambda r, t: [_rezip(t / "model.zip", r / "n.zip", lambda _: _nested().encode()), "--task", "CartPole", *_P],
     "n.zip"),
    ("config.json nested 1e5 deep: probe", "probe", lambda r, t: [_edit_run(r, t, "config.json", _nested()), *_P],
     "config.json"),
    ("config.json nested 1e5 deep: evaluate", "evaluate",
     lambda r, t: [_edit_run(r, t, "config.json", _nested()), *_E], "config.json"),
    ("metrics.json a directory: probe", "probe",
     lambda r, t: [_edit_run(r, t, "metrics.json", directory=True), *_P], "metrics.json"),
    ("metrics.json a directory: evaluate", "evaluate",
     lambda r, t: [_edit_run(r, t, "metrics.json", directory=True), *_E], "metrics.json"),
    ("config.json a directory: probe", "probe", lambda r, t: [_edit_run(r, t, "config.json", directory=True), *_P],
     "config.json"),
    ("config.json a directory: evaluate", "evaluate",
     lambda r, t: [_edit_run(r, t, "config.json", directory=True), *_E], "config.json"),
    ('gamma: "abc" in config.json', "probe", lambda r, t: [_gamma_abc(r, t), *_P], "gamma"),
    ("NaN weights: probe", "probe",
     lambda r, t: [_rezip(t / "model.zip", r / "w.zip", weights="nan"), "--task", "CartPole", *_P], "NaN"),
    ("NaN weights: evaluate", "evaluate",
     lambda r, t: [_rezip(t / "model.zip", r / "w.zip", weights="nan"), "--task", "CartPole", *_E], "NaN"),
    ("1e38 weights: probe", "probe",
     lambda r, t: [_rezip(t / "model.zip", r / "w.zip", weights="1e38"), "--task", "CartPole", *_P], "overflow"),
    ("1e38 weights: evaluate", "evaluate",
     lambda r, t: [_rezip(t / "model.zip", r / "w.zip", weights="1e38"), "--task", "CartPole", *_E], "overflow"),
    ("all-zero weights: quick probe", "probe",
     lambda r, t: [_rezip(t / "model.zip", r / "w.zip", weights="0"), "--task", "CartPole", *_P], "zero"),
    ("all-zero weights: default probe", "probe",
     lambda r, t: [_rezip(t / "model.zip", r / "w.zip", weights="0"), "--task", "CartPole", "--no-progress"],
     "zero"),
    ("evaluate --rng-seed -1", "evaluate", lambda r, t: [str(_run_copy(r, t)), *_E, "--rng-seed", "-1"], "rng_seed"),
    ("probe --keskar-eps 1e308", "probe",
     lambda r, t: [str(_run_copy(r, t)), *_P, "--measures", "keskar", "--keskar-eps", "1e308"], "keskar_eps"),
    ("probe --sigmas with 10,000 values", "probe",
     lambda r, t: [str(_run_copy(r, t)), *_P, "--measures", "perturbation", "--sigmas", _SIGMAS], "sigmas"),
    ("report --n-boot 1e9", "report", lambda r, t: [_report_study(r), "--n-boot", "1000000000", "--no-progress"],
     "--n-boot"),
    ("report n_perm: 1e12 in study.yaml", "report",
     lambda r, t: [_report_study(r, {"n_perm": 10**12}), "--no-progress"], "n_perm"),
    ("train --set learning_rate=1e30 (diverges)", "train",
     lambda r, t: ["ppo", "CartPole", "--set", "learning_rate=1e30", "--out", str(r / "o"), *_T], "diverged"),
]  # fmt: skip


def _nested_normalization(root: Path, trained: Path) -> str:
    run = _run_copy(root, trained)
    (run / "normalization.json").write_text(_nested())
    return str(run)


def _main(command: str) -> Callable[[list[str] | None], int]:
    import importlib

    module = importlib.import_module("rlflat.train" if command == "train" else f"rlflat.{command}.__main__")
    return module.main  # type: ignore[no-any-return]


@pytest.mark.parametrize(("case", "command", "build", "fragment"), LISTED, ids=[c[0] for c in LISTED])
def test_listed_case_is_one_line_exit_2_nothing_written(
    case: str,
    command: str,
    build: Callable[[Path, Path], list[str]],
    fragment: str,
    trained: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)  # default outputs would land here, inside the compared tree
    argv = build(tmp_path, trained)
    _one_line_refusal(_main(command), argv, tmp_path, fragment)


def test_memory_estimate_honours_ulimit() -> None:
    """``ulimit -v`` caps the estimate (the evaluator's --episodes 40000 under 6 GB and a 3 GiB policy.pth bomb
    were refused by nothing: MemAvailable was read alone)."""
    import subprocess
    import sys

    code = "from rlflat.memory import available_memory; print(available_memory())"
    limit_kib = 3_000_000
    out = subprocess.run(
        ["bash", "-c", f"ulimit -v {limit_kib}; {sys.executable} -c '{code}'"],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert 0 < int(out.stdout) < limit_kib * 1024


def test_policy_bomb_is_refused_from_the_zip_directory(
    trained: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A policy.pth declared larger than memory allows is refused before it is inflated."""
    import zipfile

    from rlflat import memory

    path = tmp_path / "bomb.zip"
    with zipfile.ZipFile(trained / "model.zip") as old, zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as new:
        for item in old.infolist():
            payload = old.read(item.filename)
            new.writestr(item.filename, payload + b"\0" * (8 << 20) if item.filename == "policy.pth" else payload)
    monkeypatch.setattr(memory, "available_memory", lambda: 4 << 20)  # as under a small ulimit -v
    _one_line_refusal(_main("evaluate"), [str(path), "--task", "CartPole", *_E], tmp_path, "policy.pth")


def test_publication_without_exchange_kill_at_every_rename(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Where the file system has no atomic exchange, publication takes two renames; a kill between them leaves
    no target, and the next cleanup puts the old set back: after cleanup, old or new, never a mix or nothing."""
    monkeypatch.setattr(rio, "_renameat2", lambda: None)
    target = tmp_path / "out"
    target.mkdir()
    (target / "a").write_text("old a")
    (target / "b").write_text("old b")

    def action() -> None:
        def build(folder: Path) -> None:
            rio.write_text(folder / "a", "new a")
            rio.write_text(folder / "b", "new b")

        update_dir(target, build)

    def is_new(path: Path) -> bool:
        return (path / "a").read_text() == "new a" and (path / "b").read_text() == "new b"

    states = _kill_everywhere(target, action, is_new, cleanup_first=True)
    assert len(states) == 7  # 2 writes in the copy, the exchange tried, 2 renames; finished; killed after


def test_a_failed_publication_is_one_line_and_leaves_the_old_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An exchange the file system refuses (EBUSY on a mount point, EXDEV) is a one-line error, old set intact."""
    import errno

    from rlflat.errors import RlflatError

    target = tmp_path / "out"
    target.mkdir()
    (target / "a").write_text("old")

    def refuse(kind: str, src: Path, dst: Path) -> None:
        if kind == "exchange":
            raise OSError(errno.EBUSY, os.strerror(errno.EBUSY))

    monkeypatch.setattr(rio, "RENAME_HOOK", refuse)
    with pytest.raises(RlflatError, match="cannot publish"):
        update_dir(target, lambda folder: rio.write_text(folder / "a", "new"))
    assert _tree(tmp_path) == {"out": b"<dir>", "out/a": b"old"}
