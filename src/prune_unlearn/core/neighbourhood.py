"""Neighbourhood rows: supports that are exactly 1 on a box around a forgotten point and exactly 0 beyond
a stated distance of it (certified neighbourhoods, issue 11).

Row ``k`` holds a box ``[lo_k, hi_k]`` in the head's input space (for an MLP: the ℓ∞ ball ``B(x, r)``
with its corners rounded outward to float32), a gate sharpness ``λ_k`` and a constant confusion patch
``d_k``. Its support network is

    n_k(h) = ReLU( 1 − λ_k Σ_j [ReLU(h_j − hi_kj) + ReLU(lo_kj − h_j)] − Σ_{i} ReLU(1 − μ_k s_ki z_i(h)) )

where the last sum is present only for rows that are also confined to a linear region (``region_lambda``
``μ_k > 0``, pattern ``s_k``: "region ∩ ball" rows). Facts, each exact in float32:

* On the box every box term is exactly 0 (``h_j ≤ hi_kj`` ⇒ the float32 difference is ≤ 0), so a ball row
  is exactly 1 there; a region ∩ ball row is 1 where, in addition, every slack ``s_i z_i ≥ 1/μ_k``.
* The sum of non-negative float32 terms is at least its largest term whatever the summation order, so
  ``n_k(h) = 0`` as soon as some coordinate lies ``(1 + 2^-20)/λ_k`` or more outside the box
  (:attr:`NeighbourhoodSet.OUTER_SLACK`), and, for region rows, as soon as any slack is ≤ 0: the support
  is bounded from outside by the box ``[lo_k − o_k, hi_k + o_k]``, ``o_k = (1 + 2^-20)/λ_k``.

Serving cost: a forward pass must not compare every input with every row. A conservative prefilter
projects inputs on a few directions ``p`` with ``‖p‖₁ = 1`` (the top principal directions of the box
centres): ``|p·h − p·c| ≤ ‖h − c‖∞``, so an input whose projection falls outside a row's projected
outer box (widened by a float32 rounding bound of the projection) has support exactly 0 and is never
evaluated. Only the surviving (input, row) pairs get the formula above; rows of inputs without any
non-zero support are returned bit for bit.
"""

from __future__ import annotations

import hashlib

import torch
from torch import nn

from .regions import unpack_patterns

__all__ = ["NeighbourhoodSet", "tensor_sha256", "NEIGHBOURHOOD_BOUND_CODES", "BALL_SPACES", "outward_box",
           "box_overlaps"]

# How each row's claim was proven (stored per row as a small integer).
NEIGHBOURHOOD_BOUND_CODES = {"crown": 0, "crown-ibp": 1, "box": 2, "dual": 3, "lp": 4}
_BOUND_NAMES = {v: k for k, v in NEIGHBOURHOOD_BOUND_CODES.items()}
# Where a row's claimed ball lives (stored per row): around the input as the model takes it, or around its
# features (the head's input) — for heads behind conv layers, whose input balls reach the head only loosely.
BALL_SPACES = {"input": 0, "features": 1}
# Coordinates compared by the prefilters (measured on MNIST, see docs/design.md: 32 coordinates leave 76 of the
# 5M (test image, 12/255-ball) pairs for the exact formula, 16 leave 1,282).
PREFILTER_COORDINATES = 32
# Elements per temporary in the exact support evaluation.
_CHUNK_ELEMENTS = 1 << 22


