"""The domain box ``B`` in the head's input space, where every region claim is made.

* A prefix that only flattens: ``B`` is the input box itself.
* Any other prefix: interval bound propagation of the input box through ``M_p`` (sound: it contains the
  image of every input in the box, so feature-space claims hold for all those inputs). Intervals
  widen through deep conv stacks, which makes the ``box`` bound loose; ``dual``/``lp`` also use the
  region's own halfspaces and suffer far less.
* Given explicitly (``feature_domain=(lo, hi)``), e.g. :func:`data_feature_box`: claims then hold for
  inputs whose features lie in that box, and the certificate says the box was given.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..errors import InputValidationError
from .split import ModelSplit, split_model

__all__ = ["feature_box", "data_feature_box"]


def is_reshape_only(prefix: nn.Module) -> bool:
    return isinstance(prefix, nn.Identity) or (
        isinstance(prefix, nn.Sequential) and all(isinstance(m, (nn.Flatten, nn.Identity, nn.Dropout)) for m in prefix)
    )


def _as_vector(v, n: int, what: str) -> torch.Tensor:
    t = torch.as_tensor(v, dtype=torch.float64)
    if t.dim() == 0:
        return t.expand(n).clone()
    t = t.flatten()
    if t.numel() != n:
        raise InputValidationError(f"The {what} has {t.numel()} values but {n} are needed.")
    return t


def feature_box(split: ModelSplit, lower, upper, input_shape, feature_domain=None) -> tuple[torch.Tensor, torch.Tensor, str]:
    """``(lo, hi, source)``: the domain box in feature space (float64, shape (d,)) and how it was obtained."""
    d = split.feature_dim
    if feature_domain is not None:
        lo, hi = (_as_vector(v, d, "feature_domain box") for v in feature_domain)
        if torch.any(lo > hi):
            raise InputValidationError("The 'feature_domain' parameter of forget must have lower ≤ upper everywhere.")
        return lo, hi, "given"
    if is_reshape_only(split.prefix):
        n_in = int(np.prod(input_shape))
        if n_in != d:
            raise InputValidationError(f"The domain box has {n_in} features but the head takes {d}.")
        return _as_vector(lower, d, "domain box"), _as_vector(upper, d, "domain box"), "input box"
    from .bounds import interval_feature_box

    lo, hi = interval_feature_box(split.prefix, lower, upper, input_shape)
    return lo, hi, "interval propagation of the input box through the prefix"


@torch.no_grad()
def data_feature_box(model: nn.Module, X: torch.Tensor, *, head: str | None = None, margin: float = 0.1,
                     batch_size: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """A feature box from data: per-feature min/max of ``M_p(X)`` widened by ``margin`` × range.

    Tighter than interval propagation, but only as trustworthy as ``X`` is representative: region
    claims made with it hold for inputs whose features fall inside it.
    """
    split = split_model(model, head)
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    lo = hi = None
    for i in range(0, len(X), batch_size):
        f = split.features(X[i: i + batch_size].to(device)).to("cpu", torch.float64)
        blo, bhi = f.min(dim=0).values, f.max(dim=0).values
        lo = blo if lo is None else torch.minimum(lo, blo)
        hi = bhi if hi is None else torch.maximum(hi, bhi)
    span = (hi - lo).clamp(min=1e-6)
    nonneg = lo >= 0  # e.g. features after a ReLU stay ≥ 0
    lo = torch.where(nonneg, (lo - margin * span).clamp(min=0), lo - margin * span)
    return lo, hi + margin * span
