"""Audit of ``target="unseen"`` claims (:mod:`prune_unlearn.unlearn.unseen`), independent of ``forget``'s code.

``unseen point``
    the patched model's logits at the point equal the reference's recorded logits up to the stated float32
    rounding, and the top label is the reference's (a black-box query suffices).
``band``
    for each claim's region, the patched margins ``F_t − F_l`` over the support are re-bounded here: the
    region's affine logit map is recomputed by explicit float64 products (:func:`.lp.region_maps`), its
    extremes over the domain box taken in closed form, and the patch's contribution ``n·(d_t − d_l)``,
    ``n ∈ [0, 1]``, added at both ends; the claimed band must contain these bounds (with a relative
    float64 allowance of 1e-8), and the reference's margins at the point must lie inside it. For a
    calibrated reference, the recorded logits must be its raw logits times its recorded scale (or, for an
    affine calibration, its recorded map ``weight · raw + bias`` of them).
"""

from __future__ import annotations

import numpy as np
import torch

from .lp import region_maps

__all__ = ["unseen_point_problems", "check_bands", "POINT_TOLERANCE"]

POINT_TOLERANCE = 1e-4  # as stated by forget (unlearn.unseen.POINT_TOLERANCE); re-stated: no shared code
_BAND_TOL = 1e-8


def unseen_point_problems(logits: torch.Tensor, claim: dict) -> list[str]:
    """What is wrong with an ``unseen`` claim at its point, given the patched model's logits there."""
    ref = np.asarray(claim["reference_logits"], dtype=np.float64)
    got = logits.detach().cpu().double().numpy()
    problems = []
    dev = float(np.abs(got - ref).max())
    if dev > POINT_TOLERANCE * (1.0 + float(np.abs(ref).max())):
        problems.append(f"patched logits differ from the reference's by {dev:.3g}")
    if int(got.argmax()) != int(ref.argmax()):
        problems.append(f"predicts {int(got.argmax())}, the reference {int(ref.argmax())}")
    return problems


def _box_range(row: np.ndarray, const: float, lo: np.ndarray, hi: np.ndarray) -> tuple[float, float, float]:
    """min and max of ``row·h + const`` over the box, and the size of the terms (for the allowance)."""
    a, b = row * lo, row * hi
    return const + float(np.minimum(a, b).sum()), const + float(np.maximum(a, b).sum()), \
        abs(const) + float(np.abs(np.maximum(np.abs(a), np.abs(b))).sum())


def check_bands(claims: list, weights, biases, packed_patterns, values, n_hidden: int, lo, hi, result) -> None:
    """``band`` for every unseen claim (one check per region; see the module docstring)."""
    by_region: dict[int, list] = {}
    for c in claims:
        if c.get("kind") == "unseen":
            by_region.setdefault(int(c["region"]), []).append(c)
    for r, group in sorted(by_region.items()):
        subject = f"region {r} (unseen band)"
        if not 0 <= r < len(values):
            result.add("band", subject, False, "no such row in the patch set")
            continue
        active = np.unpackbits(packed_patterns[r], bitorder="little")[:n_hidden].astype(bool)
        _, _, W, w = region_maps(weights, biases, active)
        d = values[r].astype(np.float64)
        problems = []
        for c in group:
            problems += _band_problems(c, W, w, d, lo, hi)
        result.add("band", subject, not problems, "; ".join(sorted(set(problems))[:3]))


def _band_problems(claim: dict, W, w, d, lo, hi) -> list[str]:
    band = claim.get("band") or {}
    lower, upper = np.asarray(band.get("lower"), np.float64), np.asarray(band.get("upper"), np.float64)
    c = len(d)
    if lower.shape != (c, c) or upper.shape != (c, c):
        return ["the band is not a (C, C) pair of matrices"]
    ref = np.asarray(claim["reference_logits"], np.float64)
    problems = _scale_problems(claim, ref)
    for t in range(c):
        for l in range(c):
            if t == l:
                continue
            mn, mx, size = _box_range(W[t] - W[l], float(w[t] - w[l]), lo, hi)
            gap = float(d[t] - d[l])
            need_lo, need_hi = mn + min(0.0, gap), mx + max(0.0, gap)
            tol = _BAND_TOL * (1.0 + size + abs(gap))
            if lower[t, l] > need_lo + tol or upper[t, l] < need_hi - tol:
                problems.append(f"band of margin {t}−{l} [{lower[t, l]:.6g}, {upper[t, l]:.6g}] does not contain "
                                f"the re-derived [{need_lo:.6g}, {need_hi:.6g}]")
            ref_m = ref[t] - ref[l]
            if not lower[t, l] <= ref_m <= upper[t, l]:
                problems.append(f"the reference's margin {t}−{l} ({ref_m:.6g}) lies outside the band")
    half = float(np.maximum(upper - (ref[:, None] - ref[None, :]), (ref[:, None] - ref[None, :]) - lower).max())
    if abs(half - float(band.get("half_width", np.nan))) > 1e-6 * (1 + abs(half)):
        problems.append(f"half_width {band.get('half_width')} ≠ {half:.6g} from the band")
    return problems


def _scale_problems(claim: dict, ref: np.ndarray) -> list[str]:
    """The recorded logits are the raw reference logits times the recorded scale (1 without calibration), or the
    recorded affine map of them (``calibration.map == "affine"``: weight · raw + bias)."""
    raw = claim.get("reference_raw_logits")
    if raw is None:
        return []
    recorded = claim.get("reference") or {}
    cal = recorded.get("calibration") or {}
    if cal.get("map") == "affine":
        try:
            W, b = np.asarray(cal["weight"], np.float64), np.asarray(cal["bias"], np.float64)
            want = W @ np.asarray(raw, np.float64) + b
        except (KeyError, ValueError, TypeError) as exc:
            return [f"the recorded affine calibration is unusable ({type(exc).__name__}: {exc})"]
        if want.shape != ref.shape or not np.allclose(ref, want, rtol=1e-9, atol=1e-9):
            return ["the reference logits are not its recorded affine map (weight · raw + bias) of its raw logits"]
        return []
    scale = float(recorded.get("scale", 1.0))
    want = np.asarray(raw, np.float64) * scale
    if want.shape != ref.shape or not np.allclose(ref, want, rtol=1e-12, atol=1e-12):
        return [f"the reference logits are not its raw logits × its scale {scale:.6g}"]
    return []
