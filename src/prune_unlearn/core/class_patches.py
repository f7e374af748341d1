"""Relaxed supports for whole-class unlearning (Algorithm 2, Eq. 11): the class rows of a patched model."""

from __future__ import annotations

import torch
from torch import nn

from .point_patches import register_fields
from .regions import unpack_patterns

__all__ = ["ClassPatchSet", "label_lead"]


def label_lead(logits: torch.Tensor, label: int) -> torch.Tensor:
    """(B,) ``f_label − max_{j≠label} f_j``: positive where ``label`` is predicted (``+inf`` with one class)."""
    rest = logits.clone()
    rest[:, label] = -float("inf")
    return logits[:, label] - rest.max(dim=1).values


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
        register_fields(self, defaults, tensors)
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
