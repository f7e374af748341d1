"""Audit of neighbourhood claims (issue 11), with its own numerical code (NumPy and HiGHS, nothing from ``forget``).

For every neighbourhood entry of a certificate:

``neighbourhoods``
    the row exists and matches (support-box hash, λ, target, ‖d‖∞); with the points, the claimed ball
    ``B∞(x, r) ∩ domain`` lies inside the support box (exact float64 comparisons, input-space rows; feature-space
    rows: ``B∞(φ(x), r) ∩ domain`` around the audit's own features of the point, with a 1e-5 relative slack).
``ball-bounds``
    ``d_t − d_l − U_l ≥ ε`` (the certificate's margin) with ``U_l`` re-derived by the audit's own linear bound
    pass over the box ∩ domain: interval bounds for the hidden layers, refined by back-substitution (CROWN)
    layer by layer, plus the whole-class groups' offsets; for rows claimed ``float32_proved``, what is left after
    the audit's own bound of the float32 model's rounding (``γ_n Σ|w||a|`` per layer) is still positive.
``ball-milp``
    for a sample of rows (all with ``exhaustive``): the exact ``max (f_l − f_t)`` over the box ∩ domain by a
    mixed-integer program (HiGHS; one binary per neuron the interval bounds leave unstable), and the float32
    model, as served, predicts the target at every maximiser.
``ball-locality``
    around every row, inputs just beyond its outer distance get support exactly 0 and, where no other row
    reaches them, the base logits bit for bit; the served support agrees with the dense formula near the boxes.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch

__all__ = ["audit_neighbourhoods", "linear_bounds", "max_violation_milp"]

_REL_TOL = 1e-9


# Seconds per MILP (one label of one row): large balls on wide heads can take hours to solve to optimality;
# the dual bound at the limit is still an upper bound of the maximum.
MILP_TIME_LIMIT = 10.0
# Relative slack of the feature-space ball check: float32 features of the same point may differ by a few ulps
# between batches (convolutions sum in a batch-dependent order); 1e-5 is ~80 float32 ulps.
_FEATURE_SLACK = 1e-5


def _layers(model):
    ws = [lin.weight.detach().cpu().double().numpy() for lin in model.split.linears]
    bs = [(lin.bias.detach().cpu().double().numpy() if lin.bias is not None else np.zeros(lin.out_features))
          for lin in model.split.linears]
    return ws, bs


def _interval(w, b, lo, hi):
    c, r = (lo + hi) / 2, (hi - lo) / 2
    zc, zr = w @ c + b, np.abs(w) @ r
    pad = 1e-12 * (np.abs(w) @ (np.abs(c) + r) + np.abs(b) + 1)
    return zc - zr - pad, zc + zr + pad


def _back(ws, bs, spec, layer, bounds, lo, hi):
    """Lower bounds of ``spec · z_layer`` over the box by back-substitution through ReLU relaxations."""
    lam = spec @ ws[layer]                          # on a_{layer-1}
    const = spec @ bs[layer]
    for k in range(layer - 1, -1, -1):
        l_k, u_k = bounds[k]
        unstable = (l_k < 0) & (u_k > 0)
        up = np.where(unstable, u_k / np.where(unstable, u_k - l_k, 1), (l_k >= 0).astype(float))
        shift = np.where(unstable, -up * l_k, 0.0)
        low = np.where(unstable, (u_k >= -l_k).astype(float), (l_k >= 0).astype(float))
        neg = np.minimum(lam, 0)
        coef = np.maximum(lam, 0) * low + neg * up    # on z_k
        const = const + neg @ shift + coef @ bs[k]
        lam = coef @ ws[k]
    c, r = (lo + hi) / 2, (hi - lo) / 2
    val = const + lam @ c - np.abs(lam) @ r
    return val - 1e-9 * (1 + np.abs(const) + np.abs(lam) @ (np.abs(c) + r))


def linear_bounds(ws, bs, lo, hi, spec):
    """Lower bounds of ``spec · logits`` over the box ``[lo, hi]`` and the hidden bounds used (CROWN)."""
    bounds = []
    a_lo, a_hi = lo, hi
    for k in range(len(ws) - 1):
        z_lo, z_hi = _interval(ws[k], bs[k], a_lo, a_hi)
        if k > 0:
            unstable = (z_lo < 0) & (z_hi > 0)
            if unstable.any():
                rows = np.nonzero(unstable)[0]
                eye = np.eye(ws[k].shape[0])[rows]
                z_lo[rows] = np.maximum(z_lo[rows], _back(ws, bs, eye, k, bounds, lo, hi))
                z_hi[rows] = np.minimum(z_hi[rows], -_back(ws, bs, -eye, k, bounds, lo, hi))
        bounds.append((z_lo, z_hi))
        a_lo, a_hi = np.maximum(z_lo, 0), np.maximum(z_hi, 0)
    return _back(ws, bs, spec, len(ws) - 1, bounds, lo, hi), bounds


def max_violation_milp(ws, bs, lo, hi, bounds, t: int, labels, *, time_limit: float = MILP_TIME_LIMIT):
    """Exact ``max_{h ∈ [lo, hi]} f_l(h) − f_t(h)`` for each ``l`` (HiGHS MILP); returns {l: (value, h)}.

    A MILP stopped by ``time_limit`` (seconds) gives its dual bound (an upper bound of the maximum) and ``h = None``;
    one that failed gives ``(None, None)``."""
    from scipy.optimize import Bounds, LinearConstraint, milp
    from scipy.sparse import lil_matrix

    d = len(lo)
    sizes = [w.shape[0] for w in ws[:-1]]
    n = sum(sizes)
    # variables: h (d), then per hidden neuron z, a, δ
    nv = d + 3 * n
    A = lil_matrix((3 * n + n, nv))
    lb_c, ub_c = [], []
    lbv = np.concatenate([lo, np.full(3 * n, -np.inf)])
    ubv = np.concatenate([hi, np.full(3 * n, np.inf)])
    integ = np.zeros(nv)
    row, start, prev = 0, 0, None
    for k, size in enumerate(sizes):
        l_k, u_k = bounds[k]
        for i in range(size):
            zi, ai, di = d + 3 * (start + i), d + 3 * (start + i) + 1, d + 3 * (start + i) + 2
            # z = W a_prev + b
            src = range(d) if prev is None else prev
            A[row, zi] = 1.0
            for j, col in enumerate(src):
                if ws[k][i, j] != 0:
                    A[row, col] = -ws[k][i, j]
            lb_c.append(bs[k][i]); ub_c.append(bs[k][i]); row += 1
            lbv[zi], ubv[zi] = l_k[i], u_k[i]
            lbv[di], ubv[di] = 0.0, 1.0
            if l_k[i] >= 0:      # active: a = z
                A[row, ai], A[row, zi] = 1.0, -1.0; lb_c.append(0.0); ub_c.append(0.0); row += 1
                lbv[di] = ubv[di] = 1.0
            elif u_k[i] <= 0:    # inactive: a = 0
                lbv[ai] = ubv[ai] = 0.0
                lbv[di] = ubv[di] = 0.0
            else:                # a ≥ z, a ≥ 0, a ≤ u δ, a ≤ z − l (1 − δ)
                integ[di] = 1
                lbv[ai], ubv[ai] = 0.0, u_k[i]
                A[row, ai], A[row, zi] = 1.0, -1.0; lb_c.append(0.0); ub_c.append(np.inf); row += 1
                A[row, ai], A[row, di] = 1.0, -u_k[i]; lb_c.append(-np.inf); ub_c.append(0.0); row += 1
                A[row, ai], A[row, zi], A[row, di] = 1.0, -1.0, -l_k[i]; lb_c.append(-np.inf)
                ub_c.append(-l_k[i]); row += 1
        prev = [d + 3 * (start + i) + 1 for i in range(size)]
        start += size
    A = A[:row].tocsr()
    cons = LinearConstraint(A, np.array(lb_c), np.array(ub_c)) if row else None
    out = {}
    src = list(range(d)) if prev is None else prev
    for lab in labels:
        c = np.zeros(nv)
        c[src] = -(ws[-1][lab] - ws[-1][t])
        res = milp(c, constraints=cons, bounds=Bounds(lbv, ubv), integrality=integ,
                   options={"mip_rel_gap": 1e-9, "time_limit": time_limit})
        bound = getattr(res, "mip_dual_bound", None)
        if res.status == 0 and res.x is not None:
            out[lab] = (float(-res.fun + bs[-1][lab] - bs[-1][t]), res.x[:d])
        elif res.status == 1 and bound is not None and np.isfinite(bound):
            # time limit: the branch-and-bound's dual bound still bounds the maximum from above (no maximiser)
            out[lab] = (float(-bound + bs[-1][lab] - bs[-1][t]), None)
        else:
            out[lab] = (None, None)
    return out


def _float32_need(ws, bs, hidden, lo, hi, d) -> float:
    """Margin the float32 model's rounding can eat on the box: 2·max logit error + rounding of adding ``d``."""
    u = 2.0**-24
    a_mag, err = np.maximum(np.abs(lo), np.abs(hi)), np.zeros(len(lo))
    for k, (w, b) in enumerate(zip(ws, bs)):
        n = w.shape[1] + 1
        gamma = n * u / (1 - n * u)
        err = np.abs(w) @ err + gamma * (np.abs(w) @ (a_mag + err) + np.abs(b))
        if k < len(ws) - 1:
            a_mag = np.maximum(hidden[k][1], 0)
    mag = np.abs(ws[-1]) @ a_mag + np.abs(bs[-1])
    e, m = err.max(), mag.max()
    return 2 * e + 2 * u * (2 * m + 2 * e + 2 * np.abs(d).max())


