"""Issue 23: nothing lost, nothing half-written, no traceback.

Staging cleanup touches only folders rlflat created; multi-file results are published as one unit (a kill at any
rename leaves the old set or the new set); bad inputs are one line, exit 2, nothing written.
"""

from __future__ import annotations

import os
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
