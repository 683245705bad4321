"""Small YAML files a user hands in (study configs, preregistrations), read and parsed with the same guards.

Each guard answers a red-team input in one line instead of a traceback or an endless read: a non-regular file
(``/dev/zero``), a file over :data:`MAX_YAML_BYTES`, bytes that are not UTF-8, brackets nested past
:data:`rlflat.io.MAX_JSON_DEPTH` (YAML's parser recurses), invalid YAML (with its line), and a top level that is not
a mapping. ``what`` names the kind of file in every message.
"""

from __future__ import annotations

import stat
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from rlflat.errors import RlflatError
from rlflat.io import check_nesting

MAX_YAML_BYTES = 1 << 20
"""Largest file read (1 MiB; the shipped configs are under 4 KiB): ``sweep /dev/zero`` must not read for ever."""


def read_yaml_text(path: Path, what: str) -> str:
    """The UTF-8 text of the regular file ``path`` of at most :data:`MAX_YAML_BYTES`, or one line saying why not."""
    try:
        info = path.stat()
        if not stat.S_ISREG(info.st_mode):
            raise RlflatError(f"{what} {path} is not a regular file; give a YAML file")
        if info.st_size > MAX_YAML_BYTES:
            raise RlflatError(f"{what} {path} is {info.st_size} bytes, over the {MAX_YAML_BYTES} accepted")
        return path.read_bytes()[: MAX_YAML_BYTES + 1].decode("utf-8")
    except OSError as exc:
        raise RlflatError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise RlflatError(f"{what} {path} is not UTF-8 text (byte {exc.start}); save it as UTF-8 YAML") from None


def parse_yaml_mapping(text: str, source: str, what: str, keys: Iterable[str]) -> dict[str, Any]:
    """``text`` parsed as a YAML mapping; ``keys`` (the valid top-level keys) are named when it is not one."""
    try:
        check_nesting(text)
        data = yaml.safe_load(text)
    except (ValueError, RecursionError) as exc:
        raise RlflatError(
            f"{source}: not a usable {what} ({exc if isinstance(exc, ValueError) else 'nested too deeply'})"
        ) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or type(exc).__name__
        raise RlflatError(f"{source}{where}: not valid YAML ({problem})") from None
    if not isinstance(data, dict):
        raise RlflatError(f"{source}: a {what} must be a mapping with keys {', '.join(keys)}")
    return data
