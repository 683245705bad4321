"""Where runs execute: in-process (``serial``), a local process pool (``local``), or Ray tasks (``ray``).

Each executor keeps at most ``workers`` runs in flight and reports every start and outcome to the caller, which
owns the single progress view. Workers use one thread each, for torch and for the BLAS behind numpy/scipy
(``eigsh``/``eigh`` in the probe): more threads per process only fight over the same cores. They never show
their own progress bars, and write their output to the run's log.

A worker that dies (OOM killer, ``kill -9``) loses only the run it was doing: the local pool is rebuilt, the
other runs that were in flight are redone, and the sweep goes on; the lost run is redone by the next sweep.
When the sweep process itself dies, its local workers die with it (a watchdog thread on a pidfd) rather than
finishing orphaned runs into a study being resumed.
"""

from __future__ import annotations

import importlib.util
import logging
import multiprocessing
import os
import select
import signal
import socket
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rlflat.errors import RlflatError, bad_choice
from rlflat.processes import SINGLE_THREAD_ENV, single_threaded_children
from rlflat.sweep.pipeline import RunJob, RunOutcome, execute, execute_shipped, log_path, pack, publish_shipped
from rlflat.sweep.populations import (
    PopulationJob,
    execute_population,
    execute_population_shipped,
    members_of,
    population_logs,
)

BACKENDS = ("local", "ray", "serial")
MAX_POOL_RESTARTS = 3
"""A pool that keeps dying (every run OOMs, say) ends the sweep instead of looping."""
LOST_WORKER = "its worker process died (killed, or out of memory)"

OnStart = Callable[[RunJob], None]
OnDone = Callable[[RunOutcome], None]
Unit = RunJob | PopulationJob
"""What one worker takes at a time: a run, or a population of runs (:mod:`rlflat.sweep.populations`)."""
RunTarget = Callable[[Any, str], "RunOutcome | list[RunOutcome]"]


