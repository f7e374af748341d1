"""Saving and loading models and patched models: safetensors plus a small JSON header, never pickle.

File layout (one ``.safetensors`` file):

* tensors ``base.<name>``: the base model's state dict;
* tensors ``patches.<field>``: the patch set (packed patterns, λ, patch values, …), for patched models;
* metadata ``prune_unlearn``: a JSON header with ``format_version``, ``kind`` (``"model"`` or
  ``"patched-model"``), the architecture spec used to rebuild the module, the head name, the
  patch-set shape, a SHA-256 of all tensors (checked on load), and free-form ``info`` (data set,
  recipe, seed, metrics).

Every write goes to a temporary file in the same folder, is fsynced, then renamed over the target,
so a crash never leaves a half-written model behind.
"""

from __future__ import annotations

import copy
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from .._version import __version__
from .._hashing import state_sha256
from ..errors import FormatError
from .models import architecture_of, build_model
from .patches import PatchedModel, model_state

__all__ = ["save", "load", "load_info", "load_model", "atomic_write_text", "atomic_replace", "MODEL_FORMAT_VERSION"]

# 2: class patches carry ``decision_lambda`` (a version-1 file reads as an ungated class patch set).
# 3: patched models may hold neighbourhood rows (``neighbourhoods.<field>``); files without them are unchanged.
MODEL_FORMAT_VERSION = 3
READABLE_FORMAT_VERSIONS = (1, 2, 3)
_HEADER_KEY = "prune_unlearn"


def atomic_replace(path: Path, write) -> None:
    """Create ``path`` by ``write(tmp)`` on a temporary file in the same folder, fsync, then rename over it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file the usual permissions
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write a text file atomically (temp file, fsync, rename)."""
    def write(tmp):
        with open(tmp, "w") as fh:
            fh.write(text)

    atomic_replace(Path(path), write)


def save(model: nn.Module, path: str | Path, *, info: dict[str, Any] | None = None,
         architecture: dict[str, Any] | None = None) -> None:
    """Save a model or a :class:`PatchedModel` to ``path`` (safetensors + JSON header).

    ``architecture`` is needed only for models not built by :func:`prune_unlearn.build_model`; without
    it, :func:`load` needs the module passed as ``base=``.
    """
    from safetensors.torch import save_file

    patched = model if isinstance(model, PatchedModel) else None
    base = patched.base if patched is not None else model
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in model_state(model).items()}
    header: dict[str, Any] = {
        "format_version": MODEL_FORMAT_VERSION,
        "kind": "patched-model" if patched is not None else "model",
        "library_version": __version__,
        "architecture": architecture or architecture_of(base),
        "info": info or {},
    }
    if patched is not None:
        ps = patched.patches
        header["head"] = patched.head
        header["patches"] = {"regions": len(ps), "num_hidden": ps.num_hidden, "num_classes": ps.num_classes}
        cps = patched.class_patches
        if cps is not None:
            header["class_patches"] = {"supports": len(cps), "groups": cps.num_groups}
        if patched.neighbourhoods is not None:
            header["neighbourhoods"] = {"rows": len(patched.neighbourhoods)}
    header["tensors_sha256"] = state_sha256(tensors)
    metadata = {_HEADER_KEY: json.dumps(header)}
    atomic_replace(Path(path), lambda tmp: save_file(tensors, tmp, metadata=metadata))


def _read(path: str | Path) -> tuple[dict, dict[str, torch.Tensor]]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise FormatError(f"No model file at {path}.")
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as fh:
            metadata = fh.metadata() or {}
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise FormatError(f"{path} is not a readable safetensors file: {exc}") from None
    if _HEADER_KEY not in metadata:
        raise FormatError(f"{path} is a safetensors file but not a prune-unlearn model (no '{_HEADER_KEY}' header).")
    try:
        header = json.loads(metadata[_HEADER_KEY])
    except json.JSONDecodeError as exc:
        raise FormatError(f"{path} has a corrupt header: {exc}") from None
    if header.get("format_version") not in READABLE_FORMAT_VERSIONS:
        raise FormatError(f"{path} has model format_version {header.get('format_version')!r}; this library reads "
                          f"versions {', '.join(map(str, READABLE_FORMAT_VERSIONS))}. HINT: upgrade prune-unlearn "
                          "to read files written by a newer version.")
    for key in ("kind", "architecture", "tensors_sha256"):
        if key not in header:
            raise FormatError(f"The header of {path} does not have the key {key!r}.")
    if state_sha256(tensors) != header["tensors_sha256"]:
        raise FormatError(f"{path} failed its integrity check: the stored tensors do not match the header's hash "
                          "(the file was modified or corrupted).")
    return header, tensors


