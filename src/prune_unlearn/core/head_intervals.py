"""Interval bounds (IBP) of the Linear/ReLU head ``M_c`` over per-point boxes, and the box checks every head
bound shares. CROWN (:mod:`.crown`) starts from these and intersects its own bounds with them."""

from __future__ import annotations

import torch

from .._threads import with_kernel_threads
from ..errors import InputValidationError

__all__ = ["box_batch", "ibp_head_bounds", "CROWN_REL_SAFETY"]

# Outward widening of every float64 head bound, relative to the magnitudes summed (covers rounding).
CROWN_REL_SAFETY = 1e-10


def box_batch(head, lower, upper) -> tuple[torch.Tensor, torch.Tensor]:
    """``lower, upper`` as (P, d) tensors in the head's dtype (float64 for every sound bound); refuse
    inverted boxes and non-finite values."""
    lo = torch.as_tensor(lower).to(head.dtype)
    hi = torch.as_tensor(upper).to(head.dtype)
    if lo.dim() == 1:
        lo = lo.unsqueeze(0)
    if hi.dim() == 1:
        hi = hi.unsqueeze(0)
    lo, hi = torch.broadcast_tensors(lo, hi)
    if lo.dim() != 2 or lo.shape[1] != head.input_dim:
        raise InputValidationError(
            f"Boxes must have shape (P, {head.input_dim}) (the head's input dimension); got {tuple(lo.shape)}."
        )
    if not (torch.isfinite(lo).all() and torch.isfinite(hi).all()):
        raise InputValidationError("Box bounds must be finite.")
    if (lo > hi).any():
        raise InputValidationError("Every box needs lower ≤ upper elementwise.")
    return lo.contiguous(), hi.contiguous()


def _interval_affine(w, b, lo, hi):
    """Sound interval image of ``h ↦ h Wᵀ + b`` over the boxes ``[lo, hi]`` (P, n)."""
    c, r = (lo + hi) / 2, (hi - lo) / 2
    wa = w.abs()
    zc = torch.addmm(b, c, w.T) if c.dim() == 2 else c @ w.T + b
    zr = r @ wa.T
    safety = CROWN_REL_SAFETY * ((c.abs() + r) @ wa.T + zr + b.abs())
    return zc - zr - safety, zc + zr + safety


@torch.no_grad()
@with_kernel_threads  # one torch thread per kernel: see prune_unlearn._threads
def ibp_head_bounds(head, lower, upper):
    """Interval bounds (IBP) of the head's hidden pre-activations and logits over per-point boxes.

    Parameters
    ----------
    head : HeadNetwork
    lower, upper : (P, d) tensors (or (d,), broadcast) — one box per point.

    Returns
    -------
    hidden : list of ``(l_i, u_i)``, one (P, n_i) float64 pair per hidden layer (empty for a head
        without hidden layers).
    out : ``(l_out, u_out)``, (P, C) float64 bounds of the logits.
    """
    lo, hi = box_batch(head, lower, upper)
    hidden = []
    last = len(head.weights) - 1
    for i, (w, b) in enumerate(zip(head.weights, head.biases)):
        if i > 0:
            lo, hi = torch.relu(lo), torch.relu(hi)
        lo, hi = _interval_affine(w, b, lo, hi)
        if i < last:
            hidden.append((lo, hi))
    return hidden, (lo, hi)
