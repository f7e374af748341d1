"""Whole-class patches (relaxed supports, Algorithm 2) written with affine maps, ReLU and one product.

Every piece of :class:`~prune_unlearn.core.patches.ClassPatchSet` but one is piecewise linear and is
written with the normal form's operators:

* relaxed support ``n'_r = ReLU(1 − Σ_{i∈S_r} w_i)``, ``w_i = ReLU(1 − ReLU(λ_r s_i z_i))`` (the sum runs
  over the stable set ``S_r`` only: a ``MatMul`` by a column that is −1 on ``S_r`` and 0 elsewhere);
* a group's value ``max_{r∈g} n'_r``, as the chain ``m ← m + ReLU(n' − m)``;
* the decision gate ``clamp(λ_d (f_c − max_{j≠c} f_j), 0, 1)`` of the base logits, with the same max
  chain and ``clamp(v, 0, 1) = 1 − ReLU(1 − ReLU(v))``.

The one exception is the product ``gate × max_{r∈g} n'_r`` of the gated model: both factors depend on
the input, so it is bilinear, and no network of affine maps and ReLUs computes it exactly (a product
of two inputs is not piecewise linear). It is written as an ONNX ``Mul`` of two tensors: onnxruntime
and tools with bilinear layers read it; verifiers limited to affine maps and ReLU cannot. Without
the gate (``decision_lambda = 0``) the branch stays in the normal form.
"""

from __future__ import annotations

import torch
from torch import nn

from ..core.regions import unpack_patterns

__all__ = ["ClassPatchBranch"]


def _max_chain(cols: list[torch.Tensor]) -> torch.Tensor:
    m = cols[0]
    for col in cols[1:]:
        m = m + torch.relu(col + m * -1.0)  # max(m, col); a Sub would leave the operator set
    return m


def _clamp01(v: torch.Tensor) -> torch.Tensor:
    return torch.relu(torch.relu(v) * -1.0 + 1.0) * -1.0 + 1.0


class ClassPatchBranch(nn.Module):
    """``Σ_g gate(h) · max_{r∈g} n'_r(h) · d_g`` for a :class:`ClassPatchSet`, as (batch, C) logit offsets."""

    def __init__(self, class_patches, hidden_sizes: list[int]):
        super().__init__()
        cps = class_patches
        self.hidden_sizes = list(hidden_sizes)
        self.num_classes = cps.num_classes
        self.gated = cps.gated
        self.label = int(cps.label[0])
        active = unpack_patterns(cps.patterns.cpu(), cps.num_hidden)
        stable = unpack_patterns(cps.stable.cpu(), cps.num_hidden)
        signs = active.to(torch.float32) * 2 - 1
        lam = cps.gate_lambda.detach().cpu().to(torch.float32)
        # Equal constants share one buffer (the exporter would merge them and insert Identity nodes).
        self._alias: dict[str, str] = {}
        self._seen: dict[tuple, str] = {}
        self.groups: list[list[int]] = [[] for _ in range(cps.num_groups)]
        for r, g in enumerate(cps.group.tolist()):
            self.groups[g].append(r)
        for r in range(len(cps)):
            scale = torch.where(stable[r], signs[r] * lam[r], torch.zeros(()))
            for k, block in enumerate(torch.split(scale, self.hidden_sizes)):
                self._const(f"scale{r}_{k}", block.unsqueeze(0))
            for k, block in enumerate(torch.split(stable[r].to(torch.float32), self.hidden_sizes)):
                self._const(f"sum{r}_{k}", (-block).unsqueeze(1))
        for g in range(cps.num_groups):
            self._const(f"value{g}", cps.values[g].detach().cpu().unsqueeze(0))
        eye = torch.eye(self.num_classes)
        for j in range(self.num_classes):
            self._const(f"pick{j}", eye[:, j: j + 1])
        self._const("decision_lambda", cps.decision_lambda.detach().cpu().reshape(1, 1))
        self.n_supports = len(cps)

    def _const(self, name: str, t: torch.Tensor) -> None:
        t = t.detach().to("cpu", torch.float32).contiguous().clone()
        key = (tuple(t.shape), t.numpy().tobytes())
        if key not in self._seen:
            self._seen[key] = name
            self.register_buffer(name, t)
        self._alias[name] = self._seen[key]

    def _c(self, name: str) -> torch.Tensor:
        return getattr(self, self._alias[name])

    def _support(self, r: int, zs: list[torch.Tensor]) -> torch.Tensor:
        acc = None
        for k, z in enumerate(zs):
            w = torch.relu(torch.relu(z * self._c(f"scale{r}_{k}")) * -1.0 + 1.0)
            part = w @ self._c(f"sum{r}_{k}")
            acc = part if acc is None else acc + part
        return torch.relu(acc + 1.0)

    def forward(self, zs: list[torch.Tensor], base_logits: torch.Tensor) -> torch.Tensor:
        out = None
        gate = None
        if self.gated:
            cols = [base_logits @ self._c(f"pick{j}") for j in range(self.num_classes)]
            rival = _max_chain([c for j, c in enumerate(cols) if j != self.label])
            gate = _clamp01((cols[self.label] + rival * -1.0) * self._c("decision_lambda"))
        for g, members in enumerate(self.groups):
            if not members:
                continue
            value = _max_chain([self._support(r, zs) for r in members])
            if gate is not None:
                value = value * gate  # the bilinear product (see the module docstring)
            term = value @ self._c(f"value{g}")
            out = term if out is None else out + term
        return out if out is not None else base_logits * 0.0
