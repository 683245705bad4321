"""Atomic file writes: a reader never sees a half-written result (write to a temp name, then rename)."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, 0o666 & ~umask())  # mkstemp creates 0600; results should read like any other file
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def umask() -> int:
    """The process umask (read without changing it for longer than a moment)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def staging_dir(out: str | Path) -> Iterator[Path]:
    """Yield a fresh hidden directory beside ``out``; publish it as ``out`` only if the block succeeds.

    The directory is ``.<out name>.<random>`` in ``out``'s parent (so the final rename stays on one file
    system), readable like any other folder (``0o777 & ~umask``, not mkdtemp's 0700). If the block raises, or
    publishing fails, the staging directory is removed and ``out`` is left as it was.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    staging.chmod(0o777 & ~umask())
    try:
        with _directory_lock(staging):  # held while in use: remove_stale_staging leaves a live one alone
            yield staging
        publish_dir(staging, out)
    finally:
        if staging.exists():
            shutil.rmtree(staging)


def remove_stale_staging(out: str | Path) -> list[Path]:
    """Remove what killed writers of ``out`` left: hidden ``.<out name>.<random>`` staging and trash folders.

    A live :func:`staging_dir` holds an ``flock`` on its folder, which the kernel drops when its process dies
    (even on ``kill -9``); a folder whose lock can be taken has no writer and goes. Returns what was removed.
    """
    out = Path(out)
    if not out.parent.is_dir():
        return []
    removed = []
    for path in out.parent.glob(f".{out.name}.*"):
        if path.is_dir() and not path.is_symlink() and len(path.name) > len(out.name) + 2 and _unlocked(path):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def _unlocked(directory: Path) -> bool:
    """Whether nobody holds an ``flock`` on ``directory`` (non-POSIX: assume somebody does)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover
        return False
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)  # closing drops a lock we took
    return True


def check_output_dir(out: str | Path, flag: str = "--out", *, published: bool = False) -> Path:
    """``out`` if results could be written there, else a one-line error (checked before any work is done).

    ``out`` must be a directory or not exist yet, and the folder written into must be a writable directory:
    ``out`` itself when it exists, else its nearest existing ancestor; with ``published`` (a folder renamed
    into place by :func:`staging_dir`) always ``out``'s parent side. A file in the way or a read-only parent
    would otherwise fail only after the work, as a traceback.
    """
    from rlflat.errors import RlflatError

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise RlflatError(f"{flag} {out} is a file, not a directory; choose a directory")
    ancestor = out if out.exists() and not published else out.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise RlflatError(f"{flag} {out}: {ancestor} is a file, not a directory; choose another {flag}")
    try:  # really try (an unnamed temporary file): permission bits say nothing for root or read-only mounts
        with tempfile.TemporaryFile(dir=ancestor):
            pass
    except OSError as exc:
        raise RlflatError(
            f"{flag} {out}: cannot write in {ancestor} ({exc.strerror or exc}); choose another {flag}"
        ) from None
    return out


def publish_dir(staging: str | Path, out: str | Path) -> Path:
    """Move the finished directory ``staging`` to ``out`` by rename; an existing ``out`` is replaced.

    ``staging`` must be on ``out``'s file system (see :func:`staging_dir`). An existing ``out`` is first
    renamed to a hidden ``.<out name>.<random>.old`` and deleted after: two renames, so a crash in between
    leaves no ``out`` at all (and the hidden leftover to clean up), never a mix of old and new files.
    """
    staging, out = Path(staging), Path(out)
    if not out.exists():
        os.replace(staging, out)
        return out
    trash = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
    try:
        os.replace(out, trash)  # POSIX rename may replace an empty directory
    except BaseException:
        trash.rmdir()
        raise
    try:
        os.replace(staging, out)
    except BaseException:
        os.replace(trash, out)  # put the old one back
        raise
    shutil.rmtree(trash, ignore_errors=True)
    return out


def write_atomic(path: str | Path, writer: Callable[[Path], Any]) -> Path:
    """Call ``writer(tmp_path)`` and atomically move the result to ``path``."""
    with atomic_path(path) as tmp:
        writer(tmp)
    return Path(path)


def write_text(path: str | Path, text: str) -> Path:
    return write_atomic(path, lambda p: p.write_text(text))


def write_json(path: str | Path, data: Any) -> Path:
    """Write JSON atomically; numpy scalars/arrays are converted, NaN/inf become null (strict JSON)."""
    return write_text(path, json.dumps(to_jsonable(data), indent=2, sort_keys=False, allow_nan=False) + "\n")


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())


def to_jsonable(value: Any) -> Any:
    """Recursively convert numpy/torch/Path values into plain JSON types (non-finite floats -> None)."""
    import math

    import numpy as np

    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, np.ndarray):
        return to_jsonable(value.tolist())
    if isinstance(value, np.generic):
        return to_jsonable(value.item())
    if hasattr(value, "detach") and hasattr(value, "tolist"):  # torch tensor
        return to_jsonable(value.detach().cpu().tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def package_versions(packages: Iterable[str]) -> dict[str, str]:
    """Installed version of each distribution, ``"unknown"`` where it is not installed (for result provenance)."""
    from importlib import metadata

    out = {}
    for package in packages:
        try:
            out[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            out[package] = "unknown"
    return out


@contextmanager
def _directory_lock(directory: Path) -> Iterator[None]:
    """Exclusive ``flock`` on a folder: concurrent writers of one file's blocks cannot lose each other's keys."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - non-POSIX: no lock, still atomic
        yield
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def read_json_object(path: str | Path) -> dict[str, Any]:
    """A JSON object from ``path`` ({} if missing); a corrupt file is a one-line user error."""
    from rlflat.errors import RlflatError

    path = Path(path)
    if not path.exists():
        return {}
    try:
        data = read_json(path)
    except ValueError:
        raise RlflatError(f"{path}: not valid JSON; fix or remove it") from None
    if not isinstance(data, dict):
        raise RlflatError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def update_json_block(path: str | Path, key: str, block: Any) -> Path:
    """Set ``data[key] = block`` in the JSON object at ``path``, keeping every other key (locked, atomic)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _directory_lock(path.parent):
        data = read_json_object(path)
        data[key] = block
        return write_json(path, data)


def check_no_results(result: Path, metrics: Path | None, block: str, force: bool) -> None:
    """Refuse to replace an earlier result unless ``force``: the ``result`` file, or ``block`` in ``metrics``.

    Reads ``metrics`` first, so a corrupt ``metrics.json`` is a one-line error before any work (and any write)
    whether or not ``force`` is given. Shared by the probe and the evaluator.
    """
    from rlflat.errors import RlflatError

    recorded = read_json_object(metrics) if metrics is not None else {}
    if force:
        return
    if result.exists():
        raise RlflatError(f"{result} exists: add --force to replace it, or choose another --out")
    if block in recorded:
        raise RlflatError(f"{metrics} already has a {block} block: add --force to replace it")
