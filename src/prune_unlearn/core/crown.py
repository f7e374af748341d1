"""CROWN bounds of the Linear/ReLU head ``M_c``: batched float64 linear bounds of its pre-activations and
logits over per-point boxes (DESIGN §3), intersected with the interval bounds of :mod:`.head_intervals`.

Written here rather than taken from auto_LiRPA, which does not install beside torch 2.13; the head is
a plain Linear/ReLU chain, so the backward pass needs only the triangle relaxation of ReLU.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .._threads import with_kernel_threads
from ..errors import InputValidationError
from .head_intervals import CROWN_REL_SAFETY as _CROWN_REL_SAFETY, box_batch, ibp_head_bounds

__all__ = ["CrownBounds", "crown_head_bounds", "ibp_head_bounds", "margin_lower_bounds", "crown_bounds",
           "margin_lower", "box_batch", "check_intermediate", "as_labels", "CROWN_CHUNK_ELEMENTS", "WARM_STEP"]


# Elements per temporary (P_chunk × rows × width) in the backward passes: bounds memory use.
CROWN_CHUNK_ELEMENTS = 1 << 22
# Climb/fall factor of a warm-started radius search: the CROWN-IBP radii of one MNIST class's members lie
# within ×0.46–1.45 of their median (5–95% quantiles, classes 3 and 8), so ×1.5 brackets most in two steps.
WARM_STEP = 1.5


@dataclass
class CrownBounds:
    """CROWN bounds over a batch of boxes.

    Attributes
    ----------
    hidden_lower, hidden_upper : (P, N) float64 — bounds of every hidden pre-activation, hidden
        layers concatenated in order (split with ``HeadNetwork.split_hidden``); (P, 0) for a head
        without hidden layers.
    out_lower, out_upper : (P, K) float64 — bounds of ``spec @ logits`` (the logits themselves,
        K = C, when no ``spec`` is given).
    """

    hidden_lower: torch.Tensor
    hidden_upper: torch.Tensor
    out_lower: torch.Tensor
    out_upper: torch.Tensor


def _relu_relaxation(lo: torch.Tensor, hi: torch.Tensor):
    """CROWN's linear relaxation ``α z ≤ ReLU(z) ≤ s z + t`` on ``[lo, hi]`` (elementwise, (P, n)).

    Stable neurons are exact (``α = s = 1`` if ``lo ≥ 0``; ``α = s = 0`` if ``hi ≤ 0``). Unstable ones
    (``lo < 0 < hi``) get the chord ``s = hi / (hi − lo)``, ``t = −s·lo`` above, and the adaptive lower
    slope ``α = 1 if hi ≥ −lo else 0`` below (the one of the two that leaves the smaller area).
    Returns ``(α, s, t, unstable)``.
    """
    active = lo >= 0
    unstable = (lo < 0) & (hi > 0)
    one = active.to(lo.dtype)
    denom = torch.where(unstable, hi - lo, torch.ones_like(lo))
    slope_up = torch.where(unstable, hi / denom, one)
    shift_up = torch.where(unstable, -slope_up * lo, torch.zeros_like(lo))
    slope_lo = torch.where(unstable, (hi >= -lo).to(lo.dtype), one)
    return slope_lo, slope_up, shift_up, unstable


class _Chunk:
    """Per-chunk constants of the input box: centre, radius and their images under ``W_0``."""

    def __init__(self, head, lo, hi):
        self.centre, self.radius = (lo + hi) / 2, (hi - lo) / 2
        w0 = head.weights[0]
        self.w0c = self.centre @ w0.T                                   # W_0 c, (m, n_0)
        self.w0c_abs_max = (self.centre.abs() @ w0.abs().T).amax(dim=1)  # ‖|W_0||c|‖∞, (m,)


def _relax_step(a, relax_i):
    """``a · ReLU(z_i) ≥ a' · z_i + shift``: lower relaxation where ``a ≥ 0``, upper where ``a < 0``."""
    slope_lo, slope_up, shift_up, _ = relax_i
    neg = a.clamp(max=0)
    shift = torch.bmm(neg, shift_up.unsqueeze(2)).squeeze(2)  # ≤ 0
    neg.mul_((slope_up - slope_lo).unsqueeze(1))
    return torch.addcmul(neg, a, slope_lo.unsqueeze(1)), shift


