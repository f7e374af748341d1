"""The ``"unseen"`` forgetting target: each forgotten point's region answers as a model that never saw it.

For a forgotten point ``x`` in linear region ``R`` (pattern ``s``), a reference model ``g`` that never
trained on ``x`` (:mod:`.reference`) gives logits ``g(x)`` (times its calibrated scale ``s``, if it was
calibrated: :mod:`.calibration`; below ``g`` means the scaled reference). The row's constant patch is
``d = g(x) − f(x)``: at ``x`` the patched logits are ``g(x)`` (up to float32 rounding, checked), and on
the support of ``R`` they are ``f(h) + n(h)·d`` with ``f`` affine on ``R`` and ``n(h) ∈ [0, 1]``.

The two-sided claim, proven for every ``h`` in the support (the open region ∩ the domain box, where
``n > 0``) and every pair of labels ``(t, l)``::

    lower[t, l] ≤ (F_t − F_l)(h) ≤ upper[t, l]      (F: the patched logits)

with ``lower = L_tl + min(0, d_t − d_l)`` and ``upper = U_tl + max(0, d_t − d_l)``, where
``L_tl ≤ f_t − f_l ≤ U_tl`` on ``R`` are the box bounds of the region's affine margin maps (the ``box``
method of :mod:`~prune_unlearn.core.confusion`, two-sided). The reference's own margins at ``x`` lie in
the band; ``half_width`` is the largest distance from them to the band's ends. Outside the supports the
logits stay the base model's bit for bit (the patch network's locality).
"""

from __future__ import annotations

import torch

from ..core.patches import BOUND_CODES
from ..core.regions import affine_logits
from ..errors import InputValidationError
from .problem import PointProblem
from .region_patches import FLOAT32_SAFETY, point_gate_lambda
from .rows import PatchRows

__all__ = ["unseen_rows", "unseen_claims", "margin_band", "BAND_BOUND", "POINT_TOLERANCE"]

BAND_BOUND = "box"  # the band's bound method (the audit re-derives it independently)
# Patched float32 logits at the point may differ from the reference's by float32 rounding of f + d.
POINT_TOLERANCE = 1e-4