def _sha(t) -> str:
    return hashlib.sha256(t.detach().cpu().contiguous().numpy().tobytes()).hexdigest()


def _class_offset(model, t: int, ws, bs, bounds_h):
    """Most the whole-class groups that may be non-zero on the box can add to each ``f_l − f_t``."""
    cps = model.class_patches
    c = ws[-1].shape[0]
    if cps is None or len(cps) == 0:
        return np.zeros(c)
    from ..core.regions import unpack_patterns

    n = cps.num_hidden
    pats = unpack_patterns(cps.patterns.cpu(), n).numpy()
    stab = unpack_patterns(cps.stable.cpu(), n).numpy()
    lo = np.concatenate([b[0] for b in bounds_h]) if bounds_h else np.zeros(0)
    hi = np.concatenate([b[1] for b in bounds_h]) if bounds_h else np.zeros(0)
    act, inact = lo > 0, hi < 0
    conflict = ((stab & pats & inact) | (stab & ~pats & act)).any(axis=1)
    group = cps.group.cpu().numpy()
    values = cps.values.detach().cpu().double().numpy()
    live = np.zeros(cps.num_groups, dtype=bool)
    live[group[~conflict]] = True
    gain = np.maximum(values - values[:, t:t + 1], 0)
    return gain[live].sum(axis=0)


