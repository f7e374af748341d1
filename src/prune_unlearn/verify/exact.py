"""Weak-duality margins in exact rational arithmetic, for the audit's ``bounds`` check.

Every number a certificate's region claim rests on is a binary fraction: the float32 weights, biases,
patch values and multipliers, and the float64 threshold, domain box and claimed margin. So the
weak-duality bound

    U_l = max_{h ∈ B} [ (f_l − f_t)(h) + Σ_i μ_li (s_i z_i(h) − θ) ]   (the region's affine maps)

can be evaluated exactly: each array is written as integers times one power of two
(:class:`Dyadic`), and the backward pass through the head that gives the Lagrangian's gradient
``r_l`` and constant is carried out on those integers, with python-flint's multi-modular integer
matrix products when it is installed (plain Python integers otherwise: exact too, much slower).
The maximum over the box is then ``const + Σ_j r_j⁺ hi_j + r_j⁻ lo_j``, also exact. No rounding
anywhere, so no float error can turn a false claim into a pass. Regions are processed in batches
that share each layer's product with ``W_j``.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

import numpy as np

try:  # optional accelerator; pinned in requirements.txt
    import flint as _flint
except ImportError:  # pragma: no cover - exercised where python-flint is absent
    _flint = None

__all__ = ["Dyadic", "dyadic", "ExactHead", "exact_leads", "BACKEND"]

BACKEND = "python-flint" if _flint is not None else "python integers"


@dataclass
class Dyadic:
    """The exact values ``ints · 2**exp`` (``ints``: NumPy object array of Python ints)."""

    ints: np.ndarray
    exp: int

    def shifted_to(self, exp: int) -> np.ndarray:
        """The integers of the same values at the smaller exponent ``exp``."""
        k = self.exp - exp
        if k < 0:
            raise ValueError("can only move to a smaller exponent")
        return self.ints * (1 << k) if k else self.ints

    def fractions(self) -> np.ndarray:
        scale = Fraction(2) ** self.exp
        return np.array([Fraction(int(v)) * scale for v in self.ints.ravel()], dtype=object).reshape(self.ints.shape)


def dyadic(values) -> Dyadic:
    """Exact :class:`Dyadic` form of float32/float64 values (refuses NaN and infinities)."""
    a = np.asarray(values, dtype=np.float64)
    if not np.all(np.isfinite(a)):
        raise ValueError("exact arithmetic needs finite values")
    mant, ex = np.frexp(a)
    m = (mant * 2.0**53).astype(np.int64)        # exact: 53-bit significands
    e = ex.astype(np.int64) - 53
    nz = m != 0
    if not nz.any():
        return Dyadic(np.zeros(a.shape, dtype=object) * 0, 0)
    low = np.abs(m[nz]) & -np.abs(m[nz])          # lowest set bit: strip trailing zeros
    tz = np.zeros_like(m)
    tz[nz] = np.round(np.log2(low.astype(np.float64))).astype(np.int64)
    m = np.where(nz, m >> tz, 0)
    e = e + tz
    base = int(e[nz].min())
    shift = np.where(nz, e - base, 0)
    ints = np.left_shift(m.astype(object), shift.astype(object))  # Python ints: no overflow
    return Dyadic(ints.reshape(a.shape), base)


def _add(a: Dyadic, b: Dyadic) -> Dyadic:
    e = min(a.exp, b.exp)
    return Dyadic(a.shifted_to(e) + b.shifted_to(e), e)


def _matmul(a: np.ndarray, b) -> np.ndarray:
    """Exact product of integer matrices (``b`` may be a prepared flint matrix)."""
    if _flint is not None:  # entries stay flint integers (fmpz) between products: no conversion to int
        fa = _flint.fmpz_mat(a.shape[0], a.shape[1], a.ravel().tolist())
        fb = b if isinstance(b, _flint.fmpz_mat) else _flint.fmpz_mat(b.shape[0], b.shape[1], b.ravel().tolist())
        out = fa * fb
        arr = np.empty(a.shape[0] * fb.ncols(), dtype=object)
        arr[:] = out.entries()
        return arr.reshape(a.shape[0], fb.ncols())
    return a.dot(b)


class ExactHead:
    """The head's float32 weights and biases as exact integers, prepared once per audit."""

    def __init__(self, weights, biases):
        self.weights = [dyadic(w) for w in weights]
        self.biases = [dyadic(b) for b in biases]
        self.sizes = [w.shape[0] for w in weights[:-1]]
        # each weight's integers, transposed for the backward products (coefficients @ W_j)
        self._mats = []
        for w in self.weights:
            if _flint is not None:
                rows, cols = w.ints.shape
                self._mats.append(_flint.fmpz_mat(rows, cols, [int(v) for v in w.ints.ravel().tolist()]))
            else:
                self._mats.append(w.ints)

    def backward(self, coeff: Dyadic, masks: np.ndarray, mu_signed: Dyadic | None, per: int):
        """Lagrangian gradient ``r`` and constant for coefficient rows on the logits.

        ``coeff`` (K·P, C): P rows per region (one per label it bounds); ``masks`` (K, N) 0/1; ``mu_signed``
        (K·P, N) the multipliers times the signs ``s_i`` (``None``: box bound); ``per`` = P.
        Returns ``(r (K·C, d), const (K·C,))`` with ``const = Σ_j G_j·b_j`` (the offsets, before −μθ).
        """
        last = len(self.weights) - 1
        const = Dyadic(_matmul(coeff.ints, self.biases[last].ints.reshape(-1, 1))[:, 0], coeff.exp + self.biases[last].exp)
        g = Dyadic(_matmul(coeff.ints, self._mats[last]), coeff.exp + self.weights[last].exp)
        starts = np.concatenate([[0], np.cumsum(self.sizes)]).astype(int)
        for j in range(last - 1, -1, -1):
            lo, hi = starts[j], starts[j + 1]
            mask = np.repeat(masks[:, lo:hi], per, axis=0).astype(object)
            g = Dyadic(g.ints * mask, g.exp)
            if mu_signed is not None:
                g = _add(g, Dyadic(mu_signed.ints[:, lo:hi], mu_signed.exp))
            b = self.biases[j]
            const = _add(const, Dyadic(_matmul(g.ints, b.ints.reshape(-1, 1))[:, 0], g.exp + b.exp))
            g = Dyadic(_matmul(g.ints, self._mats[j]), g.exp + self.weights[j].exp)
        return g, const


