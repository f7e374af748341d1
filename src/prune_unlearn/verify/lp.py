"""Exact LPs for the audit: the smallest lead of a region's target over each label, with HiGHS.

The region's affine maps are recomputed here in float64 NumPy (:func:`region_maps`), independently of
the library's torch code. The LP ``min_{h ∈ S_θ ∩ B} lead_l(h)`` has one dense row per hidden neuron
(1,536 rows of 784 on a 6×256 MNIST head), but only a few of them bind at the optimum. So it is solved
by row generation: start from the box alone, add the rows the current solution violates (the most
violated first), re-solve from the previous basis (HiGHS keeps it across added rows and changed
costs), and stop when the solution satisfies every row. The relaxation's minimum is never above the
full LP's, and once its minimiser is feasible for every row it is the full LP's minimum.
"""

from __future__ import annotations

import numpy as np

__all__ = ["region_maps", "lp_min_leads"]

# A row counts as violated when the solution misses it by more than this (relative to the row's size).
_FEAS_TOL = 1e-9
_ROWS_PER_ROUND = 128


def region_maps(weights, biases, active: np.ndarray):
    """``A, c`` (hidden pre-activations) and ``W, w`` (logits) on the region of pattern ``active``."""
    m, v = weights[0], biases[0]
    a_blocks, c_blocks = [m], [v]
    start = 0
    for j in range(1, len(weights)):
        size = weights[j - 1].shape[0]
        on = active[start: start + size].astype(np.float64)
        start += size
        m = weights[j] @ (on[:, None] * m)
        v = weights[j] @ (on * v) + biases[j]
        if j < len(weights) - 1:
            a_blocks.append(m)
            c_blocks.append(v)
    if len(weights) == 1:
        return np.zeros((0, m.shape[1])), np.zeros(0), m, v
    return np.concatenate(a_blocks), np.concatenate(c_blocks), m, v


def _quiet_highs():
    from ..core.confusion import new_highs

    return new_highs()


def lp_min_leads(A, c, W, w, values, signs, theta, target, lo, hi, start_rows=None) -> tuple[dict, int]:
    """Exact ``min_{h ∈ S_θ ∩ B} (f_t + d_t) − (f_l + d_l)`` for each ``l ≠ t``, with minimisers.

    ``start_rows`` (N,) bool: halfspaces to put in the LP from the start (e.g. those with a positive
    multiplier in the certificate's proof: the ones that bind). Returns ``({l: (lead, argmin, status)},
    rows used)``; ``lead`` is None where HiGHS found no optimum.
    """
    import highspy

    d = A.shape[1]
    rows = signs[:, None] * A                    # s_i (a_i·h + c_i) ≥ θ  ⇔  rows_i·h ≥ θ − s_i c_i
    rhs = theta - signs * c
    scale = 1.0 + np.abs(rows).sum(axis=1) * np.maximum(np.abs(lo), np.abs(hi)).max(initial=0.0) + np.abs(rhs)
    lp = _quiet_highs()
    lp.addVars(d, lo, hi)
    in_lp = np.zeros(len(rhs), dtype=bool)
    if start_rows is not None and np.any(start_rows):
        _add_rows(lp, rows, rhs, np.flatnonzero(start_rows), highspy)
        in_lp[start_rows] = True
    out = {}
    for lab in range(W.shape[0]):
        if lab == target:
            continue
        obj = W[target] - W[lab]
        lp.changeColsCost(d, np.arange(d, dtype=np.int32), obj)
        while True:
            lp.run()
            if lp.getModelStatus() != highspy.HighsModelStatus.kOptimal:
                out[lab] = (None, None, str(lp.getModelStatus()))
                break
            x = np.asarray(lp.getSolution().col_value)
            miss = (rhs - rows @ x) / scale
            miss[in_lp] = -np.inf
            worst = np.argsort(-miss)[:_ROWS_PER_ROUND]
            add = worst[miss[worst] > _FEAS_TOL]
            if add.size == 0:
                lead = float(obj @ x + w[target] - w[lab] + values[target] - values[lab])
                out[lab] = (lead, x, "optimal")
                break
            _add_rows(lp, rows, rhs, add, highspy)
            in_lp[add] = True
    return out, int(in_lp.sum())


def _add_rows(lp, rows, rhs, add, highspy) -> None:
    sub = rows[add]
    nz = sub != 0
    starts = np.concatenate([[0], np.cumsum(nz.sum(axis=1))[:-1]]).astype(np.int32)
    lp.addRows(len(add), rhs[add], np.full(len(add), highspy.kHighsInf), int(nz.sum()), starts,
               np.nonzero(nz)[1].astype(np.int32), sub[nz])
