"""Run K copies of a single-run function side by side and batch the calls they make to one inner function.

The probe and the evaluator are long sequences of stages written for one policy; most of their time on small
policies is rollouts whose per-step Python overhead does not grow with the number of rows. Rather than write a
second, K-policy version of every stage, each of the K runs executes the unchanged single-run code in a thread of
its own, and one inner function (the rollout) is *intercepted*: a call blocks until every live member has made
one (or finished), then compatible calls (equal :class:`Request` keys) are executed as one batched call and each
member gets its own slice back. Everything outside the intercepted calls is exactly the single-run code, so a
member's output files are the ones it writes alone; what may differ is only what the batched call computes
differently (see :mod:`rlflat.population.evaluate` and :mod:`rlflat.population.probe`).

Which calls meet is deterministic: a flush happens only when every live member is blocked in an intercepted call,
so each flush holds exactly one call per live member, and members finish at fixed points of their own code.
Torch runs one intra-op thread per process here; the threads only interleave, the arithmetic is each member's.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Hashable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["Rendezvous", "Request", "intercepted", "run_members"]


@dataclass
class Request:
    """One intercepted call: ``key`` decides which calls may be batched together (None: never batched)."""

    member: int
    key: Hashable | None
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    result: Any = None
    error: BaseException | None = None
    done: bool = False


Batched = Callable[[Sequence[Request]], Sequence[Any]]
"""Executes a group of compatible requests; returns one result per request, in order."""


@dataclass
class _Hook:
    key: Callable[..., Hashable | None]
    batched: Batched
    original: Callable[..., Any]


class Rendezvous:
    """The meeting point of ``n`` member threads (see the module docstring)."""

    def __init__(self, n: int) -> None:
        self._cond = threading.Condition()
        self.size = n
        self._live = n
        self._pending: list[tuple[_Hook, Request]] = []
        self._local = threading.local()
        self.flushes = 0
        """How many times calls were executed together (for benchmarks and tests)."""
        self.batched_calls: list[int] = []
        """Size of every executed group, in order."""

    def member(self) -> int | None:
        """The calling thread's member index, or None for a thread outside the rendezvous."""
        return getattr(self._local, "member", None)

    def enter(self, member: int) -> None:
        self._local.member = member

    def leave(self) -> None:
        """The calling member has finished (or failed): the others no longer wait for it."""
        with self._cond:
            self._local.member = None
            self._live -= 1
            if self._pending and len(self._pending) >= self._live:
                self._flush()

    def call(self, hook: _Hook, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        member = self.member()
        if member is None:
            return hook.original(*args, **kwargs)
        request = Request(member, hook.key(*args, **kwargs), args, kwargs)
        with self._cond:
            self._pending.append((hook, request))
            if len(self._pending) >= self._live:
                self._flush()
            while not request.done:
                self._cond.wait()
        if request.error is not None:
            raise request.error
        return request.result

    def _flush(self) -> None:
        """Execute every pending call, grouped by (hook, key) in member order; wake the members."""
        pending, self._pending = sorted(self._pending, key=lambda item: item[1].member), []
        groups: dict[tuple[int, Hashable], list[tuple[_Hook, Request]]] = {}
        for hook, request in pending:
            slot = (id(hook), request.key if request.key is not None else ("alone", request.member))
            groups.setdefault(slot, []).append((hook, request))
        self.flushes += 1
        for group in groups.values():
            hook, requests = group[0][0], [r for _, r in group]
            self.batched_calls.append(len(requests))
            try:
                if len(requests) == 1:
                    results: Sequence[Any] = [hook.original(*requests[0].args, **requests[0].kwargs)]
                else:
                    results = hook.batched(requests)
                for request, result in zip(requests, results, strict=True):
                    request.result = result
            except Exception as exc:  # every member of the group sees the error, as it would alone
                for request in requests:
                    request.error = exc
            for request in requests:
                request.done = True
        self._cond.notify_all()


@contextlib.contextmanager
def intercepted(
    rendezvous: Rendezvous,
    module: Any,
    name: str,
    key: Callable[..., Hashable | None],
    batched: Batched,
) -> Iterator[None]:
    """Replace ``module.name`` for the block: member threads' calls go through ``rendezvous``, others pass.

    The attribute is restored on exit. Callers must look the function up through ``module`` at call time (a
    lazy ``from module import name`` inside a function does), not hold a reference bound at import.
    """
    original = getattr(module, name)
    hook = _Hook(key, batched, original)

    def dispatch(*args: Any, **kwargs: Any) -> Any:
        return rendezvous.call(hook, args, kwargs)

    setattr(module, name, dispatch)
    try:
        yield
    finally:
        setattr(module, name, original)


def run_members(rendezvous: Rendezvous, work: Sequence[Callable[[], Any]]) -> list[Any]:
    """Run ``work[k]`` as member ``k`` in its own thread; returns each result or the exception it raised."""
    if len(work) != rendezvous.size:
        raise ValueError(f"{len(work)} members for a rendezvous of {rendezvous.size}")
    results: list[Any] = [None] * len(work)

    def body(k: int) -> None:
        rendezvous.enter(k)
        try:
            results[k] = work[k]()
        except BaseException as exc:  # one member's failure is that member's result
            results[k] = exc
        finally:
            rendezvous.leave()

    threads = [  # daemons: an interrupted caller (Ctrl-C, a killed sweep) must not wait for its members
        threading.Thread(target=body, args=(k,), name=f"rlflat-member-{k}", daemon=True) for k in range(len(work))
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results
