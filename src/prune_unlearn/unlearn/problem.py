"""What a forgetting strategy works on: the domain box, the requested points' linear regions, the options.

``forget`` and ``forget_class`` build these once (validating their arguments on the way); the
strategies only read them, so a new strategy needs no new plumbing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn

from .._validation import check_in_box
from ..core.domain import feature_box
from ..core.patches import PatchedModel, PatchSet
from ..core.regions import HeadNetwork, PointRegions, pattern_words
from ..core.split import ModelSplit, verify_split
from ..errors import InputValidationError

__all__ = ["DomainBox", "domain_box", "Units", "group_units", "PointProblem"]


class DomainBox(NamedTuple):
    """The box every claim speaks about, in the head's input space (float64 ``lower``/``upper`` of shape
    (d,)), and how it was obtained (``source``)."""

    lower: torch.Tensor
    upper: torch.Tensor
    source: str


def domain_box(split: ModelSplit, domain, feature_domain, x: torch.Tensor, name: str, caller: str) -> DomainBox:
    """The feature-space box of the input box ``domain`` (or ``feature_domain`` if given), after checking
    that every input ``x`` lies in ``domain``."""
    lower, upper, source = feature_box(split, domain[0], domain[1], tuple(x.shape[1:]), feature_domain)
    in_lo = torch.as_tensor(domain[0], dtype=torch.float64)
    in_hi = torch.as_tensor(domain[1], dtype=torch.float64)
    check_in_box(x, in_lo.flatten() if in_lo.dim() else in_lo, in_hi.flatten() if in_hi.dim() else in_hi,
                 name, caller, "input domain box")
    return DomainBox(lower, upper, source)


def model_device(model: nn.Module) -> torch.device:
    return next((p.device for p in model.parameters()), torch.device("cpu"))


def check_fits(model: nn.Module, split: ModelSplit, x: torch.Tensor, name: str, caller: str) -> None:
    """Run the split on a few inputs (see :func:`~prune_unlearn.core.split.verify_split`), naming ``name``
    when the model cannot take them at all."""
    try:
        verify_split(model, split, x[: min(len(x), 64)])
    except RuntimeError as exc:  # shape mismatch inside the model
        raise InputValidationError(
            f"The '{name}' parameter of {caller} has shape {tuple(x.shape)}, which the model cannot take: {exc}"
        ) from None


@dataclass
class Units:
    """The distinct linear regions of the requested points (one *unit* per region)."""

    masks: torch.Tensor          # (U, N) bool
    members: list                # list of LongTensor point indices
    min_slack: torch.Tensor      # (U,) float64
    f32_error: torch.Tensor      # (U,) float64
    excluded: torch.Tensor       # (U, C) bool
    prior: torch.Tensor          # (U,) int64 index of the same region in the prior patch set, or -1

    def __len__(self) -> int:
        return int(self.masks.shape[0])

    def point_unit(self, n_points: int) -> torch.Tensor:
        """(n_points,) int64: the unit of each point, -1 for points on a numerical region boundary."""
        unit = torch.full((n_points,), -1, dtype=torch.int64)
        if self.members:
            sizes = torch.tensor([m.shape[0] for m in self.members])
            unit.scatter_reduce_(0, torch.cat(list(self.members)),
                                 torch.repeat_interleave(torch.arange(len(self.members)), sizes), "amax")
        return unit


def group_units(pr: PointRegions, labels: torch.Tensor, num_classes: int, prior: PatchSet | None) -> Units:
    """Group the consistent points by linear region, in order of each region's first point (so seeded
    choices do not depend on hashing order); merge in what the prior patch set knows of the same region."""
    ok = pr.consistent.nonzero().flatten()
    words = pattern_words(pr.masks[ok])
    uniq, inverse = torch.unique(words, dim=0, return_inverse=True)
    n_units = uniq.shape[0]
    first = torch.full((n_units,), len(ok), dtype=torch.int64).scatter_reduce(
        0, inverse, torch.arange(len(ok)), reduce="amin")
    order = torch.argsort(first)
    rank = torch.empty_like(order)
    rank[order] = torch.arange(n_units)
    inverse = rank[inverse]
    # members of every unit at once: points sorted by unit (stable, so each unit lists its points in order)
    by_unit = torch.argsort(inverse, stable=True)
    counts = torch.bincount(inverse, minlength=n_units)
    members = list(torch.split(ok[by_unit], counts.tolist())) if n_units else []
    masks = pr.masks[ok[first[order]]] if n_units else pr.masks[:0]
    min_slack = torch.full((n_units,), float("inf"), dtype=torch.float64).scatter_reduce(
        0, inverse, pr.min_slack[ok], reduce="amin")
    f32 = torch.full((n_units,), float("-inf"), dtype=torch.float64).scatter_reduce(
        0, inverse, pr.float32_error[ok].to(torch.float64), reduce="amax")
    excluded = torch.zeros(n_units, num_classes, dtype=torch.bool)
    excluded[inverse, labels[ok]] = True
    prior_idx = prior.match(masks) if prior is not None and len(prior) else torch.full((n_units,), -1, dtype=torch.int64)
    if prior is not None and len(prior):
        has = prior_idx >= 0
        if has.any():
            p = prior_idx[has]
            min_slack[has] = torch.minimum(min_slack[has], prior.point_min_slack[p])
            excluded[has] |= prior.excluded[p]
    return Units(masks, members, min_slack, f32, excluded, prior_idx)


@dataclass
class PointProblem:
    """Everything a point strategy reads: the model to add rows to, the requested points (features, labels,
    regions, units), the box, and the options that shape each patch.

    ``rng`` is the run's one random generator (targets, then strategy choices, in a fixed order);
    ``offsets`` bounds what whole-class rows already on the model add to each margin
    (:func:`~prune_unlearn.unlearn.region_patches.class_patch_offsets`); ``progress`` has ``update(n)``.
    """

    model: PatchedModel
    head: HeadNetwork
    features: torch.Tensor       # (n, d) head inputs, on the CPU
    labels: torch.Tensor         # (n,) labels that must stop being predicted
    regions: PointRegions
    units: Units
    box: DomainBox
    bound: str
    epsilon: float
    dual_steps: int
    target: str
    seed: int
    rng: np.random.Generator
    offsets: torch.Tensor | None
    progress: Any
    blocked: set = field(default_factory=set)  # units left unpatched: they may reach conflicting neighbourhoods
    base_predictions: torch.Tensor | None = None  # (n,) the model's predictions at the points, when it is plain

    @property
    def n_points(self) -> int:
        return int(self.labels.shape[0])

    @property
    def prior(self) -> PatchSet:
        return self.model.patches

    def replaced_prior_rows(self) -> torch.Tensor | None:
        """Bool mask of the prior point rows that this run re-solves (None when there are none)."""
        if not len(self.prior):
            return None
        replaced = torch.zeros(len(self.prior), dtype=torch.bool)
        replaced[self.units.prior[self.units.prior >= 0]] = True
        return replaced
