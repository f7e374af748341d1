"""Experiments on a conv net's head in its own feature space: run the conv layers once, reuse the features.

PRUNE patches only the Linear/ReLU head ``M_c``; a patched model's output on ``x`` is a function of the
features ``M_p(x)`` alone. Evaluating many patched versions of one VGG on 60,000 images therefore needs the
conv layers once, not once per version: :func:`head_only` is the head as a model of its own (same Linear
modules, shared, never copied) and :func:`patched_head` the same view of a :class:`PatchedModel`, so that
``patched_head(p)(features(base, X))`` equals ``p(X)`` up to the batch-dependent rounding of the conv layers.
"""

from __future__ import annotations

import torch
from torch import nn

from ..core.patches import PatchedModel
from ..core.split import split_model

__all__ = ["features", "head_only", "patched_head"]


def head_only(model: nn.Module) -> nn.Sequential:
    """``M_c`` of ``model`` as ``Sequential(Linear, ReLU, …, Linear)`` over its features (modules shared)."""
    split = split_model(model)
    layers: list[nn.Module] = []
    for lin in split.linears[:-1]:
        layers += [lin, nn.ReLU()]
    return nn.Sequential(*layers, split.linears[-1]).eval()


def patched_head(patched: PatchedModel) -> PatchedModel:
    """The patched model's head with all its patches, as a model of the base model's features."""
    return PatchedModel(head_only(patched.base), patched.patches, class_patches=patched.class_patches,
                        neighbourhoods=patched.neighbourhoods).eval()


@torch.no_grad()
def features(model: nn.Module, X: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """``M_p(X)`` in batches (float32, one row per input)."""
    split = split_model(model)
    was_training = model.training
    model.eval()
    out = [split.features(X[i: i + batch_size]) for i in range(0, len(X), batch_size)]
    model.train(was_training)
    return torch.cat(out) if out else torch.zeros(0, split.feature_dim)
