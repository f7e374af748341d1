"""Certified L∞ radii around points and the hidden neurons whose sign is stable on such a ball
(whole-class unlearning, Algorithm 2; DESIGN §3), from the CROWN bounds of :mod:`.crown`.
"""

from __future__ import annotations

import torch

from .._threads import with_kernel_threads
from ..errors import InputValidationError
from .crown import CROWN_CHUNK_ELEMENTS, WARM_STEP, as_labels, check_intermediate, crown_bounds, margin_lower
from .head_intervals import box_batch, ibp_head_bounds
from .regions import affine_logits

__all__ = ["certified_radius", "stable_neurons"]


class _RadiusSearch:
    """The bisection state of :func:`certified_radius`: per point a bracket ``[lo, hi]`` (``lo`` proven),
    attack directions for the probe, and hidden bounds proven at each point's current ``hi``."""

    def __init__(self, head, x, y, dom_lo, dom_hi, *, max_radius, iterations, tol, rtol, start, intermediate,
                 search_dtype):
        p = x.shape[0]
        if head.dtype != torch.float64 or search_dtype not in (torch.float64, torch.float32):
            raise InputValidationError(f"certified_radius needs a float64 head and search_dtype float64 or float32; "
                                       f"got {head.dtype} and {search_dtype}.")
        if int(iterations) != iterations or iterations < 0 or not tol >= 0 or not rtol >= 0:
            raise InputValidationError(f"iterations must be an integer ≥ 0 and tol, rtol ≥ 0; got {iterations!r}, "
                                       f"{tol!r}, {rtol!r}.")
        if max_radius is None:
            max_r = torch.maximum(x - dom_lo, dom_hi - x).amax(dim=1)
        else:
            max_r = torch.as_tensor(max_radius, dtype=torch.float64).expand(p).clone()
            if not (torch.isfinite(max_r).all() and (max_r >= 0).all()):
                raise InputValidationError("max_radius must be finite and ≥ 0.")
        max_r = max_r.to(torch.float64)
        self.x, self.y, self.dom_lo, self.dom_hi = x, y, dom_lo, dom_hi
        self.tol, self.rtol, self.intermediate, self.dtype = tol, rtol, intermediate, search_dtype
        z, logits = head.forward(x)
        others = logits.clone()
        others[torch.arange(p), y] = -float("inf")
        self.ok = logits[torch.arange(p), y] > others.amax(dim=1) if head.num_classes > 1 \
            else torch.ones(p, dtype=torch.bool)
        self.lo = torch.zeros(p, dtype=torch.float64)
        self.hi = torch.where(self.ok, max_r, self.lo)
        if not self.ok.any():
            return
        self.guess = None
        if start is not None:
            guess = torch.as_tensor(start, dtype=torch.float64).expand(p).clone()
            if not (torch.isfinite(guess).all() and (guess > 0).all()):
                raise InputValidationError("start must be finite and > 0.")
            self.guess = torch.minimum(guess, max_r)
        self.bracketed = torch.zeros(p, dtype=torch.bool)  # some radius has failed (hi is no longer max_radius)
        # The search's head and points (a float32 search is checked in float64 at the end).
        self.work, self.xw = (head, x) if search_dtype == torch.float64 else (head.to(search_dtype), x.to(search_dtype))
        self.signs = self._attack_signs(z)
        # Hidden bounds proven at each point's current ``hi`` (a failed radius): the ball of every later
        # midpoint lies inside that ball, so they stay valid there and spare CROWN most stable neurons.
        n = head.num_hidden
        self.known_lo = torch.full((p, n), -float("inf"), dtype=search_dtype)
        self.known_hi = torch.full((p, n), float("inf"), dtype=search_dtype)
        # Probes stop once they fail at a radius ≥ the midpoint (smaller balls rarely hold a corner
        # counterexample that a larger one did not).
        self.clear = torch.zeros(p, dtype=torch.float64)

    def _attack_signs(self, z) -> torch.Tensor:
        """Signs of the gradients of ``f_y − f_l`` at x (exact on x's linear region), int8 (P, C, d); computed
        in chunks of points to bound memory."""
        work, x, y = self.work, self.x, self.y
        p, c = x.shape[0], work.num_classes
        signs = torch.empty(p, c, x.shape[1], dtype=torch.int8)
        step = max(1, CROWN_CHUNK_ELEMENTS // (c * x.shape[1]))
        for s0 in range(0, p, step):
            sl = slice(s0, s0 + step)
            w_logits, _ = affine_logits(work, z[sl] > 0)
            grads = w_logits[torch.arange(w_logits.shape[0]), y[sl]].unsqueeze(1) - w_logits
            signs[sl] = torch.sign(grads).to(torch.int8)
        return signs

    def _midpoints(self, todo, step_no: int) -> torch.Tensor:
        # Radii span orders of magnitude (CROWN-IBP on a wide head proves ~1e-3 where the box is 1 wide),
        # so the search first falls by factors of 8 until a radius is proven, then bisects geometrically:
        # 8 steps resolve a radius to a few percent at any scale, where halving [0, 1] would stop at 1/256.
        lt, ht = self.lo[todo], self.hi[todo]
        if self.guess is None:
            return torch.where(lt > 0, (lt * ht).sqrt(), ht / 8)
        if step_no == 0:
            return self.guess[todo]
        return torch.where(lt == 0, ht / WARM_STEP, torch.where(self.bracketed[todo], (lt * ht).sqrt(),
                                                                  torch.minimum(WARM_STEP * lt, (lt * ht).sqrt())))

    def step(self, step_no: int) -> bool:
        """One bisection step for every unfinished point; False once every point is finished."""
        lo, hi = self.lo, self.hi
        todo = torch.nonzero(self.ok & (hi - lo > self.tol) & (hi > lo * (1 + self.rtol))).squeeze(1)
        if todo.numel() == 0:
            return False
        mid = self._midpoints(todo, step_no)
        blo, bhi = (t.to(self.dtype) for t in _ball(self.x[todo], mid, self.dom_lo[todo], self.dom_hi[todo]))
        mid_w = mid.to(self.dtype)
        beaten = torch.zeros(len(todo), dtype=torch.bool)
        probe = torch.nonzero(mid > self.clear[todo]).squeeze(1)
        if probe.numel():
            # A concrete counterexample in the ball settles "not certified" without CROWN.
            hit = _probe(self.work, self.xw, self.y, self.signs, todo[probe], mid_w[probe], blo[probe], bhi[probe])
            beaten[probe] = hit
            self.clear[todo[probe][~hit]] = mid[probe][~hit]
        certified = torch.zeros(len(todo), dtype=torch.bool)
        run = torch.nonzero(~beaten).squeeze(1)
        if run.numel():
            pts = todo[run]
            bounds, (hl, hu) = margin_lower(self.work, blo[run], bhi[run], self.y[todo][run],
                                             known=(self.known_lo[pts], self.known_hi[pts]),
                                             intermediate=self.intermediate)
            cert = (bounds > 0).all(dim=1)
            certified[run] = cert
            failed = pts[~cert]
            self.known_lo[failed], self.known_hi[failed] = hl[~cert], hu[~cert]
        lo[todo[certified]] = mid[certified]
        hi[todo[~certified]] = mid[~certified]
        self.bracketed[todo[~certified]] = True
        return True


def _ball(x, radius, dom_lo, dom_hi):
    r = radius.unsqueeze(1)
    return torch.maximum(x - r, dom_lo), torch.minimum(x + r, dom_hi)


def _points_and_domain(head, x, lower, upper):
    x = torch.as_tensor(x).to(head.dtype)
    if x.dim() == 1:
        x = x.unsqueeze(0)
    if x.dim() != 2 or x.shape[1] != head.input_dim:
        raise InputValidationError(f"Points must have shape (P, {head.input_dim}); got {tuple(x.shape)}.")
    dom_lo, dom_hi = box_batch(head, lower, upper)
    dom_lo, dom_hi = dom_lo.expand_as(x).contiguous(), dom_hi.expand_as(x).contiguous()
    if not torch.isfinite(x).all():
        raise InputValidationError("Points must be finite.")
    if ((x < dom_lo) | (x > dom_hi)).any():
        raise InputValidationError("Every point must lie inside its domain box [lower, upper].")
    return x, dom_lo, dom_hi


def _probe(head, x, y, signs, pts, radius, blo, bhi) -> torch.Tensor:
    """Whether the head mispredicts at a corner ``x − ρ·sign(∇(f_y − f_l))`` (clipped to the box)."""
    c, d = head.num_classes, x.shape[1]
    step = max(1, CROWN_CHUNK_ELEMENTS // (c * d))
    hit = torch.empty(len(pts), dtype=torch.bool)
    for s0 in range(0, len(pts), step):
        sl = slice(s0, s0 + step)
        q = pts[sl]
        corner = x[q].unsqueeze(1) - radius[sl].view(-1, 1, 1) * signs[q]
        corner = torch.minimum(torch.maximum(corner, blo[sl].unsqueeze(1)), bhi[sl].unsqueeze(1))
        _, logits = head.forward(corner.reshape(-1, d))
        logits = logits.view(len(q), c, c)
        own = logits.gather(2, y[q].view(-1, 1, 1).expand(-1, c, 1))
        hit[sl] = (logits > own).any(dim=2).any(dim=1)
    return hit


@torch.no_grad()
@with_kernel_threads  # one torch thread per kernel: see prune_unlearn._threads
def certified_radius(head, x, labels, lower, upper, *, max_radius=None, iterations: int = 20,
                     tol: float = 1e-6, rtol: float = 0.0, start=None, intermediate: str = "crown",
                     search_dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Largest L∞ radius, found by bisection, on which CROWN proves the head predicts ``labels``.

    For each point ``x[p]`` the ball is ``[max(x − ρ, lower), min(x + ρ, upper)]`` (the ball
    intersected with the domain box). The search keeps a bracket ``[lo, hi]`` per point, with
    ``lo`` always a proven radius; each iteration evaluates the midpoints of all unfinished points
    in one batched CROWN call (:func:`margin_lower_bounds`) and moves ``lo`` up where every margin
    bound is ``> 0``, ``hi`` down otherwise. The "midpoint" is ``hi / 8`` until some radius is proven
    and the geometric mean ``√(lo·hi)`` after that. A point is finished after ``iterations`` steps or once
    ``hi − lo ≤ tol`` or ``hi ≤ lo·(1 + rtol)``.

    Warm start: with ``start`` (a guess, e.g. the median radius of similar points), the first midpoint is
    the guess; from a proven guess the search climbs by ×1.5 until a radius fails, from a failed one it
    falls by ×1.5, and bisects geometrically once bracketed. A good guess brackets the radius within a
    factor of 1.5 in two steps, where falling from the box width takes three to four and leaves a
    factor of 8 to bisect.

    Two things make the search fast without touching soundness:

    * Probe: before CROWN, each midpoint ball is probed at the corners ``x − ρ·sign(∇(f_y − f_l)(x))``
      (one per competing label, clipped to the box). If the head already mispredicts at one of
      them, no sound method can certify that radius, so CROWN is skipped (the midpoint fails).
    * Reuse: the hidden bounds CROWN proves at a failed radius (the point's new ``hi``) stay valid
      on every smaller ball around the same point, so later CROWN calls intersect them in (see
      ``known`` in :func:`_crown`): neurons already proven stable need no backward pass, and the
      others start from tighter bounds. This can only tighten the bounds, so a radius proven here
      may be marginally larger than what a fresh :func:`margin_lower_bounds` call proves.

    Parameters
    ----------
    head : HeadNetwork
    x : (P, d) points inside the domain box; labels : (P,) classes to certify.
    lower, upper : the domain box, (d,) or (P, d).
    max_radius : float or (P,) tensor, optional — upper end of the search. Default: the radius
        beyond which the ball covers the whole domain box, ``max_j max(x_j − lower_j, upper_j − x_j)``.
    iterations : number of bisection steps (CROWN calls); tol : absolute bracket width to stop at.
    rtol : relative bracket width to stop at (0: off).
    start : float or (P,) tensor, optional — first radius to try (warm start; clipped to the search range).
    intermediate : "crown" (default; CROWN bounds for every hidden layer) or "ibp" (CROWN-IBP: interval
        bounds for the hidden layers, linear bound propagation for the output only; much faster on
        wide heads, smaller radii).
    search_dtype : torch.float64 (default) or torch.float32. With float32 the search runs on a float32
        copy of the head (about twice as fast) and only its result is proven: one float64 CROWN call
        checks every radius found, and the few that fail it are searched again in float64, below it.

    Returns
    -------
    (P,) float64 — the largest proven radius (``lo``): 0 where the head does not predict ``y`` at
    ``x`` itself with a positive margin. Exact at ``ρ = 0`` (the box is the point). The bisection
    assumes certification is monotone in ``ρ``, which CROWN's relaxations do not strictly
    guarantee; the returned radius is always one that was proven.
    """

    x, dom_lo, dom_hi = _points_and_domain(head, x, lower, upper)
    y = as_labels(head, labels, x.shape[0])
    search = _RadiusSearch(head, x, y, dom_lo, dom_hi, max_radius=max_radius, iterations=iterations, tol=tol,
                           rtol=rtol, start=start, intermediate=intermediate, search_dtype=search_dtype)
    lo = search.lo
    if not search.ok.any():
        return lo
    for step_no in range(iterations):
        if not search.step(step_no):
            break
    if search_dtype != torch.float64:
        found = torch.nonzero(lo > 0).squeeze(1)
        if found.numel():
            blo, bhi = _ball(x[found], lo[found], dom_lo[found], dom_hi[found])
            proven = (margin_lower(head, blo, bhi, y[found], intermediate=intermediate)[0] > 0).all(dim=1)
            redo = found[~proven]
            if redo.numel():  # float32 rounding carried these over the edge: search below in float64
                lo[redo] = certified_radius(head, x[redo], y[redo], dom_lo[redo], dom_hi[redo], max_radius=lo[redo],
                                            iterations=iterations, tol=tol, rtol=rtol, start=lo[redo] / WARM_STEP,
                                            intermediate=intermediate)
    return lo


@torch.no_grad()
@with_kernel_threads  # one torch thread per kernel: see prune_unlearn._threads
def stable_neurons(head, x, radius, lower, upper, *, intermediate: str = "crown") -> tuple[torch.Tensor, torch.Tensor]:
    """Hidden neurons whose sign CROWN proves constant on the ball of ``radius`` around each point.

    The ball is ``[max(x − radius, lower), min(x + radius, upper)]``; ``radius`` is a float or (P,).
    Returns bool (P, N) masks ``(stable_active, stable_inactive)``: pre-activation lower bound ``> 0``,
    resp. upper bound ``< 0`` (hidden layers concatenated as in ``HeadNetwork.forward``). Computed
    with :func:`crown_head_bounds`' CROWN (``refine_stable=False``: the same masks).
    """
    x, dom_lo, dom_hi = _points_and_domain(head, x, lower, upper)
    r = torch.as_tensor(radius, dtype=torch.float64).expand(x.shape[0])
    if not (torch.isfinite(r).all() and (r >= 0).all()):
        raise InputValidationError("radius must be finite and ≥ 0.")
    blo, bhi = _ball(x, r, dom_lo, dom_hi)
    check_intermediate(intermediate)
    if intermediate == "ibp":  # CROWN-IBP's hidden bounds are the interval bounds themselves
        hidden = ibp_head_bounds(head, blo, bhi)[0]
        hl, hu = head.join_hidden([h[0] for h in hidden], len(x)), head.join_hidden([h[1] for h in hidden], len(x))
    else:
        hl, hu, _, _ = crown_bounds(head, blo, bhi, None, want_upper=False, refine_stable=False, want_output=False)
    return hl > 0, hu < 0
