"""Model architectures (Table II of the paper), each rebuildable from a small JSON-able spec.

A model built here carries its spec as ``model.prune_architecture`` so that a saved file can
rebuild the module without pickling code.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
from torch import nn

from ..errors import FormatError, InputValidationError

__all__ = ["mlp", "vgg16", "VGG", "scaled_config", "build_model", "architecture_of", "default_architecture", "head_of",
           "mlp_from_state_dict"]


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


# VGG16 = configuration "D" of Simonyan & Zisserman (13 conv layers); "M" = 2×2 max-pooling.
VGG16_CONFIG = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]


def scaled_config(config, width: float) -> list:
    """``config`` with every conv layer's channels multiplied by ``width`` (rounded, at least 1).

    The layout (13 conv layers, five blocks, where the pooling sits) is unchanged; only the channel
    counts shrink, so a width-¼ VGG16 costs about 1/16 of the full network's multiply-adds.
    """
    w = _check_width(width)
    return [v if v == "M" else max(1, int(round(v * w))) for v in config]


def _check_width(width) -> float:
    if isinstance(width, bool) or not isinstance(width, (int, float)) or not math.isfinite(width) or width <= 0:
        raise InputValidationError(
            f"The VGG width multiplier must be a positive number (1 = full VGG16, 0.25 = a quarter of its "
            f"channels); got {width!r}.")
    return float(width)


class VGG(nn.Module):
    """VGG: ``features`` (conv stack, the prefix ``M_p``) → flatten → ``classifier`` (Linear/ReLU head ``M_c``).

    For 32×32 inputs the conv stack ends at 512×1×1, so the head is FC(512 → hidden… → classes), as in
    the CIFAR-10 VGG16 variants the paper's experiments use. Dropout in the head is allowed (it is
    the identity in eval mode, which is the only mode that can be patched).
    """

    def __init__(self, config, num_classes: int = 10, batch_norm: bool = True, in_channels: int = 3,
                 input_size: int = 32, head_hidden=(512, 512), dropout: float = 0.5):
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        size = input_size
        for v in config:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
                size //= 2
            else:
                layers.append(nn.Conv2d(channels, v, kernel_size=3, padding=1))
                if batch_norm:
                    layers.append(nn.BatchNorm2d(v))
                layers.append(nn.ReLU(inplace=True))
                channels = v
        self.features = nn.Sequential(*layers)
        self.flatten = nn.Flatten()
        head: list[nn.Module] = []
        prev = channels * size * size
        for width in head_hidden:
            head += [nn.Linear(prev, width), nn.ReLU(inplace=True)]
            if dropout:
                head.append(nn.Dropout(dropout))
            prev = width
        head.append(nn.Linear(prev, num_classes))
        self.classifier = nn.Sequential(*head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.flatten(self.features(x)))


def vgg16(num_classes: int = 10, batch_norm: bool = True, in_channels: int = 3, input_size: int = 32,
          head_hidden=(512, 512), dropout: float = 0.5, width: float = 1.0) -> VGG:
    """VGG16 (configuration D) with a Linear/ReLU head named ``classifier``.

    ``width`` multiplies every conv layer's channel count (1 = VGG16 itself). The spec records it only
    when it is not 1, so specs saved before the multiplier existed rebuild the same network.
    """
    model = VGG(scaled_config(VGG16_CONFIG, width), num_classes, batch_norm, in_channels, input_size, head_hidden,
                dropout)
    model.prune_architecture = {
        "kind": "vgg16", "num_classes": int(num_classes), "batch_norm": bool(batch_norm),
        "in_channels": int(in_channels), "input_size": int(input_size),
        "head_hidden": [int(w) for w in head_hidden], "dropout": float(dropout), "head": "classifier",
    }
    if float(width) != 1.0:
        model.prune_architecture["width"] = float(width)
    return model


_BUILDERS = {
    "mlp": lambda spec: mlp(spec["input_dim"], spec["hidden"], spec["num_classes"]),
    "vgg16": lambda spec: vgg16(spec["num_classes"], spec["batch_norm"], spec["in_channels"], spec["input_size"],
                                spec["head_hidden"], spec["dropout"], spec.get("width", 1.0)),
}


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


def head_of(model: nn.Module) -> str | None:
    """Name of the Linear/ReLU head of a model built here (``None``: found automatically)."""
    spec = getattr(model, "prune_architecture", None) or {}
    return spec.get("head")


def architecture_of(model: nn.Module) -> dict[str, Any] | None:
    """The spec a model was built from, if it was built by :func:`build_model` (else ``None``)."""
    spec = getattr(model, "prune_architecture", None)
    return copy.deepcopy(spec) if spec is not None else None


# The paper's Table II models: FC(256) for Purchase and HAR, FC(256×256) for (Fashion-)MNIST, VGG16 for CIFAR-10.
_DEFAULTS = {
    "digits": ("mlp", [256, 256]),
    "mnist5k": ("mlp", [256, 256]),
    "mnist": ("mlp", [256, 256]),
    "fashion-mnist": ("mlp", [256, 256]),
    "har": ("mlp", [256]),
    "har-uci": ("mlp", [256]),
    "purchase": ("mlp", [256]),
    "cifar10": ("vgg16", None),
}


def default_architecture(dataset_name: str, input_dim: int, num_classes: int,
                         input_shape: tuple[int, ...] | None = None, width: float = 1.0) -> dict[str, Any]:
    """The paper's model for a data set, as a spec for :func:`build_model` (``width``: VGG channel multiplier)."""
    if dataset_name not in _DEFAULTS:
        raise InputValidationError(
            f"No default architecture for data set {dataset_name!r}; known: {', '.join(sorted(_DEFAULTS))}."
        )
    kind, hidden = _DEFAULTS[dataset_name]
    if kind == "vgg16":
        shape = tuple(input_shape or (3, 32, 32))
        return vgg16(num_classes, in_channels=shape[0], input_size=shape[-1], width=width).prune_architecture
    if float(width) != 1.0:
        raise InputValidationError(f"A width multiplier applies to the VGG16 of cifar10 only, not to {dataset_name!r}.")
    return {"kind": kind, "input_dim": int(input_dim), "hidden": list(hidden), "num_classes": int(num_classes)}


