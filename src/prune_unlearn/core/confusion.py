"""Confusion patches (Eq. 7) with a sound region-level guarantee.

For a region ``S`` (activation pattern ``s``, tightened to ``s_i z_i(h) ≥ θ``) inside the domain box
``B`` and a target label ``t``, we need for every other label ``l`` an upper bound

    U_l ≥ max_{h ∈ S ∩ B} f_l(h) − f_t(h)

of an affine function over a polytope. Three sound bound methods share one interface:

``box``
    Ignore the region's halfspaces and maximise over ``B`` only: closed form, the fastest, loosest.
``dual``
    Lagrangian dual over the region's halfspaces. For any multipliers ``μ ≥ 0``,
    ``μ·q + Σ_j max(lo_j r_j, hi_j r_j)`` with ``r = w + Σ_i μ_i s_i a_i`` bounds the maximum (weak
    duality); ``μ = 0`` is the box bound and the best ``μ`` gives the LP optimum. We minimise over ``μ``
    by projected Adam steps, batched over points × labels, keeping the best iterate: every iterate is
    sound, so stopping early costs only tightness (the search: :mod:`~prune_unlearn.core.dual_search`).
``lp``
    Exact LP with HiGHS. Its row duals are turned into multipliers and the bound is re-evaluated
    with the dual formula, so the result stays sound however the solver rounds.

The confusion patch is a constant logit offset ``d`` (``C = 0`` in Eq. 7), chosen in closed form
with the smallest ``‖d‖∞`` such that ``d_t − d_l ≥ U_l + ε``. A constant patch needs no extra
weights per region and, with ``H_j = |d_j|``, Eq. 8 reduces to ``c(h) = n_S(h)·d``. An affine
patch ``m(h) = C h + e`` could shrink ``max |m|`` on the region, but costs ``C × d`` numbers per
region (7,840 on MNIST: 3.9M for 500 regions), more than the whole patch budget.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .._threads import kernel_threads, parallel_map
from .dual_search import search_multipliers
from .highs import dense_to_csr, new_highs  # new_highs: also this module's name for it (verify.lp)
from .regions import HeadNetwork, masked_backward, region_halfspaces, region_offsets
from .sound_backward import SoundBackward

__all__ = ["BOUND_METHODS", "MarginBounds", "margin_upper_bounds", "confusion_patch", "patch_margins",
           "float32_aware_epsilon"]

BOUND_METHODS = ("box", "dual", "lp")

# Outward safety added to every float64 bound: covers rounding in the bound evaluation and in the
# float64 region coefficients (relative error ~1e-15 per term); tiny next to any margin ε we use.
_REL_SAFETY = 1e-9


@dataclass
class MarginBounds:
    """``upper[p, l] ≥ max over region p of f_l − f_t`` (``-inf`` at ``l = t``), and the method used.

    ``multipliers`` (P, C, N), float32 values ≥ 0, are the Lagrange multipliers the bound was
    evaluated at (``dual``/``lp``; ``None`` for ``box``, whose multipliers are 0): a proof anyone can
    re-check with the weak-duality formula, whatever optimiser found them.
    """

    upper: torch.Tensor
    method: str
    iterations: int = 0
    multipliers: torch.Tensor | None = None


def _box_max(r: torch.Tensor, lower: torch.Tensor, upper: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``max_{h∈B} r·h`` and the absolute size of its terms (for the rounding safety)."""
    terms = torch.maximum(r * lower, r * upper)
    return terms.sum(dim=-1), terms.abs().sum(dim=-1)


