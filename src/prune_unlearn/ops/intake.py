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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn

from .._hashing import point_sha256, points_sha256
from ..errors import LedgerError, PruneError
from .chain import RequestRow
from .checks import check_points, domain_of, expectation

__all__ = ["REQUEST_FIELDS", "DataSets", "read_points_file", "check_labels", "describe", "request_box", "Screened",
           "screen", "gather"]

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
    except LedgerError:
        raise
    except Exception as exc:  # noqa: BLE001 - numpy and safetensors raise many types for malformed files
        raise LedgerError(f"The points file {path} is not a readable {path.suffix} file ({type(exc).__name__}: "
                          f"{exc}). HINT: write it with numpy.save(path, X.astype('float32')).") from None
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
    try:
        t = torch.as_tensor(np.asarray(labels).astype(np.int64) if np.asarray(labels).dtype.kind in "ui" else labels)
    except (TypeError, ValueError, RuntimeError):
        raise LedgerError(f"The labels ({where}) must be {n} non-negative integers, one per point; got "
                          f"{np.asarray(labels).dtype} values.") from None
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


def describe(spec: Mapping[str, Any], datasets: DataSets, model: nn.Module | None = None, domain=None) -> dict:
    """The record of a new request (without id and time), validated; no write happens before all are.

    Its points are checked as ``process`` will check them (:func:`.checks.check_points`), against the data set
    given (shape, classes, box), ``model`` (shape, classes) and ``domain`` (the box, default the data set's, else
    [0, 1]); labels need a data set or a model to be checked against."""
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
    describe_points = _describe_indices if spec.get("indices") is not None else _describe_file
    record, X = describe_points(spec, datasets)
    labels = torch.tensor(record["labels"], dtype=torch.int64) if record["labels"] is not None else None
    expect = expectation(datasets.given(), model, domain)
    check_points(X, labels, expect, f"The request of {requester!r}")
    return {"requester": requester, **record, "domain": [_json_bound(expect.lower), _json_bound(expect.upper)]}


def _json_bound(v) -> float | list:
    """A box bound as recorded: one number when it is the same for every feature."""
    t = torch.as_tensor(v, dtype=torch.float64).flatten()
    return float(t[0]) if bool((t == t[0]).all()) else t.tolist()


def _describe_indices(spec: Mapping[str, Any], datasets: DataSets) -> tuple[dict, torch.Tensor]:
    if spec.get("labels_file") or spec.get("sha256"):
        raise LedgerError("labels_file and sha256 go with points_file, not with indices.")
    ds = datasets.given()
    if ds is None:
        raise LedgerError("Requests by index need the data set they index. HINT: pass data='digits' (a name) "
                          "or data=<Dataset>.")
    try:
        raw = torch.as_tensor(spec["indices"]).flatten()
    except (TypeError, ValueError, RuntimeError) as exc:
        raise LedgerError(f"A request's indices must be integers; got {spec['indices']!r} ({exc}).") from None
    if raw.dtype.is_floating_point or raw.dtype == torch.bool or raw.dtype.is_complex:
        raise LedgerError(f"A request's indices must be integers; got {raw.dtype} values.")
    idx = [int(i) for i in raw.tolist()]
    n = len(ds.y_train)
    bad = [i for i in idx if not 0 <= i < n]
    if not idx or bad or len(set(idx)) != len(idx):
        problem = ("no index" if not idx else f"indices out of range: {bad[:5]}" if bad else "repeated indices")
        raise LedgerError(f"A request needs distinct training-set indices in [0, {n - 1}] of data set "
                          f"{ds.name!r}; got {problem}.")
    X = ds.X_train[torch.tensor(idx)]
    return {"source": "dataset", "dataset": ds.name, "indices": idx, "file": None, "file_sha256": None,
            "labels_file": None, "n_points": len(idx), "point_sha256": points_sha256(X),
            "labels": ds.y_train[torch.tensor(idx)].tolist()}, X


