"""Reference models for ``target="unseen"``: models that never trained on the points being forgotten.

A :class:`Reference` is a model ``g`` (same inputs and classes as the patched model) together with a
record of what it saw: the inputs it was trained on (``seen``). ``forget(..., target="unseen",
reference=...)`` sets each forgotten point's patched logits to ``g``'s at the point, so the point must
not be among ``seen``; with several references (e.g. models trained on the folds of a K-fold split of
the training set, each leaving one fold out) every point uses the first reference that never saw it.
A point that every reference saw is refused before anything is patched.

A reference trained on less data is less confident than the base model on data neither saw;
:meth:`Reference.calibrated` fits it a temperature on held-out data (:mod:`.calibration`), and the patch
then answers with the scaled logits ``s · g(x)``. A held-out set that contains a forgotten point is refused.
"""

from __future__ import annotations

import copy
import hashlib
from dataclasses import dataclass

import torch
from torch import nn

from .._hashing import points_sha256, state_sha256
from ..errors import InputValidationError
from .calibration import Calibration, calibrate

__all__ = ["Reference", "as_references", "reference_logits"]


@dataclass(frozen=True)
class Reference:
    """A model that never trained on the points it answers for, and the inputs it did train on.

    ``seen``: (m, *input_shape) the inputs the reference was trained on, as the model takes them (only
    their SHA-256 hashes are kept in the certificate); ``name``: how reports refer to it; ``calibration``:
    a fitted temperature (:meth:`calibrated`), None = the raw logits.
    """

    model: nn.Module
    seen: torch.Tensor
    name: str = ""
    calibration: Calibration | None = None

    def __post_init__(self):
        # hashed once, when the reference is made (before any request), not inside each forget call
        hashes = points_sha256(torch.as_tensor(self.seen, dtype=torch.float32))
        object.__setattr__(self, "_seen", frozenset(hashes))
        object.__setattr__(self, "_seen_sha256", hashlib.sha256("".join(sorted(hashes)).encode()).hexdigest())

    def calibrated(self, base_model: nn.Module, held_out, labels, method: str = "temperature") -> "Reference":
        """This reference with a logit scale fitted so that its losses on ``held_out`` (inputs neither it nor
        ``base_model`` trained on, with their ``labels``) are distributed as ``base_model``'s, or
        (``method="affine"``) with the affine map of its logits that best predicts ``base_model``'s there
        (:mod:`.calibration`). Never calibrate on the points to be forgotten or on an evaluation's test points."""
        out = copy.copy(self)  # keeps the hashes of ``seen`` (dataclasses.replace would hash them again)
        object.__setattr__(out, "calibration", calibrate(self, base_model, held_out, labels, method=method))
        return out

    @property
    def scale(self) -> float:
        """The logit scale the patch applies (1.0 without calibration)."""
        return 1.0 if self.calibration is None else self.calibration.scale

    def saw(self, point_hash: str) -> bool:
        """Whether the reference trained on the input with this SHA-256 (``points_sha256``)."""
        return point_hash in self._seen

    def describe(self) -> dict:
        """What the certificate records: the reference's weights hash and what it saw (how many inputs, and the
        SHA-256 of their sorted hex hashes concatenated)."""
        weights = {k: v.detach().cpu() for k, v in self.model.state_dict().items()}
        return {"name": self.name, "model_sha256": state_sha256(weights), "seen_count": len(self._seen),
                "seen_sha256": self._seen_sha256, "scale": self.scale,
                "calibration": None if self.calibration is None else self.calibration.describe()}


def as_references(reference, caller: str = "forget") -> list[Reference]:
    """``reference`` as a non-empty list of :class:`Reference` (one, or a sequence of them)."""
    refs = [reference] if isinstance(reference, Reference) else list(reference) if isinstance(
        reference, (list, tuple)) else None
    if not refs or not all(isinstance(r, Reference) for r in refs):
        raise InputValidationError(
            f"The 'reference' parameter of {caller} must be a Reference (a model that never trained on the points, "
            f"and the inputs it trained on) or a list of them; got {type(reference).__name__}. HINT: "
            "prune_unlearn.Reference(model, seen=X_reference_train).")
    for r in refs:
        if not isinstance(r.model, nn.Module):
            raise InputValidationError(f"Reference {r.name!r}: 'model' must be a torch.nn.Module.")
        if r.model.training:
            raise InputValidationError(f"Reference {r.name!r} is in training mode. HINT: call .eval() first.")
    return refs


@torch.no_grad()
def reference_logits(references: list[Reference], x: torch.Tensor, num_classes: int,
                     caller: str = "forget") -> tuple[torch.Tensor, torch.Tensor, list[dict], torch.Tensor]:
    """Each point's (calibrated) logits under the first reference that never saw it: ``(logits (n, C) float64,
    which (n,) int64, descriptions, raw logits (n, C) float64)``. Refuses points that every reference saw (the
    reference set overlaps them) and points in a reference's calibration held-out set."""
    hashes = points_sha256(x)
    for ref in references:
        held = ref.calibration.held_out_hashes if ref.calibration is not None else frozenset()
        clash = [i for i, h in enumerate(hashes) if h in held]
        if clash:
            raise InputValidationError(
                f"The calibration held-out set of reference {ref.name!r} contains {len(clash)} of the {len(x)} "
                f"point(s) to forget (indices {clash[:10]}{' …' if len(clash) > 10 else ''}): held-out data must be "
                f"data neither model trained on, never the forgotten points. HINT: calibrate on a held-out split "
                f"disjoint from the request; nothing was patched.")
    which = torch.full((len(x),), -1, dtype=torch.int64)
    for k, ref in enumerate(references):
        for i, h in enumerate(hashes):
            if which[i] < 0 and not ref.saw(h):
                which[i] = k
    overlap = (which < 0).nonzero().flatten().tolist()
    if overlap:
        raise InputValidationError(
            f"The reference set overlaps the forgotten points: {len(overlap)} of {len(x)} point(s) (indices "
            f"{overlap[:10]}{' …' if len(overlap) > 10 else ''}) were seen by every reference model, so no reference "
            f"can say what a model that never trained on them would output. HINT: give {caller} a reference trained "
            "without those points (e.g. the fold of a K-fold split that leaves them out); nothing was patched.")
    out = torch.empty(len(x), num_classes, dtype=torch.float64)
    raw = torch.empty(len(x), num_classes, dtype=torch.float64)
    for k, ref in enumerate(references):
        rows = (which == k).nonzero().flatten()
        if len(rows):
            dev = next((p.device for p in ref.model.parameters()), torch.device("cpu"))
            logits = ref.model(x[rows].to(dev)).cpu()
            if logits.shape[1:] != (num_classes,):
                raise InputValidationError(
                    f"Reference {ref.name!r} outputs shape {tuple(logits.shape[1:])}, the model {num_classes} classes.")
            raw[rows] = logits.to(torch.float64)
            out[rows] = raw[rows] if ref.calibration is None else ref.calibration.apply(raw[rows])
    if not torch.isfinite(out).all():
        raise InputValidationError("A reference model gave non-finite logits on the forgotten points.")
    return out, which, [r.describe() for r in references], raw
