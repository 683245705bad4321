"""Where runs execute: in-process (``serial``), a local process pool (``local``), or Ray tasks (``ray``).

Each executor keeps at most ``workers`` runs in flight and reports every start and outcome to the caller, which
owns the single progress view. Workers use one torch thread each (more threads per process only fight over the
same cores), never show their own progress bars, and write their output to the run's log.

A worker that dies (OOM killer, ``kill -9``) loses only the run it was doing: the local pool is rebuilt and the
sweep goes on; the lost run is redone by the next sweep. When the sweep process itself dies, its local workers
die with it (a watchdog thread on a pidfd) rather than finishing orphaned runs into a study being resumed.
"""

from __future__ import annotations

import multiprocessing
import os
import select
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

from rlflat.errors import RlflatError, bad_choice
from rlflat.sweep.pipeline import RunJob, RunOutcome, execute, execute_shipped, log_path, pack, publish_shipped

BACKENDS = ("local", "ray", "serial")
MAX_POOL_RESTARTS = 3
"""A pool that keeps dying (every run OOMs, say) ends the sweep instead of looping."""

OnStart = Callable[[RunJob], None]
OnDone = Callable[[RunOutcome], None]


def default_workers() -> int:
    """Cores this process may use (the affinity mask, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def lost(job: RunJob, why: str) -> RunOutcome:
    return RunOutcome(job.name, job.run_id, "lost", error=why)


def run_jobs(
    backend: str,
    jobs: Sequence[RunJob],
    study_dir: Path,
    *,
    workers: int | None,
    address: str | None,
    on_start: OnStart,
    on_done: OnDone,
) -> None:
    """Run ``jobs`` on ``backend``; every job ends in exactly one ``on_done`` call unless interrupted."""
    if backend not in BACKENDS:
        raise bad_choice("backend", backend, BACKENDS)
    if workers is not None and workers < 1:
        raise RlflatError(f"--workers must be >= 1, got {workers}")
    if backend == "serial":
        for job in jobs:
            on_start(job)
            on_done(execute(job, study_dir, capture_fds=False))
    elif backend == "local":
        run_local(jobs, study_dir, workers or default_workers(), on_start, on_done)
    else:
        run_ray(jobs, study_dir, workers, address, on_start, on_done)


# -- local process pool ------------------------------------------------------------------------------------


def _init_worker(sweep_pid: int) -> None:
    """Per worker process: one torch thread, and die with the sweep process."""
    import torch

    torch.set_num_threads(1)
    threading.Thread(target=_die_with, args=(sweep_pid,), name="rlflat-sweep-watchdog", daemon=True).start()


def _die_with(pid: int) -> None:
    """Kill this worker as soon as process ``pid`` (the sweep) is gone.

    Parent-death signals cannot do this: a forkserver worker's parent is the fork server, which lives as long
    as any worker holds its "alive" pipe, and every worker does. Without this, ``kill -9`` of the sweep would
    leave orphans finishing runs into a study that the next sweep is resuming.
    """
    try:
        handle = os.pidfd_open(pid)
    except (AttributeError, OSError):  # not Linux >= 5.3: poll instead
        handle = None
    if handle is not None:
        select.select([handle], [], [])  # a pidfd becomes readable when its process exits
    else:
        while True:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            except PermissionError:  # alive (another user's process, after pid reuse: leave it)
                pass
            time.sleep(1.0)
    os.kill(os.getpid(), signal.SIGKILL)


def _context() -> multiprocessing.context.BaseContext:
    """forkserver: workers fork from a clean server that imported torch once (fast, no inherited threads)."""
    try:
        context = multiprocessing.get_context("forkserver")
    except ValueError:  # platforms without forkserver
        return multiprocessing.get_context("spawn")
    context.set_forkserver_preload(["rlflat.sweep.pipeline", "rlflat.train"])
    return context


def run_local(jobs: Sequence[RunJob], study_dir: Path, workers: int, on_start: OnStart, on_done: OnDone) -> None:
    """Jobs on a ``ProcessPoolExecutor`` (forkserver), at most ``workers`` at a time."""
    pending = deque(jobs)
    restarts = 0
    while pending:
        size = min(workers, len(pending))
        pool = ProcessPoolExecutor(
            max_workers=size, mp_context=_context(), initializer=_init_worker, initargs=(os.getpid(),)
        )
        running: dict[Future[RunOutcome], RunJob] = {}
        broken = False
        try:
            while (pending and not broken) or running:
                while pending and not broken and len(running) < size:
                    job = pending.popleft()
                    running[pool.submit(execute, job, str(study_dir))] = job
                    on_start(job)
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in done:
                    job = running.pop(future)
                    try:
                        on_done(future.result())
                    except BrokenProcessPool:
                        broken = True
                        on_done(lost(job, "its worker process died (killed, or out of memory)"))
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        pool.shutdown(wait=True)
        if broken:
            restarts += 1
            if restarts > MAX_POOL_RESTARTS:
                for job in pending:
                    on_done(lost(job, "not started: worker processes kept dying"))
                return


# -- Ray ---------------------------------------------------------------------------------------------------


def import_ray() -> Any:
    """Ray is the optional extra ``rlflat[ray]``; import it only for ``--backend ray``."""
    try:
        import ray
    except ImportError:
        raise RlflatError("--backend ray needs Ray: pip install 'rlflat[ray]' (or use --backend local)") from None
    return ray


def _ray_task(job: RunJob, existing: bytes, log_text: str) -> tuple[RunOutcome, bytes, str]:
    import torch

    torch.set_num_threads(1)
    return execute_shipped(job, existing, log_text)


def run_ray(
    jobs: Sequence[RunJob],
    study_dir: Path,
    workers: int | None,
    address: str | None,
    on_start: OnStart,
    on_done: OnDone,
) -> None:
    """Jobs as Ray tasks (one CPU each) on the cluster at ``address`` / ``RAY_ADDRESS``, else a local Ray.

    An already initialised Ray (a test's, a notebook's) is used as it is. Each task runs in a private temporary
    directory on its node and returns the packed run directory, which is published here like any other run.
    """
    ray = import_ray()
    started = False
    if not ray.is_initialized():
        try:
            ray.init(address=address, include_dashboard=False, log_to_driver=False)
        except ConnectionError as exc:
            shown = address or os.environ.get("RAY_ADDRESS") or "a local cluster"
            raise RlflatError(f"cannot connect to Ray at {shown}: {exc}") from None
        started = True
    remote = ray.remote(num_cpus=1, max_retries=0)(_ray_task)
    limit = workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
    pending = deque(jobs)
    running: dict[Any, RunJob] = {}
    try:
        while pending or running:
            while pending and len(running) < limit:
                job = pending.popleft()
                run_dir = study_dir / job.name
                existing = pack(run_dir) if (run_dir / "metrics.json").exists() else b""
                log = log_path(study_dir, job.name)
                running[remote.remote(job, existing, log.read_text() if log.exists() else "")] = job
                on_start(job)
            done, _ = ray.wait(list(running), num_returns=1)
            for ref in done:
                job = running.pop(ref)
                try:
                    outcome, data, log_text = ray.get(ref)
                except (ray.exceptions.RayError, OSError) as exc:
                    on_done(lost(job, f"its Ray task died: {type(exc).__name__}"))
                    continue
                publish_shipped(study_dir, job.name, data, log_text)
                on_done(outcome)
    except BaseException:
        for ref in running:
            ray.cancel(ref, force=True)
        raise
    finally:
        if started:
            ray.shutdown()