def _describe_file(spec: Mapping[str, Any], datasets: DataSets) -> tuple[dict, torch.Tensor]:
    path = Path(spec["points_file"]).resolve()
    X, labels, digest = read_points_file(path)
    if spec.get("sha256") and spec["sha256"].lower() != digest:
        raise LedgerError(f"The points file {path} has SHA-256 {digest}, not the expected {spec['sha256']}.")
    labels_file = None
    if spec.get("labels_file"):
        labels_file = Path(spec["labels_file"]).resolve()
        try:
            raw_labels = np.load(labels_file, allow_pickle=False)
        except Exception as exc:  # noqa: BLE001 - numpy raises many types for malformed files
            raise LedgerError(f"Cannot read the labels file {labels_file} as a .npy of integers ({type(exc).__name__}: "
                              f"{exc}).") from None
        labels = check_labels(raw_labels, len(X), str(labels_file))
    ds = datasets.given()
    if labels is None and ds is not None:  # default: the training labels
        found = [datasets.training_label(ds, x) for x in X]
        if None in found:
            raise LedgerError(f"Point {found.index(None)} of {path} is not a training point of {ds.name!r}, so it "
                              "has no training label. HINT: give its labels (labels_file= / --labels).")
        labels = torch.tensor(found)
    return {"source": "file", "dataset": ds.name if ds is not None else None, "indices": None, "file": str(path),
            "file_sha256": digest, "labels_file": str(labels_file) if labels_file else None, "n_points": len(X),
            "point_sha256": points_sha256(X), "labels": labels.tolist() if labels is not None else None}, X


# --- its points, again ----------------------------------------------------------------------------------


def request_box(rec: dict, datasets: DataSets) -> tuple:
    """The domain box a request's points are checked against and forgotten in: the one recorded when it was
    added; for records written before boxes were recorded, its data set's (index requests) or [0, 1] (files)."""
    if rec.get("domain") is not None:
        return tuple(rec["domain"])
    if rec["source"] == "dataset":
        return domain_of(datasets.named(rec["dataset"]))
    return (0.0, 1.0)


def _points(row: RequestRow, rec: dict, datasets: DataSets) -> torch.Tensor:
    """A request's points, re-read from its data set or file and checked against the recorded hashes."""
    if rec["source"] == "dataset":
        ds = datasets.named(rec["dataset"])
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
    return x


@dataclass
class Screened:
    """Pending requests sorted for one ``process`` batch.

    ``ready``: ``(row, points, labels, box)`` of requests that can be forgotten now; ``skipped``: requests whose
    points cannot be read now (a data set or file missing or changed: they stay pending, a later run may read
    them); ``rejected``: requests that can never be forgotten on this model (labels, shape or box): they are
    rejected with the reason, so that they never block the others."""

    ready: list = field(default_factory=list)
    skipped: list = field(default_factory=list)
    rejected: list = field(default_factory=list)


def screen(rows: list[RequestRow], datasets: DataSets, model: nn.Module, domain=None) -> Screened:
    """Re-read each request's points (:func:`_points`) and check them as ``add`` did (:func:`.checks.check_points`,
    against ``model`` and the box: ``domain`` if given, else :func:`request_box`)."""
    from ..core.patches import PatchedModel

    base = model.base if isinstance(model, PatchedModel) else model
    out = Screened()
    for row in rows:
        rec = json.loads(row.record)
        try:
            x = _points(row, rec, datasets)
            box = tuple(domain) if domain is not None else request_box(rec, datasets)
        except PruneError as exc:
            out.skipped.append({"id": row.id, "reason": str(exc)})
            continue
        labels = torch.tensor(rec["labels"], dtype=torch.int64) if rec["labels"] is not None else None
        try:
            check_points(x, labels, expectation(None, base, box), f"Request {row.id}")
        except LedgerError as exc:
            out.rejected.append({"id": row.id, "reason": str(exc)})
            continue
        if labels is None:  # no label given: the base model's prediction
            with torch.no_grad():
                labels = base(x).argmax(1).cpu()
        out.ready.append((row, x, labels, box))
    return out


def gather(rows: list[RequestRow], datasets: DataSets, model: nn.Module):
    """Points and labels of requests that must all be readable and fit ``model`` (consolidation re-patches
    processed requests: none may be skipped), with each request's span of rows ``(id, start, stop)`` and the
    domain box of the last of them (else [0, 1])."""
    screened = screen(rows, datasets, model)
    bad = screened.skipped + screened.rejected
    if bad:
        raise LedgerError(bad[0]["reason"])
    xs, ys, spans, domain, start = [], [], [], (0.0, 1.0), 0
    for row, x, labels, box in screened.ready:
        if xs and x.shape[1:] != xs[0].shape[1:]:
            raise LedgerError(f"Request {row.id} has points of shape {tuple(x.shape[1:])}, but request "
                              f"{rows[0].id} has {tuple(xs[0].shape[1:])}; a model takes one input shape.")
        xs.append(x)
        ys.append(labels)
        spans.append((row.id, start, start + len(x)))
        start, domain = start + len(x), box
    return torch.cat(xs), torch.cat(ys), spans, domain