def audit_neighbourhoods(model, cert, result, rng, *, points=None, samples: int = 5, exhaustive: bool = False,
                         locality_samples: int = 200) -> None:
    """Add the neighbourhood checks of ``cert`` to ``result`` (see the module docstring)."""
    entries = getattr(cert, "neighbourhoods", None) or []
    if not entries:
        return
    rows = model.neighbourhoods
    if rows is None or len(rows) != len(entries):
        result.add("neighbourhoods", "row set", False, f"certificate lists {len(entries)} neighbourhoods, the model has "
                   f"{0 if rows is None else len(rows)}")
        return
    from .certificate import box_from_description

    dom_lo, dom_hi = (t.numpy() for t in box_from_description(cert.domain))
    ws, bs = _layers(model)
    lower = rows.lower.detach().cpu().double().numpy()
    upper = rows.upper.detach().cpu().double().numpy()
    values = rows.values.detach().cpu().double().numpy()
    targets = rows.targets.cpu().numpy()
    lam = rows.gate_lambda.detach().cpu().double().numpy()
    plain = [e["row"] for e in entries if not e.get("within_region")]
    milp_rows = set(plain if exhaustive else rng.choice(plain, size=min(samples, len(plain)), replace=False).tolist()
                    if plain else [])
    c = values.shape[1]
    for e in entries:
        k = e["row"]
        subject = f"neighbourhood {k}"
        problems = []
        if _sha(torch.cat([rows.lower[k], rows.upper[k]])) != e["support_box_sha256"]:
            problems.append("support box hash differs")
        if e["lambda"] != float(rows.gate_lambda[k]):
            problems.append("λ differs")
        if e["target"] != int(targets[k]):
            problems.append("target differs")
        if not np.isclose(e["H"], np.abs(values[k]).max(), rtol=1e-7):
            problems.append("H differs from ‖d‖∞")
        if not np.isclose(e["outer_distance"], rows.OUTER_SLACK / lam[k], rtol=1e-12):
            problems.append("outer distance is not (1 + 2^-20)/λ")
        result.add("neighbourhoods", subject, not problems, "; ".join(problems))
        if problems:
            continue
        if e.get("within_region"):
            continue  # region ∩ ball rows: proven over region ∩ box (dual/LP); their claim set is smaller
        t = int(targets[k])
        s_lo, s_hi = np.maximum(lower[k], dom_lo), np.minimum(upper[k], dom_hi)
        others = [lab for lab in range(c) if lab != t]
        spec = np.zeros((len(others), c))
        spec[np.arange(len(others)), t] = 1.0
        spec[np.arange(len(others)), others] = -1.0
        low, hidden = linear_bounds(ws, bs, s_lo, s_hi, spec)
        offset = _class_offset(model, t, ws, bs, hidden)
        lead = values[k, t] - values[k, others] + low - offset[others]
        tol = _REL_TOL * (1 + np.abs(values[k]).max() + np.abs(low))
        problems = []
        if not bool(np.all(lead >= cert.epsilon - tol)):
            problems.append(f"re-derived margin {float(lead.min()):.6g} < ε = {cert.epsilon:g}")
        if e.get("float32_proved"):
            left = float(lead.min()) - _float32_need(ws, bs, hidden, s_lo, s_hi, values[k])
            if not left > 0:
                problems.append(f"the float32 model's rounding may exceed the margin (left {left:.3g})")
        result.add("ball-bounds", subject, not problems, "; ".join(problems))
        if k in milp_rows:
            _check_milp(model, e, ws, bs, s_lo, s_hi, hidden, values[k], t, others, offset, result)
    if points is not None:
        _check_balls_hold_points(model, cert, points, lower, upper, dom_lo, dom_hi, result)
    _check_ball_locality(model, rows, rng, locality_samples, result)