def _label_rows(targets: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Rows ``e_l − e_t`` for every label ``l`` (the row ``l = t`` is zero), shape (P, C, C)."""
    eye = torch.eye(num_classes, dtype=torch.float64)
    return eye.unsqueeze(0) - eye[targets].unsqueeze(1)


def _other_labels(targets: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(P, C − 1) the labels ``l ≠ t`` of each region, in increasing order."""
    ar = torch.arange(num_classes - 1).expand(len(targets), -1)
    return ar + (ar >= targets.unsqueeze(1)).to(torch.int64)


def _region_terms(head, masks, thresholds):
    """Offsets of the region's affine maps and the halfspace right-hand sides ``q_i = s_i c_i − θ``."""
    c, w0 = region_offsets(head, masks)
    signs = masks.to(torch.float64) * 2 - 1
    q = signs * c - thresholds.unsqueeze(1)
    return signs, c, w0, q


def _dual_value(head, masks, rows, signs, w0_rows, q, mu, lower, upper, sound: SoundBackward | None = None,
                need_rows: bool = True):
    """Weak-duality bound for multipliers ``mu`` (P, K, N) ≥ 0 (float32, or None for the box bound), with its
    rounding safety, and the rows ``r`` it was evaluated with. With ``sound``, ``r`` is computed in float32
    and its proven rounding error (:mod:`~prune_unlearn.core.sound_backward`) is added to the bound; without
    ``need_rows`` it is not kept (None)."""
    hidden = None if mu is None else signs.unsqueeze(1) * mu.to(torch.float64)
    if sound is None:
        r = masked_backward(head, masks, rows, hidden)
        box, box_abs = _box_max(r, lower, upper)
        value, size = w0_rows + box, w0_rows.abs() + box_abs
    else:
        # s·μ with float32 μ and s = ±1 is exact in float32: the bound speaks about exactly these inputs
        out32, hid32 = rows.to(torch.float32), None if hidden is None else hidden.to(torch.float32)
        if need_rows:
            r, err = sound.rows(masks, out32, hid32)
            box, box_err, box_abs = sound.box_max(r)
        else:  # the same numbers without keeping the (P, K, d) rows
            box, box_err, box_abs, err = sound.box_bound(masks, out32, hid32)
            r = None
        value, size = w0_rows + box + err + box_err, w0_rows.abs() + box_abs + err + box_err
    if mu is not None:
        mq = mu.to(torch.float64) * q.unsqueeze(1)
        value = value + mq.sum(dim=-1)
        size = size + mq.abs().sum(dim=-1)
    return value + _REL_SAFETY * (1.0 + size), r


def margin_upper_bounds(
    head: HeadNetwork,
    masks: torch.Tensor,
    thresholds: torch.Tensor,
    targets: torch.Tensor,
    lower: torch.Tensor,
    upper: torch.Tensor,
    method: str = "box",
    *,
    dual_steps: int = 60,
    dual_lr: float | None = None,
    chunk_size: int | None = None,
) -> MarginBounds:
    """Sound upper bounds of ``f_l − f_t`` over each tightened region ∩ box.

    Parameters
    ----------
    masks : (P, N) bool activation patterns.
    thresholds : (P,) float64, the tightening ``θ`` (region ``s_i z_i(h) ≥ θ``).
    targets : (P,) int64 target labels.
    lower, upper : (d,) float64 domain box.
    method : {"box", "dual", "lp"}
    """
    if method not in BOUND_METHODS:
        raise ValueError(f"unknown bound method {method!r}")
    p = masks.shape[0]
    out = torch.empty(p, head.num_classes, dtype=torch.float64)
    mult = torch.zeros(p, head.num_classes, masks.shape[1], dtype=torch.float32) if method != "box" else None

    if chunk_size is None:
        # The dual's steps shrink to the searched pairs: larger chunks keep its matrix products efficient
        # (MNIST: 256 regions ~15% faster than 64); the box bound's products run best at ~128 regions too
        # (1,152 rows). Fixed sizes: the bounds must not depend on the workers.
        chunk_size = 128
    # The float32 pass with a proven rounding bound where it holds (box and dual; exact LPs stay in float64).
    sound = SoundBackward.build(head, lower, upper) if method != "lp" else None
    c = head.num_classes

    def chunk(start: int):
        sl = slice(start, min(p, start + chunk_size))
        m, th, tg = masks[sl], thresholds[sl].to(torch.float64), targets[sl]
        signs, _, w0, q = _region_terms(head, m, th)
        mu, steps = None, 0
        if method == "lp":
            rows = _label_rows(tg, c)
            w0_rows = (rows * w0.unsqueeze(1)).sum(dim=-1)
            ub, mu = _lp_bound(head, m, th, tg, rows, signs, w0_rows, q, lower, upper)
            return sl, tg, ub, mu, steps
        # only the rows l ≠ t: the target's own row is zero and bounds nothing
        others = _other_labels(tg, c)
        rows = _label_rows(tg, c).gather(1, others.unsqueeze(-1).expand(-1, -1, c))
        w0_rows = (rows * w0.unsqueeze(1)).sum(dim=-1)
        if method == "box":
            ub, _ = _dual_value(head, m, rows, signs, w0_rows, q, None, lower, upper, sound, need_rows=False)
        else:
            ub, mu, steps = _dual_bound(head, m, rows, signs, w0_rows, q, th, lower, upper, dual_steps, dual_lr, sound)
        full = torch.full((len(tg), c), float("-inf"), dtype=torch.float64).scatter_(1, others, ub)
        if mu is not None:
            mu = torch.zeros(len(tg), c, m.shape[1], dtype=torch.float32).scatter_(
                1, others.unsqueeze(-1).expand(-1, -1, m.shape[1]), mu)
        return sl, tg, full, mu, steps

    iterations = 0
    # Independent chunks of regions: run on the library's workers, one torch thread each (see _threads).
    with kernel_threads():
        for sl, tg, ub, mu, steps in parallel_map(chunk, range(0, p, chunk_size)):
            ub[torch.arange(len(tg)), tg] = float("-inf")
            out[sl] = ub
            iterations = max(iterations, steps)
            if mult is not None:
                mu[torch.arange(len(tg)), tg] = 0  # the target's own row bounds nothing
                mult[sl] = mu
    return MarginBounds(out, method, iterations, mult)


def _dual_bound(head, masks, rows, signs, w0_rows, q, thresholds, lower, upper, steps, lr, sound=None):
    """The sound dual bound at the multipliers :func:`~prune_unlearn.core.dual_search.search_multipliers` finds.

    ``rows`` (P, K, C) are the labels' rows ``e_l − e_t`` (``l ≠ t``). The search starts from the box bound
    (``μ = 0``); the bound is then evaluated soundly (:func:`_dual_value`) at exactly the float32 multipliers it
    returns, and the box bound is kept where it is smaller. → ``(bound, μ, steps)``.
    """
    p, k, c = rows.shape
    n = masks.shape[1]
    box, r0 = _dual_value(head, masks, rows, signs, w0_rows, q, None, lower, upper, sound)
    if n == 0 or steps == 0 or k == 0:
        return box, torch.zeros(p, k, n, dtype=torch.float32), 0
    weights32 = sound.weights32 if sound is not None else tuple(w.to(torch.float32) for w in head.weights)
    best_mu, done = search_multipliers(weights32, head.biases, masks, rows, signs, thresholds, lower, upper, r0, box,
                                       steps, lr)
    # The proof stores float32 multipliers: evaluate the bound at exactly those values.
    bound_at_mu, _ = _dual_value(head, masks, rows, signs, w0_rows, q, best_mu, lower, upper, sound, need_rows=False)
    use_box = box <= bound_at_mu
    best_mu[use_box] = 0  # μ = 0 is the box bound
    return torch.minimum(box, bound_at_mu), best_mu, done


def _lp_bound(head, masks, thresholds, targets, rows, signs, w0_rows, q, lower, upper):
    """Exact LP per region and label with HiGHS, certified through its dual multipliers."""
    import highspy

    p, c = rows.shape[0], rows.shape[1]
    result = torch.empty(p, c, dtype=torch.float64)
    multipliers = torch.zeros(p, c, masks.shape[1], dtype=torch.float32)
    a_all, c_all = region_halfspaces(head, masks)
    lo_np, hi_np = lower.numpy(), upper.numpy()
    inf = highspy.kHighsInf
    for i in range(p):
        a = a_all[i].numpy()
        s = signs[i].numpy()
        # s_i (a_i·h + c_i) ≥ θ  ⇔  row_i := s_i a_i·h ≥ θ − s_i c_i
        rows_mat = s[:, None] * a
        rhs = thresholds[i].item() - s * c_all[i].numpy()
        lp = new_highs()
        n_rows, d = rows_mat.shape
        lp.addVars(d, lo_np, hi_np)
        if n_rows:
            csc = dense_to_csr(rows_mat)
            lp.addRows(n_rows, rhs, np.full(n_rows, inf), csc[2].size, *csc)
        lp.changeObjectiveSense(highspy.ObjSense.kMaximize)
        mus = []
        for lab in range(c):
            if lab == int(targets[i]):
                mus.append(np.zeros(n_rows))
                continue
            obj = masked_backward(head, masks[i : i + 1], rows[i : i + 1, lab : lab + 1])[0, 0].numpy()
            lp.changeColsCost(d, np.arange(d, dtype=np.int32), obj)
            lp.run()
            duals = np.asarray(lp.getSolution().row_dual, dtype=np.float64) if n_rows else np.zeros(0)
            if duals.shape != (n_rows,):
                raise RuntimeError(f"HiGHS returned no duals ({lp.getModelStatus()}) for region {i}, label {lab}")
            mus.append(np.abs(duals))
        # |row dual| is the multiplier of the ≥ row whatever HiGHS's sign convention; rounded to float32
        # (as stored in the proof) it is still ≥ 0, so the bound evaluated at it stays sound.
        mu = torch.tensor(np.stack(mus), dtype=torch.float32).to(torch.float64).unsqueeze(0)
        v_pos, _ = _dual_value(head, masks[i : i + 1], rows[i : i + 1], signs[i : i + 1], w0_rows[i : i + 1],
                               q[i : i + 1], mu, lower, upper)
        result[i] = v_pos[0]
        multipliers[i] = mu[0].to(torch.float32)
    return result, multipliers


# Extra margin per unit of logit magnitude, so that the float32 model, whose logits near a
# region's extreme points carry rounding errors of a few ulps of |f| + |d|, keeps the flip there.
FLOAT32_MARGIN_PER_MAGNITUDE = 2.0**-18


def confusion_patch(upper: torch.Tensor, targets: torch.Tensor, epsilon: float | torch.Tensor) -> torch.Tensor:
    """Smallest-``‖d‖∞`` constant patch with ``d_t − d_l ≥ U_l + ε`` for all ``l ≠ t`` (float32 values).

    With ``b_l = U_l + ε`` and ``b* = max_l b_l``: ``d_t = b*/2``, ``d_l = min(0, b*/2 − b_l)``, so
    ``‖d‖∞ = b*/2``; if ``b* ≤ 0`` the target already wins by ``ε`` and ``d = 0``. ``epsilon`` may be
    one value per region.
    """
    eps = torch.as_tensor(epsilon, dtype=torch.float64)
    eps = eps.view(-1, 1) if eps.dim() else eps
    b = upper + eps  # -inf stays -inf at the target
    b_max = b.max(dim=1).values.clamp(min=0)
    half = b_max / 2
    d = torch.minimum(torch.zeros_like(b), half.unsqueeze(1) - b)
    d[torch.arange(len(targets)), targets] = half
    d = torch.where(torch.isfinite(d), d, torch.zeros_like(d))
    d32 = d.to(torch.float32)
    # Rounding to float32 may lose the last bit of margin: nudge the target entry up until it holds.
    need = eps.flatten().expand(len(targets)) if eps.dim() else eps.expand(len(targets))
    margins = patch_margins(upper, targets, d32)
    short = margins < need
    while short.any():
        idx = short.nonzero().flatten()
        d32[idx, targets[idx]] = torch.nextafter(d32[idx, targets[idx]], torch.tensor(float("inf")))
        margins = patch_margins(upper, targets, d32)
        short = margins < need
    return d32


def float32_aware_epsilon(upper: torch.Tensor, epsilon: float) -> torch.Tensor:
    """Per-region margin: ``ε`` plus a few float32 ulps of the logit and patch magnitudes involved.

    Negligible for ordinary logits (MNIST: +4e-4 on ε = 0.05); it matters when a loose domain box
    (e.g. interval propagation through a deep prefix) makes bounds and patches huge.
    """
    finite = torch.where(torch.isfinite(upper), upper.abs(), torch.zeros_like(upper))
    size = finite.max(dim=1).values  # |U| bounds the logit differences; ‖d‖∞ ≤ (max U + ε)/2 ≤ |U| + ε
    return epsilon + FLOAT32_MARGIN_PER_MAGNITUDE * (2 * size + epsilon)


def patch_margins(upper: torch.Tensor, targets: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Certified margin ``min_{l≠t} (d_t − d_l − U_l)`` of patches ``values`` (P, C)."""
    d = values.to(torch.float64)
    dt = d.gather(1, targets.unsqueeze(1))
    m = dt - d - upper
    m[torch.arange(len(targets)), targets] = float("inf")
    return m.min(dim=1).values

