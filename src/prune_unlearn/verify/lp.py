"""Exact LPs for the audit: the smallest lead of a region's target over each label, with HiGHS.

The region's affine maps are recomputed here in float64 NumPy (:func:`region_maps`), independently of
the library's torch code. The LP ``min_{h ∈ S_θ ∩ B} lead_l(h)`` has one dense row per hidden neuron
(1,536 rows of 784 on a 6×256 MNIST head), but only a few of them bind at the optimum. So it is solved
by row generation: start from the box alone, add the rows the current solution violates (the most
violated first), re-solve from the previous basis with the dual simplex (HiGHS keeps the basis across
added rows and changed costs), and stop when the solution satisfies every row of the full LP. The
relaxation's minimum is never above the full LP's, and once its minimiser is feasible for every row it
is the full LP's minimum.

**The first layer as variables.** On the region every deeper pre-activation and every logit depends on
``h`` only through the first layer's *active* pre-activations ``v = W₀[a] h`` (an inactive neuron's
output is 0). So the LP carries ``v`` as extra variables tied to ``h`` by the equalities ``W₀[a] h − v = 0``:
the active first-layer halfspaces become bounds ``v ≥ θ − b₀[a]``, every deeper row has only ``|a|``
non-zeros instead of ``d`` (74 instead of 784 on an MNIST 6×256 head), and the objective is on ``v``.
The same LP, about 5× fewer simplex work on that head. Feasibility is still checked on the full rows
``s_i (a_i·h + c_i) ≥ θ`` at the solution's ``h``.
"""

from __future__ import annotations

import numpy as np

__all__ = ["region_maps", "lp_min_leads", "lp_min_leads_layered"]

# A row counts as violated when the solution misses it by more than this (relative to the row's size).
_FEAS_TOL = 1e-9
_ROWS_PER_ROUND = 64
_DUAL_SIMPLEX = 1  # HiGHS simplex_strategy


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

    lp = new_highs()
    lp.setOptionValue("simplex_strategy", _DUAL_SIMPLEX)
    return lp


class _Rows:
    """The region's halfspaces ``rows_i·h ≥ rhs_i`` (``rows_i = s_i a_i``, ``rhs_i = θ − s_i c_i``)."""

    def __init__(self, A, c, signs, theta, lo, hi):
        self.rows = signs[:, None] * A
        self.rhs = theta - signs * c
        self.scale = 1.0 + np.abs(self.rows).sum(axis=1) * np.maximum(np.abs(lo), np.abs(hi)).max(initial=0.0) \
            + np.abs(self.rhs)
        self.in_lp = np.zeros(len(self.rhs), dtype=bool)

    def violated(self, h: np.ndarray) -> np.ndarray:
        """Up to ``_ROWS_PER_ROUND`` rows not yet in the LP that ``h`` misses, the most violated first."""
        miss = (self.rhs - self.rows @ h) / self.scale
        miss[self.in_lp] = -np.inf
        worst = np.argsort(-miss)[:_ROWS_PER_ROUND]
        return worst[miss[worst] > _FEAS_TOL]


def lp_min_leads(A, c, W, w, values, signs, theta, target, lo, hi, start_rows=None) -> tuple[dict, int]:
    """Exact ``min_{h ∈ S_θ ∩ B} (f_t + d_t) − (f_l + d_l)`` for each ``l ≠ t``, with minimisers.

    The LP over ``h`` alone (every row ``d`` non-zeros); :func:`lp_min_leads_layered` solves the same LPs
    faster. ``start_rows`` (N,) bool: halfspaces to put in the LP from the start. Returns
    ``({l: (lead, argmin, status)}, rows used)``; ``lead`` is None where HiGHS found no optimum.
    """
    import highspy

    d = A.shape[1]
    rows = _Rows(A, c, signs, theta, lo, hi)
    lp = _quiet_highs()
    lp.addVars(d, lo, hi)
    if start_rows is not None and np.any(start_rows):
        _add_rows(lp, rows.rows, rows.rhs, np.flatnonzero(start_rows), 0, highspy)
        rows.in_lp[start_rows] = True

    def add(idx):
        _add_rows(lp, rows.rows, rows.rhs, idx, 0, highspy)

    out = {}
    for lab in range(W.shape[0]):
        if lab == target:
            continue
        obj = W[target] - W[lab]
        lp.changeColsCost(d, np.arange(d, dtype=np.int32), obj)
        out[lab] = _solve(lp, rows, add, lambda x: x, highspy,
                          lambda h: float(obj @ h + w[target] - w[lab] + values[target] - values[lab]))
    return out, int(rows.in_lp.sum())