def _check_milp(model, e, ws, bs, s_lo, s_hi, hidden, d, t, others, offset, result) -> None:
    k = e["row"]
    solved = max_violation_milp(ws, bs, s_lo, s_hi, hidden, t, others)
    bad = [lab for lab, (v, _) in solved.items() if v is None]
    worst = min((d[t] - d[lab] - v - offset[lab] for lab, (v, _) in solved.items() if v is not None), default=None)
    ok = not bad and worst is not None and worst >= e["margin"] - 1e-6 * (1 + abs(worst))
    result.add("ball-milp", f"neighbourhood {k}", ok, "" if ok else
               (f"MILP failed for labels {bad}" if bad else f"exact minimum lead {worst:.6g} < claimed {e['margin']:.6g}"))
    if bad or not e.get("float32_proved") or any(x is None for _, x in solved.values()):
        return
    h = torch.tensor(np.stack([x for _, x in solved.values()]), dtype=torch.float32)
    h = torch.minimum(torch.maximum(h, torch.tensor(s_lo, dtype=torch.float32)), torch.tensor(s_hi, dtype=torch.float32))
    with torch.no_grad():
        z, logits = model.split.head_forward(h)
        out = model.neighbourhoods.apply(h, torch.cat(z, 1) if z else logits[:, :0], logits)
    wins = out.argmax(1) == t
    result.add("ball-milp", f"neighbourhood {k} (float32 at MILP maximisers)", bool(wins.all()),
               "" if bool(wins.all()) else f"target loses at {int((~wins).sum())} of {len(wins)} maximisers")


