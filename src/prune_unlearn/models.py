"""Model architectures (Table II of the paper), each rebuildable from a small JSON-able spec.

A model built here carries its spec as ``model.prune_architecture`` so that a saved file can
rebuild the module without pickling code.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from .errors import FormatError, InputValidationError

__all__ = ["mlp", "build_model", "architecture_of", "default_architecture"]


def mlp(input_dim: int, hidden: list[int] | tuple[int, ...], num_classes: int) -> nn.Sequential:
    """Fully connected ReLU network ``FC(hidden…)``: Flatten, (Linear, ReLU)*, Linear."""
    layers: list[nn.Module] = [nn.Flatten()]
    prev = int(input_dim)
    for width in hidden:
        layers += [nn.Linear(prev, int(width)), nn.ReLU()]
        prev = int(width)
    layers.append(nn.Linear(prev, int(num_classes)))
    model = nn.Sequential(*layers)
    model.prune_architecture = {
        "kind": "mlp",
        "input_dim": int(input_dim),
        "hidden": [int(w) for w in hidden],
        "num_classes": int(num_classes),
    }
    return model


_BUILDERS = {"mlp": lambda spec: mlp(spec["input_dim"], spec["hidden"], spec["num_classes"])}


def build_model(spec: dict[str, Any], seed: int | None = None) -> nn.Module:
    """Build an untrained model from its spec; ``seed`` fixes the initial weights."""
    if not isinstance(spec, dict) or spec.get("kind") not in _BUILDERS:
        kinds = ", ".join(sorted(_BUILDERS))
        raise FormatError(f"Unknown model architecture {spec!r}; known kinds: {kinds}.")
    if seed is not None:
        torch.manual_seed(seed)
    try:
        return _BUILDERS[spec["kind"]](spec)
    except KeyError as exc:
        raise FormatError(f"Model architecture spec {spec!r} is missing the key {exc.args[0]!r}.") from None


def architecture_of(model: nn.Module) -> dict[str, Any] | None:
    """The spec a model was built from, if it was built by :func:`build_model` (else ``None``)."""
    spec = getattr(model, "prune_architecture", None)
    return copy.deepcopy(spec) if spec is not None else None


# The paper's Table II models for the data sets that ship or are read from standard files.
_DEFAULTS = {
    "digits": ("mlp", [256, 256]),
    "mnist5k": ("mlp", [256, 256]),
    "mnist": ("mlp", [256, 256]),
    "fashion-mnist": ("mlp", [256, 256]),
}


def default_architecture(dataset_name: str, input_dim: int, num_classes: int) -> dict[str, Any]:
    if dataset_name not in _DEFAULTS:
        raise InputValidationError(
            f"No default architecture for data set {dataset_name!r}; known: {', '.join(sorted(_DEFAULTS))}."
        )
    kind, hidden = _DEFAULTS[dataset_name]
    return {"kind": kind, "input_dim": int(input_dim), "hidden": list(hidden), "num_classes": int(num_classes)}
