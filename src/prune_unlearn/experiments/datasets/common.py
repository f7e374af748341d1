"""What every source shares: the :class:`Dataset`, stratified splits, packing arrays into tensors, and where
a data set's files are looked for (``data_dir``, ``data_dir/<name>``, ``$PRUNE_DATA_DIR/<name>``)."""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ...errors import DataError

__all__ = ["Dataset", "DATA_DIR_ENV", "stratified_split", "checked_split", "pack", "candidate_dirs",
           "missing_data_error", "read_text_matrix", "check_labels"]

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


def stratified_split(X: np.ndarray, y: np.ndarray, test_size: float, seed: int):
    from sklearn.model_selection import train_test_split

    return train_test_split(X, y, test_size=test_size, stratify=y, random_state=seed)


def checked_split(name: str, X: np.ndarray, y: np.ndarray, test_size: float, where) -> list:
    """``stratified_split`` whose refusals (too few points per class, …) become ``DataError``."""
    try:
        return stratified_split(X, y, test_size, 0)
    except ValueError as exc:
        raise DataError(
            f"Cannot split {name!r} from {where} into stratified train/test parts: {exc} "
            f"HINT: every class needs at least 2 records and the test part at least one record per class."
        ) from None


def pack(name, Xtr, ytr, Xte, yte, scale, source, *, flatten: bool = True, num_classes: int | None = None,
         **notes) -> Dataset:
    """Arrays → a :class:`Dataset`: inputs as float32 divided by ``scale`` (flattened unless told), labels int64."""
    def f(a):
        x = np.array(a, dtype=np.float32)  # always a fresh, writeable copy
        if scale != 1:
            x /= np.float32(scale)
        return torch.from_numpy(x.reshape(len(x), -1) if flatten else x)

    def lab(a):
        return torch.from_numpy(np.asarray(a, dtype=np.int64))

    ytr_t, yte_t = lab(ytr), lab(yte)
    k = int(num_classes) if num_classes is not None else int(ytr_t.max()) + 1
    check_labels(name, source, ytr_t, yte_t, k, contiguous=num_classes is None)
    return Dataset(name, f(Xtr), ytr_t, f(Xte), yte_t, k, source=source, notes=notes)


def check_labels(name: str, source: str, y_train: torch.Tensor, y_test: torch.Tensor, k: int, *,
                 contiguous: bool = True) -> None:
    """Labels are class numbers 0..k-1; with ``contiguous``, every one of them occurs in the training labels
    (else a stray label such as 255 would silently make a data set of 256 classes)."""
    for split, y in (("training", y_train), ("test", y_test)):
        if len(y) and (int(y.min()) < 0 or int(y.max()) >= k):
            bad = int(y.min()) if int(y.min()) < 0 else int(y.max())
            raise DataError(f"{name} ({source}): {split} label {bad} is not a class number 0..{k - 1}. HINT: check the "
                            "label file (a corrupt or foreign file?); labels must be 0..K-1.")
    present = set(torch.unique(y_train).tolist())
    if contiguous and len(present) != k:
        missing = sorted(set(range(k)) - present)
        raise DataError(f"{name} ({source}): the training labels skip class(es) {missing[:10]} of 0..{k - 1} (largest "
                        f"label {k - 1}), so the class count is not clear. HINT: number the classes 0..K-1 without gaps "
                        "(a stray large label such as 255 usually means a corrupt label file).")


def candidate_dirs(data_dir: Path | None, subdirs: tuple[str, ...]) -> list[Path]:
    """Where a data set's files may be: ``data_dir``, ``data_dir/<sub>``, ``$PRUNE_DATA_DIR/<sub>``."""
    candidates = []
    if data_dir is not None:
        candidates += [Path(data_dir)] + [Path(data_dir) / s for s in subdirs]
    env = os.environ.get(DATA_DIR_ENV)
    if env:
        candidates += [Path(env) / s for s in subdirs]
    return candidates


def missing_data_error(name: str, needs: str, candidates: list[Path], url: str) -> DataError:
    """The error for a data set whose files are in none of ``candidates``, saying where to get them."""
    where = ", ".join(str(c) for c in candidates) or "(no directory given)"
    return DataError(
        f"Data set {name!r} needs {needs}. Looked in: {where}. "
        f"HINT: pass --data-dir DIR (or data_dir=...) pointing at a folder with those files, or set "
        f"{DATA_DIR_ENV} to a folder that contains a '{name}/' subfolder. The files come from {url}."
    )


def read_text_matrix(path: Path, delimiter: str | None, dtype, what: str) -> np.ndarray:
    """A numeric text table, one record a line (``what`` says what a line should hold, for the errors)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "input contained no data": handled below
            a = np.loadtxt(path, dtype=dtype, delimiter=delimiter, ndmin=2)
    except (ValueError, OSError) as exc:
        raise DataError(f"Cannot parse {path} as {what}: {exc}") from None
    if a.size == 0:
        raise DataError(f"{path} holds no data; expected {what}.")
    if not np.isfinite(a).all():
        raise DataError(f"{path} has non-finite values (NaN or inf); expected {what}.")
    return a