def lp_min_leads_layered(weights, biases, active, values, theta, target, lo, hi) -> tuple[dict, int]:
    """:func:`lp_min_leads` for the region of pattern ``active`` with the first layer's active
    pre-activations as variables (module docstring): the same LPs, the same return value."""
    import highspy

    if len(weights) < 2:  # no hidden layer: nothing to split off
        A, c, W, w = region_maps(weights, biases, active)
        return lp_min_leads(A, c, W, w, values, np.where(active, 1.0, -1.0), theta, target, lo, hi)
    n0, d = weights[0].shape
    a = np.flatnonzero(active[:n0])
    k = len(a)
    A, c, W_full, w = region_maps(weights, biases, active)
    rows = _Rows(A, c, np.where(active, 1.0, -1.0), theta, lo, hi)
    # the same maps with v = W₀[a] h as the input: rows n0… (deeper layers) and the logits, |a| columns each
    ws_v = [np.eye(k), weights[1][:, a], *weights[2:]]
    bs_v = [biases[0][a], *biases[1:]]
    A_v, _, W_v, _ = region_maps(ws_v, bs_v, np.concatenate([np.ones(k, dtype=bool), active[n0:]]))
    deep_rows = np.where(active[n0:], 1.0, -1.0)[:, None] * A_v[k:]

    lp = _quiet_highs()
    lp.addVars(d, lo, hi)
    if k:
        lp.addVars(k, theta - biases[0][a], np.full(k, highspy.kHighsInf))
        _add_rows(lp, np.hstack([weights[0][a], -np.eye(k)]), np.zeros(k), np.arange(k), 0, highspy, equal=True)

    def add(idx):
        first, deep = idx[idx < n0], idx[idx >= n0]
        if first.size:  # first-layer halfspaces on h (inactive neurons; active ones only if v drifted from W₀h)
            _add_rows(lp, rows.rows, rows.rhs, first, 0, highspy)
        if deep.size:
            _add_rows(lp, deep_rows, rows.rhs[n0:], deep - n0, d, highspy)

    out = {}
    for lab in range(W_full.shape[0]):
        if lab == target:
            continue
        if k:
            lp.changeColsCost(k, np.arange(d, d + k, dtype=np.int32), W_v[target] - W_v[lab])
        obj = W_full[target] - W_full[lab]
        out[lab] = _solve(lp, rows, add, lambda x: x[:d], highspy,
                          lambda h: float(obj @ h + w[target] - w[lab] + values[target] - values[lab]))
    return out, int(rows.in_lp.sum())


def _solve(lp, rows: _Rows, add, h_of, highspy, lead_at):
    """Row generation for the current objective: ``(lead, argmin h, status)``."""
    while True:
        lp.run()
        if lp.getModelStatus() != highspy.HighsModelStatus.kOptimal:
            return None, None, str(lp.getModelStatus())
        h = np.asarray(lp.getSolution().col_value)
        h = h_of(h)
        idx = rows.violated(h)
        if idx.size == 0:
            return lead_at(h), h, "optimal"
        add(idx)
        rows.in_lp[idx] = True


def _add_rows(lp, rows, rhs, add, col_offset, highspy, equal: bool = False) -> None:
    sub = rows[add]
    nz = sub != 0
    starts = np.concatenate([[0], np.cumsum(nz.sum(axis=1))[:-1]]).astype(np.int32)
    upper = rhs[add] if equal else np.full(len(add), highspy.kHighsInf)
    lp.addRows(len(add), rhs[add], upper, int(nz.sum()), starts,
               (np.nonzero(nz)[1] + col_offset).astype(np.int32), sub[nz])
