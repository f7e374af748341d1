"""The audit's two costly stages as independent work items, run in order or on worker processes.

``bounds`` re-derives every region claim's margin in exact rational arithmetic (:mod:`.exact`), one item
per batch of 64 regions; ``lp`` solves the exact LPs of the sampled regions (:mod:`.lp`), one item per
region. Neither stage needs the other, and on a 6×256 MNIST head both are long (issue 15: 26 s for the
exact bounds of 500 regions and 45 s for 20 LPs on one idle core). With ``workers ≥ 2`` the items go to
that many worker processes (processes, not threads: the exact stage is Python and python-flint code
that holds the GIL), longest first, so both cores stay busy until the last item.

Every item is a pure function of NumPy arrays, so a worker returns exactly what the serial loop
computes (exact fractions; the LP solutions HiGHS computes from the same inputs) and the audit records
them in the same order: the verdicts, the checks and the report are those of the serial audit. Each
worker runs with one torch and one BLAS thread (the library's policy, :mod:`prune_unlearn._threads`).
Where worker processes cannot be started, the items run in the calling process instead.
"""

from __future__ import annotations

import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field

import numpy as np

from .._threads import get_intra_op_threads, get_threads
from .exact import ExactHead, exact_leads
from .lp import lp_min_leads_layered

__all__ = ["StageInputs", "StageResults", "run_stages", "BATCH"]

BATCH = 64  # regions per exact-bound item (exact_leads' batch: each layer's product is shared by a batch)
# Below this estimated serial cost (seconds) the automatic setting stays in process: starting workers
# costs about a second (importing torch once), more than it saves on small heads.
_MIN_PARALLEL_SECONDS = 4.0
# Rough costs on one core, calibrated on the 6×256 MNIST head (500 regions: 26 s; 20 LPs: 45 s).
_EXACT_MACS_PER_S = 1e8
_LP_MACS_PER_S = 5e6


@dataclass
class StageInputs:
    """What the two stages read: the head's weights, the domain box, the regions to bound and to solve."""

    ws32: list
    bs32: list
    ws64: list
    bs64: list
    lo: np.ndarray
    hi: np.ndarray
    # exact bounds: (K, N) masks, (K, C, N) multipliers, (K,) theta, targets, (K, C) float32 values
    masks: np.ndarray
    mu: np.ndarray
    theta: np.ndarray
    targets: np.ndarray
    values32: np.ndarray
    offsets: object  # (C, C) class-patch offsets or None
    # exact LPs: one (active, float64 values, theta, target) per sampled region
    lp_regions: list = field(default_factory=list)


@dataclass
class StageResults:
    leads: list | None  # exact_leads' rows, in region order; None when the proof could not be evaluated
    leads_error: str  # why not (the first failing batch's message)
    lp: list  # one ``solved`` dict per sampled region, in order
    timings: dict
    workers: int  # processes the items ran on (1: in the calling process)


# --- the work items (module level: a worker process runs them by name) ---------------------------

_WORKER: dict = {}


def _exact_item(inputs: StageInputs, sl: slice):
    head = _WORKER.get("head")
    if head is None:  # once per process: the head's weights as exact integers
        head = _WORKER["head"] = ExactHead(inputs.ws32, inputs.bs32)
    masks = inputs.masks[sl]
    return exact_leads(head, masks, np.where(masks, 1, -1), inputs.mu[sl], inputs.theta[sl], inputs.targets[sl],
                       inputs.values32[sl], inputs.offsets, inputs.lo, inputs.hi, batch=BATCH)


def _lp_item(inputs: StageInputs, k: int):
    active, values, theta, target = inputs.lp_regions[k]
    solved, _ = lp_min_leads_layered(inputs.ws64, inputs.bs64, active, values, theta, target, inputs.lo, inputs.hi)
    return solved


def _timed(kind: str, arg):
    """Run one item in a worker: ``(outcome, error, seconds)``; a ValueError (no proof) is an outcome too."""
    inputs = _WORKER["inputs"]
    t0 = time.perf_counter()
    try:
        out = _exact_item(inputs, arg) if kind == "bounds" else _lp_item(inputs, arg)
        return out, None, time.perf_counter() - t0
    except ValueError as exc:
        if kind != "bounds":
            raise
        return None, str(exc), time.perf_counter() - t0