def _backward_lower(head, start: int, coeff, bias, relax, box: _Chunk):
    """Lower bounds of ``coeff · a_{start-1} + bias`` over the boxes, by one CROWN backward pass.

    ``coeff`` (m, K, n_{start-1}) multiplies the post-activations of hidden layer ``start − 1`` (the
    input ``h`` itself when ``start == 0``); ``bias`` (m, K); ``relax[i]`` is the relaxation of hidden
    layer ``i``. Each ReLU is replaced by its lower relaxation where the coefficient is ≥ 0 and by
    its upper relaxation where it is < 0, which gives a linear lower bound ``A h + β`` valid on the
    box; it is concretised as ``A·c − |A|·r + β`` (centre ``c``, radius ``r``). ``mag`` collects an
    upper bound of the absolute size of every summed term, for the rounding safety.
    """
    mag = bias.abs()
    a = coeff
    l1 = None
    for i in range(start - 1, -1, -1):
        a, shift = _relax_step(a, relax[i])  # coefficient on z_i
        b_i = head.biases[i]
        bias = bias + shift + a @ b_i
        l1 = torch.linalg.vector_norm(a, 1, dim=-1)
        mag = mag - shift + l1 * b_i.abs().max()
        if i > 0:
            a = a @ head.weights[i]  # coefficient on a_{i-1}
    if start > 0:
        # ``a`` multiplies z_0 = W_0 h + b_0: A = a W_0. A·c and a bound of |A|·|c| come from the
        # n_0-sized side; only |A|·r needs A itself.
        lin = torch.bmm(a, box.w0c.unsqueeze(2)).squeeze(2)
        cmag = l1 * box.w0c_abs_max.unsqueeze(1)
        a = a @ head.weights[0]
    else:
        lin = torch.bmm(a, box.centre.unsqueeze(2)).squeeze(2)
        cmag = torch.linalg.vector_norm(a, 1, dim=-1) * box.centre.abs().amax(dim=1, keepdim=True)
    rad = torch.bmm(a.abs_(), box.radius.unsqueeze(2)).squeeze(2)
    return lin + bias - rad - _CROWN_REL_SAFETY * (mag + rad + cmag)


