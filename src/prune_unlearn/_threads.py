"""The library's thread policy for its small numerical kernels (bounds, CROWN, exact LPs, audits).

Our kernels are many mid-sized matrix products (a few hundred rows by a few hundred columns). torch's
intra-op threads buy little on them and, on a machine whose cores are busy with other work, cost a
lot: OpenMP workers spin-wait at every barrier, and a 2-thread dual bound that takes 12 s with one
thread took 176–181 s on two busy cores (issue 15). So the library runs its kernels with **one
intra-op thread** whatever the caller's ``torch.set_num_threads``, and gets parallelism, when asked
for it, from independent chunks of work (points, regions) run on ``workers`` Python threads: torch
releases the GIL inside every kernel, and a worker that loses its core simply waits its turn instead
of stalling a barrier.

The setting ``workers`` (how many chunks run at once) comes from, in order: :func:`set_threads`, the
environment variable ``PRUNE_THREADS``, else 1 (safe on a shared machine; on an idle one,
``PRUNE_THREADS=2`` on 2 cores is faster on large requests, see docs/benchmarks.md). The intra-op
thread count inside kernels can be changed too (``set_threads(intra_op=n)`` or
``PRUNE_INTRA_OP_THREADS``), for measuring or for a large idle machine; it defaults to 1.
"""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import TypeVar

import torch

__all__ = ["set_threads", "get_threads", "get_intra_op_threads", "kernel_threads", "with_kernel_threads",
           "parallel_map"]

T = TypeVar("T")
R = TypeVar("R")

_workers: int | None = None
_intra_op: int | None = None
_lock = threading.RLock()
_depth = threading.local()


def _check_count(value, what: str) -> int | None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value
                              or value < 1):
        raise ValueError(f"set_threads takes an integer ≥ 1 or None for {what}; got {value!r}.")
    return None if value is None else int(value)


def set_threads(workers: int | None = None, *, intra_op: int | None = None) -> None:
    """Set how many chunks of a large request the library works on at once, and (rarely needed) the torch
    intra-op threads inside each kernel. ``None`` puts a setting back to its default (environment, else 1).
    """
    global _workers, _intra_op
    _workers = _check_count(workers, "workers")
    _intra_op = _check_count(intra_op, "intra_op")


def _from_env(name: str) -> int | None:
    env = os.environ.get(name, "").strip()
    if not env:
        return None
    try:
        value = int(env)
    except ValueError:
        raise ValueError(f"{name} must be an integer ≥ 1; got {env!r}.") from None
    if value < 1:
        raise ValueError(f"{name} must be an integer ≥ 1; got {env!r}.")
    return value


def get_intra_op_threads() -> int:
    """Torch intra-op threads inside the library's kernels (``set_threads(intra_op=…)``,
    ``PRUNE_INTRA_OP_THREADS``, else 1)."""
    return _intra_op if _intra_op is not None else (_from_env("PRUNE_INTRA_OP_THREADS") or 1)


def get_threads() -> int:
    """The current ``workers`` setting (:func:`set_threads`, else ``PRUNE_THREADS``, else 1)."""
    if _workers is not None:
        return _workers
    return _from_env("PRUNE_THREADS") or 1


@contextmanager
def kernel_threads(intra_op: int | None = None) -> Iterator[None]:
    """Run the block with ``intra_op`` (default :func:`get_intra_op_threads`) torch threads, restoring the
    caller's setting afterwards.

    Re-entrant: nested blocks (a bound called from inside forget) leave the setting to the outermost.
    """
    depth = getattr(_depth, "value", 0)
    if depth:
        _depth.value = depth + 1
        try:
            yield
        finally:
            _depth.value = depth
        return
    intra_op = get_intra_op_threads() if intra_op is None else intra_op
    with _lock:
        saved = torch.get_num_threads()
        if saved != intra_op:
            torch.set_num_threads(intra_op)
    _depth.value = 1
    try:
        yield
    finally:
        _depth.value = 0
        with _lock:
            if torch.get_num_threads() != saved:
                torch.set_num_threads(saved)


def with_kernel_threads(fn: Callable[..., R]) -> Callable[..., R]:
    """Decorator: run ``fn`` inside :func:`kernel_threads`."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with kernel_threads():
            return fn(*args, **kwargs)
    return wrapper


def _worker_init() -> None:
    torch.set_num_threads(get_intra_op_threads())  # OpenMP's thread count is per calling thread: set it in each
    _depth.value = 1


def parallel_map(fn: Callable[[T], R], items: Iterable[T], workers: int | None = None) -> list[R]:
    """``[fn(x) for x in items]``, on up to ``workers`` (default :func:`get_threads`) threads, in order.

    For independent chunks of one request (each ``fn`` call should take milliseconds or more). With
    one worker, or one item, it runs in the calling thread.
    """
    items = list(items)
    n = min(get_threads() if workers is None else int(workers), len(items))
    if n <= 1:
        return [fn(x) for x in items]
    with ThreadPoolExecutor(max_workers=n, initializer=_worker_init) as pool:
        return list(pool.map(fn, items))