def _check_balls_hold_points(model, cert, points, lower, upper, dom_lo, dom_hi, result) -> None:
    """With the points: each claimed ball ∩ domain lies in its row's support box, and the support is 1 at the point.

    Input-space balls are compared exactly (float64) when the head reads the flattened input. Feature-space balls
    (``B∞(φ(x), r)``) are compared around the features this audit computes, with a relative slack of
    :data:`_FEATURE_SLACK`: layers before the head (convolutions) round differently with the batch they run in."""
    from .._hashing import points_sha256

    x = torch.as_tensor(points, dtype=torch.float32)
    hashes = points_sha256(x)
    flat = x.reshape(len(x), -1).double().numpy()
    by_hash = {}
    for c in cert.claims:
        if c.get("proved") == "neighbourhood":
            by_hash[c["point_sha256"]] = c
    spaces = {e["row"]: e["space"] for e in cert.neighbourhoods}
    dev = next(model.parameters()).device
    with torch.no_grad():
        supp = model.neighbourhood_support(x.to(dev)).cpu()
        feats = model.split.features(x.to(dev)).cpu().double().numpy()
    for i, h in enumerate(hashes):
        claim = by_hash.get(h)
        if claim is None:
            continue
        k, r = claim["neighbourhood"], claim["radius"]
        space = spaces.get(k, "")
        problems = []
        if float(supp[i, k]) != 1.0:
            problems.append(f"support {float(supp[i, k])} is not exactly 1 at the point")
        if space.startswith("input: B∞(x, r) ∩ domain, x the point") and flat.shape[1] == lower.shape[1]:
            inside = np.all(lower[k] <= np.maximum(flat[i] - r, dom_lo)) and np.all(upper[k] >= np.minimum(flat[i] + r, dom_hi))
            if not inside:
                problems.append("the claimed ball is not inside the support box")
        elif space.startswith("features:"):
            slack = _FEATURE_SLACK * (np.abs(feats[i]) + r)
            inside = (np.all(lower[k] <= np.maximum(feats[i] - r, dom_lo) + slack)
                      and np.all(upper[k] >= np.minimum(feats[i] + r, dom_hi) - slack))
            if not inside:
                problems.append("the claimed feature-space ball is not inside the support box")
        result.add("neighbourhoods", f"point {i} ({h[:12]}…)", not problems, "; ".join(problems))


def _check_ball_locality(model, rows, rng, n_samples: int, result) -> None:
    """Inputs pushed just beyond a row's outer box get support 0 from it; unsupported inputs keep base logits."""
    r = len(rows)
    pick = rng.choice(r, size=min(r, n_samples), replace=False)
    lo = rows.lower.detach().cpu().double().numpy()[pick]
    hi = rows.upper.detach().cpu().double().numpy()[pick]
    outer = (rows.OUTER_SLACK / rows.gate_lambda.detach().cpu().double().numpy()[pick])[:, None]
    centre = (lo + hi) / 2
    probe = centre + rng.uniform(-1, 1, size=centre.shape) * ((hi - lo) / 2)
    j = rng.integers(0, lo.shape[1], size=len(pick))
    side = rng.random(len(pick)) < 0.5
    beyond = np.where(side, hi[np.arange(len(pick)), j] + outer[:, 0], lo[np.arange(len(pick)), j] - outer[:, 0])
    probe[np.arange(len(pick)), j] = beyond
    # round outward in float32 so the probe stays beyond the outer distance
    h = torch.tensor(probe, dtype=torch.float32)
    away = torch.tensor(np.where(side, np.inf, -np.inf), dtype=torch.float32)
    cols = torch.tensor(j)
    h[torch.arange(len(pick)), cols] = torch.nextafter(h[torch.arange(len(pick)), cols], away)
    near = torch.tensor(centre + rng.uniform(-1.5, 1.5, size=centre.shape) * ((hi - lo) / 2 + outer), dtype=torch.float32)
    with torch.no_grad():
        dev = next(model.parameters()).device
        hh = torch.cat([h, near]).to(dev)
        z, logits = model.split.head_forward(hh)
        zz = torch.cat(z, 1) if z else logits[:, :0]
        dense = rows.support_dense(hh, zz).cpu()
        b, k, v = rows.support(hh, zz)
        fast = torch.zeros_like(dense)
        fast[b.cpu(), k.cpu()] = v.cpu()
        out = rows.apply(hh, zz, logits)
    own = dense[torch.arange(len(pick)), torch.tensor(pick)]
    ok = bool((own == 0).all())
    result.add("ball-locality", f"{len(pick)} inputs beyond a row's outer distance", ok,
               "" if ok else f"{int((own != 0).sum())} have a non-zero support from that row")
    unsupported = (dense == 0).all(dim=1)
    same = torch.equal(out[unsupported.to(out.device)].cpu(), logits[unsupported.to(out.device)].cpu())
    agree = torch.equal(dense, fast)
    result.add("ball-locality", f"{len(hh)} inputs near the boxes", same and agree,
               "" if same and agree else ("the served support disagrees with the dense formula" if not agree else
                                          "an unsupported input's logits differ from the base model's"))