def margin_band(problem: PointProblem, masks: torch.Tensor, values: torch.Tensor,
                chunk: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """``(lower, upper)`` (R, C, C) float64: sound bounds of every patched margin ``F_t − F_l`` on each support.

    The box bound of each region's affine margin map ``(W_t − W_l)·h + (w_t − w_l)`` (one backward pass per
    region for all labels, :func:`~prune_unlearn.core.regions.affine_logits`), widened outwards by a relative
    1e-9 of the terms' sizes for float64 rounding, then the patch's ``n·(d_t − d_l)`` with ``n ∈ [0, 1]``."""
    head, lo, hi = problem.head, problem.box.lower, problem.box.upper
    r, c = masks.shape[0], head.num_classes
    f_lo = torch.empty(r, c, c, dtype=torch.float64)
    f_hi = torch.empty(r, c, c, dtype=torch.float64)
    for s in range(0, r, chunk):
        W, w = affine_logits(head, masks[s: s + chunk])           # (p, C, d), (p, C)
        diff = W.unsqueeze(2) - W.unsqueeze(1)                     # (p, C, C, d): rows of f_t − f_l
        a, b = diff * lo, diff * hi
        const = w.unsqueeze(2) - w.unsqueeze(1)
        size = const.abs() + torch.maximum(a.abs(), b.abs()).sum(-1)
        f_lo[s: s + chunk] = const + torch.minimum(a, b).sum(-1) - 1e-9 * (1.0 + size)
        f_hi[s: s + chunk] = const + torch.maximum(a, b).sum(-1) + 1e-9 * (1.0 + size)
    d = values.to(torch.float64)
    gap = d.unsqueeze(2) - d.unsqueeze(1)  # d_t − d_l (exact in float64: float32 inputs)
    lower = f_lo + gap.clamp(max=0)
    upper = f_hi + gap.clamp(min=0)
    lower, upper = lower - 1e-12 * lower.abs(), upper + 1e-12 * upper.abs()  # the sums above round once more
    eye = torch.eye(c, dtype=torch.bool)
    return lower.masked_fill(eye, 0.0), upper.masked_fill(eye, 0.0)


def unseen_rows(problem: PointProblem, unit_ids: list[int], ref_logits: torch.Tensor) -> tuple[PatchRows, dict]:
    """One row per unit with ``d = g(x) − f(x)`` at the unit's first point; the bands, by row."""
    p, units = problem, problem.units
    if (units.prior[unit_ids] >= 0).any() if unit_ids else False:
        raise InputValidationError(
            "target='unseen' cannot re-patch a linear region that already carries a patch (a point of this request "
            "shares its region with an earlier request's). HINT: forget both requests together on the unpatched "
            "model; nothing was patched.")
    if p.offsets is not None:
        raise InputValidationError("target='unseen' is not available on a model with whole-class patches.")
    c = units.excluded.shape[1]
    if not unit_ids:
        return PatchRows.empty(p.head.num_hidden, c), {"lower": torch.zeros(0, c, c), "upper": torch.zeros(0, c, c)}
    ids = torch.tensor(unit_ids, dtype=torch.int64)
    first = torch.stack([units.members[u][0] for u in unit_ids])
    values = (ref_logits[first] - p.regions.logits[first]).to(torch.float32)
    patched64 = p.regions.logits[first] + values.to(torch.float64)
    targets = patched64.argmax(1)
    top2 = patched64.topk(min(2, c), dim=1).values
    lead = top2[:, 0] - top2[:, -1] if c > 1 else torch.zeros(len(ids), dtype=torch.float64)
    slack = units.min_slack[ids]
    lam = torch.tensor([point_gate_lambda(float(s)) for s in slack], dtype=torch.float32)
    lower, upper = margin_band(p, units.masks[ids], values)
    rows = PatchRows(
        p.head.num_hidden, c, masks=units.masks[ids], gate_lambda=lam, values=values, targets=targets,
        excluded=torch.zeros(len(ids), c, dtype=torch.bool), point_min_slack=slack.clone(),
        region_threshold=torch.full((len(ids),), float("nan"), dtype=torch.float64), certified_margin=lead,
        bound_code=torch.full((len(ids),), BOUND_CODES["point"], dtype=torch.uint8),
        float32_robust=FLOAT32_SAFETY * units.f32_error[ids] <= 3.0 / lam.to(torch.float64),
        covers=[units.members[u] for u in unit_ids])
    p.progress.update(len(ids))
    return rows, {"lower": lower, "upper": upper}


def unseen_claims(problem: PointProblem, rows: PatchRows, bands: dict, logits32: torch.Tensor, x: torch.Tensor,
                  offset: int, ref_logits: torch.Tensor, which: torch.Tensor, references: list[dict],
                  raw_logits: torch.Tensor | None = None) -> tuple:
    """One claim per point: its row, the reference's (calibrated) logits at it, its raw logits and which
    reference (with its scale), the float32 patched
    logits' distance from them, and the region's band; a ``failed`` entry where the float32 check fails."""
    from .._hashing import points_sha256

    y = problem.labels
    point_unit, point_row = problem.units.point_unit(len(x)), rows.covering_row(len(x))
    claims, failed = [], []
    for i, digest in enumerate(points_sha256(x)):
        ref = ref_logits[i]
        dev = float((logits32[i].to(torch.float64) - ref).abs().max())
        reason = None
        if point_unit[i] < 0:
            reason = "the point lies numerically on a linear-region boundary, so no support can be certified for it"
        elif dev > POINT_TOLERANCE * (1.0 + float(ref.abs().max())):
            reason = f"the float32 patched logits differ from the reference's by {dev:.3g}"
        if reason:
            failed.append({"index": i, "point_sha256": digest, "label": int(y[i]), "reason": reason})
            continue
        k = int(point_row[i])
        lower, upper = bands["lower"][k], bands["upper"][k]
        ref_margin = ref.unsqueeze(1) - ref.unsqueeze(0)
        half = float(torch.maximum(upper - ref_margin, ref_margin - lower).max())
        claims.append({
            "index": i, "point_sha256": digest, "label": int(y[i]), "kind": "unseen",
            "target": int(rows.targets[k]), "predicted_after": int(logits32[i].argmax()), "region": offset + k,
            "proved": "point", "margin": float(rows.certified_margin[k]), "bound": "point",
            "reference": {**references[int(which[i])], "index": int(which[i])},
            "reference_logits": ref.tolist(), "max_abs_deviation": dev,
            "reference_raw_logits": (raw_logits if raw_logits is not None else ref_logits)[i].tolist(),
            "band": {"bound": BAND_BOUND, "scope": "the region's support (open region ∩ domain box)",
                     "about": "lower[t][l] ≤ F_t − F_l ≤ upper[t][l] for the patched logits F",
                     "lower": lower.tolist(), "upper": upper.tolist(), "half_width": half}})
    return claims, failed
