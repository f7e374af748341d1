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

from .._hashing import state_sha256
from .regions import unpack_patterns
from .split import ModelSplit, split_model

__all__ = ["PatchSet", "ClassPatchSet", "PatchedModel", "BOUND_CODES", "label_lead", "stack_preacts",
           "model_state", "model_state_sha256"]

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
    """Reference keys in integer arithmetic."""
    return _combine((active.to(torch.int64).unsqueeze(-1) * weights.to(torch.int64)).sum(dim=1))


def _keys_fast(active: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    # float32 on the CPU; float64 elsewhere (GPUs may round float32 products through TF32).
    dtype = torch.float32 if active.device.type == "cpu" else torch.float64
    return _combine(active.to(dtype) @ weights.to(dtype))


def _register_fields(module: nn.Module, defaults: dict[str, torch.Tensor], given: dict[str, torch.Tensor]) -> None:
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


def label_lead(logits: torch.Tensor, label: int) -> torch.Tensor:
    """(B,) ``f_label − max_{j≠label} f_j``: positive where ``label`` is predicted (``+inf`` with one class)."""
    rest = logits.clone()
    rest[:, label] = -float("inf")
    return logits[:, label] - rest.max(dim=1).values


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
        _register_fields(self, defaults, tensors)
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


class ClassPatchSet(nn.Module):
    """Relaxed supports for whole-class unlearning (Algorithm 2, Eq. 11).

    Support ``r`` constrains only the neurons in its ``stable`` set (those CROWN proves sign-stable on
    a ball around a class member): ``n'_r(h) = ReLU(Σ_{i∈S_r} clamp(λ_r s_i z_i(h), 0, 1) − |S_r| + 1)``.
    Supports are grouped by the round of Algorithm 2 that created them; group ``g`` adds
    ``max_{r∈g} n'_r(h) · d_g`` (Eq. 11 with a constant patch), groups add up. Relaxed supports cover
    inputs of other linear regions by design (that is how the effect generalises to unseen points of
    the class), so they carry no region-level locality promise.

    Decision gate (``decision_lambda`` > 0): every support is multiplied by
    ``clamp(λ_d · (f_label(h) − max_{j≠label} f_j(h)), 0, 1)`` of the *base* logits. Algorithm 2's
    relaxed region stands for "the ball on which the model still predicts the class"; widening it
    (``radius_scale``) makes it catch inputs of other classes, and the gate cuts exactly those off: an
    input the base model does not assign to the forgotten class (margin ≤ 0) gets gate 0, so its
    logits are returned bit for bit. ``decision_lambda`` = 0 (files written before the gate existed)
    disables it.

    Buffers: ``patterns``/``stable`` (R, ceil(N/8)) uint8 packed, ``gate_lambda`` (R,), ``group`` (R,),
    ``values`` (G, C) float32, ``targets`` (G,), ``label`` (1,) the forgotten class, ``decision_lambda``
    (1,) float32.
    """

    _BUFFERS = ("patterns", "stable", "gate_lambda", "group", "values", "targets", "label", "decision_lambda")

    def __init__(self, num_hidden: int, num_classes: int, **tensors: torch.Tensor):
        super().__init__()
        self.num_hidden = int(num_hidden)
        self.num_classes = int(num_classes)
        nbytes = (self.num_hidden + 7) // 8
        defaults = {
            "patterns": torch.zeros(0, nbytes, dtype=torch.uint8),
            "stable": torch.zeros(0, nbytes, dtype=torch.uint8),
            "gate_lambda": torch.zeros(0, dtype=torch.float32),
            "group": torch.zeros(0, dtype=torch.int64),
            "values": torch.zeros(0, self.num_classes, dtype=torch.float32),
            "targets": torch.zeros(0, dtype=torch.int64),
            "label": torch.full((1,), -1, dtype=torch.int64),
            "decision_lambda": torch.zeros(1, dtype=torch.float32),
        }
        _register_fields(self, defaults, tensors)
        r = self.patterns.shape[0]
        if not (self.stable.shape[0] == self.gate_lambda.shape[0] == self.group.shape[0] == r):
            raise ValueError("ClassPatchSet fields disagree on the number of supports")
        if r and int(self.group.max()) >= self.values.shape[0]:
            raise ValueError("ClassPatchSet.group refers to a missing group")
        self._index()

    def _index(self) -> None:
        active = unpack_patterns(self.patterns.cpu(), self.num_hidden)
        stable = unpack_patterns(self.stable.cpu(), self.num_hidden)
        sf, spf = stable.to(torch.float32), (stable & active).to(torch.float32)
        dev = self.patterns.device
        # disagreements on the stable set: a·S − 2 a·(S∧P) + |S∧P| (exact integers in float32)
        self.register_buffer("_disagree", (sf - 2 * spf).T.contiguous().to(dev), persistent=False)
        self.register_buffer("_disagree_const", spf.sum(dim=1).to(dev), persistent=False)
        self.register_buffer("_stable", stable.to(dev), persistent=False)
        self.register_buffer("_stable_count", stable.sum(dim=1).to(dev), persistent=False)

    def __len__(self) -> int:
        return int(self.patterns.shape[0])

    @property
    def num_groups(self) -> int:
        return int(self.values.shape[0])

    def tensors(self) -> dict[str, torch.Tensor]:
        return {name: getattr(self, name) for name in self._BUFFERS}

    @property
    def gated(self) -> bool:
        """Whether supports are confined to the base model's decision region of the forgotten class."""
        return bool(self.decision_lambda[0] > 0)

    def decision_gate(self, base_logits: torch.Tensor) -> torch.Tensor:
        """(B,) ``clamp(λ_d · (f_label − max_{j≠label} f_j), 0, 1)`` of the base logits (ones when ungated)."""
        if not self.gated:
            return base_logits.new_ones(base_logits.shape[0])
        lead = label_lead(base_logits, int(self.label[0]))
        return torch.clamp(self.decision_lambda.to(base_logits.dtype) * lead, 0.0, 1.0)

    def group_support(self, preacts: torch.Tensor, base_logits: torch.Tensor | None = None) -> torch.Tensor:
        """(B, G) support of each group: the largest support value among its relaxed supports, times the
        decision gate (which needs ``base_logits``, the unpatched head's output, when the set is gated)."""
        b = preacts.shape[0]
        out = torch.zeros(b, self.num_groups, dtype=preacts.dtype, device=preacts.device)
        if len(self) == 0 or b == 0:
            return out
        gate = None
        if self.gated:
            if base_logits is None:
                raise ValueError("this ClassPatchSet has a decision gate: group_support needs the base logits")
            gate = self.decision_gate(base_logits).to(preacts.dtype)
            live = (gate > 0).nonzero().flatten()  # gate 0: support 0 whatever the pattern; skip the matmul
            if live.numel() == 0:
                return out
            if live.numel() < b:
                out[live] = self.relaxed_support(preacts[live]) * gate[live].unsqueeze(1)
                return out
        out = self.relaxed_support(preacts)
        return out if gate is None else out * gate.unsqueeze(1)

    def relaxed_support(self, preacts: torch.Tensor) -> torch.Tensor:
        """(B, G) support of each group on its relaxed regions alone, without the decision gate."""
        b = preacts.shape[0]
        out = torch.zeros(b, self.num_groups, dtype=preacts.dtype, device=preacts.device)
        if len(self) == 0 or b == 0:
            return out
        dtype = torch.float32 if preacts.device.type == "cpu" else torch.float64
        active = (preacts > 0).to(dtype)
        stable = self._stable.to(preacts.dtype)
        for start in range(0, b, 4096):  # bound the (rows × supports) temporaries
            rows = slice(start, start + 4096)
            dis = active[rows] @ self._disagree.to(dtype) + self._disagree_const.to(dtype)
            pair_r, pair_b = (dis.T == 0).nonzero(as_tuple=True)  # pairs sorted by support
            if pair_b.numel() == 0:
                continue
            absz = preacts[rows].abs()
            lam_t = self.gate_lambda.to(preacts.dtype)
            # Shortcut, exact: a support is 1 where none of its stable neurons is within 1/λ of its
            # boundary, and 1 is the most a support can be. So each (row, group) first tries its single
            # most lenient matching support (smallest λ); where that is 1, the group's value is 1 and
            # its other pairs (typically dozens per class member) are never evaluated. The test uses the
            # same elementwise float operations as the sum below, so it decides "deficit == 0" exactly.
            key = pair_b * self.num_groups + self.group[pair_r]
            by_lam = torch.argsort(lam_t[pair_r], stable=True)
            n_keys = int(key.max()) + 1
            first = torch.full((n_keys,), key.shape[0], dtype=torch.long, device=key.device)
            first.scatter_reduce_(0, key[by_lam], torch.arange(key.shape[0], device=key.device), reduce="amin")
            trial = by_lam[first[first < key.shape[0]]]  # one pair per (row, group) present
            t_r, t_b = pair_r[trial], pair_b[trial]
            near = absz[t_b].mul_(-lam_t[t_r].unsqueeze(1)).add_(1.0).clamp_(min=0.0) > 0
            one = ~(near & self._stable[t_r]).any(dim=1)
            flat = out[rows].view(-1)
            flat[key[trial[one]]] = 1.0
            done = torch.zeros(n_keys, dtype=torch.bool, device=key.device)
            done[key[trial[one]]] = True
            rest = ~done[key]
            pair_r, pair_b = pair_r[rest], pair_b[rest]
            if pair_b.numel() == 0:
                continue
            # On a matching pair every stable neuron has the support's sign, so the support is
            # ReLU(Σ_{i∈S} clamp(λ|z_i|, 0, 1) − |S| + 1) = ReLU(1 − Σ_{i∈S} ReLU(1 − λ|z_i|)): only
            # neurons closer than 1/λ to their boundary contribute. All pairs at once, in chunks.
            value = torch.empty(pair_b.shape[0], dtype=preacts.dtype, device=preacts.device)
            step = max(1, (1 << 22) // max(1, self.num_hidden))
            for p0 in range(0, pair_b.shape[0], step):
                seg = slice(p0, p0 + step)
                r_seg = pair_r[seg]
                t = absz[pair_b[seg]].mul_(-lam_t[r_seg].unsqueeze(1)).add_(1.0).clamp_(min=0.0)
                deficit = t.mul_(stable[r_seg]).sum(dim=1)
                value[seg] = torch.relu(1.0 - deficit)
            # Eq. 11: the largest support of each group (several supports of one group may cover a row)
            flat.scatter_reduce_(0, pair_b * self.num_groups + self.group[pair_r], value, reduce="amax")
        return out

    def apply(self, preacts: torch.Tensor, logits: torch.Tensor,
              base_logits: torch.Tensor | None = None) -> torch.Tensor:
        """``logits + Σ_g gate · max_{r∈g} n'_r · d_g``; rows with no support are returned bit for bit.

        ``base_logits``: the unpatched head's output, for the decision gate (default: ``logits``).
        """
        if len(self) == 0:
            return logits
        support = self.group_support(preacts, logits if base_logits is None else base_logits)
        rows = (support > 0).any(dim=1).nonzero().flatten()
        if rows.numel() == 0:
            return logits
        out = logits.clone()
        out[rows] = logits[rows] + support[rows] @ self.values.to(logits.dtype)
        return out

    def extra_repr(self) -> str:
        return (f"supports={len(self)}, groups={self.num_groups}, label={int(self.label[0])}, "
                f"decision_gate={self.gated}")


class PatchedModel(nn.Module):
    """``M_p ⊕ (M_c + Σ_k c_k)``: the base model with patch networks on its head's output.

    A plain ``nn.Module``. ``base`` is the unpatched model (never modified); ``patches`` holds every
    patched linear region (point rows), ``class_patches`` the whole-class supports (class rows), if any.
    Inputs outside every support get exactly the base model's logits.

    The model owns its state: :meth:`state_dict` (``base.<name>``, ``patches.<field>``,
    ``class_patches.<field>``) is the only naming of its tensors, and every hash of it — the saved
    file's ``tensors_sha256``, the certificate's ``model_sha256``/``patches_sha256``, the ledger's
    ``model_before``/``model_after`` — comes from :meth:`sha256`, :meth:`base_sha256` and
    :meth:`patches_sha256`. Changes never mutate a model: :meth:`with_patches`, :meth:`add_point_rows`
    and :meth:`select_point_rows` return a new one that shares the base and keeps every other kind of row.

    Examples
    --------
    >>> patched = PatchedModel(model, PatchSet(num_hidden, num_classes))      # doctest: +SKIP
    >>> patched.sha256() == load_info("patched.safetensors")["tensors_sha256"]  # doctest: +SKIP
    """

    STATE_PREFIXES = ("base.", "patches.", "class_patches.")

    def __init__(self, base: nn.Module, patches: PatchSet, head: str | None = None,
                 class_patches: "ClassPatchSet | None" = None):
        super().__init__()
        self.base = base
        self.patches = patches
        self.class_patches = class_patches
        self.head = head
        split = split_model(base, head)
        sizes = (sum(split.hidden_sizes), split.num_classes)
        for kind, rows in (("PatchSet", patches), ("ClassPatchSet", class_patches)):
            if rows is not None and (rows.num_hidden, rows.num_classes) != sizes:
                raise ValueError(
                    f"{kind} is for a head with {rows.num_hidden} hidden neurons and {rows.num_classes} "
                    f"classes; this model's head has {sizes[0]} and {sizes[1]}."
                )
        object.__setattr__(self, "_split", split)  # shares the base's modules; not a second copy of weights

    @property
    def split(self) -> ModelSplit:
        return self._split

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self._split.features(x)
        preacts, logits = self._split.head_forward(h)
        out = self.patches.apply(preacts, logits)
        if self.has_class_patches:
            out = self.class_patches.apply(stack_preacts(preacts, logits), out, base_logits=logits)
        return out

    @property
    def has_class_patches(self) -> bool:
        return self.class_patches is not None and len(self.class_patches) > 0

    # --- state: one naming, one hash --------------------------------------------------------------

    def patch_state(self) -> dict[str, torch.Tensor]:
        """The tensors the patches add to the base: :meth:`state_dict` without the ``base.`` entries."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("base.")}

    def sha256(self) -> str:
        """Hash of the whole state (the saved file's ``tensors_sha256``; the ledger's model hashes)."""
        return state_sha256(self.state_dict())

    def base_sha256(self) -> str:
        """Hash of the base model's state dict (the certificate's ``model_sha256``)."""
        return state_sha256(self.base.state_dict())

    def patches_sha256(self) -> str:
        """Hash of every patch row of every kind (the certificate's ``patches_sha256``)."""
        return state_sha256(self.patch_state())

    @classmethod
    def from_state_dict(cls, base: nn.Module, state: dict[str, torch.Tensor], *, head: str | None = None,
                        num_hidden: int | None = None, num_classes: int | None = None) -> "PatchedModel":
        """Rebuild from :meth:`state_dict` entries on an existing ``base`` (whose weights are loaded from
        the ``base.`` entries). Raises ``ValueError`` naming any unknown key or malformed field."""
        unknown = sorted(k for k in state if not k.startswith(cls.STATE_PREFIXES))
        if unknown:
            raise ValueError(f"the state has keys that belong to no part of a patched model: {unknown[:5]}")
        base_state = {k[len("base."):]: v for k, v in state.items() if k.startswith("base.")}
        if base_state:
            base.load_state_dict(base_state, strict=True)
        split = split_model(base, head)
        n_hidden = sum(split.hidden_sizes) if num_hidden is None else num_hidden
        n_classes = split.num_classes if num_classes is None else num_classes

        def fields(prefix: str) -> dict[str, torch.Tensor]:
            return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}

        class_fields = fields("class_patches.")
        patches = PatchSet(n_hidden, n_classes, **fields("patches."))
        class_patches = ClassPatchSet(n_hidden, n_classes, **class_fields) if class_fields else None
        return cls(base, patches, head=head, class_patches=class_patches)

    # --- changes: new models that keep every other kind of row ------------------------------------

    _KEEP = object()

    def with_patches(self, patches: PatchSet | None = None, class_patches=_KEEP) -> "PatchedModel":
        """A new model on the same base with ``patches`` and/or ``class_patches`` replaced (others kept)."""
        model = PatchedModel(self.base, self.patches if patches is None else patches, head=self.head,
                             class_patches=self.class_patches if class_patches is PatchedModel._KEEP
                             else class_patches)
        model.train(self.training)
        dev = next(self.base.parameters(), torch.empty(0)).device
        return model.to(dev)

    def add_point_rows(self, rows: PatchSet, *, replace: torch.Tensor | None = None) -> "PatchedModel":
        """A new model whose point patches are the current rows (minus the bool mask ``replace``) then ``rows``."""
        kept = self.patches if replace is None else self.patches.select(~replace.cpu())
        return self.with_patches(PatchSet.concat([kept, rows]))

    def select_point_rows(self, keep: torch.Tensor) -> "PatchedModel":
        """A new model with only the point rows ``keep`` (bool mask or indices); class rows are kept."""
        return self.with_patches(self.patches.select(keep))

    # --- queries ----------------------------------------------------------------------------------

    @torch.no_grad()
    def covering_region(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """For each input, the patched region that supports it (-1 if none) and the support value.

        Point patches only; see :meth:`class_support` for whole-class patches.
        """
        preacts, logits = self._split.head_forward(self._split.features(x))
        return self.patches.support(stack_preacts(preacts, logits))

    @torch.no_grad()
    def class_support(self, x: torch.Tensor, *, gated: bool = True) -> torch.Tensor:
        """(B, G) support of each whole-class patch group (zeros without class patches); ``gated=False``:
        on the relaxed regions alone, ignoring the decision gate."""
        preacts, logits = self._split.head_forward(self._split.features(x))
        if self.class_patches is None:
            return logits.new_zeros(logits.shape[0], 0)
        z = stack_preacts(preacts, logits)
        return self.class_patches.group_support(z, logits) if gated else self.class_patches.relaxed_support(z)

    def unpatched(self) -> nn.Module:
        """The base model ``M`` without any patch."""
        return self.base

    def extra_repr(self) -> str:
        return f"head={self.head!r}"


def model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The named tensors a saved file holds for ``model``: a :class:`PatchedModel`'s :meth:`state_dict`, or a
    plain module's state dict under ``base.``."""
    if isinstance(model, PatchedModel):
        return model.state_dict()
    return {f"base.{k}": v for k, v in model.state_dict().items()}


def model_state_sha256(model: nn.Module) -> str:
    """Hash of :func:`model_state` (a saved file's ``tensors_sha256``), for patched and plain models alike."""
    return state_sha256(model_state(model))