def _second_layer_bounds(head, idx, relax0, box: _Chunk):
    """CROWN bounds of hidden layer 1's neurons ``idx`` (m, U) (all when None), lower and upper.

    One backward pass serves both: with ``D = diag(s)`` (the upper slopes of layer 0),
    the lower bound's coefficient on ``z_0`` is ``W⁺α + W⁻s = W D + W⁺(α − s)`` and the upper's is
    ``W D + W⁻(α − s)``, where ``α − s`` vanishes on stable neurons. So ``(W D) W_0``, the costly
    product, is shared and each side adds a correction of rank (number of unstable layer-0 neurons).
    Same values as two separate passes, up to rounding.
    """
    w1, b1, w0, b0 = head.weights[1], head.biases[1], head.weights[0], head.biases[0]
    slope_lo, slope_up, shift_up, unstable0 = relax0
    m = slope_up.shape[0]
    if idx is None:
        rows, brows = w1.expand(m, -1, -1), b1.expand(m, -1)
    else:
        rows = w1.index_select(0, idx.reshape(-1)).view(m, idx.shape[1], -1)
        brows = b1[idx]
    shared = rows * slope_up.unsqueeze(1)                                   # W D, (m, U, n_0)
    l1 = torch.linalg.vector_norm(shared, 1, dim=-1)
    base = torch.bmm(shared, (box.w0c + b0).unsqueeze(2)).squeeze(2) + brows  # (W D)·(W_0 c + b_0) + b_1
    big = shared @ w0                                                        # (W D) W_0, (m, U, d)
    u0 = int(unstable0.sum(dim=1).max()) if unstable0.numel() else 0
    sides = []
    if u0 == 0:
        rad = torch.bmm(big.abs_(), box.radius.unsqueeze(2)).squeeze(2)
        zero = torch.zeros_like(base)
        sides = [(zero, zero, zero, rad), (zero, zero, zero, rad)]
    else:
        idx0 = torch.topk(unstable0.to(torch.int8), u0, dim=1, sorted=False).indices  # (m, u0)
        wu = rows.gather(2, idx0.unsqueeze(1).expand(-1, rows.shape[1], -1))     # (m, U, u0)
        d_alpha = (slope_lo - slope_up).gather(1, idx0).unsqueeze(1)             # α − s, 0 if stable
        t_u = shift_up.gather(1, idx0).unsqueeze(2)
        z_u = (box.w0c + b0).gather(1, idx0).unsqueeze(2)                        # (W_0 c + b_0) on idx0
        w0_u = w0.index_select(0, idx0.reshape(-1)).view(m, u0, -1)              # (m, u0, d)
        pos = wu.clamp(min=0)
        neg = wu - pos
        for k, (corr_w, off_w) in enumerate(((pos, neg), (neg, pos))):
            corr = corr_w * d_alpha
            offset = torch.bmm(off_w, t_u).squeeze(2)  # lower: W⁻·t (≤ 0); upper: W⁺·t (≥ 0)
            coeff_h = torch.baddbmm(big, corr, w0_u) if k == 0 else big.baddbmm_(corr, w0_u)
            rad = torch.bmm(coeff_h.abs_(), box.radius.unsqueeze(2)).squeeze(2)
            sides.append((torch.bmm(corr, z_u).squeeze(2), offset,
                          torch.linalg.vector_norm(corr, 1, dim=-1), rad))
    out = []
    for sign, (corr_val, offset, corr_l1, rad) in zip((-1.0, 1.0), sides):
        centre_val = base + corr_val + offset
        mag = (brows.abs() + (l1 + corr_l1) * (b0.abs().max() + box.w0c_abs_max.unsqueeze(1))
               + offset.abs() + rad)
        out.append(centre_val + sign * (rad + _CROWN_REL_SAFETY * mag))
    return out[0], out[1]


def _spec_interval(spec, lo, hi):
    """Interval bounds of ``spec @ v`` for ``v`` in the boxes ``[lo, hi]`` (P, C); spec (P, K, C).

    Rows with a single ``±1`` entry are exact (no rounding), so they get no safety: with the
    identity spec the result is exactly ``[lo, hi]``.
    """
    pos, neg = spec.clamp(min=0), spec.clamp(max=0)
    lo3, hi3 = lo.unsqueeze(2), hi.unsqueeze(2)
    out_lo = (torch.bmm(pos, lo3) + torch.bmm(neg, hi3)).squeeze(2)
    out_hi = (torch.bmm(pos, hi3) + torch.bmm(neg, lo3)).squeeze(2)
    exact = ((spec != 0).sum(dim=2) <= 1) & ((spec == 0) | (spec.abs() == 1)).all(dim=2)
    safety = _CROWN_REL_SAFETY * torch.bmm(spec.abs(), torch.maximum(lo.abs(), hi.abs()).unsqueeze(2)).squeeze(2)
    safety = safety.masked_fill(exact, 0.0)
    return out_lo - safety, out_hi + safety


def _as_spec(head, spec, p: int) -> torch.Tensor:
    c = head.num_classes
    if spec is None:
        return torch.eye(c, dtype=head.dtype).expand(p, c, c)
    s = torch.as_tensor(spec).to(head.dtype)
    if s.dim() == 2:
        s = s.unsqueeze(0)
    if s.dim() != 3 or s.shape[2] != c or s.shape[0] not in (1, p):
        raise InputValidationError(f"spec must have shape (P, K, {c}) or (K, {c}); got {tuple(s.shape)}.")
    return s.expand(p, -1, -1)


