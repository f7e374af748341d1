"""Requests in and points out: validating and describing a new request, and re-reading its points later.

A request names its points by training-set index of a data set, or by a file (``.npy``, or ``.safetensors``
with ``X`` and optionally ``y``). Its record keeps their hashes (SHA-256 of each point as float32, of the
file) and labels, never the points; :func:`gather` re-reads them at processing time and checks the hashes.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn

from .._hashing import point_sha256, points_sha256
from ..errors import LedgerError
from .chain import RequestRow

__all__ = ["REQUEST_FIELDS", "DataSets", "read_points_file", "check_labels", "describe", "gather"]

REQUEST_FIELDS = ("requester", "indices", "points_file", "labels_file", "sha256")


def read_points_file(path: str | os.PathLike) -> tuple[torch.Tensor, torch.Tensor | None, str]:
    """Points (float32, one per row), labels if the file has them, and the file's SHA-256.

    ``.npy``: a float array of shape (n, ...). ``.safetensors``: tensor ``X`` and optionally ``y``.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise LedgerError(f"Cannot read the points file {path}: {exc.strerror or exc}.") from None
    digest = hashlib.sha256(raw).hexdigest()
    labels = None
    try:
        if path.suffix == ".npy":
            X = torch.from_numpy(np.load(io.BytesIO(raw), allow_pickle=False))
        elif path.suffix == ".safetensors":
            from safetensors.torch import load as load_safetensors

            tensors = load_safetensors(raw)
            if "X" not in tensors:
                raise LedgerError(f"The points file {path} has no tensor 'X' (it has {sorted(tensors)}).")
            X, labels = tensors["X"], tensors.get("y")
        else:
            raise LedgerError(f"The points file {path} must be .npy or .safetensors (with X and optionally y).")
    except (ValueError, OSError) as exc:
        raise LedgerError(f"The points file {path} is not a readable {path.suffix} file: {exc}") from None
    if X.dim() < 2 or len(X) == 0 or not X.is_floating_point():
        raise LedgerError(f"The points file {path} must hold a float array of shape (n, ...) with n ≥ 1, one "
                          f"point per row; got {X.dtype} of shape {tuple(X.shape)}. HINT: save a single point as "
                          "shape (1, d).")
    X = X.to(torch.float32)
    if not bool(torch.isfinite(X).all()):
        raise LedgerError(f"The points file {path} holds NaN or infinite values.")
    if labels is not None:
        labels = check_labels(labels, len(X), f"y in {path}")
    return X, labels, digest


def check_labels(labels: Any, n: int, where: str) -> torch.Tensor:
    """``labels`` as int64, refused unless they are ``n`` non-negative integers."""
    t = torch.as_tensor(labels)
    if t.dtype.is_floating_point or t.dtype == torch.bool or t.dtype.is_complex or tuple(t.shape) != (n,) \
            or (n and int(t.min()) < 0):
        raise LedgerError(f"The labels ({where}) must be {n} non-negative integers, one per point; got dtype "
                          f"{t.dtype} and shape {tuple(t.shape)}.")
    return t.to(torch.int64)


class DataSets:
    """Data sets by name: ``data`` (a :class:`Dataset` or a name) if it fits, others loaded on demand."""

    def __init__(self, data, data_dir):
        self._data, self._dir, self._cache, self._labels = data, data_dir, {}, {}

    def given(self):
        """The data set passed in (loaded if it was a name), or None."""
        if self._data is None:
            return None
        return self.named(self._data) if isinstance(self._data, str) else self._data

    def named(self, name: str):
        """The data set a request names; it must be the one passed in, if one was."""
        if self._data is not None:
            given = self._data if isinstance(self._data, str) else self._data.name
            if given != name:
                raise LedgerError(f"A request is about data set {name!r}, but the data set given is {given!r}.")
            if not isinstance(self._data, str):
                return self._data
        if name not in self._cache:
            from ..experiments.datasets import load_dataset

            self._cache[name] = load_dataset(name, self._dir)
        return self._cache[name]

    def training_label(self, ds, x: torch.Tensor) -> int | None:
        """The training label of a point of ``ds`` found by its hash (None if it is not a training point)."""
        if ds.name not in self._labels:
            self._labels[ds.name] = dict(zip(points_sha256(ds.X_train), ds.y_train.tolist()))
        return self._labels[ds.name].get(point_sha256(x))


# --- a new request --------------------------------------------------------------------------------------


def describe(spec: Mapping[str, Any], datasets: DataSets) -> dict:
    """The record of a new request (without id and time), validated; no write happens before all are."""
    unknown = set(spec) - set(REQUEST_FIELDS)
    if unknown:
        raise LedgerError(f"Unknown request field(s) {sorted(unknown)}; a request has requester, indices or "
                          "points_file, and optionally labels_file and sha256.")
    requester = spec.get("requester")
    if not isinstance(requester, str) or not requester.strip():
        raise LedgerError(f"A request needs a requester (who asked): a non-empty string. Got {requester!r}.")
    if (spec.get("indices") is None) == (spec.get("points_file") is None):
        raise LedgerError("A request names its points either by training-set indices (indices=, with data=) or "
                          "by a file (points_file=), exactly one of the two.")
    if spec.get("indices") is not None:
        return {"requester": requester, **_describe_indices(spec, datasets)}
    return {"requester": requester, **_describe_file(spec, datasets)}


