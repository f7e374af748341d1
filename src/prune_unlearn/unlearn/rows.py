"""Patch rows: what a forgetting strategy produces, before a :class:`~prune_unlearn.PatchedModel` holds them.

A strategy (Theorem 1 per point, the paper's Algorithm 1 or 2) decides *which* rows to add; it
returns them as plain data — the row tensors, the proof behind each row, and the requested points
each row covers — and the patched model turns them into a new model (``rows.add_to(model)``, which
calls :meth:`~prune_unlearn.PatchedModel.add_point_rows`; :meth:`~prune_unlearn.PatchedModel.with_patches`
for class rows). Claims and certificates are then read off the rows, never recomputed. A new kind of
row (e.g. certified neighbourhoods) is one more dataclass here with its own ``add_to``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..core.class_patches import ClassPatchSet
from ..core.patches import BOUND_CODES, PatchedModel, PatchSet
from ..core.regions import pack_patterns

__all__ = ["PatchRows", "ClassRows"]


@dataclass
class PatchRows:
    """New point rows (one per patched linear region) with their proofs and the points they cover.

    Row tensors (``R`` rows; ``N`` hidden neurons, ``C`` classes), as :class:`PatchSet` stores them:
    ``masks`` (R, N) bool activation patterns (unpacked), ``gate_lambda`` (R,) float32, ``values``
    (R, C) float32 confusion patches, ``targets`` (R,) int64, ``excluded`` (R, C) bool,
    ``point_min_slack``/``region_threshold``/``certified_margin`` (R,) float64, ``bound_code`` (R,)
    uint8 (``BOUND_CODES``: a region claim's bound, or ``"point"``), ``float32_robust`` (R,) bool.

    Proofs and coverage: ``multipliers`` (R, C, N) float32 Lagrange multipliers of dual/LP region
    claims (zeros on other rows), or None when no row has any; ``covers[r]`` the indices of the
    requested points whose region row ``r`` patches. ``rounds``: the strategy's log, one dict per round.
    """

    num_hidden: int
    num_classes: int
    masks: torch.Tensor
    gate_lambda: torch.Tensor
    values: torch.Tensor
    targets: torch.Tensor
    excluded: torch.Tensor
    point_min_slack: torch.Tensor
    region_threshold: torch.Tensor
    certified_margin: torch.Tensor
    bound_code: torch.Tensor
    float32_robust: torch.Tensor
    multipliers: torch.Tensor | None = None
    covers: list = field(default_factory=list)
    rounds: list = field(default_factory=list)

    _ROW_FIELDS = ("masks", "gate_lambda", "values", "targets", "excluded", "point_min_slack", "region_threshold",
                   "certified_margin", "bound_code", "float32_robust")

    @classmethod
    def empty(cls, num_hidden: int, num_classes: int) -> "PatchRows":
        ps = PatchSet(num_hidden, num_classes)
        return cls(num_hidden, num_classes, masks=torch.zeros(0, num_hidden, dtype=torch.bool),
                   **{name: getattr(ps, name) for name in cls._ROW_FIELDS[1:]})

    def __len__(self) -> int:
        return int(self.masks.shape[0])

    @property
    def proved(self) -> list[str]:
        """Per row: ``"region"`` (the claim holds on the tightened linear region) or ``"point"``."""
        return ["point" if c == BOUND_CODES["point"] else "region" for c in self.bound_code.tolist()]

    @classmethod
    def concat(cls, parts: list["PatchRows"]) -> "PatchRows":
        """The rows of ``parts`` in order (at least one part)."""
        first = parts[0]
        tensors = {name: torch.cat([getattr(p, name) for p in parts]) for name in cls._ROW_FIELDS}
        mult = None
        if any(p.multipliers is not None for p in parts):
            mult = torch.cat([p.multipliers if p.multipliers is not None else
                              torch.zeros(len(p), p.num_classes, p.num_hidden, dtype=torch.float32) for p in parts])
        return cls(first.num_hidden, first.num_classes, **tensors, multipliers=mult,
                   covers=[c for p in parts for c in p.covers], rounds=[r for p in parts for r in p.rounds])

    def add_to(self, model: PatchedModel, replace: torch.Tensor | None = None) -> PatchedModel:
        """A new model: ``model``'s point rows (minus the bool mask ``replace``), then these; other rows kept."""
        return model.add_point_rows(self.to_patch_set(), replace=replace)

    def to_patch_set(self) -> PatchSet:
        """The rows as a :class:`PatchSet` (patterns packed; proofs and coverage stay here)."""
        tensors = {name: getattr(self, name) for name in self._ROW_FIELDS[1:]}
        return PatchSet(self.num_hidden, self.num_classes, patterns=pack_patterns(self.masks), **tensors)

    def covering_row(self, n_points: int) -> torch.Tensor:
        """(n_points,) int64: the row that covers each requested point, -1 where none does."""
        row = torch.full((n_points,), -1, dtype=torch.int64)
        if self.covers:
            covers = [m if isinstance(m, torch.Tensor) and m.dtype == torch.int64 and m.dim() == 1
                      else torch.as_tensor(m, dtype=torch.int64).reshape(-1) for m in self.covers]
            sizes = torch.tensor([m.shape[0] for m in covers])
            members = torch.cat(covers)
            # a point listed by several rows gets the last of them (amax: deterministic with repeated indices)
            row.scatter_reduce_(0, members, torch.repeat_interleave(torch.arange(len(self.covers)), sizes), "amax")
        return row


@dataclass
class ClassRows:
    """Whole-class rows (Algorithm 2): relaxed supports grouped by round, and the exact point rows of
    members no relaxed support reached.

    ``patterns``/``stable`` (R, N) bool, ``gate_lambda`` (R,) float32 and ``group`` (R,) int64 per
    relaxed support; ``values`` (G, C) float32 and ``targets`` (G,) per group (round); ``label`` the
    forgotten class; ``decision_lambda`` the decision gate's sharpness (0: no gate). ``exact``: point rows
    for members left without a relaxed support. ``pending``: (n,) bool members still predicted as the
    class after the last round; ``degenerate``: members on a numerical region boundary; ``already``:
    members the base model already mispredicts. ``crown_points``: points the radius search ran on;
    ``common_radius``: the calibrated radius (``radius="calibrated"``), else None.
    """

    num_hidden: int
    num_classes: int
    patterns: torch.Tensor
    stable: torch.Tensor
    gate_lambda: torch.Tensor
    group: torch.Tensor
    values: torch.Tensor
    targets: torch.Tensor
    label: int
    decision_lambda: float
    exact: PatchRows
    pending: torch.Tensor
    degenerate: torch.Tensor
    already: torch.Tensor
    rounds: list = field(default_factory=list)
    crown_points: int = 0
    common_radius: float | None = None

    def __len__(self) -> int:
        return int(self.patterns.shape[0])

    def add_to(self, model: PatchedModel) -> PatchedModel:
        """A new model on ``model``'s base with these class rows and exact point rows (a whole class is forgotten
        on the unpatched model, so nothing else is there to keep)."""
        return model.with_patches(self.exact.to_patch_set(), self.to_class_patch_set())

    def to_class_patch_set(self) -> ClassPatchSet:
        """The relaxed supports as a :class:`ClassPatchSet`."""
        return class_patch_set(self.num_hidden, self.num_classes, self.patterns, self.stable, self.gate_lambda,
                               self.group, self.values, self.targets, self.label, self.decision_lambda)


def class_patch_set(num_hidden: int, num_classes: int, patterns, stable, gate_lambda, group, values, targets,
                    label: int, decision_lambda: float) -> ClassPatchSet:
    """A :class:`ClassPatchSet` from unpacked (R, N) ``patterns``/``stable`` (or lists of (N,) rows)."""
    def packed(masks):
        if isinstance(masks, list):
            masks = torch.stack(masks) if masks else None
        return pack_patterns(masks) if masks is not None and len(masks) else None

    return ClassPatchSet(
        num_hidden, num_classes, patterns=packed(patterns), stable=packed(stable),
        gate_lambda=torch.as_tensor(gate_lambda, dtype=torch.float32),
        group=torch.as_tensor(group, dtype=torch.int64), values=values,
        targets=torch.as_tensor(targets, dtype=torch.int64), label=torch.tensor([label]),
        decision_lambda=torch.tensor([decision_lambda], dtype=torch.float32))