def mlp_from_state_dict(state: dict[str, torch.Tensor], layer_sizes: list[int]) -> nn.Sequential:
    """Build ``mlp(layer_sizes)`` and fill it from a user's state dict, matching Linear layers by order.

    The user's keys may have any names (``fc1.weight``, ``net.0.weight``…): the 2-D weight tensors are
    taken in order, each followed by its bias, and every shape is checked against ``layer_sizes``.
    """
    if len(layer_sizes) < 2:
        raise InputValidationError(f"--layers needs at least an input and an output size; got {layer_sizes}.")
    model = mlp(layer_sizes[0], layer_sizes[1:-1], layer_sizes[-1])
    linears = [m for m in model if isinstance(m, nn.Linear)]
    weights = [(k, v) for k, v in state.items() if v.dim() == 2]
    if len(weights) != len(linears):
        raise InputValidationError(
            f"The state dict has {len(weights)} weight matrices but layer sizes {layer_sizes} need {len(linears)}.")
    keys = list(state)
    for lin, (key, w) in zip(linears, weights):
        if tuple(w.shape) != tuple(lin.weight.shape):
            raise InputValidationError(
                f"Weight {key!r} has shape {tuple(w.shape)}, but layer sizes {layer_sizes} need "
                f"{tuple(lin.weight.shape)} there.")
        lin.weight.data.copy_(w)
        nxt = keys.index(key) + 1
        bias = state[keys[nxt]] if nxt < len(keys) and state[keys[nxt]].dim() == 1 else None
        if bias is None or bias.shape[0] != lin.out_features:
            raise InputValidationError(f"Weight {key!r} must be followed by its bias of size {lin.out_features}.")
        lin.bias.data.copy_(bias)
    return model.eval()
