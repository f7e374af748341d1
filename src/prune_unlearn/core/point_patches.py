"""Support networks, patch networks and the patched model (Eq. 6, 8, 10).

Each patched region ``r`` has an activation pattern ``s^r``, a gate sharpness ``λ_r`` and a constant
confusion patch ``d_r``. Its support network uses the *inward* gate

    n_r(h) = ReLU( Σ_i clamp(λ_r s^r_i z_i(h), 0, 1) − N + 1 )

evaluated on the base head's own pre-activations ``z_i``. ``n_r = 1`` where every slack
``s_i z_i ≥ 1/λ_r`` and ``n_r = 0`` wherever any slack is ≤ 0, i.e. everywhere outside the linear
region, whatever ``λ_r``. Supports of different regions therefore never overlap, and with a
constant patch (``H_j = |d_j|`` in Eq. 8) the patch network is ``c(h) = Σ_r n_r(h) d_r``.

Evaluating ``n_r`` needs every hidden slack, but ``n_r(h) > 0`` is only possible when ``h`` has
exactly the pattern ``s^r``. So instead of a dense (batch × regions × neurons) product we look the
input's own pattern up among the patched patterns (an exact hash match) and evaluate the formula
only for matched rows: same values, bit for bit, at the cost of one lookup. Rows that match no
region are returned untouched, so their logits are the base logits bit for bit.
"""

from __future__ import annotations

import torch
from torch import nn

from .regions import unpack_patterns

__all__ = ["PatchSet", "BOUND_CODES", "register_fields", "stack_preacts"]

# How each region's claim was proven; stored per region as a small integer.
BOUND_CODES = {"box": 0, "dual": 1, "lp": 2, "point": 3}
_BOUND_NAMES = {v: k for k, v in BOUND_CODES.items()}


def _key_weights(num_hidden: int) -> torch.Tensor:
    """Two columns of small random integers whose dot products with a 0/1 pattern stay below 2^24.

    Those dot products are exact in float32 whatever the summation order, so a float32 matrix
    product gives exact integer keys, at a fraction of the cost of packing bits.
    """
    bits = max(1, min(14, 23 - max(0, (max(num_hidden, 1) - 1).bit_length())))
    gen = torch.Generator().manual_seed(0x5EED)
    return torch.randint(0, 1 << bits, (max(num_hidden, 0), 2), generator=gen).to(torch.float32)


def _combine(k: torch.Tensor) -> torch.Tensor:
    k = k.to(torch.int64)
    return k[:, 0] + (k[:, 1] << 24)


