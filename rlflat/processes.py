"""Environment for child processes: one BLAS/OpenMP thread each.

Shared by the sweep's worker pool and the evaluator's MuJoCo/Box2D worker processes. Both start from
``multiprocessing``'s forkserver, which is one per Python process: whichever starts it first fixes the environment
every later forkserver child inherits, so both must start it inside :func:`single_threaded_children`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["SINGLE_THREAD_ENV", "single_threaded_children"]

SINGLE_THREAD_ENV = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
"""BLAS/OpenMP read these once, when the library loads: they must be in a worker's environment before its
numpy/scipy/torch import (for forkserver workers: before the fork server, which preloads them, starts)."""


@contextmanager
def single_threaded_children() -> Iterator[None]:
    """Put :data:`SINGLE_THREAD_ENV` in the environment of the processes started in this block.

    The fork server (started with the first pool) and spawned workers inherit it; this process's own BLAS,
    loaded long ago, is unaffected, and its environment is restored afterwards.
    """
    saved = {name: os.environ.get(name) for name in SINGLE_THREAD_ENV}
    os.environ.update(SINGLE_THREAD_ENV)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
