"""Forgetting on certified neighbourhoods (issue 11): each forgotten point ``x`` is mispredicted on a whole
ℓ∞ ball ``B(x, r) ∩ domain``, proven, and nothing changes beyond a stated distance of ``x``.

Per point (deduplicated by identical inputs): a support box ``[lo, hi]`` (the ball with float32 corners
rounded outward, or, for a head behind a feature extractor, the interval image of the input ball), a gate
``λ`` (outer distance ``1/λ``), a target label and a constant confusion patch ``d`` with
``d_t − d_l ≥ U_l + ε'`` where ``U_l`` is CROWN's upper bound of ``f_l − f_t`` over the box ∩ domain.
``ε' = ε`` plus a bound of the float32 model's rounding error over the box, so the served float32 model
provably predicts the target on the whole ball too.

Overlaps. Constant patches have ``d_t ≥ 0 ≥ d_l``, so rows that share a target can only strengthen each
other: any set of same-target supports in [0, 1] adds ``≤ 0`` to every ``f_l − f_t``. Rows whose outer boxes
intersect (transitively: a component) therefore get one common target, allowed for every point of the
component; prior rows of the component whose target has to change are re-solved. A patched linear region
(point rows) that may reach a new outer box (its pattern agrees with the box's sign-stable neurons) imposes
its own target. Whole-class patch groups that may be non-zero on a ball are added to its bound as offsets
``Σ_g max(0, d_g,l − d_g,t)`` (the class label is never a target).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .._validation import param_error
from ..core.ball_bounds import ball_box, ball_margin_bounds, certified_set, float32_logit_error, stable_signs
from ..core.bounds import certified_radius, interval_bounds
from ..core.confusion import confusion_patch, margin_upper_bounds, patch_margins
from ..core.neighbourhood import BALL_SPACES, NEIGHBOURHOOD_BOUND_CODES, NeighbourhoodSet, box_overlaps, outward_box
from ..core.regions import pack_patterns, unpack_patterns
from ..errors import InputValidationError

__all__ = ["check_radius", "check_neighbourhood_options", "search_radii", "assign_targets", "solve_rows",
           "forced_region_targets", "resolve_radius", "DEFAULT_OUTER", "RADIUS_SEARCH", "DEFAULT_RADIUS",
           "DEFAULT_RADIUS_SHARE"]

RADIUS_SEARCH = "search"
# forget's default radius (docs/design.md, "The default mode"): a certified ball of DEFAULT_RADIUS_SHARE of the
# input domain's narrowest side (12/255 on images in [0, 1]: the smallest radius that met the issue-11 residual
# recall targets on MNIST and Fashion-MNIST), and region-only where a ball does not apply.
DEFAULT_RADIUS = "auto"
DEFAULT_RADIUS_SHARE = 12 / 255
# Outer gate width as a multiple of the radius: the support is 0 beyond ℓ∞ distance (1 + DEFAULT_OUTER)·r.
DEFAULT_OUTER = 0.5
_U32 = 2.0**-24


def resolve_radius(radius, domain, *, strategy: str = "per-point", target: str = "random",
                   feature_domain=None, region_rows_only: bool = False,
                   feature_extractor: bool = False) -> float | str | None:
    """The radius ``forget`` runs with: ``radius`` itself, unless it is :data:`DEFAULT_RADIUS` (``"auto"``).

    ``"auto"`` is ``DEFAULT_RADIUS_SHARE`` × the narrowest positive side of the domain box (12/255 for images in
    [0, 1]; for other data the same share of each input's range, so the ball means the same thing whatever the
    units), and ``None`` (region-only, the paper's Theorem 1) where a certified ball does not apply: the cluster
    strategy (Algorithm 1 patches regions), ``target="unseen"`` (reference-model bands), a head behind a feature
    extractor (``feature_domain`` given, or ``feature_extractor``: layers before the head that are not a reshape,
    e.g. VGG16's conv layers — an input ball reaches the head only through a loose interval bound, and on the
    CIFAR-10 net of docs/benchmarks.md the feature box of a 2/255 ball was so wide that the ball's support changed
    most test predictions), or
    a domain that is unknown, unbounded or has no side of positive width; and a model that already carries
    region patches and no ball (``region_rows_only``: it keeps its mode — a ball that may reach a patched region
    with another target cannot be certified, so on a ledger processed region-only the balls failed).
    The report's ``radius`` says which.
    """
    if not (isinstance(radius, str) and radius == DEFAULT_RADIUS):
        return radius
    if (strategy != "per-point" or target == "unseen" or feature_domain is not None or feature_extractor
            or domain is None or region_rows_only):
        return None
    try:
        lo = torch.as_tensor(domain[0], dtype=torch.float64)
        hi = torch.as_tensor(domain[1], dtype=torch.float64)
        sides = torch.broadcast_tensors(lo, hi)
        width = (sides[1] - sides[0]).flatten()
    except (TypeError, ValueError, IndexError, RuntimeError):
        return None
    width = width[torch.isfinite(width) & (width > 0)]
    if not bool(torch.isfinite(lo).all() and torch.isfinite(hi).all()) or width.numel() == 0:
        return None
    return DEFAULT_RADIUS_SHARE * float(width.min())


def check_radius(radius, caller: str, width: float | None, name: str = "radius") -> float | str:
    """A radius must be a finite float in (0, width of the domain], or "search" ("auto" for ``radius`` only: it is
    resolved by :func:`resolve_radius` and needs no known domain); the domain must be known."""
    if isinstance(radius, str) and radius == DEFAULT_RADIUS and name == "radius":
        return radius
    if isinstance(radius, str):
        if radius != RADIUS_SEARCH:
            raise param_error(name, caller, f"a float in (0, domain width], {RADIUS_SEARCH!r}"
                              + (f", {DEFAULT_RADIUS!r}" if name == "radius" else ""), radius)
        value = radius
    else:
        ok = isinstance(radius, (int, float, np.floating)) and not isinstance(radius, bool)
        if not ok or not math.isfinite(float(radius)) or float(radius) <= 0:
            raise param_error(name, caller, "a finite float > 0 (an ℓ∞ radius in the input's units)", radius,
                              "e.g. radius=2/255 for 8-bit images scaled to [0, 1]; radius=None for region-only.")
        value = float(radius)
    if width is None or not math.isfinite(width):
        raise InputValidationError(
            f"The {name!r} parameter of {caller} needs a known, bounded input domain, but the domain is "
            f"unknown or unbounded. HINT: pass domain=(lower, upper), the box the model's inputs live in.")
    if not isinstance(value, str) and value > width:
        raise param_error(name, caller, f"at most the domain's widest side ({width:.6g})", radius,
                          "a ball wider than the domain is the whole domain: forget the class instead.")
    return value


@torch.no_grad()
def search_radii(head, x, labels, lower, upper, *, min_radius: float, max_radius: float) -> tuple[torch.Tensor,
                                                                                                 torch.Tensor]:
    """Per point: the model's own certified neighbourhood, ``clamp(r_crown, min_radius, max_radius)``.

    ``r_crown`` is the largest ℓ∞ radius on which full CROWN proves the *base* model predicts the point's label
    (Algorithm 2's "neighbourhood of x"); CROWN-IBP proves about half of it on MNIST (median 4.4/255 against
    8.7/255), so the search always uses full CROWN. Returns ``(radii, r_crown)``.
    """
    r = certified_radius(head, x, labels, lower, upper, max_radius=max_radius, iterations=10, rtol=0.05,
                         start=min(max(8 / 255, min_radius), max_radius), intermediate="crown",
                         search_dtype=torch.float32)
    return r.clamp(min=min_radius, max=max_radius), r


def _input_ball_features(split, x_in, radius, in_lo, in_hi, feat_lo, feat_hi):
    """Feature boxes containing the prefix's image of each input ball ``B(x, r) ∩ input domain`` (IBP)."""
    flat = x_in.reshape(len(x_in), -1).to(torch.float64)
    r = radius.to(torch.float64).view(-1, 1)
    lo = torch.maximum(flat - r, in_lo.reshape(1, -1).to(torch.float64)).reshape(x_in.shape)
    hi = torch.minimum(flat + r, in_hi.reshape(1, -1).to(torch.float64)).reshape(x_in.shape)
    flo, fhi = interval_bounds(split.prefix, lo, hi)
    flo = torch.maximum(flo.reshape(len(x_in), -1), feat_lo)
    fhi = torch.minimum(fhi.reshape(len(x_in), -1), feat_hi)
    return outward_box(flo, fhi)


class _Union:
    def __init__(self, n: int):
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def join(self, i: int, j: int) -> None:
        a, b = self.find(i), self.find(j)
        if a != b:
            self.parent[max(a, b)] = min(a, b)


def _disagreements(active: torch.Tensor, inactive: torch.Tensor, patterns: torch.Tensor,
                   stable: torch.Tensor | None = None) -> torch.Tensor:
    """(P, R) number of neurons a box proves stable with the opposite sign of each pattern (0: may meet).

    ``stable`` (R, N) restricts each pattern to its constrained neurons (relaxed supports); exact integer
    counts from a float64 matrix product.
    """
    pat = patterns.to(torch.float64)
    cons = torch.ones_like(pat) if stable is None else stable.to(torch.float64)
    return inactive.to(torch.float64) @ (pat * cons).T + active.to(torch.float64) @ ((1 - pat) * cons).T


def _class_offsets(class_patches, act, inact, targets) -> torch.Tensor | None:
    """(P, C) most the whole-class groups that may be non-zero on each box can add to ``f_l − f_t``."""
    if class_patches is None or len(class_patches) == 0:
        return None
    n = class_patches.num_hidden
    pats = unpack_patterns(class_patches.patterns.cpu(), n)
    stab = unpack_patterns(class_patches.stable.cpu(), n)
    may = _disagreements(act, inact, pats, stab) == 0                               # (P, R_c)
    groups = torch.zeros(len(targets), class_patches.num_groups, dtype=torch.float64)
    groups.index_add_(1, class_patches.group.cpu(), may.to(torch.float64))
    d = class_patches.values.detach().cpu().to(torch.float64)                       # (G, C)
    gain = (d.unsqueeze(0) - d[:, targets].T.unsqueeze(2)).clamp(min=0)            # (P, G, C)
    return ((groups > 0).to(torch.float64).unsqueeze(2) * gain).sum(dim=1)


def _float32_allowance(err, mag, upper, epsilon) -> torch.Tensor:
    """Extra margin so the float32 model keeps the target: 2·max error + rounding of ``f + d`` (see module doc)."""
    e = err.max(dim=1).values
    m = mag.max(dim=1).values
    finite = torch.where(torch.isfinite(upper), upper.abs(), torch.zeros_like(upper)).max(dim=1).values
    d_max = finite + epsilon + 1.0
    return 2 * e + 2 * _U32 * (2 * m + 2 * e + 2 * d_max) * 1.01


def float32_margin(certified, err, mag, values) -> torch.Tensor:
    """What the certified margin leaves after the float32 model's rounding (> 0: the target wins in float32)."""
    e = err.max(dim=1).values
    m = mag.max(dim=1).values
    d = values.to(torch.float64).abs().max(dim=1).values
    return certified - (2 * e + 2 * _U32 * (2 * m + 2 * e + 2 * d))


def _point_row_targets(point_rows) -> torch.Tensor:
    """The label each point-row patch favours: its largest entry (``d_t ≥ 0 ≥ d_l`` by construction)."""
    return point_rows.values.detach().cpu().argmax(dim=1)


def _region_constraints(head, olo, ohi, point_rows) -> list[set]:
    """Per new outer box, the targets of patched linear regions that may reach it (their pattern agrees with
    every neuron interval bounds prove sign-stable on the box)."""
    out = [set() for _ in range(len(olo))]
    if point_rows is None or len(point_rows) == 0 or head.num_hidden == 0:
        return out
    act, inact = stable_signs(head, olo, ohi)
    may = _disagreements(act, inact, point_rows.masks()) == 0
    tg = _point_row_targets(point_rows)
    for u, j in may.nonzero().tolist():
        out[u].add(int(tg[j]))
    return out


def assign_targets(head, new_lo, new_hi, lam, excluded, logits64, rule: str, rng, *, prior=None, point_rows=None,
                   banned=None):
    """Targets of new rows, one per overlap component (see the module docstring).

    Returns ``(targets (U,) with -1 where the row cannot be built, reasons {u: text}, resolve {prior row: target})``.
    """
    n = len(new_lo)
    o = (NeighbourhoodSet.OUTER_SLACK / lam.to(torch.float64)).unsqueeze(1)
    olo, ohi = new_lo.to(torch.float64) - o, new_hi.to(torch.float64) + o
    n_prior = len(prior) if prior is not None else 0
    uf = _Union(n + n_prior)
    ia, ib = box_overlaps(olo, ohi, olo, ohi)
    for i, j in zip(ia.tolist(), ib.tolist()):
        uf.join(i, j)
    if n_prior:
        plo, phi = prior.outer_box()
        ia, ib = box_overlaps(olo, ohi, plo, phi)
        for i, j in zip(ia.tolist(), ib.tolist()):
            uf.join(i, n + j)
    imposed = _region_constraints(head, olo, ohi, point_rows)
    if n_prior:  # a prior row whose target changes must still agree with the regions that reach it
        plo, phi = prior.outer_box()
        imposed += _region_constraints(head, plo.cpu(), phi.cpu(), point_rows)
    comps: dict[int, list[int]] = {}
    for i in range(n + n_prior):
        comps.setdefault(uf.find(i), []).append(i)
    targets = torch.full((n,), -1, dtype=torch.int64)
    reasons, resolve = {}, {}
    num_classes = excluded.shape[1]
    for members in comps.values():
        new = [i for i in members if i < n]
        if not new:
            continue
        old = [i - n for i in members if i >= n]
        allowed = torch.ones(num_classes, dtype=torch.bool)
        for i in new:
            allowed &= ~excluded[i]
        for j in old:
            allowed &= ~prior.excluded[j].cpu()
        if banned is not None:
            allowed &= ~banned
        forced = set().union(*(imposed[i] for i in members))
        old_targets = {int(prior.targets[j]) for j in old}
        reason = None
        if len(forced) > 1:
            reason = "its neighbourhood may reach patched linear regions with different targets"
        elif forced and not bool(allowed[next(iter(forced))]):
            reason = "its neighbourhood may reach a patched linear region whose target is a forgotten label here"
        elif not bool(allowed.any()):
            reason = "its neighbourhood overlaps forgotten points of every other label"
        if reason:
            for i in new:
                reasons[i] = reason + " (HINT: a smaller radius, or radius=None for region-only)"
            continue
        if forced:
            t = next(iter(forced))
        elif len(old_targets) == 1 and bool(allowed[next(iter(old_targets))]):
            t = next(iter(old_targets))
        elif rule == "runner-up":
            idx = allowed.nonzero().flatten()
            t = int(idx[logits64[new[0], idx].argmax()])
        else:
            idx = allowed.nonzero().flatten()
            t = int(idx[rng.integers(len(idx))])
        for i in new:
            targets[i] = t
        for j in old:
            if int(prior.targets[j]) != t:
                resolve[j] = t
    return targets, reasons, resolve


def forced_region_targets(neighbourhoods, head, masks: torch.Tensor, excluded: torch.Tensor) -> torch.Tensor:
    """For new linear-region rows on a model with neighbourhood rows: the target each must take so that no
    neighbourhood claim breaks (-1: free; -2: impossible). A region may reach a row's outer box when its
    pattern agrees with every neuron interval bounds prove sign-stable on that box."""
    out = torch.full((masks.shape[0],), -1, dtype=torch.int64)
    if neighbourhoods is None or len(neighbourhoods) == 0 or masks.shape[0] == 0 or head.num_hidden == 0:
        return out
    olo, ohi = neighbourhoods.outer_box()
    act, inact = stable_signs(head, olo.cpu(), ohi.cpu())
    may = (_disagreements(act, inact, masks) == 0).T  # (U, R)
    tg = neighbourhoods.targets.cpu()
    for u in range(masks.shape[0]):
        ts = set(tg[may[u]].tolist())
        if len(ts) == 1 and not bool(excluded[u, next(iter(ts))]):
            out[u] = next(iter(ts))
        elif ts:
            out[u] = -2
    return out


def solve_rows(head, box_lo, box_hi, lower, upper, targets, epsilon: float, *, intermediate: str,
               class_patches=None, region=None, region_bound: str = "box", dual_steps: int = 60):
    """Certified patches for boxes (float32 corners) and targets.

    ``region``: optional ``(masks (P, N), thresholds (P,))`` for region ∩ ball rows (bound ``region_bound`` over
    the tightened region ∩ box); otherwise CROWN over the box ∩ domain.
    Returns a dict with ``values``, ``margin`` (exact), ``float32_margin``, ``hidden_error`` (P,) and ``upper``.
    """
    s_lo, s_hi = certified_set(box_lo, box_hi, lower, upper)
    if region is None:
        upper_b, hl, hu = ball_margin_bounds(head, s_lo, s_hi, targets, intermediate=intermediate)
        act, inact = hl > 0, hu < 0
    else:
        masks, theta = region
        upper_b = torch.empty(len(targets), head.num_classes, dtype=torch.float64)
        # one region ∩ box at a time: margin_upper_bounds takes one (d,) box for all the regions it is given
        for k in range(len(targets)):
            upper_b[k] = margin_upper_bounds(head, masks[k:k + 1], theta[k:k + 1], targets[k:k + 1], s_lo[k], s_hi[k],
                                             region_bound, dual_steps=dual_steps).upper[0]
        act, inact = stable_signs(head, s_lo, s_hi)
    offsets = _class_offsets(class_patches, act, inact, targets)
    if offsets is not None:
        upper_b = upper_b + offsets
    err, mag, hidden_err = float32_logit_error(head, s_lo, s_hi)
    eps = epsilon + _float32_allowance(err, mag, upper_b, epsilon)
    values = confusion_patch(upper_b, targets, eps)
    margin = patch_margins(upper_b, targets, values)
    return {"values": values, "margin": margin, "float32_margin": float32_margin(margin, err, mag, values),
            "hidden_error": hidden_err, "upper": upper_b}


def row_tensors(lo32, hi32, lam, values, targets, excluded, radius, margin, code: str, patterns=None,
                region_lambda=None, ball_space: str = "input") -> dict:
    """The fields of a :class:`NeighbourhoodSet` for these rows."""
    p = len(targets)
    return dict(lower=lo32, upper=hi32, gate_lambda=lam, values=values, targets=targets, excluded=excluded,
                radius=radius.to(torch.float64), certified_margin=margin.to(torch.float64),
                bound_code=torch.full((p,), NEIGHBOURHOOD_BOUND_CODES[code], dtype=torch.uint8),
                patterns=patterns, region_lambda=region_lambda,
                ball_space=torch.full((p,), BALL_SPACES[ball_space], dtype=torch.uint8))


def boxes_for(split, feats64, x_in, radius, lower, upper, in_lower, in_upper, feature_space: bool,
              ball_space: str = "input"):
    """Support boxes of the units' balls: the ball itself (an input ball of an MLP, or a ball around the features
    with ``ball_space="features"``), or the interval image of the input ball behind a feature extractor."""
    if feature_space and ball_space == "input":
        return _input_ball_features(split, x_in, radius, in_lower, in_upper, lower, upper)
    return ball_box(feats64, radius, lower, upper)


def pack_or_none(masks):
    return pack_patterns(masks) if masks is not None else None


def check_neighbourhood_options(radius, domain, *, min_radius, max_radius, outer, within_region, intermediate,
                                caller: str = "forget", check_width: bool = True):
    """Validate the neighbourhood options of ``caller`` before anything is computed (or written).
    ``check_width=False``: the radius is not in the domain's units (feature-space balls, checked later)."""
    from .._validation import check_choice, check_positive_float

    width = None
    if domain is not None:
        try:
            lo = torch.as_tensor(domain[0], dtype=torch.float64)
            hi = torch.as_tensor(domain[1], dtype=torch.float64)
            width = float((hi - lo).max())
        except (TypeError, ValueError, IndexError, RuntimeError):
            width = None
    value = check_radius(radius, caller, width) if check_width else radius
    if value == RADIUS_SEARCH:
        check_radius(min_radius, caller, width, "min_radius")
        check_radius(max_radius, caller, width, "max_radius")
        if min_radius > max_radius:
            raise param_error("min_radius", caller, f"at most max_radius ({max_radius!r})", min_radius)
    check_positive_float("outer", caller, outer)
    if not isinstance(within_region, bool):
        raise param_error("within_region", caller, "True or False", within_region)
    check_choice("intermediate", caller, intermediate, ("crown", "ibp"))
    return value