def load_info(path: str | Path) -> dict:
    """The JSON header of a saved model (kind, architecture, info, patch-set shape)."""
    header, _ = _read(path)
    return header


def load(path: str | Path, *, base: nn.Module | None = None) -> nn.Module:
    """Load a model saved by :func:`save`: an ``nn.Module`` or a :class:`PatchedModel`, in eval mode.

    ``base`` supplies the module structure for models not built by :func:`prune_unlearn.build_model`;
    it is copied, never modified.
    """
    header, tensors = _read(path)
    if base is not None:
        module = copy.deepcopy(base)
    elif header["architecture"] is not None:
        module = build_model(header["architecture"])
    else:
        raise FormatError(f"{path} holds a model of a custom architecture. HINT: pass base=<an instance of it>.")
    if header["kind"] not in ("model", "patched-model"):
        raise FormatError(f"{path} has unknown kind {header['kind']!r}.")
    if header["kind"] == "model":
        state = {k[len("base."):]: v for k, v in tensors.items() if k.startswith("base.")}
        try:
            module.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise FormatError(f"The weights in {path} do not fit the model: {exc}") from None
        return module.eval()
    meta = header.get("patches") or {}
    try:
        patched = PatchedModel.from_state_dict(module, tensors, head=header.get("head"),
                                               num_hidden=meta["num_hidden"], num_classes=meta["num_classes"])
    except RuntimeError as exc:  # load_state_dict: the base weights do not fit
        raise FormatError(f"The weights in {path} do not fit the model: {exc}") from None
    except (KeyError, TypeError, ValueError) as exc:
        raise FormatError(f"The patch set in {path} is malformed: {exc}") from None
    return patched.eval()


def load_model(path: str | Path, *, layers: Sequence[int] | None = None) -> nn.Module:
    """A model file as a module: a ``.safetensors`` file written by :func:`save` (see :func:`load`), an ONNX MLP
    (``.onnx``: Gemm/MatMul/Add/Relu/Flatten, :mod:`prune_unlearn.core.onnx_import`), or, with
    ``layers``, a user's PyTorch state dict of an MLP with those layer sizes (e.g. ``[784, 256, 256, 10]``).

    A state dict is read with ``torch.load(weights_only=True)`` (never unpickling arbitrary objects); a
    checkpoint dict holding it under ``"state_dict"`` works too. Its Linear layers are matched by order
    (:func:`prune_unlearn.core.models.mlp_from_state_dict`).
    """
    from ..errors import InputValidationError
    from .models import mlp_from_state_dict

    path = Path(path)
    if path.suffix == ".onnx":
        from .onnx_import import load_onnx

        return load_onnx(path)
    if path.suffix == ".safetensors" or layers is None:
        if path.suffix != ".safetensors" and path.exists():
            raise InputValidationError(
                f"{path} is not a .safetensors file written by prune_unlearn. HINT: for a PyTorch state dict of an "
                "MLP, also pass its layer sizes: layers=[784, 256, 256, 10] (--layers 784,256,256,10 on the "
                "command line); an ONNX MLP needs the suffix .onnx.")
        return load(path)
    sizes = list(layers) if not isinstance(layers, (str, bytes)) else []
    if not sizes or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in sizes):
        raise InputValidationError("The 'layers' parameter of load_model must be a list of positive integers (layer "
                                   f"sizes, e.g. [784, 256, 256, 10]). Got {layers!r} instead.")
    if not path.is_file():
        raise FormatError(f"No model file at {path}.")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)  # never unpickle arbitrary objects
    except Exception as exc:  # noqa: BLE001 - torch raises several types for foreign files
        raise FormatError(f"{path} is not a PyTorch state dict loadable with weights_only=True: {exc}") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise FormatError(f"{path} does not hold a state dict (a mapping of names to tensors).")
    return mlp_from_state_dict(state, sizes)
