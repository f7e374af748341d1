"""``mnist`` and ``fashion-mnist`` from their four IDX files (gzip-compressed or raw): pixels /255, flattened to
784 features, because the paper's FC networks take flat vectors."""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Callable

import numpy as np

from ...errors import DataError
from .common import Dataset, candidate_dirs, missing_data_error, pack

__all__ = ["IDX_FILES", "idx_dataset"]

_IDX_CLASSES = 10  # MNIST and Fashion-MNIST: ten classes, labels 0..9
IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            raw = fh.read()
    except (OSError, EOFError) as exc:
        raise DataError(f"Cannot read IDX file {path}: {exc}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DataError(f"{path} is not an unsigned-byte IDX file (bad magic number).")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    expected = 4 + 4 * ndim + int(np.prod(dims))
    if len(raw) != expected:
        raise DataError(f"{path} is truncated or padded: {len(raw)} bytes, expected {expected} for shape {dims}.")
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def _find_idx(directory: Path, stem: str) -> Path | None:
    for candidate in (directory / f"{stem}.gz", directory / stem):
        if candidate.is_file():
            return candidate
    return None


def idx_dataset(name: str, title: str, url: str) -> Callable[[Path | None], Dataset]:
    """The loader of a data set stored as the four MNIST-style IDX files."""
    def load(data_dir: Path | None) -> Dataset:
        directory = _resolve_dir(name, data_dir, IDX_FILES, url)
        arrays = []
        for stem in IDX_FILES:
            path = _find_idx(directory, stem)
            arrays.append(_read_idx(path))
        Xtr, ytr, Xte, yte = arrays
        if len(Xtr) != len(ytr) or len(Xte) != len(yte):
            raise DataError(f"{title} files in {directory} disagree on the number of images and labels.")
        for stem, labels in ((IDX_FILES[1], ytr), (IDX_FILES[3], yte)):
            if len(labels) and int(labels.max()) >= _IDX_CLASSES:
                raise DataError(f"{title} label file {stem} in {directory} holds the label {int(labels.max())}; "
                                f"{title} has the classes 0..{_IDX_CLASSES - 1}. HINT: the file is corrupt or not "
                                f"{title}'s: get the original from {url}.")
        return pack(name, Xtr, ytr, Xte, yte, 255.0, f"{title} IDX files in {directory}", num_classes=_IDX_CLASSES)

    return load


def _resolve_dir(name: str, data_dir: Path | None, stems: tuple[str, ...], url: str) -> Path:
    candidates = candidate_dirs(data_dir, (name,))
    for directory in candidates:
        if all(_find_idx(directory, s) for s in stems):
            return directory
    files = ", ".join(f"{s}.gz" for s in stems)
    raise missing_data_error(name, f"the files {files} (gzip-compressed or raw)", candidates, url)

