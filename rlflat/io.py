"""Atomic file writes: a reader never sees a half-written result (write to a temp name, then rename)."""

from __future__ import annotations

import ctypes
import errno as _errno
import functools
import json
import os
import secrets
import shutil
import stat
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, nullcontext
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
        _replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def umask() -> int:
    """The process umask (read without changing it for longer than a moment)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


STAGING_SUFFIX = ".rlflat-staging"
"""Every staging folder is ``.<out name>.<32 hex digits>.rlflat-staging`` beside ``out``."""
STAGING_MARKER = ".rlflat-staging"
"""A file inside each staging folder whose text names that folder (its random token included); cleanup removes a
folder only when the marker is there with exactly that text, so a user's ``.run.backup`` or a copied marker never
matches."""
_NEW, _OLD = "new", "old"
_TOKEN_HEX = 32


def _marker_text(folder_name: str) -> str:
    return f"rlflat staging folder {folder_name}; removed by the next rlflat command writing beside it\n"


def _new_staging(out: Path) -> Path:
    """Create ``.<out name>.<token>.rlflat-staging/`` beside ``out`` with its marker and an empty ``new/``."""
    out.parent.mkdir(parents=True, exist_ok=True)
    mode = 0o777 & ~umask()
    while True:
        name = f".{out.name}.{secrets.token_hex(_TOKEN_HEX // 2)}{STAGING_SUFFIX}"
        staging = out.parent / name
        try:
            staging.mkdir(mode=0o700)
        except FileExistsError:  # pragma: no cover - 128 random bits
            continue
        break
    (staging / STAGING_MARKER).write_text(_marker_text(name))
    (staging / _NEW).mkdir()
    (staging / _NEW).chmod(mode)  # results read like any other folder (not mkdir's 0700 under a 077 umask)
    return staging


def _is_staging(parent: Path, entry: str, out_name: str) -> bool:
    """Whether ``parent/entry`` is a staging folder of ``out_name`` created by :func:`_new_staging` (literal
    name match, a real directory, its marker present with exactly the expected text)."""
    prefix = f".{out_name}."
    if not (entry.startswith(prefix) and entry.endswith(STAGING_SUFFIX)):
        return False
    token = entry[len(prefix) : len(entry) - len(STAGING_SUFFIX)]
    if len(token) != _TOKEN_HEX or any(c not in "0123456789abcdef" for c in token):
        return False
    path = parent / entry
    try:
        if not stat.S_ISDIR(os.lstat(path).st_mode):
            return False
        marker = path / STAGING_MARKER
        if not stat.S_ISREG(os.lstat(marker).st_mode) or marker.stat().st_size > 4096:
            return False
        return marker.read_text() == _marker_text(entry)
    except (OSError, UnicodeDecodeError):
        return False


# -- renames: every one goes through _replace or _exchange, so a test can stop the program at any of them -----

RENAME_HOOK: Callable[[str, Path, Path], None] | None = None
"""Called before every rename this module makes (``"replace"`` or ``"exchange"``, source, destination): a fault
hook for the tests that kill a writer at each rename in turn."""


def _replace(src: Path, dst: Path) -> None:
    if RENAME_HOOK is not None:
        RENAME_HOOK("replace", src, dst)
    os.replace(src, dst)


_RENAME_EXCHANGE = 2


def _exchange(a: Path, b: Path) -> bool:
    """Swap ``a`` and ``b`` in one atomic step (Linux ``renameat2(RENAME_EXCHANGE)``); False where unsupported."""
    if RENAME_HOOK is not None:
        RENAME_HOOK("exchange", a, b)
    renameat2 = _renameat2()
    if renameat2 is None:
        return False
    at_fdcwd = -100
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    errno = ctypes.get_errno()
    if errno in (_errno.EINVAL, _errno.ENOSYS, _errno.ENOTSUP, _errno.EOPNOTSUPP):
        return False  # a file system without exchange: the caller falls back to two renames
    raise OSError(errno, os.strerror(errno), str(b))


@functools.cache
def _renameat2() -> Any:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        function = libc.renameat2
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    function.restype = ctypes.c_int
    return function


def _publish(staging: Path, out: Path) -> None:
    """Make ``staging/new`` be ``out``: one rename, or one exchange when ``out`` exists, then drop the staging
    folder (holding the old set after an exchange). A kill at any point leaves ``out`` old or new, never a mix;
    the staging folder it leaves is removed (or, after the two-rename fallback, put back) by
    :func:`remove_stale_staging`."""
    from rlflat.errors import RlflatError

    new = staging / _NEW
    try:
        if not os.path.lexists(out):
            _replace(new, out)
        elif not _exchange(new, out):  # no atomic exchange here: two renames; a kill between is undone on cleanup
            _replace(out, staging / _OLD)
            try:
                _replace(new, out)
            except BaseException:
                _replace(staging / _OLD, out)
                raise
    except OSError as exc:  # a mount point, a folder turned read-only meanwhile: out is as it was
        raise RlflatError(f"cannot publish {out}: {exc.strerror or exc}; nothing was changed") from None
    shutil.rmtree(staging, ignore_errors=True)


@contextmanager
def staging_dir(out: str | Path) -> Iterator[Path]:
    """Yield a fresh folder to fill; publish it as ``out`` (replacing an existing ``out``) if the block succeeds.

    The folder is ``new/`` inside a marked staging folder beside ``out`` (:data:`STAGING_SUFFIX`; same file
    system, so publishing is a rename, or one atomic exchange when ``out`` exists). If the block raises, or
    publishing fails, the staging folder is removed and ``out`` is left as it was.
    """
    out = Path(out)
    staging = _new_staging(out)
    try:
        with _directory_lock(staging):  # held while in use: remove_stale_staging leaves a live one alone
            yield staging / _NEW
            _publish(staging, out)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def update_dir(target: str | Path, build: Callable[[Path], Any], *, lock: bool = True) -> Any:
    """Change several files of the folder ``target`` as one unit; returns what ``build`` returns.

    ``build`` gets a copy of ``target`` (hard links: no data copied) and writes or removes files in it; the copy
    is then swapped in by one atomic exchange, so readers and a kill at any moment see the old set of files or
    the new one, never a mix. ``build`` must replace files (the ``write_*`` helpers here rename a temporary
    file), never write into an existing one, which would change the linked original too. Writers of one folder
    are serialised by a lock on its parent, so concurrent updates (the probe's and the evaluator's metrics.json
    blocks) cannot lose each other's files; ``lock=False`` for a writer that replaces what it owns without
    reading it (a report: minutes of work that must not hold up the sweep's writers). ``target`` is created
    when missing.
    """
    target = Path(os.path.realpath(target))
    target.parent.mkdir(parents=True, exist_ok=True)
    with _directory_lock(target.parent) if lock else nullcontext():
        remove_stale_staging(target)
        staging = _new_staging(target)
        try:
            with _directory_lock(staging):
                if target.is_dir():
                    _link_tree(target, staging / _NEW)
                result = build(staging / _NEW)
                _publish(staging, target)
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)
    return result


def _link_tree(source: Path, dest: Path) -> None:
    """Recreate ``source`` under ``dest`` (existing) with hard links to its files (a copy where links fail)."""
    for entry in os.scandir(source):
        target = dest / entry.name
        if entry.is_dir(follow_symlinks=False):
            target.mkdir()
            shutil.copystat(entry.path, target)
            _link_tree(Path(entry.path), target)
        elif entry.is_symlink():
            os.symlink(os.readlink(entry.path), target)
        else:
            try:
                os.link(entry.path, target)
            except OSError:
                shutil.copy2(entry.path, target)


def remove_stale_staging(out: str | Path) -> list[Path]:
    """Remove what killed writers of ``out`` left: marked staging folders of ``out`` that no process holds.

    Only folders :func:`staging_dir` / :func:`update_dir` created are touched: the name must be exactly
    ``.<out name>.<32 hex>.rlflat-staging`` (compared as a string, never a glob pattern) and the folder must hold
    its marker file naming it. A live writer holds an ``flock`` on its folder, which the kernel drops when its
    process dies (even on ``kill -9``). A folder left between the two renames of the no-exchange fallback, with
    ``out`` missing, holds the old set: it is put back as ``out`` rather than deleted. Returns what was removed.
    """
    out = Path(out)
    parent = out.parent
    try:
        entries = os.listdir(parent)
    except OSError:
        return []
    removed = []
    for entry in entries:
        path = parent / entry
        if not _is_staging(parent, entry, out.name) or not _unlocked(path):
            continue
        old = path / _OLD
        if os.path.isdir(old) and not os.path.lexists(out):
            os.replace(old, out)  # recovery: never counted as a rename of a publication
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
    return load_json_text(Path(path).read_text())


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
    if not os.path.lexists(path):
        return {}
    data = load_json_file(path)
    if not isinstance(data, dict):
        raise RlflatError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def load_json_file(path: str | Path, what: str = "JSON") -> Any:
    """The JSON value in the file ``path``, or a one-line :class:`RlflatError` for anything that is not: a folder,
    unreadable bytes, invalid or too deeply nested JSON (``'[' * 100000`` is a RecursionError in ``json``)."""
    from rlflat.errors import RlflatError

    path = Path(path)
    if path.is_dir():
        raise RlflatError(f"{path} is a directory, not a {what} file; remove or replace it")
    try:
        text = path.read_text()
        check_nesting(text)
    except OSError as exc:
        raise RlflatError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    except ValueError as exc:  # bytes that are not UTF-8, or nesting past MAX_JSON_DEPTH
        reason = str(exc) if isinstance(exc, _NestingError) else "not UTF-8 text"
        raise RlflatError(f"{path}: {reason}; fix or remove it") from None
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        raise RlflatError(f"{path}: not valid JSON; fix or remove it") from None


MAX_JSON_DEPTH = 100
"""Deepest nesting accepted in a JSON or YAML input: rlflat's own files nest fewer than 10 levels."""


def load_json_text(text: str) -> Any:
    """``json.loads`` that refuses nesting deeper than :data:`MAX_JSON_DEPTH` (ValueError) before parsing."""
    check_nesting(text)
    return json.loads(text)


class _NestingError(ValueError):
    """Brackets nested past the limit (a ValueError, so callers that catch bad JSON catch it too)."""


def check_nesting(text: str, limit: int = MAX_JSON_DEPTH) -> None:
    """ValueError when the brackets of ``text`` (JSON, YAML flow style) nest deeper than ``limit``; strings are
    skipped roughly (quotes toggle), which can only over-count inside odd strings, never let a deep value pass."""
    depth = 0
    in_string = False
    escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            if depth > limit:
                raise _NestingError(f"nested more than {limit} levels deep")
        elif char in "]}":
            depth -= 1


def update_json_block(path: str | Path, key: str, block: Any) -> Path:
    """Set ``data[key] = block`` in the JSON object at ``path``, keeping every other key (locked, atomic, and
    through :func:`update_dir`, so it cannot interleave with another writer's multi-file update of the folder)."""
    path = Path(path)

    def build(folder: Path) -> None:
        data = read_json_object(folder / path.name)
        data[key] = block
        write_json(folder / path.name, data)

    update_dir(path.parent, build)
    return path


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