def exact_leads(head: ExactHead, masks, signs, mu, theta, targets, values, class_offsets, lower, upper,
                batch: int = 64) -> list[list[Fraction]]:
    """Exact ``d_t − d_l − O_tl − U_l`` for every region and label ``l ≠ t`` (``None`` at ``l = t``).

    Parameters (NumPy; K regions, C classes, N hidden neurons, d inputs)
    ----------
    masks : (K, N) bool activation patterns; signs : (K, N) ±1.
    mu : (K, C, N) float32 multipliers ≥ 0 (zeros for box claims).
    theta : (K,) float64 thresholds; targets : (K,) int; values : (K, C) float32 patches.
    class_offsets : (C, C) ``O[t, l] = Σ_g max(0, d_g[l] − d_g[t])`` as Fractions (or floats, taken exactly), or
        ``None``.
    lower, upper : (d,) float64 domain box.
    """
    k_all, c = values.shape
    lo, hi = dyadic(lower), dyadic(upper)
    e_box = min(lo.exp, hi.exp)
    lo_i, hi_i = lo.shifted_to(e_box), hi.shifted_to(e_box)
    out: list[list[Fraction]] = []
    for s0 in range(0, k_all, batch):
        sl = slice(s0, min(k_all, s0 + batch))
        k = sl.stop - sl.start
        tg = np.asarray(targets[sl], dtype=int)
        if c < 2:  # one class: no other label to bound
            out.extend([[None] for _ in range(k)])
            continue
        # one row per (region, label l ≠ t): e_l − e_t (the l = t row would be zero work)
        reg, lab_of = np.nonzero(np.arange(c)[None, :] != tg[:, None])
        eye = np.eye(c, dtype=np.int64)
        coeff = Dyadic(np.array((eye[lab_of] - eye[tg[reg]]).tolist(), dtype=object), 0)
        mu_b = np.asarray(mu[sl], dtype=np.float64)
        if np.any(mu_b < 0):
            raise ValueError("multipliers must be ≥ 0")
        signed = (mu_b * np.asarray(signs[sl], dtype=np.float64)[:, None, :])[reg, lab_of]
        mu_signed = dyadic(signed) if np.any(signed) else None
        r, const = head.backward(coeff, np.asarray(masks[sl], dtype=np.int64), mu_signed, c - 1)
        # max over the box: Σ_j r_j⁺ hi_j + r_j⁻ lo_j
        pos = np.where(r.ints > 0, r.ints, 0)
        neg = np.where(r.ints < 0, r.ints, 0)
        box = Dyadic(_matmul(pos, hi_i.reshape(-1, 1))[:, 0] + _matmul(neg, lo_i.reshape(-1, 1))[:, 0], r.exp + e_box)
        total = _add(const, box).fractions()
        mu_sum = None
        if mu_signed is not None:
            m_exact = dyadic(mu_b[reg, lab_of])
            mu_sum = Dyadic(m_exact.ints.sum(axis=1), m_exact.exp).fractions()
        th = dyadic(np.asarray(theta[sl], dtype=np.float64)).fractions()
        vals = dyadic(np.asarray(values[sl], dtype=np.float64)).fractions()
        offs = None
        if class_offsets is not None:
            offs = np.asarray(class_offsets)
            if offs.dtype != object:  # float values: their exact binary fractions
                offs = dyadic(offs.astype(np.float64)).fractions()
        for i in range(k):
            t = int(tg[i])
            row = []
            for lab in range(c):
                if lab == t:
                    row.append(None)
                    continue
                q = i * (c - 1) + (lab if lab < t else lab - 1)  # this (region, label)'s row
                u = total[q]
                if mu_sum is not None:
                    u -= mu_sum[q] * th[i]
                lead = vals[i, t] - vals[i, lab] - u
                if offs is not None:
                    lead -= offs[t, lab]
                row.append(lead)
            out.append(row)
    return out
