"""The data manifest of recorded training: which training points, in which order, with which labels.

A manifest lists, for every point a model was trained on, in training order: its row in the data set's training
split (where to find it), its label, and the SHA-256 of the point as float32 (what it is; the hash the ledger
keeps for every withdrawn point). It is stored as text, one ``index label sha256`` line per point, and named by
the SHA-256 of those bytes. Replaying a training run re-reads the points by index and refuses any whose hash or
label differs (:func:`check_manifest`): the same manifest means the same data.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Sequence

import torch

from .._hashing import points_sha256
from ..errors import DataError, FormatError

__all__ = ["DataManifest", "dataset_hashes", "check_manifest"]

_HEADER = b"# prune data manifest v1: training index, label, sha256 of the point as float32\n"


@dataclass(frozen=True)
class DataManifest:
    """Training points in order: row ``indices`` of a data set's training split, their ``labels`` and ``hashes``."""

    indices: tuple[int, ...]
    labels: tuple[int, ...]
    hashes: tuple[str, ...]

    @classmethod
    def of(cls, ds, indices: Sequence[int], hashes: Sequence[str] | None = None) -> "DataManifest":
        """The manifest of rows ``indices`` of ``ds``'s training split (``hashes``: all its point hashes)."""
        hashes = dataset_hashes(ds) if hashes is None else hashes
        idx = [int(i) for i in indices]
        labels = ds.y_train[torch.tensor(idx, dtype=torch.int64)].tolist() if idx else []
        return cls(tuple(idx), tuple(int(v) for v in labels), tuple(hashes[i] for i in idx))

    def __len__(self) -> int:
        return len(self.indices)

    def to_bytes(self) -> bytes:
        lines = (f"{i} {y} {h}\n" for i, y, h in zip(self.indices, self.labels, self.hashes))
        return _HEADER + "".join(lines).encode()

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.to_bytes()).hexdigest()

    @classmethod
    def from_bytes(cls, raw: bytes, where: str = "the manifest") -> "DataManifest":
        if not raw.startswith(_HEADER):
            raise FormatError(f"{where} is not a prune data manifest (its first line is not the manifest header).")
        indices, labels, hashes = [], [], []
        for n, line in enumerate(raw[len(_HEADER):].decode().splitlines(), start=2):
            parts = line.split()
            if len(parts) != 3 or len(parts[2]) != 64 or not parts[0].isdigit() or not parts[1].isdigit():
                raise FormatError(f"Line {n} of {where} is not 'index label sha256': {line[:80]!r}.")
            indices.append(int(parts[0]))
            labels.append(int(parts[1]))
            hashes.append(parts[2])
        return cls(tuple(indices), tuple(labels), tuple(hashes))

    def keep(self, mask: Sequence[bool]) -> "DataManifest":
        """The manifest of the entries where ``mask`` is true, in the same order."""
        rows = [k for k, m in enumerate(mask) if m]
        return DataManifest(tuple(self.indices[k] for k in rows), tuple(self.labels[k] for k in rows),
                            tuple(self.hashes[k] for k in rows))

    def points(self, ds) -> tuple[torch.Tensor, torch.Tensor]:
        """The points and labels the manifest lists, from ``ds`` (check it first with :func:`check_manifest`)."""
        idx = torch.tensor(self.indices, dtype=torch.int64)
        return ds.X_train[idx].contiguous(), torch.tensor(self.labels, dtype=torch.int64)


_HASH_CACHE: dict[int, tuple[object, list[str]]] = {}


def dataset_hashes(ds) -> list[str]:
    """SHA-256 of every training point of ``ds`` (cached per data set and ``X_train`` object: change a data set's
    points by making a new tensor, not in place)."""
    cached = _HASH_CACHE.get(id(ds))
    if cached is None or cached[0] is not ds.X_train:
        cached = (ds.X_train, points_sha256(ds.X_train))
        _HASH_CACHE.clear()  # one data set at a time: hashes of MNIST are 4.5 MB of strings
        _HASH_CACHE[id(ds)] = cached
    return cached[1]


def check_manifest(manifest: DataManifest, ds, where: str, hashes: Sequence[str] | None = None) -> None:
    """Refuse (``DataError``) unless every entry of ``manifest`` is the point and label ``ds`` has at its index."""
    hashes = dataset_hashes(ds) if hashes is None else hashes
    n = len(ds.y_train)
    labels = ds.y_train.tolist()
    hint = ("HINT: use the data set (name, version and --data-dir) the model was trained on; the record names "
            f"{ds.name!r} with the points it had then.")
    for k, (i, y, h) in enumerate(zip(manifest.indices, manifest.labels, manifest.hashes)):
        if i >= n:
            raise DataError(f"Entry {k} of {where} is training point {i}, but data set {ds.name!r} has {n} training "
                            f"points: the manifest does not match the data. {hint}")
        if hashes[i] != h:
            raise DataError(f"Entry {k} of {where} (training point {i} of {ds.name!r}) has SHA-256 {h[:12]}… in the "
                            f"manifest, but the data set's point hashes to {hashes[i][:12]}…: the manifest does not "
                            f"match the data. {hint}")
        if labels[i] != y:
            raise DataError(f"Entry {k} of {where} (training point {i} of {ds.name!r}) has label {y} in the "
                            f"manifest, but the data set labels it {labels[i]}: the manifest does not match the "
                            f"data. {hint}")
