"""Memory budgets: estimate what a command's arguments need and refuse, in one line, before allocating.

A batch of rollouts, a probe's stacked parameter sets or a dense Hessian grows with the product of several
arguments; one typo (``--points 100000000``) would otherwise end in a ``MemoryError`` traceback or a kernel OOM
kill minutes later. Every command adds up its largest allocations from its arguments alone and compares the sum
with the memory available now (``MemAvailable`` of ``/proc/meminfo``, capped by a cgroup v2 limit when the process
runs in one and by ``ulimit -v`` / ``ulimit -d``). The estimates are deliberately simple products whose constants were measured (see each budget
module); they aim at the right order of magnitude, which is what separates a typo from a large job.
"""

from __future__ import annotations

import os
from pathlib import Path

from rlflat.errors import RlflatError

__all__ = ["available_memory", "format_bytes", "mlp_parameters", "require_memory"]

_CGROUP = Path("/sys/fs/cgroup")


def available_memory() -> int:
    """Bytes this process can still allocate: the smallest of ``MemAvailable``, the room left under the cgroup v2
    ``memory.max``, and the room left under ``ulimit -v`` / ``-d`` (``RLIMIT_AS`` less the address space in use,
    ``RLIMIT_DATA`` less the data segment in use), where those limits are set."""
    available = _meminfo_available()
    limit = _read_int(_CGROUP / "memory.max")
    used = _read_int(_CGROUP / "memory.current")
    if limit is not None and used is not None:
        available = min(available, max(limit - used, 0))
    for room in _rlimit_room():
        available = min(available, room)
    return available


def _rlimit_room() -> list[int]:
    """Bytes left under each set address-space / data-segment limit (``/proc/self/status`` VmSize, VmData)."""
    try:
        import resource
    except ImportError:  # pragma: no cover - not POSIX
        return []
    status = _proc_status()
    rooms = []
    for which, field in ((resource.RLIMIT_AS, "VmSize"), (resource.RLIMIT_DATA, "VmData")):
        soft, _ = resource.getrlimit(which)
        if soft != resource.RLIM_INFINITY and soft >= 0:
            rooms.append(max(int(soft) - status.get(field, 0), 0))
    return rooms


def _proc_status() -> dict[str, int]:
    """``Vm*`` fields of ``/proc/self/status`` in bytes ({} where unreadable)."""
    fields: dict[str, int] = {}
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            key, _, value = line.partition(":")
            parts = value.split()
            if key.startswith("Vm") and len(parts) == 2 and parts[1] == "kB" and parts[0].isdigit():
                fields[key] = int(parts[0]) * 1024
    except OSError:
        pass
    return fields


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


def mlp_parameters(net_arch: object, inputs: int) -> int:
    """Weights and biases of SB3's MLP extractor for ``net_arch`` (a list of widths shared by actor and critic,
    or ``{"pi": [...], "vf": [...]}``) on ``inputs`` features: what an architecture costs before it is built.
    Unreadable shapes count 0 (the builder refuses them)."""
    if isinstance(net_arch, dict):
        branches = [net_arch.get("pi") or [], net_arch.get("vf") or []]
    elif isinstance(net_arch, list | tuple):
        branches = [net_arch, net_arch]
    else:
        return 0
    total = 0
    for layers in branches:
        previous = inputs
        for width in layers if isinstance(layers, list | tuple) else []:
            if isinstance(width, int) and not isinstance(width, bool) and width > 0:
                total += (previous + 1) * width
                previous = width
    return total