def default_workers() -> int:
    """Cores this process may use (the affinity mask, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def lost(job: RunJob, why: str) -> RunOutcome:
    return RunOutcome(job.name, job.run_id, "lost", error=why)


def execute_unit(unit: Unit, study_dir: str, capture_fds: bool = True) -> RunOutcome | list[RunOutcome]:
    """A run's stages (:func:`execute`) or a population's (:func:`execute_population`)."""
    if isinstance(unit, PopulationJob):
        return execute_population(unit, study_dir, capture_fds=capture_fds)
    return execute(unit, study_dir, capture_fds=capture_fds)


def _report(result: RunOutcome | list[RunOutcome], on_done: OnDone) -> None:
    for outcome in result if isinstance(result, list) else [result]:
        on_done(outcome)


def _started(unit: Unit, on_start: OnStart | None) -> None:
    if on_start is not None:
        for job in members_of(unit):
            on_start(job)


def _lost_all(unit: Unit, why: str, on_done: OnDone) -> None:
    for job in members_of(unit):
        on_done(lost(job, why))


def check_execution(backend: str, workers: int | None, address: str | None) -> None:
    """Validate the execution flags (before the sweep creates anything); imports Ray for ``--backend ray``."""
    if backend not in BACKENDS:
        raise bad_choice("backend", backend, BACKENDS)
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise RlflatError(f"--workers must be an integer >= 1, got {workers!r}")
    if address is not None:
        if backend != "ray":
            raise RlflatError(f"--address is for --backend ray, not --backend {backend}")
        if not address.strip() or any(c.isspace() for c in address):
            raise RlflatError(f"--address must be a Ray address such as ray://head:10001 or auto, got {address!r}")
    if backend == "ray":
        import_ray()
        target = ray_target(address)
        if target.startswith("ray://") and importlib.util.find_spec("grpc") is None:
            raise RlflatError(f"the Ray client address {target} needs ray[client]: pip install 'rlflat[ray]'")


def ray_target(address: str | None) -> str:
    """The Ray address a sweep will use: ``--address``, else ``$RAY_ADDRESS``, else "" (a local Ray)."""
    return address or os.environ.get("RAY_ADDRESS") or ""


def run_jobs(
    backend: str,
    jobs: Sequence[Unit],
    study_dir: Path,
    *,
    workers: int | None,
    address: str | None,
    on_start: OnStart,
    on_done: OnDone,
) -> None:
    """Run ``jobs`` (runs or populations) on ``backend``; every run ends in exactly one ``on_done`` call unless
    interrupted."""
    check_execution(backend, workers, address)
    if backend == "serial":
        for job in jobs:
            _started(job, on_start)
            _report(execute_unit(job, str(study_dir), capture_fds=False), on_done)
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


def run_local(
    jobs: Sequence[Unit],
    study_dir: Path,
    workers: int,
    on_start: OnStart,
    on_done: OnDone,
    target: RunTarget = execute_unit,
) -> None:
    """Jobs on a ``ProcessPoolExecutor`` (forkserver), at most ``workers`` at a time.

    A worker that dies breaks the whole pool: every run in flight fails with ``BrokenProcessPool``, and the pool
    cannot say whose worker died. So the runs that were in flight are redone, each alone in a fresh one-worker
    pool: the run that breaks that pool is the one that kills its worker, and only it is reported lost.
    ``target`` is what a worker calls for a job (tests swap in a stand-in).
    """
    pending = deque(jobs)
    breaks = 0
    with single_threaded_children():
        while pending:
            broken, suspects = _run_pool(pending, workers, study_dir, target, on_start, on_done)
            for job in suspects:
                if _run_pool(deque([job]), 1, study_dir, target, None, on_done)[0]:
                    _lost_all(job, LOST_WORKER, on_done)
            breaks += broken
            if breaks > MAX_POOL_RESTARTS:
                for job in pending:
                    _lost_all(job, "not started: worker processes kept dying", on_done)
                return


def _run_pool(
    pending: deque[Unit],
    size: int,
    study_dir: Path,
    target: RunTarget,
    on_start: OnStart | None,
    on_done: OnDone,
) -> tuple[bool, list[Unit]]:
    """Run jobs from ``pending`` on one pool until it is empty or the pool breaks.

    Returns whether the pool broke and the jobs that were in flight when it did (not reported to ``on_done``).
    """
    size = min(size, len(pending))
    pool = ProcessPoolExecutor(
        max_workers=size, mp_context=_context(), initializer=_init_worker, initargs=(os.getpid(),)
    )
    running: dict[Future[RunOutcome | list[RunOutcome]], Unit] = {}
    broken = False
    suspects: list[Unit] = []
    try:
        while (pending and not broken) or running:
            while pending and not broken and len(running) < size:
                job = pending.popleft()
                try:
                    running[pool.submit(target, job, str(study_dir))] = job
                except BrokenProcessPool:  # an idle worker died
                    pending.appendleft(job)
                    broken = True
                    break
                _started(job, on_start)
            if not running:
                break
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                job = running.pop(future)
                try:
                    outcome = future.result()
                except BrokenProcessPool:
                    broken = True
                    suspects.append(job)
                    continue
                except Exception as exc:  # the outcome did not come back (execute itself never raises)
                    _lost_all(job, f"{type(exc).__name__}: {exc}", on_done)
                    continue
                _report(outcome, on_done)
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
    return broken, suspects


# -- Ray ---------------------------------------------------------------------------------------------------


def import_ray() -> Any:
    """Ray is the optional extra ``rlflat[ray]``; import it only for ``--backend ray``."""
    try:
        import ray
    except ImportError:
        raise RlflatError("--backend ray needs Ray: pip install 'rlflat[ray]' (or use --backend local)") from None
    return ray


def _ray_task(job: RunJob, existing: bytes, log_text: str) -> tuple[RunOutcome, bytes, str]:
    os.environ.update(SINGLE_THREAD_ENV)  # for anything this task starts; the worker itself got runtime_env
    import torch

    torch.set_num_threads(1)
    return execute_shipped(job, existing, log_text)


def _ray_population_task(
    population: PopulationJob, existing: dict[str, bytes], logs: dict[str, str]
) -> tuple[list[tuple[RunOutcome, bytes, str]], str]:
    os.environ.update(SINGLE_THREAD_ENV)
    import torch

    torch.set_num_threads(1)
    return execute_population_shipped(population, existing, logs)


def run_ray(
    jobs: Sequence[Unit],
    study_dir: Path,
    workers: int | None,
    address: str | None,
    on_start: OnStart,
    on_done: OnDone,
) -> None:
    """Jobs (runs or populations, one task each) as Ray tasks (one CPU each) on the cluster at ``address`` / ``RAY_ADDRESS``, else a local Ray.

    An already initialised Ray (a test's, a notebook's) is used as it is. Each task runs in a private temporary
    directory on its node and returns the packed run directory, which is published here like any other run.
    """
    ray = import_ray()
    with connect("ray", address):
        _run_ray_tasks(ray, jobs, study_dir, workers, on_start, on_done)


@contextmanager
def connect(backend: str, address: str | None) -> Iterator[None]:
    """For ``ray``: connect to the cluster (or start a local Ray) for the block, and disconnect after it.

    The sweep connects before it writes anything, so a refused, unreachable or unauthenticated cluster is one
    line and an untouched ``--out``. A Ray already initialised (a test's, a notebook's) is used as it is and
    left running. Other backends need no connection.
    """
    if backend != "ray":
        yield
        return
    ray = import_ray()
    if ray.is_initialized():
        yield
        return
    shown = ray_target(address) or "a local cluster"
    _check_reachable(ray_target(address), shown)
    with tempfile.TemporaryFile(mode="w+") as chatter:
        try:
            with _stderr_to(chatter):  # Ray's C++ core retries loudly on stderr; the outcome is one line below
                ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
        except Exception as exc:  # ConnectionError, RuntimeError, ValueError, TimeoutError alike
            chatter.seek(0)
            said = f"{exc}\n{chatter.read()}"
            if "Unauthenticated" in said or "InvalidAuthToken" in said:
                raise RlflatError(
                    f"cannot connect to Ray at {shown}: the cluster wants token authentication; set RAY_AUTH_MODE=token "
                    "and give this machine the head's token (copy its ~/.ray/auth_token, or set RAY_AUTH_TOKEN_PATH)"
                ) from None
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise RlflatError(f"cannot connect to Ray at {shown}: {first_line}") from None
    try:
        yield
    finally:
        ray.shutdown()


def _check_reachable(target: str, shown: str, timeout: float = 5.0) -> None:
    """A quick TCP connect to ``host:port`` (or ``ray://host:port``): a refused or unreachable head is one line
    now, not minutes of Ray's own retries. ``auto``, ``local`` and a local Ray are left to ``ray.init``."""
    host, sep, port = target.removeprefix("ray://").rpartition(":")
    if not sep or not port.isdigit() or not host:
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as exc:
        raise RlflatError(
            f"cannot connect to Ray at {shown}: {exc.strerror or exc}; is the head node running?"
        ) from None


@contextmanager
def _stderr_to(handle: Any) -> Iterator[None]:
    """Point file descriptor 2 (where C++ code writes) at ``handle`` for the block."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        os.dup2(handle.fileno(), 2)
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


def _packed(run_dir: Path) -> bytes:
    """A run directory to ship to a task: only a trained one (an untrained run starts from nothing)."""
    return pack(run_dir) if (run_dir / "metrics.json").exists() else b""


def _run_ray_tasks(
    ray: Any,
    jobs: Sequence[Unit],
    study_dir: Path,
    workers: int | None,
    on_start: OnStart,
    on_done: OnDone,
) -> None:
    runtime_env = {"env_vars": dict(SINGLE_THREAD_ENV)}  # set when Ray starts the worker, before any import
    remote = ray.remote(num_cpus=1, max_retries=0, runtime_env=runtime_env)(_ray_task)
    remote_population = ray.remote(num_cpus=1, max_retries=0, runtime_env=runtime_env)(_ray_population_task)
    limit = workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
    pending = deque(jobs)
    running: dict[Any, Unit] = {}
    try:
        while pending or running:
            while pending and len(running) < limit:
                job = pending.popleft()
                if isinstance(job, PopulationJob):
                    existing = {m.name: _packed(study_dir / m.name) for m in job.jobs}
                    ref = remote_population.remote(job, existing, population_logs(study_dir, job))
                else:
                    log = log_path(study_dir, job.name)
                    ref = remote.remote(job, _packed(study_dir / job.name), log.read_text() if log.exists() else "")
                running[ref] = job
                _started(job, on_start)
            done, _ = ray.wait(list(running), num_returns=1)
            for ref in done:
                job = running.pop(ref)
                try:
                    returned = ray.get(ref)
                except (ray.exceptions.RayError, OSError) as exc:
                    _lost_all(job, f"its Ray task died: {type(exc).__name__}", on_done)
                    continue
                if isinstance(job, PopulationJob):
                    shipped, population_log = returned
                    log = log_path(study_dir, job.name)
                    log.parent.mkdir(parents=True, exist_ok=True)
                    log.write_text(population_log)
                else:
                    shipped = [returned]
                for outcome, data, log_text in shipped:
                    publish_shipped(study_dir, outcome.name, data, log_text)
                    on_done(outcome)
    except BaseException:
        for ref in running:
            ray.cancel(ref, force=True)
        raise
