"""Theorem 1 for a batch of linear regions: gate sharpness, certified region, proven confusion patch.

Shared by every strategy: per-point and Algorithm 1 patch each region this way, and Algorithm 2
uses it for each round's representative.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from ..core.confusion import confusion_patch, float32_aware_epsilon, margin_upper_bounds, patch_margins

__all__ = ["GATE_HEADROOM", "CERTIFIED_FACTOR", "FLOAT32_SAFETY", "RegionPatches", "region_patches",
           "point_gate_lambda", "point_margin", "class_patch_offsets"]

# Gate sharpness λ_r = GATE_HEADROOM / m_r, m_r = the region's smallest slack at its forgotten points:
# the gate saturates at slack m_r/4, so at the points λ·slack ≥ 4 and float32 rounding cannot
# lower a gate below 1. The certified region is slack ≥ 2/λ_r = m_r/2: there, float32 gates are
# exactly 1 whenever the float32 pre-activation error is below 1/λ_r = m_r/4.
GATE_HEADROOM = 4.0
CERTIFIED_FACTOR = 2.0
# A region is flagged float32-robust when the float32 error measured at its points, times this
# safety factor and the region's magnitude ratio (:func:`float32_scale`), stays below the headroom 1/λ_r.
FLOAT32_SAFETY = 4.0


def _summed_magnitude(head, masks: torch.Tensor, a0: torch.Tensor) -> torch.Tensor:
    """Per row, the largest ``Σ_j |W_ij| |a_j| + |b_i|`` over the head's hidden neurons, with the activations'
    magnitudes ``a0`` (R, d) at the input, or (1, d) shared by every row, and the rows' patterns fixed (inactive
    neurons contribute 0). → (R,), or (1,) for a head whose one hidden layer no pattern reaches."""
    a, out = a0, torch.zeros(len(a0), dtype=torch.float32)
    for w, b, m in zip(head.weights[:-1], head.biases[:-1], head.split_hidden(masks)):
        mag = a @ w.abs().T.to(torch.float32) + b.abs().to(torch.float32)
        out = torch.maximum(out, mag.max(dim=1).values if mag.shape[1] else out)
        a = mag * m
    return out


def float32_scale(head, masks: torch.Tensor, features: torch.Tensor, lower, upper) -> torch.Tensor:
    """How much larger float32 rounding of the pre-activations can get on a region's box than at its point.

    Rounding error of a float32 dot product grows with the magnitude of the terms it sums, so an error
    measured at a point says little about far corners of the domain box. Behind a conv prefix the interval
    feature box reaches magnitudes ~10⁸ where the points' features are ~10 (CIFAR-10): a flag from the points
    alone then claimed float32-exact gates where the audit's float32 check at the LP minimisers failed. The
    ratio (≥ 1) of the summed magnitudes at the box's largest |h| to those at the point scales the measured
    error (an estimate, like the error itself; the audit checks the flag at the LP minimisers)."""
    masks = masks.to(torch.float32)
    box = torch.maximum(torch.as_tensor(lower).abs(), torch.as_tensor(upper).abs()).to(torch.float32).flatten()
    at_box = _summed_magnitude(head, masks, box.unsqueeze(0))  # one first-layer product for every region
    at_point = _summed_magnitude(head, masks, features.abs().to(torch.float32))
    return (at_box.double() / at_point.double().clamp(min=1e-30)).clamp(min=1.0)


class RegionPatches(NamedTuple):
    """Per region: ``gate_lambda`` (float32), ``threshold`` θ (float64), ``values`` d (float32), proven
    ``margins`` (float64), ``robust`` (bool), and the ``multipliers`` (R, C, N) behind dual/LP bounds
    (None for the box bound)."""

    gate_lambda: torch.Tensor
    threshold: torch.Tensor
    values: torch.Tensor
    margins: torch.Tensor
    robust: torch.Tensor
    multipliers: torch.Tensor | None


def region_patches(head, masks, min_slack, f32_error, targets, lower, upper, bound, epsilon, dual_steps,
                   offsets=None) -> RegionPatches:
    """Certified constant patches for regions (Theorem 1): the target wins by ``epsilon`` on each whole
    tightened region ``{h ∈ B : s_i z_i(h) ≥ θ}``.

    ``offsets`` (C, C) adds what whole-class patches can contribute to each ``f_l − f_t`` on top of
    the base model, so region claims stay sound on a model that also carries class patches.
    """
    lam = (GATE_HEADROOM / min_slack).to(torch.float32)
    lam = torch.where(torch.isfinite(lam), lam, torch.full_like(lam, 1.0))  # no hidden layer: gate unused
    threshold = CERTIFIED_FACTOR / lam.to(torch.float64)
    threshold = torch.where(torch.isfinite(min_slack), threshold, torch.zeros_like(threshold))
    bounds = margin_upper_bounds(head, masks, threshold, targets, lower, upper, bound, dual_steps=dual_steps)
    upper_bounds = bounds.upper if offsets is None else bounds.upper + offsets[targets]
    values = confusion_patch(upper_bounds, targets, float32_aware_epsilon(upper_bounds, epsilon))
    margins = patch_margins(upper_bounds, targets, values)
    robust = FLOAT32_SAFETY * f32_error <= (threshold - 1.0 / lam.to(torch.float64))  # f32_error: scaled by caller
    return RegionPatches(lam, threshold, values, margins, robust, bounds.multipliers)


def point_gate_lambda(min_slack: float) -> float:
    """λ of a row claimed only at its points: ``GATE_HEADROOM / m`` rounded to float32 (1 without hidden layers)."""
    return float(torch.tensor(GATE_HEADROOM / min_slack, dtype=torch.float32)) if math.isfinite(min_slack) else 1.0


def point_margin(logits64: torch.Tensor, labels: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """At points with float64 logits: how far the best wrong label beats the true one once ``values`` are added."""
    patched = logits64 + values.to(torch.float64)
    true = patched.gather(1, labels.unsqueeze(1)).squeeze(1)
    other = patched.clone()
    other[torch.arange(len(labels)), labels] = float("-inf")
    best, pred = other.max(dim=1)
    return best - true, pred


def class_patch_offsets(class_patches) -> torch.Tensor | None:
    """``O[t, l] = Σ_g max(0, d_g[l] − d_g[t])``: the most whole-class patches can add to ``f_l − f_t``
    anywhere (each group's support lies in [0, 1]); ``None`` without class patches."""
    if class_patches is None or class_patches.num_groups == 0:
        return None
    d = class_patches.values.detach().cpu().to(torch.float64)             # (G, C)
    return (d.unsqueeze(1) - d.unsqueeze(2)).clamp(min=0).sum(dim=0)       # (C_t, C_l)