def _init_worker(inputs: StageInputs, intra_op: int) -> None:
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(intra_op)
    threadpool_limits(limits=1, user_api="blas")
    _WORKER.clear()
    _WORKER["inputs"] = inputs


# --- running them -----------------------------------------------------------------------------------

def _items(inputs: StageInputs) -> list:
    k_all = len(inputs.masks)
    return [("bounds", slice(s, min(k_all, s + BATCH))) for s in range(0, k_all, BATCH)] + \
        [("lp", k) for k in range(len(inputs.lp_regions))]


def estimated_seconds(inputs: StageInputs) -> float:
    """A rough serial cost of the stages on one core (only used to decide whether workers pay off)."""
    macs = sum(w.shape[0] * w.shape[1] for w in inputs.ws32)
    classes = inputs.values32.shape[1] if inputs.values32.ndim == 2 else 1
    hidden = inputs.masks.shape[1] if inputs.masks.ndim == 2 else 0
    d = inputs.ws32[0].shape[1] if inputs.ws32 else 0
    return (len(inputs.masks) * max(classes - 1, 1) * macs / _EXACT_MACS_PER_S
            + len(inputs.lp_regions) * max(classes - 1, 1) * hidden * d / _LP_MACS_PER_S)


def run_stages(inputs: StageInputs, workers: int | None = None) -> StageResults:
    """Both stages' outcomes. ``workers``: processes to use; ``None`` takes the library's setting
    (``PRUNE_THREADS``) and uses processes only when the stages are long enough to gain from them."""
    items = _items(inputs)
    if workers is None:
        workers = get_threads() if estimated_seconds(inputs) >= _MIN_PARALLEL_SECONDS else 1
    workers = max(1, min(int(workers), len(items)))
    t0 = time.perf_counter()
    outcomes = None
    if workers > 1:
        outcomes = _on_processes(inputs, items, workers)
    if outcomes is None:
        workers = 1
        _WORKER.clear()
        _WORKER["inputs"] = inputs
        try:
            outcomes = [_timed(kind, arg) for kind, arg in items]
        finally:
            _WORKER.clear()
    return _collect(items, outcomes, workers, time.perf_counter() - t0)


def _on_processes(inputs: StageInputs, items: list, workers: int):
    """The items' outcomes from ``workers`` processes (None where processes cannot be had)."""
    if multiprocessing.current_process().daemon:  # a daemonic worker may not start processes of its own
        return None
    try:
        ctx = multiprocessing.get_context("forkserver")
        # the server imports this module once; each worker is forked from it with torch already imported
        ctx.set_forkserver_preload([__name__])
    except ValueError:  # pragma: no cover - platforms without fork (Windows)
        ctx = multiprocessing.get_context("spawn")
    # longest first: the exact batches (≈ 3 s each on the MNIST 6×256 head), then the LPs
    order = sorted(range(len(items)), key=lambda i: items[i][0] != "bounds")
    try:
        with ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_init_worker,
                                 initargs=(inputs, get_intra_op_threads())) as pool:
            futures = {i: pool.submit(_timed, *items[i]) for i in order}
            return [futures[i].result() for i in range(len(items))]
    except (OSError, BrokenProcessPool):  # no processes here (sandbox, resource limits): run in process
        return None


def _collect(items, outcomes, workers: int, wall: float) -> StageResults:
    leads, error, lp = [], "", []
    timings: dict = {}
    for (kind, _), (out, err, seconds) in zip(items, outcomes):
        key = "exact bounds" if kind == "bounds" else "lp"
        timings[key] = timings.get(key, 0.0) + seconds
        if kind == "lp":
            lp.append(out)
        elif err is not None:
            error = error or err
        else:
            leads.extend(out)
    if workers > 1:  # the stage timings above add the items' seconds; this is how long they took together
        timings[f"exact bounds + lp on {workers} processes"] = wall
    return StageResults(None if error else leads, error, lp, timings, workers)
