"""Gymnasium rows stepped in worker processes: MuJoCo/Box2D evaluation on every core.

Tasks without a numpy simulator (Hopper, LunarLander, ...) step one Gymnasium env per row, which costs tens of
microseconds per step in C plus Python overhead, while the policy forward for all rows at once costs about as
much as one row's. So the policy stays batched in the calling process (one forward for every row, the noise
streams and common random numbers of :mod:`rlflat.evaluate.actions` unchanged) and only the env steps are
spread: each worker process builds and owns the envs of its rows (their MuJoCo model setters run there, on
its own compiled models) and steps them with :class:`~rlflat.evaluate.rollout.GymRows`, which never steps a
finished episode (no Gymnasium autoreset). Rows are dealt round-robin, so the settings whose episodes end
early do not leave one worker idle. Because the actions and seeds each env sees are exactly those of the
in-process loop, returns are bit-identical to it for any number of workers.

Workers start from a forkserver (no inherited torch threads): like every ``multiprocessing`` program that does
not fork, a script calling the evaluator on a Gymnasium-fallback task needs the ``if __name__ == "__main__":``
guard (the worker re-imports the script), or ``workers=1``.
"""

from __future__ import annotations

import multiprocessing
import os
import traceback
from collections.abc import Mapping, Sequence
from multiprocessing.connection import Connection
from typing import Any

import numpy as np

from rlflat.errors import RlflatError
from rlflat.processes import single_threaded_children
from rlflat.tasks import TaskSpec

__all__ = ["ProcessRows", "default_workers"]

_MIN_ROWS_PER_WORKER = 8
"""Fewer rows than this per worker and a step's message costs more than the env steps it spreads."""


def default_workers(rows: int) -> int:
    """The usable cores, but at least ``_MIN_ROWS_PER_WORKER`` rows each (1 means: step in this process)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(cores, rows // _MIN_ROWS_PER_WORKER))


def _serve(conn: Connection, task: TaskSpec, dynamics: list[dict[str, float]]) -> None:
    """Worker loop: own the rows' envs; answer ``reset``/``step``/``close``; report errors instead of dying."""
    import torch

    torch.set_num_threads(1)
    from rlflat.evaluate.rollout import GymRows

    try:
        rows = GymRows(task, dynamics)
        conn.send(("ok", None))
        while True:
            command, payload = conn.recv()
            if command == "reset":
                conn.send(("ok", rows.reset(payload)))
            elif command == "step":
                conn.send(("ok", rows.step(payload)))
            else:
                rows.close()
                conn.send(("ok", None))
                return
    except (EOFError, KeyboardInterrupt):
        return
    except Exception as exc:  # sent to the parent, which raises it with the worker's traceback
        conn.send(("error", f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"))


class ProcessRows:
    """The batched-simulator interface (:class:`~rlflat.evaluate.rollout.GymRows`'s) over worker processes."""

    def __init__(self, task: TaskSpec, dynamics: Sequence[Mapping[str, float]], workers: int) -> None:
        n = len(dynamics)
        if workers < 1:
            raise RlflatError(f"workers must be >= 1, got {workers}")
        workers = min(workers, n)
        self._shares = [np.arange(w, n, workers) for w in range(workers)]
        context = multiprocessing.get_context("forkserver")
        self._conns: list[Connection] = []
        self._procs: list[Any] = []
        try:
            with single_threaded_children():  # may start the forkserver: it must be single-threaded too
                for share in self._shares:
                    parent, child = context.Pipe()
                    proc = context.Process(
                        target=_serve, args=(child, task, [dict(dynamics[int(i)]) for i in share]), daemon=True
                    )
                    proc.start()
                    child.close()
                    self._conns.append(parent)
                    self._procs.append(proc)
            self._gather()  # envs built (bad dynamics fail here, in every worker)
        except BaseException:
            self.close()
            raise
        self.n = n

    def _gather(self) -> list[Any]:
        replies = []
        for conn in self._conns:
            try:
                status, payload = conn.recv()
            except EOFError:
                raise RlflatError("an evaluation worker process died (out of memory?)") from None
            if status == "error":
                raise RlflatError(f"evaluation worker failed: {payload}")
            replies.append(payload)
        return replies

    def reset(self, seeds: np.ndarray) -> np.ndarray:
        for conn, share in zip(self._conns, self._shares, strict=True):
            conn.send(("reset", seeds[share]))
        parts = self._gather()
        obs = np.empty((self.n, *parts[0].shape[1:]), dtype=parts[0].dtype)
        for share, part in zip(self._shares, parts, strict=True):
            obs[share] = part
        return obs

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        for conn, share in zip(self._conns, self._shares, strict=True):
            conn.send(("step", actions[share]))
        parts = self._gather()
        out = [np.empty((self.n, *p.shape[1:]), dtype=p.dtype) for p in parts[0]]
        for share, part in zip(self._shares, parts, strict=True):
            for whole, piece in zip(out, part, strict=True):
                whole[share] = piece
        obs, reward, terminated, truncated = out
        return obs, reward, terminated, truncated

    def close(self) -> None:
        for conn in self._conns:
            try:
                conn.send(("close", None))
                conn.recv()
            except (OSError, EOFError):
                pass
            conn.close()
        for proc in self._procs:
            proc.join(timeout=5)
            if proc.is_alive():
                proc.kill()
        self._conns, self._procs = [], []
