"""Locality probes for the audit: inputs pushed just across the nearest face of a point's linear region.

For a feature vector ``h`` with activation pattern ``s``, every hidden pre-activation is affine on
the region, ``z_i = a_i·h + c_i``, and the region's face for neuron ``i`` lies at distance
``s_i z_i(h) / ‖a_i‖``. A neuron whose row ``a_i`` is zero is constant on the region (dead, or
constant because everything feeding it is switched off): it has no face, and stepping along ``a_i``
would divide by zero. So the probe takes, among the ``candidates`` neurons with the smallest slack,
the non-constant one whose face is nearest, and steps a little past it. Every probe is then checked
on the float32 head as served: finite, and with an activation pattern different from the point's
(outside its region); a probe that float32 rounding leaves inside is pushed further (×10 overshoot,
three times), and one that still fails is dropped and counted.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["BoundaryProbes", "boundary_probes", "support_formula"]


@dataclass
class BoundaryProbes:
    """Probe inputs (float32 features) and what happened while making them."""

    inputs: np.ndarray        # (M, d) float32
    origin: np.ndarray        # (M,) index of the point each probe was made from
    neuron: np.ndarray        # (M,) the neuron whose face it crossed
    constant_skipped: int     # candidate neurons skipped because constant on the region
    no_face: int              # points none of whose candidates has a face (every candidate constant)
    not_crossing: int         # probes dropped: still inside the region after the retries
    non_finite: int           # probes that were not finite (dropped; should never happen)


def _forward(ws, bs, h):
    zs, a = [], h
    for w, b in zip(ws[:-1], bs[:-1]):
        z = a @ w.T + b
        zs.append(z)
        a = np.maximum(z, 0)
    return zs


def _rows_of(ws, active_blocks, layer: int, units: np.ndarray) -> np.ndarray:
    """Gradient rows ``a_i`` (len(units), d) of hidden neurons ``units`` of ``layer`` on the region."""
    g = np.zeros((len(units), ws[layer].shape[0]))
    g[np.arange(len(units)), units] = 1.0
    for j in range(layer, 0, -1):
        g = (g @ ws[j]) * active_blocks[j - 1]
    return g @ ws[0]


def boundary_probes(ws, bs, feats: np.ndarray, head32, *, candidates: int = 8,
                    overshoot: float = 1e-4) -> BoundaryProbes:
    """Probes for the float64 feature rows ``feats``; ``head32(x) -> (B, N)`` float32 pre-activations."""
    sizes = [w.shape[0] for w in ws[:-1]]
    starts = np.concatenate([[0], np.cumsum(sizes)]).astype(int)
    d = ws[0].shape[1]
    empty = BoundaryProbes(np.zeros((0, d), np.float32), np.zeros(0, int), np.zeros(0, int), 0, 0, 0, 0)
    if not sizes or len(feats) == 0:
        return empty
    zs = _forward(ws, bs, feats)
    z = np.concatenate(zs, axis=1)
    active = z > 0
    slack = np.abs(z)
    steps, dirs, origin, neuron = [], [], [], []
    skipped = no_face = 0
    for p in range(len(feats)):
        blocks = [active[p, starts[j]:starts[j + 1]].astype(np.float64) for j in range(len(sizes))]
        order = np.argsort(slack[p], kind="stable")[:candidates]
        layer_of = np.searchsorted(starts, order, side="right") - 1
        best = None
        for j in np.unique(layer_of):
            units = order[layer_of == j]
            rows = _rows_of(ws, blocks, int(j), units - starts[j])
            norms = np.einsum("ij,ij->i", rows, rows)
            for unit, row, nn in zip(units, rows, norms):
                if not nn > 0:
                    skipped += 1
                    continue
                dist = slack[p, unit] / np.sqrt(nn)
                if best is None or dist < best[0]:
                    best = (dist, unit, row, nn)
        if best is None:
            no_face += 1
            continue
        _, unit, row, nn = best
        sign = 1.0 if active[p, unit] else -1.0
        steps.append((slack[p, unit], nn))
        dirs.append(-sign * row)
        origin.append(p)
        neuron.append(int(unit))
    if not origin:
        return BoundaryProbes(empty.inputs, empty.origin, empty.neuron, skipped, no_face, 0, 0)
    base = feats[origin]
    slacks, norms2 = (np.array([v[i] for v in steps]) for i in (0, 1))
    dirs = np.stack(dirs)
    own = np.asarray(head32(feats[origin].astype(np.float32))) > 0  # the pattern as the served model sees it
    out = np.zeros((len(origin), d), np.float32)
    pending = np.arange(len(origin))
    factor = 1.0 + overshoot
    for _ in range(4):  # overshoot ×1, ×10, ×100, ×1000
        # slack·(1 + overshoot) + 1e-6 past the face, along −s_k a_k
        step = (slacks[pending] * factor + 1e-6) / norms2[pending]
        trial = base[pending] + step[:, None] * dirs[pending]
        trial32 = trial.astype(np.float32)
        finite = np.isfinite(trial32).all(axis=1)
        pattern = np.asarray(head32(trial32)) > 0
        crossed = finite & (pattern != own[pending]).any(axis=1)
        out[pending[crossed]] = trial32[crossed]
        keep = ~crossed & finite
        non_finite_now = pending[~finite]
        pending = pending[keep]
        if non_finite_now.size:
            out[non_finite_now] = np.nan
        if pending.size == 0:
            break
        factor = 1.0 + (factor - 1.0) * 10
    good = np.isfinite(out).all(axis=1)
    good[pending] = False
    return BoundaryProbes(out[good], np.asarray(origin)[good], np.asarray(neuron)[good], skipped, no_face,
                          int(pending.size), int((~np.isfinite(out).all(axis=1)).sum()))


def support_formula(patches, preacts: torch.Tensor, chunk: int = 2048) -> torch.Tensor:
    """Every support ``n_r(h)`` (B, R) by the literal network formula, evaluated only where it can be non-zero.

    ``n_r = ReLU(Σ_i clamp(λ_r s_i z_i, 0, 1) − N + 1)``: every gate is at most 1, so a single gate at 0 (a
    neuron with ``s_i z_i ≤ 0``, λ_r > 0 finite) leaves the float32 sum at most ``N − 1`` (each rounded
    addition is monotone in its operands and ``N − 1`` is exact), and ``n_r`` is exactly 0. Which pairs have
    no such neuron is found by an exact ±1 product (integers below 2^24 in float32): ``sign(z)·s_r = N``.
    The formula is then evaluated, term by term as :meth:`PatchSet.support_dense` writes it, for those pairs,
    for every region whose λ is not positive and finite, and for every input with a non-finite
    pre-activation: the same (B, R) values at a fraction of the B × R × N cost.
    """
    b, n = preacts.shape
    out = torch.zeros(b, len(patches), dtype=preacts.dtype)
    if b == 0 or len(patches) == 0:
        return out
    s = patches.masks().to(preacts.dtype) * 2 - 1                       # (R, N)
    lam = patches.gate_lambda.detach().cpu().to(preacts.dtype)
    odd_region = ~(torch.isfinite(lam) & (lam > 0))
    z_all = preacts.detach().cpu()
    for i in range(0, b, chunk):
        z = z_all[i: i + chunk]
        odd_row = ~torch.isfinite(z).all(dim=1)
        signs = torch.sign(torch.nan_to_num(z, nan=0.0))
        # exact: integers of size ≤ N (float32 holds them exactly below 2^24)
        agree = signs @ s.T if n < 2**24 else (signs.double() @ s.double().T)
        pairs = (agree == n) | odd_row[:, None] | odd_region[None, :]
        rows, regions = pairs.nonzero(as_tuple=True)
        if rows.numel():
            v = z[rows] * s[regions] * lam[regions].unsqueeze(1)
            out[i + rows, regions] = torch.relu(torch.clamp(v, 0.0, 1.0).sum(dim=1) - (n - 1))
    return out
