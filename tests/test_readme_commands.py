"""The README's commands run on a copy of the repository and change no tracked file.

Committed studies are read-only to commands that only need to read them: a documented command that rewrote
``results/<study>/study.yaml`` (and so the committed report) is the failure this guards against. Every command
in the README's code blocks runs, in order, in a fresh copy of the working tree turned into its own git
repository; long ones run as cheap versions (fewer steps and episodes, a study resumed instead of rerun), and
``git status --porcelain`` must stay empty: new outputs land in git-ignored folders.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
COMMAND = re.compile(r"^(?:[A-Z_]+=\S+\s+)*(?:python -m rlflat\b|rlflat\s)")
TRAIN_STEPS = "2048"
PLACEHOLDERS = {  # the README's placeholders, as runs its own earlier commands made
    "RUN_A": "results/adhoc/ppo_sam",
    "RUN_B": "results/adhoc/pg-s3",
    "RUN": "results/adhoc/pg-s3",
    "path/to/any_sb3_model.zip": "results/adhoc/ppo_sam/model.zip",
}
READ_ONLY = ("--list", "--dry-run", "configs/cartpole_sam.yaml --workers")
"""Commands cheap enough for the default suite: listings, dry runs, resuming a finished committed study."""


def readme_commands(text: str) -> list[str]:
    """The rlflat commands of the README's code blocks, in order, without their trailing comments."""
    blocks = re.findall(r"```[^\n]*\n(.*?)```", text, flags=re.DOTALL)
    lines = [line.split("  #", 1)[0].strip() for block in blocks for line in block.splitlines()]
    return [line for line in lines if COMMAND.match(line)]


def cheap(command: str) -> list[str]:
    """``command`` as argv (environment assignments dropped) in a version that takes seconds."""
    argv = shlex.split(command)
    while argv and re.match(r"^[A-Z_]+=", argv[0]):
        argv.pop(0)
    argv = [PLACEHOLDERS.get(arg, arg) for arg in argv]
    if argv[:2] == ["python", "-m"]:
        argv = [sys.executable, "-m", *argv[2:]]
    else:  # the console script: the same entry point through python -m rlflat
        argv = [sys.executable, "-m", "rlflat", *argv[1:]]
    tool = argv[2] if argv[2] != "rlflat" else f"rlflat.{argv[3]}"
    if tool == "rlflat.train" and "--list" not in argv:
        argv = _set(argv, "--steps", TRAIN_STEPS)
    if tool in ("rlflat.evaluate", "rlflat.probe") and "--episodes" in argv:
        argv = _set(argv, "--episodes", "2")
    if tool == "rlflat.probe":
        argv = _set(argv, "--batches", "2") if "--batches" in argv else argv
        argv = _set(argv, "--batch", "300") if "--batch" in argv else argv
    if tool == "rlflat.sweep" and "--backend" in argv and "ray" in argv:
        argv += ["--dry-run"]  # no cluster here (tests/test_ray_cluster.py runs a real one, slow)
    return argv


def _set(argv: list[str], flag: str, value: str) -> list[str]:
    if flag in argv:
        i = argv.index(flag)
        return [*argv[: i + 1], value, *argv[i + 2 :]]
    return [*argv, flag, value]


def _git(copy: Path, *args: str) -> str:
    done = subprocess.run(["git", *args], cwd=copy, capture_output=True, text=True, check=True)
    return done.stdout


@pytest.fixture(scope="module")
def repo_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The working tree's files that git does not ignore, as they are now, in a new repository with one commit."""
    copy = tmp_path_factory.mktemp("clone")
    listing = ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"]
    tracked = subprocess.run(listing, cwd=ROOT, capture_output=True, check=True).stdout
    for name in filter(None, tracked.decode().split("\0")):
        source = ROOT / name
        if source.is_file():
            (copy / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, copy / name)
    _git(copy, "init", "-q")
    _git(copy, "add", "-A")
    _git(copy, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "copy")
    assert _git(copy, "status", "--porcelain") == ""
    return copy


def _run(copy: Path, command: str) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(copy)}
    done = subprocess.run(cheap(command), cwd=copy, env=env, capture_output=True, text=True, timeout=600)
    tail = (done.stdout + done.stderr)[-2000:]
    assert done.returncode == 0, f"{command} -> exit {done.returncode}\n{tail}"
    changed = _git(copy, "status", "--porcelain")
    assert changed == "", f"{command} changed tracked files:\n{changed}"


def test_readme_commands_are_found_and_have_cheap_versions() -> None:
    commands = readme_commands((ROOT / "README.md").read_text())
    assert len(commands) >= 20 and any("cartpole_sam.yaml --workers" in c for c in commands)
    assert not any(c.startswith("make") for c in commands)
    assert cheap("python -m rlflat.train pg CartPole --steps 50000 --seed 3")[-4:] == [
        "--steps",
        TRAIN_STEPS,
        "--seed",
        "3",
    ]
    ray = cheap("RAY_ADDRESS=head:6379 python -m rlflat.sweep configs/sam_rho.yaml --backend ray")
    assert ray[1:] == ["-m", "rlflat.sweep", "configs/sam_rho.yaml", "--backend", "ray", "--dry-run"]
    assert cheap("rlflat probe RUN")[1:] == ["-m", "rlflat", "probe", "results/adhoc/pg-s3"]


def test_read_only_readme_commands_change_no_tracked_file(repo_copy: Path) -> None:
    """Listing, dry runs and resuming the committed reference study (nothing to do) leave the clone as it was."""
    commands = [c for c in readme_commands((ROOT / "README.md").read_text()) if any(m in c for m in READ_ONLY)]
    assert any("cartpole_sam.yaml --workers" in c for c in commands)
    for command in commands:
        _run(repo_copy, command)


@pytest.mark.slow
def test_every_readme_command_runs_in_order_and_changes_no_tracked_file(repo_copy: Path) -> None:
    for command in readme_commands((ROOT / "README.md").read_text()):
        _run(repo_copy, command)
