"""Bounds over the boxes of neighbourhood rows: certified sets, margin bounds, the float32 model's error.

A neighbourhood claim is made on ``S = [lo32, hi32] ∩ B`` — the row's float32 support box (on which its
support is exactly 1) intersected with the domain box ``B`` — and needs, for every label ``l ≠ t``, a sound
``U_l ≥ max_{h ∈ S} f_l(h) − f_t(h)``: CROWN (or CROWN-IBP) with the spec rows ``e_t − e_l``
(:func:`margin_and_hidden_bounds`). The ball ``B∞(x, r) ∩ B`` that the certificate
names lies inside ``S`` because the corners are rounded outward.

The float32 model as served computes every logit with rounding. :func:`float32_logit_error` bounds that
error over a whole box with the standard dot-product bound ``|fl(a·b) − a·b| ≤ γ_n Σ|a_i b_i|``
(``γ_n = n·u/(1 − n·u)``, ``u = 2^-24``; any summation order, with or without FMA — IEEE float32 as CPU BLAS
computes it, not TF32), propagated layer by layer with interval bounds of the activations. Adding that
error (twice: target and competitor) to the margin ``ε`` makes the target win on the whole box in float32 too.
"""

from __future__ import annotations

import torch

from .._threads import with_kernel_threads
from .crown import as_labels, margin_lower
from .head_intervals import box_batch, ibp_head_bounds
from .neighbourhood import outward_box

__all__ = ["margin_and_hidden_bounds", "ball_box", "certified_set", "ball_margin_bounds", "float32_logit_error", "stable_signs"]

_U32 = 2.0**-24


@torch.no_grad()
@with_kernel_threads  # one torch thread per kernel: see prune_unlearn._threads
def margin_and_hidden_bounds(head, lower, upper, labels, *, intermediate: str = "crown"):
    """CROWN (or CROWN-IBP) lower bounds of the margins ``f_y − f_l`` over per-point boxes, together with the
    hidden bounds they used: ``(margins (P, C), hidden_lower (P, N), hidden_upper (P, N))``, float64, sound."""
    lo, hi = box_batch(head, lower, upper)
    margins, (hl, hu) = margin_lower(head, lo, hi, as_labels(head, labels, lo.shape[0]), intermediate=intermediate)
    return margins, hl, hu


def _gamma(n: int) -> float:
    return n * _U32 / (1 - n * _U32)


def ball_box(x: torch.Tensor, radius: torch.Tensor, dom_lo: torch.Tensor, dom_hi: torch.Tensor):
    """float32 support box of ``B∞(x, r) ∩ B`` with corners rounded outward: ``(lo32, hi32)`` (P, d)."""
    x64 = x.to(torch.float64)
    r = radius.to(torch.float64).view(-1, 1)
    lo = torch.maximum(x64 - r, dom_lo.to(torch.float64))
    hi = torch.minimum(x64 + r, dom_hi.to(torch.float64))
    return outward_box(lo, hi)


def certified_set(lo32: torch.Tensor, hi32: torch.Tensor, dom_lo: torch.Tensor, dom_hi: torch.Tensor):
    """The set a row's claim covers, as a float64 box: its support box ∩ the domain box (exact)."""
    return (torch.maximum(lo32.to(torch.float64), dom_lo.to(torch.float64)),
            torch.minimum(hi32.to(torch.float64), dom_hi.to(torch.float64)))


def ball_margin_bounds(head, lower, upper, targets, *, intermediate: str = "crown"):
    """``U`` (P, C): ``U[p, l] ≥ max_{h ∈ box p} f_l(h) − f_t(h)`` (``-inf`` at ``t``), and the hidden bounds.

    Returns ``(U, hidden_lower, hidden_upper)``; the hidden bounds are sound on the boxes too.
    """
    margins, hl, hu = margin_and_hidden_bounds(head, lower, upper, targets, intermediate=intermediate)
    upper_bounds = -margins
    upper_bounds[torch.arange(len(targets)), targets] = float("-inf")
    return upper_bounds, hl, hu


def stable_signs(head, lower, upper, *, hidden=None):
    """(P, N) bool masks ``(stable_active, stable_inactive)`` of the hidden neurons on each box.

    ``hidden``: already proven ``(lower, upper)`` hidden bounds on the boxes (e.g. from CROWN); default:
    interval bounds.
    """
    if hidden is None:
        blocks, _ = ibp_head_bounds(head, lower, upper)
        hl = head.join_hidden([b[0] for b in blocks], lower.shape[0])
        hu = head.join_hidden([b[1] for b in blocks], lower.shape[0])
    else:
        hl, hu = hidden
    return hl > 0, hu < 0


@torch.no_grad()
def float32_logit_error(head, lower, upper) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Bounds over each box of the float32 model's rounding error and of the logits' size.

    Returns ``(err (P, C), mag (P, C), hidden_err (P, N))``: ``err[p, l] ≥ |fl32(f_l(h)) − f_l(h)|``,
    ``mag[p, l] ≥ |f_l(h)|`` and ``hidden_err[p, i] ≥ |fl32(z_i(h)) − z_i(h)|`` for every ``h`` in box ``p``
    (inputs exactly representable in float32, as the served model receives them).
    """
    blocks, out = ibp_head_bounds(head, lower, upper)
    a_mag = torch.maximum(lower.abs(), upper.abs()).to(torch.float64)  # |h|; the input has no error
    err = torch.zeros_like(a_mag)
    hidden = []
    for i, (w, b) in enumerate(zip(head.weights, head.biases)):
        wa = w.abs()
        n = w.shape[1] + 1  # dot product plus the bias
        # rounding of this layer's float32 dot products, at the computed (erroneous) activations
        err = err @ wa.T + _gamma(n) * ((a_mag + err) @ wa.T + b.abs())
        if i < len(head.weights) - 1:
            hidden.append(err)
            a_mag = torch.relu(blocks[i][1])  # 0 ≤ ReLU(z) ≤ ReLU(upper bound of z)
            # ReLU is 1-Lipschitz: the error carries over unchanged
    mag = torch.maximum(out[0].abs(), out[1].abs())
    hidden_err = head.join_hidden(hidden, lower.shape[0]) * (1 + 1e-6)
    return err * (1 + 1e-6), mag, hidden_err
