"""What a request's points must satisfy to be forgotten, checked once when it is added and again before it is
processed, with the same function (:func:`check_points`): so a request ``add`` accepts is one ``process`` can
forget, and one that is not (a model or data set other than the one named at ``add``) is rejected with this
reason instead of failing the batch.

A point must be finite, fit the model's input shape, have a label below the model's (or data set's) number
of classes, and lie inside the domain box the certificates speak about (the data set's box, else [0, 1]).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..errors import LedgerError

__all__ = ["Expectation", "expectation", "check_points", "domain_of"]

_BOX_TOLERANCE = 1e-6  # as prune_unlearn._validation.check_in_box, which forget applies


@dataclass(frozen=True)
class Expectation:
    """What the points of a request must satisfy; a field that is None is not known (not checked)."""

    input_shape: tuple | None
    num_classes: int | None
    lower: Any
    upper: Any
    model: nn.Module | None = None
    source: str = ""  # what the expectations come from, for the messages


def domain_of(ds) -> tuple[Any, Any]:
    return (ds.domain_lower, ds.domain_upper) if ds is not None else (0.0, 1.0)


def expectation(ds=None, model: nn.Module | None = None, domain=None, model_name: str = "the model") -> Expectation:
    """The expectations a data set (shape, classes, box) and a model (shape, classes) set; ``domain`` overrides
    the box, which is else the data set's, else [0, 1]."""
    from ..core.patches import PatchedModel

    base = model.base if isinstance(model, PatchedModel) else model
    lower, upper = domain if domain is not None else domain_of(ds)
    sources = ([f"data set {ds.name!r}"] if ds is not None else []) + ([model_name] if model is not None else [])
    return Expectation(input_shape=tuple(ds.input_shape) if ds is not None else None,
                       num_classes=int(ds.num_classes) if ds is not None else None, lower=lower, upper=upper,
                       model=base, source=" and ".join(sources) or "the default domain box [0, 1]")


def _model_classes(model: nn.Module, X: torch.Tensor, what: str) -> int:
    """The number of outputs of ``model``, found by running it on the first point (which must fit it)."""
    try:
        with torch.no_grad():
            out = model(X[:1].to(next((p.device for p in model.parameters()), torch.device("cpu"))))
    except Exception as exc:  # noqa: BLE001 - shape errors come as RuntimeError, ValueError, … from any module
        raise LedgerError(f"{what}: points of shape {tuple(X.shape[1:])} do not fit the model ({type(exc).__name__}: "
                          f"{str(exc).splitlines()[0] if str(exc) else ''}).") from None
    if out.dim() != 2:
        raise LedgerError(f"{what}: the model gives outputs of shape {tuple(out.shape)}, not (n, classes).")
    return int(out.shape[1])


def check_points(X: torch.Tensor, labels: torch.Tensor | None, expect: Expectation, what: str) -> None:
    """Raise :class:`LedgerError` (message starting with ``what``) unless ``forget`` can take these points."""
    if not bool(torch.isfinite(X).all()):
        raise LedgerError(f"{what}: the points hold NaN or infinite values.")
    if expect.input_shape is not None and tuple(X.shape[1:]) != tuple(expect.input_shape):
        raise LedgerError(f"{what}: the points have shape {tuple(X.shape[1:])}, but {expect.source} takes "
                          f"{tuple(expect.input_shape)}.")
    classes = [expect.num_classes] if expect.num_classes is not None else []
    if expect.model is not None:
        classes.append(_model_classes(expect.model, X, what))
    if labels is not None:
        if not classes:
            raise LedgerError(f"{what}: its labels cannot be checked against a number of classes. HINT: name the "
                              "data set (data= / --data) or the model (model= / --model) the request is for.")
        k = min(classes)
        bad = labels[(labels < 0) | (labels >= k)]
        if len(bad):
            raise LedgerError(f"{what}: labels must be in [0, {k - 1}] ({expect.source} has {k} classes); got "
                              f"{bad[:5].tolist()}.")
    flat = X.reshape(len(X), -1).to(torch.float64)
    lo = torch.as_tensor(expect.lower, dtype=torch.float64).flatten()
    hi = torch.as_tensor(expect.upper, dtype=torch.float64).flatten()
    tol = _BOX_TOLERANCE * (1 + torch.maximum(lo.abs(), hi.abs()))
    outside = ((flat < lo - tol) | (flat > hi + tol)).any(dim=1)
    if bool(outside.any()):
        rows = outside.nonzero().flatten()[:5].tolist()
        raise LedgerError(f"{what}: points {rows} lie outside the domain box of {expect.source} (values span "
                          f"[{float(flat.min()):.4g}, {float(flat.max()):.4g}], the box is [{float(lo.min()):.4g}, "
                          f"{float(hi.max()):.4g}]); certificates speak only about the box. HINT: scale the points "
                          "the way the model's training data were scaled.")
