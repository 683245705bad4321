"""Memory budgets: estimate what a command's arguments need and refuse, in one line, before allocating.

A batch of rollouts, a probe's stacked parameter sets or a dense Hessian grows with the product of several
arguments; one typo (``--points 100000000``) would otherwise end in a ``MemoryError`` traceback or a kernel OOM
kill minutes later. Every command adds up its largest allocations from its arguments alone and compares the sum
with the memory available now (``MemAvailable`` of ``/proc/meminfo``, capped by a cgroup v2 limit when the process
runs in one). The estimates are deliberately simple products whose constants were measured (see each budget
module); they aim at the right order of magnitude, which is what separates a typo from a large job.
"""

from __future__ import annotations

import os
from pathlib import Path

from rlflat.errors import RlflatError

__all__ = ["available_memory", "format_bytes", "require_memory"]

_CGROUP = Path("/sys/fs/cgroup")


def available_memory() -> int:
    """Bytes this process can still allocate: ``MemAvailable``, or less under a cgroup v2 ``memory.max``."""
    available = _meminfo_available()
    limit = _read_int(_CGROUP / "memory.max")
    used = _read_int(_CGROUP / "memory.current")
    if limit is not None and used is not None:
        available = min(available, max(limit - used, 0))
    return available


def require_memory(nbytes: float, what: str) -> None:
    """Raise a one-line :class:`RlflatError` naming ``what``, the estimate and the available memory if it does
    not fit."""
    available = available_memory()
    if nbytes > available:
        raise RlflatError(
            f"{what} needs about {format_bytes(nbytes)} of memory, more than the {format_bytes(available)} "
            "available; use smaller sizes"
        )


def format_bytes(nbytes: float) -> str:
    value = float(nbytes)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if value < 1024 or unit == "PiB":
            return f"{value:.3g} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def _meminfo_available() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:  # not Linux: free physical pages
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return 2**63  # unknown: do not refuse


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None  # "max" means no limit