def check_intermediate(intermediate: str) -> None:
    if intermediate not in ("crown", "ibp"):
        raise InputValidationError(f"intermediate must be 'crown' or 'ibp'; got {intermediate!r}.")


def _crown_plan(head, lo, hi, spec, want_upper, refine_stable, known, intermediate, want_output):
    """What :func:`_crown` needs before its chunks: IBP output bounds, the reference hidden bounds (IBP,
    intersected with ``known``), the spec, and the points ordered by their widest backward pass (rows)."""
    p, d = lo.shape
    ibp_hidden, ibp_out = ibp_head_bounds(head, lo, hi)
    ref = list(ibp_hidden)
    if known is not None:
        for k, (kl, ku) in enumerate(zip(head.split_hidden(known[0]), head.split_hidden(known[1]))):
            ref[k] = (torch.maximum(ref[k][0], kl), torch.minimum(ref[k][1], ku))
    spec = _as_spec(head, spec, p)
    k_out = spec.shape[1]
    sizes = head.hidden_sizes
    width = max([d] + sizes)
    # Rows per point in its widest backward pass.
    rows = torch.full((p,), k_out * (2 if want_upper else 1) if want_output else 1, dtype=torch.long)
    for k in range(1, len(sizes) if intermediate == "crown" else 1):  # CROWN-IBP: the output's pass only
        count = torch.full((p,), sizes[k]) if refine_stable else ((ref[k][0] < 0) & (ref[k][1] > 0)).sum(dim=1)
        rows = torch.maximum(rows, 2 * count)
    order = torch.argsort(rows, stable=True)
    return ibp_out, ref, spec, order, rows[order].tolist(), width


def _crown_refine_layer(head, k, l_k, u_k, relax, box: _Chunk, refine_stable: bool):
    """CROWN bounds of hidden layer ``k ≥ 1`` on one chunk, intersected with its reference bounds; with
    ``refine_stable=False`` only the neurons the reference leaves unstable get a backward pass."""
    m = l_k.shape[0]
    idx = None  # neurons to refine, (m, U); None: all of them
    if not refine_stable:
        unstable = (l_k < 0) & (u_k > 0)
        u_max = int(unstable.sum(dim=1).max())
        if u_max == 0:
            return l_k, u_k
        if u_max < 0.8 * head.hidden_sizes[k]:  # else all rows: cheaper than gathering
            idx = torch.topk(unstable.to(torch.int8), u_max, dim=1, sorted=False).indices
    if k == 1:
        c_lo, c_hi = _second_layer_bounds(head, idx, relax[0], box)
    else:
        w, b = head.weights[k], head.biases[k]
        if idx is None:
            rows_w, rows_b = w.expand(m, -1, -1), b.expand(m, -1)
        else:
            rows_w = w.index_select(0, idx.reshape(-1)).view(m, idx.shape[1], -1)
            rows_b = b[idx]
        bound = _backward_lower(head, k, torch.cat([rows_w, -rows_w], dim=1),
                                torch.cat([rows_b, -rows_b], dim=1), relax, box)
        c_lo, c_hi = bound[:, :rows_w.shape[1]], -bound[:, rows_w.shape[1]:]
    if idx is None:
        return torch.maximum(l_k, c_lo), torch.minimum(u_k, c_hi)
    l_k.scatter_(1, idx, torch.maximum(l_k.gather(1, idx), c_lo))
    u_k.scatter_(1, idx, torch.minimum(u_k.gather(1, idx), c_hi))
    return l_k, u_k