def _keys_exact(active: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Reference keys, exact: a float64 product of 0/1 patterns and integers below 2^14, whose every partial sum
    is an integer below 2^24 ≪ 2^53, so no order of summation can round (no (B, N, 2) integer temporary)."""
    active, w64 = active.cpu(), weights.cpu().to(torch.float64)
    out = torch.empty(active.shape[0], 2, dtype=torch.float64)
    for start in range(0, active.shape[0], 1024):  # blocks: no (B, N) float64 copy of a whole large batch
        out[start: start + 1024] = active[start: start + 1024].to(torch.float64) @ w64
    return _combine(out).to(active.device)


def _keys_fast(active: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    # float32 on the CPU; float64 elsewhere (GPUs may round float32 products through TF32).
    dtype = torch.float32 if active.device.type == "cpu" else torch.float64
    return _combine(active.to(dtype) @ weights.to(dtype))


def register_fields(module: nn.Module, defaults: dict[str, torch.Tensor], given: dict[str, torch.Tensor]) -> None:
    """Register every field as a buffer, in its default's dtype; missing ones take the default (None too)."""
    unknown = set(given) - set(defaults)
    if unknown:
        raise TypeError(f"unknown {type(module).__name__} fields: {sorted(unknown)}")
    for name, default in defaults.items():
        value = given.get(name)
        module.register_buffer(name, (default if value is None else value).to(default.dtype).contiguous())


def stack_preacts(preacts, logits: torch.Tensor) -> torch.Tensor:
    """All hidden pre-activations as one (B, N) tensor (N = 0 for a head without hidden layers)."""
    if isinstance(preacts, torch.Tensor):
        return preacts
    return torch.cat(list(preacts), dim=1) if preacts else logits.new_zeros(logits.shape[0], 0)


class PatchSet(nn.Module):
    """All patches of a model: one row per patched linear region.

    Buffers (saved with the model)
    ------------------------------
    patterns : (R, ceil(N/8)) uint8 — packed activation patterns ``s^r``.
    gate_lambda : (R,) float32 — ``λ_r``; the support is 1 where every slack ≥ ``1/λ_r``.
    values : (R, C) float32 — the confusion patches ``d_r``.
    targets : (R,) int64 — label the patch makes win (for point-only claims: the label predicted at the point).
    excluded : (R, C) bool — labels that must not win on the region (labels of its forgotten points).
    point_min_slack : (R,) float64 — smallest slack of the region's forgotten points.
    region_threshold : (R,) float64 — ``θ_r``: the certified region is ``{h ∈ B : s_i z_i(h) ≥ θ_r}``.
    certified_margin : (R,) float64 — proven lower bound of the target's margin (region or point).
    bound_code : (R,) uint8 — how it was proven, see ``BOUND_CODES``.
    float32_robust : (R,) bool — the float32 model's gates are exactly 1 on the whole certified region
        (float32 pre-activation error well below ``θ_r − 1/λ_r``).
    """

    _BUFFERS = (
        "patterns", "gate_lambda", "values", "targets", "excluded", "point_min_slack",
        "region_threshold", "certified_margin", "bound_code", "float32_robust",
    )

    def __init__(self, num_hidden: int, num_classes: int, **tensors: torch.Tensor):
        super().__init__()
        self.num_hidden = int(num_hidden)
        self.num_classes = int(num_classes)
        nbytes = (self.num_hidden + 7) // 8
        defaults = {
            "patterns": torch.zeros(0, nbytes, dtype=torch.uint8),
            "gate_lambda": torch.zeros(0, dtype=torch.float32),
            "values": torch.zeros(0, self.num_classes, dtype=torch.float32),
            "targets": torch.zeros(0, dtype=torch.int64),
            "excluded": torch.zeros(0, self.num_classes, dtype=torch.bool),
            "point_min_slack": torch.zeros(0, dtype=torch.float64),
            "region_threshold": torch.zeros(0, dtype=torch.float64),
            "certified_margin": torch.zeros(0, dtype=torch.float64),
            "bound_code": torch.zeros(0, dtype=torch.uint8),
            "float32_robust": torch.zeros(0, dtype=torch.bool),
        }
        register_fields(self, defaults, tensors)
        r = self.patterns.shape[0]
        for name in self._BUFFERS:
            if getattr(self, name).shape[0] != r:
                raise ValueError(f"PatchSet field {name} has {getattr(self, name).shape[0]} rows, expected {r}")
        self._index()

    # --- lookup -------------------------------------------------------------------------------

    def _index(self) -> None:
        """Derived lookup tables (not saved): unpacked patterns and their sorted integer keys."""
        masks = unpack_patterns(self.patterns.cpu(), self.num_hidden)
        weights = _key_weights(self.num_hidden)
        keys = _keys_exact(masks, weights)
        order = torch.argsort(keys)
        dev = self.patterns.device
        self.register_buffer("_masks", masks.to(dev), persistent=False)
        self.register_buffer("_key_weights", weights.to(dev), persistent=False)
        self.register_buffer("_sorted_keys", keys[order].to(dev), persistent=False)
        self.register_buffer("_order", order.to(dev), persistent=False)
        self._fast_keys_checked: set = set()

    def _query_keys(self, active: torch.Tensor) -> torch.Tensor:
        """Keys of query patterns; the fast path is checked once per device against exact integers."""
        dev = active.device
        if dev not in self._fast_keys_checked:
            probe = torch.cat([self._masks, active[:64]])
            if not torch.equal(_keys_fast(probe, self._key_weights), _keys_exact(probe, self._key_weights)):
                return _keys_exact(active, self._key_weights)  # this device's matmul is not exact
            self._fast_keys_checked.add(dev)
        return _keys_fast(active, self._key_weights)

    def __len__(self) -> int:
        return int(self.patterns.shape[0])

    def masks(self) -> torch.Tensor:
        """(R, N) bool activation patterns."""
        return unpack_patterns(self.patterns.cpu(), self.num_hidden)

    def bound_names(self) -> list[str]:
        return [_BOUND_NAMES[int(c)] for c in self.bound_code.tolist()]

    def match(self, active: torch.Tensor) -> torch.Tensor:
        """Index of the patched region whose pattern equals each row of ``active`` (B, N); -1 if none.

        Keys only propose candidates; every match is confirmed by comparing the whole pattern, so a
        key collision can never attach a patch to the wrong region.
        """
        b = active.shape[0]
        result = torch.full((b,), -1, dtype=torch.int64, device=active.device)
        if len(self) == 0 or b == 0:
            return result
        keys = self._query_keys(active)
        left = torch.searchsorted(self._sorted_keys, keys, side="left")
        right = torch.searchsorted(self._sorted_keys, keys, side="right")
        hit = (right > left).nonzero().flatten()
        if hit.numel() == 0:
            return result
        span = right[hit] - left[hit]
        for k in range(int(span.max())):  # more than one candidate only on a key collision
            ok = k < span
            cand = self._order[(left[hit] + k).clamp(max=len(self) - 1)]
            ok &= (self._masks[cand] == active[hit]).all(dim=1)
            ok &= result[hit] < 0
            result[hit[ok]] = cand[ok]
        return result

    # --- evaluation ---------------------------------------------------------------------------

    def support(self, preacts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Which region supports each row, and its support value ``n_r(h)`` (float32).

        ``preacts`` (B, N) are the base head's hidden pre-activations. Rows matching no region get
        region -1 and value 0.
        """
        region = self.match(preacts > 0)
        value = torch.zeros(preacts.shape[0], dtype=preacts.dtype, device=preacts.device)
        rows = (region >= 0).nonzero().flatten()
        if rows.numel():
            lam = self.gate_lambda[region[rows]].to(preacts.dtype).unsqueeze(1)
            # For a matched row s_i z_i = |z_i|; clamp is exact in float32, unlike ReLU(λv+1) − ReLU(λv).
            gates = torch.clamp(lam * preacts[rows].abs(), 0.0, 1.0)
            value[rows] = torch.relu(gates.sum(dim=1) - (self.num_hidden - 1))
        return region, value

    def apply(self, preacts: list[torch.Tensor] | torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """Patched logits: ``logits + Σ_r n_r d_r``; rows without support are returned bit for bit."""
        if len(self) == 0:
            return logits
        region, value = self.support(stack_preacts(preacts, logits))
        rows = (value > 0).nonzero().flatten()
        if rows.numel() == 0:
            return logits
        out = logits.clone()
        out[rows] = logits[rows] + value[rows].unsqueeze(1) * self.values[region[rows]].to(logits.dtype)
        return out

    def support_dense(self, preacts: torch.Tensor) -> torch.Tensor:
        """All supports by the literal network formula, (B, R): the reference for :meth:`support`.

        Costs B × R × N; meant for tests, audits and export, not for serving.
        """
        s = self.masks().to(preacts.device, preacts.dtype) * 2 - 1  # (R, N)
        v = preacts.unsqueeze(1) * s.unsqueeze(0) * self.gate_lambda.to(preacts.dtype).view(1, -1, 1)
        gates = torch.clamp(v, 0.0, 1.0)
        return torch.relu(gates.sum(dim=2) - (self.num_hidden - 1))

    # --- construction -------------------------------------------------------------------------

    def tensors(self) -> dict[str, torch.Tensor]:
        return {name: getattr(self, name) for name in self._BUFFERS}

    @classmethod
    def concat(cls, sets: list["PatchSet"]) -> "PatchSet":
        first = sets[0]
        fields = {name: torch.cat([getattr(s, name).cpu() for s in sets]) for name in cls._BUFFERS}
        return cls(first.num_hidden, first.num_classes, **fields)

    def select(self, keep: torch.Tensor) -> "PatchSet":
        """A new PatchSet with only the rows ``keep`` (bool mask or indices)."""
        fields = {name: getattr(self, name).cpu()[keep.cpu()] for name in self._BUFFERS}
        return PatchSet(self.num_hidden, self.num_classes, **fields)

    def stored_numbers(self) -> float:
        """Size of the patch set in stored numbers; packed pattern bits count 1/32 each."""
        r = len(self)
        per_region = self.num_hidden / 32 + self.num_classes + 7  # λ, target, slack, θ, margin, code, robust
        return r * (per_region + self.num_classes / 32)  # + excluded-label bits

    def extra_repr(self) -> str:
        return f"regions={len(self)}, hidden={self.num_hidden}, classes={self.num_classes}"