def outward_box(lower: torch.Tensor, upper: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """float32 corners ``lo32 ≤ lower`` and ``hi32 ≥ upper`` (exact comparisons in float64)."""
    lo = lower.to(torch.float64)
    hi = upper.to(torch.float64)
    lo32, hi32 = lo.to(torch.float32), hi.to(torch.float32)
    down = lo32.to(torch.float64) > lo
    up = hi32.to(torch.float64) < hi
    lo32 = torch.where(down, torch.nextafter(lo32, torch.tensor(-float("inf"))), lo32)
    hi32 = torch.where(up, torch.nextafter(hi32, torch.tensor(float("inf"))), hi32)
    return lo32, hi32


def box_overlaps(lo_a: torch.Tensor, hi_a: torch.Tensor, lo_b: torch.Tensor, hi_b: torch.Tensor):
    """All pairs ``(i, j)`` of closed boxes ``A_i``, ``B_j`` that intersect, exactly (float64 comparisons).

    Boxes meet iff ``|c_a − c_b| ≤ w_a + w_b`` on every coordinate (centres ``c``, half-widths ``w``); a test of
    the ℓ2 distance on the coordinates where the centres differ most (one matrix product, rounding absorbed by a
    relative slack) prunes the pairs first, so the exact test runs on few of them.
    """
    lo_a, hi_a, lo_b, hi_b = (t.detach().cpu().to(torch.float64) for t in (lo_a, hi_a, lo_b, hi_b))
    empty = torch.zeros(0, dtype=torch.int64)
    if len(lo_a) == 0 or len(lo_b) == 0:
        return empty, empty
    ca, cb = (lo_a + hi_a) / 2, (lo_b + hi_b) / 2
    m = min(PREFILTER_COORDINATES, lo_a.shape[1])
    coords = torch.argsort(torch.cat([ca, cb]).var(dim=0), descending=True, stable=True)[:m]
    wa = ((hi_a - lo_a) / 2)[:, coords].amax(dim=1)
    wb = ((hi_b - lo_b) / 2)[:, coords].amax(dim=1)
    xa, xb = ca[:, coords], cb[:, coords]
    aa, bb = (xa * xa).sum(dim=1, keepdim=True), (xb * xb).sum(dim=1).unsqueeze(0)
    ia, ib = [], []
    step = max(1, _CHUNK_ELEMENTS // len(lo_b))
    for s0 in range(0, len(lo_a), step):
        sl = slice(s0, s0 + step)
        cross = xa[sl] @ xb.T
        d2 = aa[sl] + bb - 2 * cross
        reach = m * (wa[sl].unsqueeze(1) + wb.unsqueeze(0)) ** 2
        slack = 1e-12 * (aa[sl] + bb + 2 * cross.abs() + reach) + 1e-300
        i, j = (d2 <= reach + slack).nonzero(as_tuple=True)
        ia.append(i + s0)
        ib.append(j)
    ia, ib = torch.cat(ia), torch.cat(ib)
    exact = torch.ones(len(ia), dtype=torch.bool)
    step = max(1, _CHUNK_ELEMENTS // max(1, lo_a.shape[1]))
    for s0 in range(0, len(ia), step):
        sl = slice(s0, s0 + step)
        exact[sl] = ((lo_a[ia[sl]] <= hi_b[ib[sl]]) & (lo_b[ib[sl]] <= hi_a[ia[sl]])).all(dim=1)
    return ia[exact], ib[exact]


def tensor_sha256(t: torch.Tensor) -> str:
    """SHA-256 of a tensor's bytes (row order, native dtype): the certificate's support-box and pattern hashes."""
    return hashlib.sha256(t.detach().cpu().contiguous().numpy().tobytes()).hexdigest()


def _gamma(d: int, dtype: torch.dtype) -> float:
    """Standard bound γ_d = d·u / (1 − d·u) on the relative error of a length-``d`` dot product."""
    u = 2.0**-24 if dtype == torch.float32 else 2.0**-53
    return d * u / (1 - d * u)


class NeighbourhoodSet(nn.Module):
    """Rows that patch a box (ball) around each forgotten point; see the module docstring.

    Buffers (saved with the model)
    ------------------------------
    lower, upper : (R, d) float32 — the support box (exactly 1 on it), in the head's input space.
    gate_lambda : (R,) float32 — ``λ_k``: the support is 0 beyond ℓ∞ distance ``(1 + 2^-20)/λ_k`` of the box.
    values : (R, C) float32 — confusion patches ``d_k``.
    targets : (R,) int64 — the label each patch makes win on its certified set.
    excluded : (R, C) bool — labels that must not win there (the forgotten points' labels).
    radius : (R,) float64 — the claimed ℓ∞ radius around the point, in the model's input units.
    certified_margin : (R,) float64 — proven lower bound of the target's lead on the certified set.
    bound_code : (R,) uint8 — how it was proven, see ``NEIGHBOURHOOD_BOUND_CODES``.
    patterns : (R, ceil(N/8)) uint8 — activation pattern of region ∩ ball rows (zeros otherwise).
    region_lambda : (R,) float32 — ``μ_k`` of region ∩ ball rows; 0 for plain ball rows.
    ball_space : (R,) uint8 — where the claimed ball lives (:data:`BALL_SPACES`): 0, the model's input space
        (``radius`` in input units); 1, the head's input space (``B∞(φ(x), r)``, φ the layers before the head,
        ``radius`` in feature units). Saved only when some row is 1, so files of input-space rows are unchanged.
    """

    _BUFFERS = ("lower", "upper", "gate_lambda", "values", "targets", "excluded", "radius", "certified_margin",
                "bound_code", "patterns", "region_lambda", "ball_space")
    _OPTIONAL = ("patterns", "region_lambda", "ball_space")  # zeros when a file predates them
    OUTER_SLACK = 1.0 + 2.0**-20

    def __init__(self, input_dim: int, num_hidden: int, num_classes: int, **tensors: torch.Tensor):
        super().__init__()
        self.input_dim = int(input_dim)
        self.num_hidden = int(num_hidden)
        self.num_classes = int(num_classes)
        nbytes = (self.num_hidden + 7) // 8
        defaults = {
            "lower": torch.zeros(0, self.input_dim, dtype=torch.float32),
            "upper": torch.zeros(0, self.input_dim, dtype=torch.float32),
            "gate_lambda": torch.zeros(0, dtype=torch.float32),
            "values": torch.zeros(0, self.num_classes, dtype=torch.float32),
            "targets": torch.zeros(0, dtype=torch.int64),
            "excluded": torch.zeros(0, self.num_classes, dtype=torch.bool),
            "radius": torch.zeros(0, dtype=torch.float64),
            "certified_margin": torch.zeros(0, dtype=torch.float64),
            "bound_code": torch.zeros(0, dtype=torch.uint8),
            "patterns": torch.zeros(0, nbytes, dtype=torch.uint8),
            "region_lambda": torch.zeros(0, dtype=torch.float32),
            "ball_space": torch.zeros(0, dtype=torch.uint8),
        }
        unknown = set(tensors) - set(defaults)
        if unknown:
            raise TypeError(f"unknown NeighbourhoodSet fields: {sorted(unknown)}")
        r = None
        for name, default in defaults.items():
            value = tensors.get(name)
            if value is None and r is not None and name in self._OPTIONAL:
                value = default.new_zeros((r, *default.shape[1:]))
            t = (default if value is None else value).to(default.dtype).contiguous()
            if t.shape[1:] != default.shape[1:]:
                raise ValueError(f"NeighbourhoodSet field {name} has shape {tuple(t.shape)}, expected "
                                 f"(R, {', '.join(map(str, default.shape[1:]))})")
            r = t.shape[0] if r is None else r
            if t.shape[0] != r:
                raise ValueError(f"NeighbourhoodSet field {name} has {t.shape[0]} rows, expected {r}")
            # ball_space is saved only where some row uses it: files of input-space rows keep their bytes
            self.register_buffer(name, t, persistent=name != "ball_space" or bool(t.any()))
        if r and not bool((self.lower <= self.upper).all()):
            raise ValueError("NeighbourhoodSet boxes need lower ≤ upper")
        if r and not bool((self.gate_lambda > 0).all() and torch.isfinite(self.gate_lambda).all()):
            raise ValueError("NeighbourhoodSet gate_lambda must be finite and > 0")
        if r and not bool((self.ball_space <= max(BALL_SPACES.values())).all()):
            raise ValueError(f"NeighbourhoodSet ball_space codes must be in {sorted(BALL_SPACES.values())}")
        self._index()

    @classmethod
    def from_fields(cls, num_hidden: int, num_classes: int, **fields: torch.Tensor) -> "NeighbourhoodSet":
        """Rows from their saved fields; the head's input dimension is the width of ``lower``."""
        if "lower" not in fields:
            raise ValueError("neighbourhood rows need their 'lower' field (the support boxes)")
        return cls(fields["lower"].shape[-1], num_hidden, num_classes, **fields)

    def describe(self, *, domain: dict, space: str, feature_domain: dict | None = None,
                 feature_space: str | None = None) -> list[dict]:
        """One certificate entry per row: the set its claim covers (``space`` and ``domain`` for input-space balls,
        ``feature_space`` and ``feature_domain`` for feature-space ones; the support box's hash, outer distance,
        gate) and how it was proven (target, excluded labels, ``H = ‖d‖∞``, margin, bound)."""
        names, outer = self.bound_names(), self.outer_distance()
        out = []
        for k in range(len(self)):
            has_region = bool(self.region_lambda[k] > 0)
            in_features = int(self.ball_space[k]) == BALL_SPACES["features"]
            out.append({
                "row": k, "radius": float(self.radius[k]), "space": feature_space if in_features else space,
                "domain": feature_domain if in_features else domain,
                "support_box_sha256": tensor_sha256(torch.cat([self.lower[k], self.upper[k]])),
                "outer_distance": float(outer[k]), "lambda": float(self.gate_lambda[k]),
                "target": int(self.targets[k]), "excluded": self.excluded[k].nonzero().flatten().tolist(),
                "H": float(self.values[k].abs().max()), "margin": float(self.certified_margin[k]),
                "bound": names[k], "within_region": has_region,
                "pattern_sha256": tensor_sha256(self.patterns[k]) if has_region else None,
                "region_lambda": float(self.region_lambda[k]) if has_region else None,
            })
        return out

    # --- derived tables -----------------------------------------------------------------------------

    def _index(self) -> None:
        """Prefilter tables (not saved): the coordinates it compares and each row's centre and reach there."""
        r, d = self.lower.shape
        lo = self.lower.detach().cpu().to(torch.float64)
        hi = self.upper.detach().cpu().to(torch.float64)
        m = min(PREFILTER_COORDINATES, d)
        centre64 = (lo + hi) / 2
        # the coordinates along which the rows' centres differ most separate inputs from rows best
        coords = torch.argsort(centre64.var(dim=0), descending=True, stable=True)[:m] if r >= 2 else torch.arange(m)
        coords = torch.sort(coords).values
        c32 = centre64[:, coords].to(torch.float32)
        olo, ohi = self.outer_box()
        olo, ohi = olo.cpu()[:, coords], ohi.cpu()[:, coords]
        c64 = c32.to(torch.float64)
        # every input with a non-zero support lies within w_k of the (float32) centre on these coordinates
        w = torch.maximum(ohi - c64, c64 - olo).amax(dim=1) if r else torch.zeros(0, dtype=torch.float64)
        cc = (c64 * c64).sum(dim=1)
        g = 8 * _gamma(m + 4, torch.float32)  # rounding of the float32 products and sums below, generously
        # ‖h_J − c‖² ≤ m·w² is necessary; computed as hh − 2 h·c + cc it is tested as (cc − A) − 2 h·c ≤ B − hh
        # with A = m·w²(1 + g) + g·cc and B = g·hh + tiny, which absorbs every rounding error.
        col = (cc - (m * w * w * (1 + g) + g * cc)).to(torch.float32)
        col = torch.nextafter(col, torch.tensor(-float("inf")))  # round the threshold side down, never up
        dev = self.lower.device
        self.register_buffer("_coords", coords.to(dev), persistent=False)
        self.register_buffer("_centres_t", (-2 * c32).T.contiguous().to(dev), persistent=False)   # (m, R), exact
        self.register_buffer("_col", col.unsqueeze(0).to(dev), persistent=False)                  # (1, R)
        # second stage: each row's outer box on those coordinates (float64; a coordinate outside it ⇒ support 0)
        self.register_buffer("_outer_lo", olo.contiguous().to(dev), persistent=False)             # (R, m)
        self.register_buffer("_outer_hi", ohi.contiguous().to(dev), persistent=False)             # (R, m)
        self._gamma_rows = g
        self._n_rows = r  # a Python int: the serving path asks for it on every call
        masks = unpack_patterns(self.patterns.detach().cpu(), self.num_hidden)
        self.register_buffer("_signs", (masks.to(torch.float32) * 2 - 1).to(dev), persistent=False)

    def __len__(self) -> int:
        return self._n_rows

    def outer_distance(self) -> torch.Tensor:
        """(R,) float64 ℓ∞ distance beyond the box at which each support is exactly 0."""
        return self.OUTER_SLACK / self.gate_lambda.to(torch.float64)

    def outer_box(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(R, d) float64 corners of the box outside which every support is exactly 0."""
        o = self.outer_distance().unsqueeze(1)
        return self.lower.to(torch.float64) - o, self.upper.to(torch.float64) + o

    def masks(self) -> torch.Tensor:
        """(R, N) bool activation patterns of region ∩ ball rows (meaningless where ``region_lambda`` is 0)."""
        return unpack_patterns(self.patterns.detach().cpu(), self.num_hidden)

    def has_region(self) -> torch.Tensor:
        return self.region_lambda > 0

    def bound_names(self) -> list[str]:
        return [_BOUND_NAMES[int(c)] for c in self.bound_code.tolist()]

    # --- evaluation ---------------------------------------------------------------------------------

    def candidates(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(input, row) pairs whose support may be non-zero: a superset of the true ones, never fewer.

        A support is non-zero only within ℓ∞ distance ``w_k`` of row k's centre on every coordinate, hence within
        ℓ2 distance ``√m·w_k`` on the m coordinates where the rows' centres differ most; that test is one
        (B × m) @ (m × R) product with its rounding bounded (see :meth:`_index`). The pairs it keeps are then
        tested exactly against the row's outer box on those m coordinates (float64 comparisons of float32 inputs).
        On MNIST (m = 32) a few dozen of the 5 million (test image, 12/255-ball) pairs are left for the exact
        formula.
        """
        b, r = h.shape[0], self._n_rows
        if r == 0 or b == 0:
            empty = torch.zeros(0, dtype=torch.int64, device=h.device)
            return empty, empty
        # float64 off the CPU: no TF32 rounding there; on the CPU the float32 tables are used as they are
        # (a small batch pays mostly Python overhead, so no conversions are made there).
        wide = h.device.type != "cpu"
        hj = h.index_select(1, self._coords)
        col, centres = self._col, self._centres_t
        if wide:
            hj, col, centres = hj.to(torch.float64), col.to(torch.float64), centres.to(torch.float64)
        elif hj.dtype != torch.float32:
            hj = hj.to(torch.float32)
        # a dot product (its rounding bound holds in any summation order); in place: few dispatches per batch
        hh = torch.linalg.vecdot(hj, hj).unsqueeze(1)
        rhs = (hh * self._gamma_rows).add_(1e-30).sub_(hh)
        step = max(1, _CHUNK_ELEMENTS // r)
        if b <= step:  # one product (the usual case; batch 1 in particular)
            rows_b, rows_k = (torch.addmm(col, hj, centres) <= rhs).nonzero(as_tuple=True)
        else:
            parts_b, parts_k = [], []
            for s0 in range(0, b, step):
                sl = slice(s0, s0 + step)
                bb, kk = (torch.addmm(col, hj[sl], centres) <= rhs[sl]).nonzero(as_tuple=True)
                parts_b.append(bb + s0)
                parts_k.append(kk)
            rows_b, rows_k = torch.cat(parts_b), torch.cat(parts_k)
        if rows_b.numel() == 0:
            return rows_b, rows_k
        # second stage, exact: an input outside a row's outer box on one of the m coordinates has support 0 (on
        # Fashion-MNIST the ℓ2 test above keeps ~8,000 of the 5M pairs and this one none; the full formula on
        # 8,000 pairs × 784 coordinates cost more than the base model's forward pass)
        hc = h.index_select(1, self._coords)[rows_b].to(torch.float64)
        inside = ((hc >= self._outer_lo[rows_k]) & (hc <= self._outer_hi[rows_k])).all(dim=1)
        return rows_b[inside], rows_k[inside]

    def _pair_support(self, h: torch.Tensor, preacts, rows_b: torch.Tensor, rows_k: torch.Tensor) -> torch.Tensor:
        """The support formula for the given (input, row) pairs (float32 on float32 inputs).

        ``preacts``: the hidden pre-activations, (B, N) or the list of per-layer blocks (stacked only if some
        pair belongs to a region ∩ ball row).
        """
        if isinstance(preacts, (list, tuple)) and bool((self.region_lambda[rows_k] > 0).any()):
            preacts = torch.cat(list(preacts), dim=1)
        out = torch.empty(rows_b.shape[0], dtype=h.dtype, device=h.device)
        step = max(1, _CHUNK_ELEMENTS // max(1, self.input_dim + self.num_hidden))
        lam = self.gate_lambda.to(h.dtype)
        mu = self.region_lambda.to(h.dtype)
        for s0 in range(0, rows_b.shape[0], step):
            sl = slice(s0, s0 + step)
            bb, kk = rows_b[sl], rows_k[sl]
            excess = self._excess(h[bb], self.lower[kk].to(h.dtype), self.upper[kk].to(h.dtype))
            deficit = lam[kk] * excess
            reg = (mu[kk] > 0).nonzero().flatten()
            if reg.numel():
                deficit[reg] = deficit[reg] + self._region_deficit(preacts[bb[reg]], kk[reg], mu, h.dtype)
            out[sl] = torch.relu(1.0 - deficit)
        return out

    @staticmethod
    def _excess(h: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
        """Σ_j ReLU(h_j − hi_j) + ReLU(lo_j − h_j): the ℓ1 distance from the box (0 inside it)."""
        return (torch.relu(h - hi) + torch.relu(lo - h)).sum(dim=-1)

    def _region_deficit(self, z: torch.Tensor, kk: torch.Tensor, mu: torch.Tensor, dtype) -> torch.Tensor:
        """Σ_i ReLU(1 − μ_k s_ki z_i): 0 where every slack ≥ 1/μ_k, ≥ 1 where some slack ≤ 0."""
        v = mu[kk].unsqueeze(1) * (self._signs[kk].to(dtype) * z.to(dtype))
        return torch.relu(1.0 - v).sum(dim=-1)

    def support(self, h: torch.Tensor, preacts) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Non-zero supports as pairs ``(input index, row, value)``; every pair not listed has support 0."""
        rows_b, rows_k = self.candidates(h)
        if rows_b.numel() == 0:
            return rows_b, rows_k, h.new_zeros(0)
        value = self._pair_support(h, preacts, rows_b, rows_k)
        nz = value > 0
        return rows_b[nz], rows_k[nz], value[nz]

    def support_dense(self, h: torch.Tensor, preacts: torch.Tensor) -> torch.Tensor:
        """(B, R) every support by the literal formula, without the prefilter: the reference for tests and audits."""
        b, r = h.shape[0], len(self)
        rows_b = torch.arange(b, device=h.device).repeat_interleave(r)
        rows_k = torch.arange(r, device=h.device).repeat(b)
        return self._pair_support(h, preacts, rows_b, rows_k).view(b, r)

    def apply(self, h: torch.Tensor, preacts, logits: torch.Tensor) -> torch.Tensor:
        """``logits + Σ_k n_k(h) d_k``; inputs without a non-zero support are returned bit for bit."""
        if self._n_rows == 0:
            return logits
        rows_b, rows_k, value = self.support(h, preacts)
        if rows_b.numel() == 0:
            return logits
        out = logits.clone()
        out.index_add_(0, rows_b, value.unsqueeze(1).to(logits.dtype) * self.values[rows_k].to(logits.dtype))
        return out

    # --- construction -------------------------------------------------------------------------------

    def tensors(self) -> dict[str, torch.Tensor]:
        return {name: getattr(self, name) for name in self._BUFFERS}

    @classmethod
    def concat(cls, sets: list["NeighbourhoodSet"]) -> "NeighbourhoodSet":
        first = sets[0]
        fields = {name: torch.cat([getattr(s, name).cpu() for s in sets]) for name in cls._BUFFERS}
        return cls(first.input_dim, first.num_hidden, first.num_classes, **fields)

    def select(self, keep: torch.Tensor) -> "NeighbourhoodSet":
        """A new set with only the rows ``keep`` (bool mask or indices)."""
        fields = {name: getattr(self, name).cpu()[keep.cpu()] for name in self._BUFFERS}
        return NeighbourhoodSet(self.input_dim, self.num_hidden, self.num_classes, **fields)

    def stored_numbers(self) -> float:
        """Stored numbers: two box corners, λ, patch, target, radius, margin, code, μ; bits count 1/32."""
        per_row = 2 * self.input_dim + self.num_classes + 6 + (self.num_hidden + self.num_classes) / 32
        return len(self) * per_row

    def extra_repr(self) -> str:
        return (f"rows={len(self)}, input_dim={self.input_dim}, hidden={self.num_hidden}, "
                f"classes={self.num_classes}, region_rows={int(self.has_region().sum())}")