def _crown_output(head, spec, sl, relax, box: _Chunk, ibp_out, want_upper: bool, out_lo, out_hi) -> None:
    """Output bounds of one chunk, intersected with IBP: ``spec @ logits = (spec W_{L-1}) a_{L-2} + spec b_{L-1}``."""
    k_out = spec.shape[1]
    s = spec.index_select(0, sl) if spec.stride(0) else spec[:len(sl)]
    rows_w, rows_b = s @ head.weights[-1], s @ head.biases[-1]
    if want_upper:
        rows_w, rows_b = torch.cat([rows_w, -rows_w], dim=1), torch.cat([rows_b, -rows_b], dim=1)
    bound = _backward_lower(head, len(head.hidden_sizes), rows_w, rows_b, relax, box)
    i_lo, i_hi = _spec_interval(s, ibp_out[0].index_select(0, sl), ibp_out[1].index_select(0, sl))
    out_lo[sl] = torch.maximum(bound[:, :k_out], i_lo)
    if want_upper:
        out_hi[sl] = torch.minimum(-bound[:, k_out:], i_hi)


def crown_bounds(head, lo, hi, spec, *, want_upper: bool, refine_stable: bool, known=None, intermediate: str = "crown",
           want_output: bool = True):
    """CROWN with CROWN intermediate bounds, intersected with IBP at every layer (see crown_head_bounds).

    With ``refine_stable=False`` the backward passes of hidden layers run only for the neurons that
    the reference bounds (IBP, intersected with ``known``) leave unstable, padded per chunk to the
    largest count; the other neurons keep their reference bounds. The relaxation of a stable
    neuron does not depend on its bounds, so with ``known=None`` the output bounds and every
    neuron's stability are the same as with ``refine_stable=True``.

    ``known``: optional ``(lower, upper)`` (P, N) hidden bounds already proven on boxes that contain
    these ones (e.g. from a larger radius); they are intersected in too, which stays sound.
    Points are processed in chunks of similar unstable counts, to bound memory and padding.
    ``want_output=False`` skips the output's backward pass (hidden bounds only; output bounds are None).
    """
    check_intermediate(intermediate)
    p = lo.shape[0]
    ibp_out, ref, spec, order, rows_sorted, width = _crown_plan(head, lo, hi, spec, want_upper, refine_stable, known,
                                                                intermediate, want_output)
    k_out = spec.shape[1]
    hid_lo = [torch.empty(p, n, dtype=lo.dtype) for n in head.hidden_sizes]
    hid_hi = [torch.empty(p, n, dtype=lo.dtype) for n in head.hidden_sizes]
    out_lo = torch.empty(p, k_out, dtype=lo.dtype)
    out_hi = torch.empty(p, k_out, dtype=lo.dtype) if want_upper else None
    s0 = 0
    while s0 < p:
        s1 = s0 + 1
        while s1 < p and (s1 + 1 - s0) * rows_sorted[s1] * width <= CROWN_CHUNK_ELEMENTS:
            s1 += 1
        sl = order[s0:s1]
        s0 = s1
        box = _Chunk(head, lo.index_select(0, sl), hi.index_select(0, sl))
        relax = []
        for k in range(len(head.hidden_sizes)):
            l_k, u_k = ref[k][0].index_select(0, sl), ref[k][1].index_select(0, sl)
            # layer 0 is affine in h: its IBP bounds are already exact (= CROWN). With
            # intermediate="ibp" (CROWN-IBP) deeper layers keep their interval bounds: one backward pass
            # (the output's) instead of one per hidden layer, far cheaper and somewhat looser.
            if k > 0 and intermediate == "crown":
                l_k, u_k = _crown_refine_layer(head, k, l_k, u_k, relax, box, refine_stable)
            hid_lo[k][sl], hid_hi[k][sl] = l_k, u_k
            relax.append(_relu_relaxation(l_k, u_k))
        if want_output:
            _crown_output(head, spec, sl, relax, box, ibp_out, want_upper, out_lo, out_hi)
    if not want_output:
        out_lo = out_hi = None
    return head.join_hidden(hid_lo, p), head.join_hidden(hid_hi, p), out_lo, out_hi


