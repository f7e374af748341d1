"""Masked backward passes in float32 with a proven bound on their rounding error.

The region bounds of :mod:`~prune_unlearn.core.confusion` need, for every region and label, the row
``r = out·∂logits/∂h + hidden·∂z/∂h`` (one masked backward pass) and ``Σ_j max(lo_j r_j, hi_j r_j)``.
On MNIST's head that pass is ten rows of 256×784 per region: in float64 it was most of a 10,000-point
``forget``. Here it runs in float32 (about twice the speed) and the result stays sound: the rounding
error of the whole pass, weighted by the box, is bounded in closed form and added to the bound.

Rounding model (Higham, *Accuracy and Stability of Numerical Algorithms*, §3.1): a float32 dot
product of length ``k``, summed in any order, with or without fused multiply-adds, is within
``γ_k·|x|·|y|`` of the exact one, ``γ_k = k·u/(1 − k·u)``, ``u = 2⁻²⁴``; one addition is within
``u/(1 − u) ≤ 2u`` of its exact value, relative to the computed one. With ``ĝ_j`` the computed
coefficients at hidden layer ``j`` (``ĝ_L`` the exact output coefficients), ``m_j`` the 0/1 masks
and ``ρ_j = max(|lo_j|, |hi_j|)``, induction over the layers gives

    Σ_j ρ_j |r̂_j − r_j|  ≤  Σ_{j=1..L} γ_{n_j} |ĝ_j|·v_j  +  Σ_{j<L, hidden added} 2u |ĝ_j|·v_j,
    v_1 = |W_1| ρ,   v_{j+1} = |W_{j+1}| (m_j ∘ v_j),

(``n_j`` rows of ``W_j``), a few cheap matrix–vector products per region. ``max(lo x, hi x)`` is
``ρ``-Lipschitz in ``x``, so ``Σ_j max(lo_j r̂_j, hi_j r̂_j)`` plus that bound bounds the exact sum.
The bound is evaluated in float64 from exactly converted float32 values, and inflated by 1e-6
(relative) for that evaluation's own rounding; underflow (≤ 2⁻¹⁴⁹ per operation) is far below the
absolute safety every caller adds. It needs float32 weights equal to the head's float64 ones and
float32 matrix products at full precision (no TF32/bf16 modes): :meth:`SoundBackward.build`
returns None otherwise, and callers fall back to float64.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import torch

from .regions import HeadNetwork

__all__ = ["SoundBackward", "gamma32"]

_U32 = 2.0**-24
# Relative inflation of the float64 evaluation of the error bound itself (its terms are ≥ 0 and its
# relative rounding is ~1e-13).
_EVAL_SAFETY = 1e-6


def gamma32(k: int) -> float:
    """``γ_k`` for float32: the relative error bound of a length-``k`` dot product."""
    return k * _U32 / (1.0 - k * _U32)


def _full_precision_float32() -> bool:
    """Whether float32 matrix products on the CPU run in IEEE float32 (no TF32/bf16 shortcuts)."""
    if torch.get_float32_matmul_precision() != "highest":
        return False
    mkldnn = getattr(torch.backends, "mkldnn", None)
    matmul = getattr(mkldnn, "matmul", None) if mkldnn is not None else None
    precision = getattr(matmul, "fp32_precision", "none") if matmul is not None else "none"
    return precision in ("none", "ieee")


@dataclass(frozen=True)
class SoundBackward:
    """A head's float32 weights and their magnitudes, ``v_1 = |W_1| ρ`` and the box's ``mid``/``rad`` for one box.

    Every float32 vector here that enters an error bound (``v_1`` and the ``v_j`` computed from it) is
    rounded *up*: the bounds stay upper bounds whatever float32 rounding does.
    """

    weights32: tuple[torch.Tensor, ...]
    abs32: tuple[torch.Tensor, ...]
    v1: torch.Tensor       # (n_1,) float32, ≥ |W_1| ρ
    mid: torch.Tensor      # (d,) float32, the box's centre (rounded)
    rad: torch.Tensor      # (d,) float32, its half-widths (rounded)
    size: torch.Tensor     # (d,) float32, ≥ |mid| + rad
    hidden_sizes: tuple[int, ...]
    rad_size: torch.Tensor  # (d, 2) float32: rad and size side by side (one matrix product for both sums)

    @classmethod
    def build(cls, head: HeadNetwork, lower: torch.Tensor, upper: torch.Tensor) -> "SoundBackward | None":
        """The float32 pass for ``head`` over the box, or None where its bound would not hold (weights not
        exact in float32, a non-finite or float32-overflowing box, reduced-precision float32 products)."""
        if not _full_precision_float32() or not head.hidden_sizes:
            return None
        lo, hi = lower.to(torch.float64), upper.to(torch.float64)
        if not (torch.isfinite(lo).all() and torch.isfinite(hi).all()) or max(lo.abs().max(), hi.abs().max()) > 1e30:
            return None
        w32 = tuple(w.to(torch.float32) for w in head.weights)
        if any(not torch.equal(a.to(torch.float64), w) for a, w in zip(w32, head.weights)):
            return None
        rho = torch.maximum(lo.abs(), hi.abs())
        mid, rad = (lo + hi) / 2, (hi - lo) / 2
        rad32, size32 = rad.to(torch.float32), _up32(mid.abs() + rad)
        return cls(w32, tuple(w.abs() for w in w32), _up32(head.weights[0].abs() @ rho), mid.to(torch.float32),
                   rad32, size32, tuple(head.hidden_sizes), torch.stack([rad32, size32], dim=1))

    def rows(self, masks: torch.Tensor, out_coeff: torch.Tensor, hidden_coeff: torch.Tensor | None = None,
             out: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``r̂`` (P, K, d) float32 as :func:`~prune_unlearn.core.regions.masked_backward` computes ``r``, and
        ``err`` (P, K) float64 with ``Σ_j ρ_j |r̂_j − r_j| ≤ err``.

        ``out_coeff`` (P, K, C) and ``hidden_coeff`` (P, K, N) must be float32 tensors: they are the exact
        inputs the bound speaks about (rows ``e_l − e_t`` and ``s·μ`` with float32 ``μ`` are). ``out`` (P, K, d)
        float32, optional, receives ``r̂`` (no fresh allocation per call).
        """
        if out_coeff.dtype != torch.float32 or (hidden_coeff is not None and hidden_coeff.dtype != torch.float32):
            raise TypeError("SoundBackward.rows takes float32 coefficients (the exact inputs of its bound)")
        ws = self.weights32
        n_layers = len(ws)
        mask_blocks = list(torch.split(masks.to(torch.float32), self.hidden_sizes, dim=-1))
        hid_blocks = (list(torch.split(hidden_coeff, self.hidden_sizes, dim=-1)) if hidden_coeff is not None
                      else [None] * len(mask_blocks))
        coeffs = [out_coeff]  # ĝ_L, ĝ_{L-1}, …, ĝ_1
        g = out_coeff
        for j in range(n_layers - 1, 0, -1):
            g = (g @ ws[j]) * mask_blocks[j - 1].unsqueeze(1)
            if hid_blocks[j - 1] is not None:
                g = g + hid_blocks[j - 1]
            coeffs.append(g)
        r = torch.matmul(g, ws[0], out=out) if out is not None else g @ ws[0]
        return r, self._error(mask_blocks, coeffs[::-1], hid_blocks)

    def box_bound(self, masks: torch.Tensor, out_coeff: torch.Tensor,
                  hidden_coeff: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        """:meth:`rows` then :meth:`box_max` without keeping ``r̂``: → ``(value, box_err, size, err)`` float64 (P, K),
        :meth:`box_max`'s three and :meth:`rows`' ``err``. ``r̂`` goes into a per-thread buffer and is made
        absolute in place, so a large batch of regions allocates no (P, K, d) temporaries.
        """
        p, k = out_coeff.shape[:2]
        r, err = self.rows(masks, out_coeff, hidden_coeff, out=_workspace((p, k, self.mid.shape[0])))
        return (*self._box_max_into(r), err)

    def _error(self, mask_blocks: list, coeffs: list[torch.Tensor], hid_blocks: list) -> torch.Tensor:
        """The module docstring's bound, from ``coeffs`` = [ĝ_1, …, ĝ_L], in float32 rounded up.

        A float32 sum of ``n`` terms ≥ 0 is at least ``(1 − γ_n)`` times the exact one, so dividing each
        computed product by ``1 − γ_n`` (and rounding every ``v_j`` up) keeps every quantity an upper bound.
        """
        v = self.v1.expand(mask_blocks[0].shape[0] if mask_blocks else coeffs[0].shape[0], -1)
        err = torch.zeros(coeffs[0].shape[:2], dtype=torch.float64)
        for j, g in enumerate(coeffs):  # layer j + 1
            n_j = self.weights32[j].shape[0]
            factor = gamma32(n_j) + (2 * _U32 if j < len(hid_blocks) and hid_blocks[j] is not None else 0.0)
            term = (g.abs() @ v.unsqueeze(-1)).squeeze(-1)  # ≥ (1 − γ_n) |ĝ_j|·v_j
            err += (factor / (1.0 - gamma32(n_j))) * term.to(torch.float64)
            if j + 1 < len(coeffs):
                v = ((v * mask_blocks[j]) @ self.abs32[j + 1].T) * _up_factor(n_j)
        return err * (1.0 + _EVAL_SAFETY)

    def box_max(self, r: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``Σ_j max(lo_j r_j, hi_j r_j)`` for float32 rows ``r`` (…, d), as float64 ``(value, err, size)``: the
        exact sum lies within ``err`` of ``value``, and ``size ≥ Σ_j |r_j| (|mid_j| + rad_j)``.

        ``max(lo x, hi x) = mid·x + rad·|x|``; the three float32 products round by at most ``γ_d`` of
        ``|r|·(|mid| + rad)``, and ``mid``/``rad``'s own float32 rounding by ``1.01 u`` of it: ``3 γ_d``
        of the computed size covers both with room to spare.
        """
        return self._box_max_into(r.clone())

    def _box_max_into(self, r: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """:meth:`box_max`, overwriting ``r`` with ``|r|`` (one pass, no temporaries)."""
        d = r.shape[-1]
        centre = (r @ self.mid).to(torch.float64)
        rad_size = (r.abs_() @ self.rad_size).to(torch.float64)  # (…, 2): |r|·rad and |r|·size
        size = rad_size[..., 1] / (1.0 - gamma32(d))
        return centre + rad_size[..., 0], 3.0 * gamma32(d) * size, size




_local = threading.local()


def _workspace(shape: tuple[int, ...]) -> torch.Tensor:
    """A float32 buffer of ``shape``, reused by the calling thread (one per thread: workers run chunks at once)."""
    n = 1
    for s in shape:
        n *= s
    buf = getattr(_local, "buf", None)
    if buf is None or buf.numel() < n:
        buf = torch.empty(n, dtype=torch.float32)
        _local.buf = buf
    return buf[:n].view(shape)


def _up32(x: torch.Tensor) -> torch.Tensor:
    """``x`` (float64, ≥ 0) in float32, rounded up (with ample room)."""
    return x.to(torch.float32) * (1.0 + 2.0**-20)


def _up_factor(n: int) -> float:
    """A float32 factor ≥ ``(1 + 2u)/(1 − γ_n)``: scales a float32 sum of ``n`` terms ≥ 0 (and the product by
    it) up to at least the exact sum."""
    return 1.0 + 4.0 * gamma32(n) + 2.0**-20