def _describe_indices(spec: Mapping[str, Any], datasets: DataSets) -> dict:
    if spec.get("labels_file") or spec.get("sha256"):
        raise LedgerError("labels_file and sha256 go with points_file, not with indices.")
    ds = datasets.given()
    if ds is None:
        raise LedgerError("Requests by index need the data set they index. HINT: pass data='digits' (a name) "
                          "or data=<Dataset>.")
    idx = [int(i) for i in torch.as_tensor(spec["indices"]).flatten().tolist()]
    n = len(ds.y_train)
    bad = [i for i in idx if not 0 <= i < n]
    if not idx or bad or len(set(idx)) != len(idx):
        problem = ("no index" if not idx else f"indices out of range: {bad[:5]}" if bad else "repeated indices")
        raise LedgerError(f"A request needs distinct training-set indices in [0, {n - 1}] of data set "
                          f"{ds.name!r}; got {problem}.")
    X = ds.X_train[torch.tensor(idx)]
    return {"source": "dataset", "dataset": ds.name, "indices": idx, "file": None, "file_sha256": None,
            "labels_file": None, "n_points": len(idx), "point_sha256": points_sha256(X),
            "labels": ds.y_train[torch.tensor(idx)].tolist()}


def _describe_file(spec: Mapping[str, Any], datasets: DataSets) -> dict:
    path = Path(spec["points_file"]).resolve()
    X, labels, digest = read_points_file(path)
    if spec.get("sha256") and spec["sha256"].lower() != digest:
        raise LedgerError(f"The points file {path} has SHA-256 {digest}, not the expected {spec['sha256']}.")
    labels_file = None
    if spec.get("labels_file"):
        labels_file = Path(spec["labels_file"]).resolve()
        try:
            labels = check_labels(np.load(labels_file, allow_pickle=False), len(X), str(labels_file))
        except (OSError, ValueError) as exc:
            raise LedgerError(f"Cannot read the labels file {labels_file}: {exc}") from None
    ds = datasets.given()
    if labels is None and ds is not None:  # default: the training labels
        found = [datasets.training_label(ds, x) for x in X]
        if None in found:
            raise LedgerError(f"Point {found.index(None)} of {path} is not a training point of {ds.name!r}, so it "
                              "has no training label. HINT: give its labels (labels_file= / --labels).")
        labels = torch.tensor(found)
    return {"source": "file", "dataset": ds.name if ds is not None else None, "indices": None, "file": str(path),
            "file_sha256": digest, "labels_file": str(labels_file) if labels_file else None, "n_points": len(X),
            "point_sha256": points_sha256(X), "labels": labels.tolist() if labels is not None else None}


# --- its points, again ----------------------------------------------------------------------------------


def _points(row: RequestRow, rec: dict, datasets: DataSets) -> tuple[torch.Tensor, tuple | None]:
    """A request's points, re-read from its data set or file and checked against the recorded hashes, and
    the data set's domain box (None for a file)."""
    domain = None
    if rec["source"] == "dataset":
        ds = datasets.named(rec["dataset"])
        domain = (ds.domain_lower, ds.domain_upper)
        if max(rec["indices"]) >= len(ds.y_train):
            raise LedgerError(f"Request {row.id} names training indices up to {max(rec['indices'])}, but data set "
                              f"{ds.name!r} has {len(ds.y_train)} training points.")
        x, where = ds.X_train[torch.tensor(rec["indices"])], f"data set {ds.name!r}"
    else:
        x, _, digest = read_points_file(rec["file"])
        where = rec["file"]
        if digest != rec["file_sha256"]:
            raise LedgerError(f"Request {row.id}: the points file {where} changed since the request was added "
                              f"(SHA-256 {digest[:12]}…, recorded {rec['file_sha256'][:12]}…). HINT: put back the "
                              "original file.")
    if points_sha256(x) != rec["point_sha256"]:
        raise LedgerError(f"Request {row.id}: its points in {where} no longer match the hashes recorded when it was "
                          "added. HINT: use the same data set version (and --data-dir) as then.")
    return x, domain


def gather(rows: list[RequestRow], datasets: DataSets, model: nn.Module):
    """Points and labels of requests, re-read and checked (:func:`_points`), with each request's span of rows
    ``(id, start, stop)`` and the domain box of the last data set among them (else [0, 1])."""
    from ..core.patches import PatchedModel

    base = model.base if isinstance(model, PatchedModel) else model
    xs, ys, spans, domain, start = [], [], [], (0.0, 1.0), 0
    for row in rows:
        rec = json.loads(row.record)
        x, ds_domain = _points(row, rec, datasets)
        domain = ds_domain or domain
        if xs and x.shape[1:] != xs[0].shape[1:]:
            raise LedgerError(f"Request {row.id} has points of shape {tuple(x.shape[1:])}, but request "
                              f"{rows[0].id} has {tuple(xs[0].shape[1:])}; a model takes one input shape.")
        if rec["labels"] is not None:
            y = torch.tensor(rec["labels"], dtype=torch.int64)
        else:  # no label given: the base model's prediction
            with torch.no_grad():
                y = base(x).argmax(1).cpu()
        xs.append(x)
        ys.append(y)
        spans.append((row.id, start, start + len(x)))
        start += len(x)
    return torch.cat(xs), torch.cat(ys), spans, domain