@torch.no_grad()
@with_kernel_threads  # one torch thread per kernel: see prune_unlearn._threads
def crown_head_bounds(head, lower, upper, *, spec=None, refine_stable: bool = True) -> CrownBounds:
    """CROWN bounds of every hidden pre-activation and of ``spec @ logits`` over per-point boxes.

    The variant is CROWN with CROWN intermediate bounds: hidden layers are bounded in order, each by
    a backward pass through the ReLU relaxations of the layers before it (chord above; adaptive
    slope 1 if ``u ≥ −l`` else 0 below), built from the already computed bounds. At every layer the
    CROWN bounds are intersected elementwise with the IBP bounds (:func:`ibp_head_bounds`), so they
    are never looser than IBP; the first hidden layer is affine in the input, where both are exact.
    Linear bounds are concretised over the box with ``A·c ± |A|·r`` and widened outward by a
    relative rounding safety, so every bound is sound (never tighter than the truth).

    Parameters
    ----------
    head : HeadNetwork
    lower, upper : (P, d) — one box per point ((d,) broadcasts).
    spec : optional (P, K, C) or (K, C) matrix; the output bounds are of ``spec @ logits``
        (default: the identity, i.e. bounds of the logits).
    refine_stable : if False, skip the backward passes for neurons IBP already proves stable (they
        keep their IBP bounds). The output bounds and every neuron's sign stability are unchanged;
        only those neurons' numeric bounds may be looser. Much faster when few neurons are unstable.

    Returns
    -------
    CrownBounds with ``hidden_lower/hidden_upper`` (P, N) and ``out_lower/out_upper`` (P, K).
    """
    lo, hi = box_batch(head, lower, upper)
    hl, hu, ol, ou = crown_bounds(head, lo, hi, spec, want_upper=True, refine_stable=refine_stable)
    return CrownBounds(hl, hu, ol, ou)


def _margin_spec(num_classes: int, labels: torch.Tensor, dtype=torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows ``e_y − e_l`` for every ``l ≠ y``, (P, C − 1, C), and those ``l`` (P, C − 1)."""
    p = labels.shape[0]
    every = torch.arange(num_classes).expand(p, num_classes)
    others = every[every != labels.unsqueeze(1)].view(p, num_classes - 1)
    eye = torch.eye(num_classes, dtype=dtype)
    return eye[labels].unsqueeze(1) - eye[others], others


def as_labels(head, labels, p: int) -> torch.Tensor:
    y = torch.as_tensor(labels).reshape(-1).long()
    if y.shape[0] != p:
        raise InputValidationError(f"Expected {p} labels, got {y.shape[0]}.")
    if p and (y.min() < 0 or y.max() >= head.num_classes):
        raise InputValidationError(f"Labels must lie in [0, {head.num_classes}).")
    return y


def margin_lower(head, lo, hi, y, known=None, intermediate: str = "crown"):
    """Margin lower bounds (P, C) and the hidden bounds (P, N) pair they were computed with."""
    spec, others = _margin_spec(head.num_classes, y, head.dtype)
    want_output = head.num_classes > 1  # one class: no margin to bound, every entry is +inf
    hl, hu, out_others, _ = crown_bounds(head, lo, hi, spec, want_upper=False, refine_stable=False, known=known,
                                   intermediate=intermediate, want_output=want_output)
    out = torch.full((len(y), head.num_classes), float("inf"), dtype=hl.dtype)
    if want_output:
        out.scatter_(1, others, out_others)
    return out, (hl, hu)


@torch.no_grad()
@with_kernel_threads  # one torch thread per kernel: see prune_unlearn._threads
def margin_lower_bounds(head, lower, upper, labels) -> torch.Tensor:
    """CROWN lower bounds of the margins ``f_y − f_l`` over per-point boxes, (P, C) float64.

    Entry ``[p, l]`` bounds ``min_{h ∈ box_p} f_y(h) − f_l(h)`` from below (spec rows ``e_y − e_l``),
    with ``+inf`` at ``l = y``. Class ``y`` is certified on box ``p`` iff the whole row is ``> 0``.
    Uses :func:`crown_head_bounds`' CROWN (IBP-stable neurons are not refined: same output bounds).
    """
    lo, hi = box_batch(head, lower, upper)
    return margin_lower(head, lo, hi, as_labels(head, labels, lo.shape[0]))[0]
