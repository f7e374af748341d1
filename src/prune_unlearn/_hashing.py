"""Content hashes that name models, patch sets and points in certificates."""

from __future__ import annotations

import hashlib

import torch
from torch import nn


def tensor_bytes(t: torch.Tensor) -> bytes:
    """Canonical bytes of a tensor: contiguous CPU data in native (little-endian) order."""
    return t.detach().to("cpu").contiguous().numpy().tobytes()


def points_sha256(x: torch.Tensor) -> list[str]:
    """Hash of every input ``x[i]`` as float32 values (the dtype the model sees), one conversion for all."""
    rows = x.detach().to("cpu", torch.float32).contiguous().flatten(start_dim=1).numpy()
    return [hashlib.sha256(row.tobytes()).hexdigest() for row in rows]


def point_sha256(x: torch.Tensor) -> str:
    """Hash of one input (see :func:`points_sha256`)."""
    return points_sha256(x.unsqueeze(0))[0]


def pattern_sha256(packed: torch.Tensor) -> str:
    """Hash of a patched region's packed activation pattern (``PatchSet.patterns[r]``), as certificates name it."""
    return hashlib.sha256(tensor_bytes(packed)).hexdigest()


def state_sha256(tensors: dict[str, torch.Tensor]) -> str:
    """Hash of named tensors: names, dtypes, shapes and bytes, in sorted name order."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name]
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}\n".encode())
        h.update(tensor_bytes(t))
    return h.hexdigest()


def model_sha256(model: nn.Module) -> str:
    """Hash of a model's weights and buffers (its state dict)."""
    return state_sha256(dict(model.state_dict()))
