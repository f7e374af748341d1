"""``har`` and ``har-uci``: UCI HAR from its text files (561 features in [-1, 1] mapped to [0, 1]; labels 1–6
become 0–5), in the paper's split (``har``) or UCI's own (``har-uci``)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from ...errors import DataError
from .common import Dataset, candidate_dirs, checked_split, missing_data_error, pack, read_text_matrix

__all__ = ["HAR_SPLITS", "har_dataset"]

_HAR_FILES = ("train/X_train.txt", "train/y_train.txt", "test/X_test.txt", "test/y_test.txt")
_HAR_FEATURES = 561
_HAR_URL = "https://archive.ics.uci.edu/dataset/240 (UCI HAR Dataset.zip; unzip it)"
HAR_SPLITS = {"har": "paper", "har-uci": "uci"}  # registry name → split; the paper's split is the default name


def _har_part(directory: Path, part: str) -> tuple[np.ndarray, np.ndarray]:
    xp, yp = directory / part / f"X_{part}.txt", directory / part / f"y_{part}.txt"
    X = read_text_matrix(xp, None, np.float64, f"{_HAR_FEATURES} whitespace-separated numbers per line")
    if X.shape[1] != _HAR_FEATURES:
        raise DataError(f"{xp} has {X.shape[1]} values per line; UCI HAR has {_HAR_FEATURES}.")
    y = read_text_matrix(yp, None, np.float64, "one activity label (1–6) per line")
    if y.shape[1] != 1:
        raise DataError(f"{yp} has {y.shape[1]} values per line; expected one label (1–6) per line.")
    y = y[:, 0]
    if len(y) != len(X):
        raise DataError(f"{yp} has {len(y)} labels but {xp} has {len(X)} rows; they must match.")
    if (y != np.round(y)).any() or y.min() < 1 or y.max() > 6:
        bad = y[(y != np.round(y)) | (y < 1) | (y > 6)][0]
        raise DataError(f"{yp} has the label {bad:g}; UCI HAR labels are the integers 1–6.")
    return X, y.astype(np.int64) - 1


def har_dataset(name: str) -> Callable[[Path | None], Dataset]:
    """The loader of ``har`` (the paper's split) or ``har-uci`` (UCI's own split)."""
    split = HAR_SPLITS[name]

    def load(data_dir: Path | None) -> Dataset:
        subdirs = tuple(dict.fromkeys((name, "har")))
        bases = candidate_dirs(data_dir, subdirs)
        candidates = [d for b in bases for d in (b, b / "UCI HAR Dataset")]
        directory = next((d for d in candidates if all((d / f).is_file() for f in _HAR_FILES)), None)
        if directory is None:
            raise missing_data_error(name, f"the files {', '.join(_HAR_FILES)} (the 'UCI HAR Dataset' folder)",
                                     candidates, _HAR_URL)
        Xtr, ytr = _har_part(directory, "train")
        Xte, yte = _har_part(directory, "test")
        if split == "paper":
            X, y = np.concatenate([Xtr, Xte]), np.concatenate([ytr, yte])
            Xtr, Xte, ytr, yte = checked_split(name, X, y, 0.2, directory)
            how = "UCI train+test merged, stratified 80/20, random_state=0 (paper, Table II)"
        else:
            how = "UCI's own train/test split"
        clipped = int((np.abs(Xtr) > 1).sum() + (np.abs(Xte) > 1).sum())

        def scale(a):
            return np.clip((a + 1.0) / 2.0, 0.0, 1.0)

        return pack(name, scale(Xtr), ytr, scale(Xte), yte, 1.0, f"UCI HAR text files in {directory}",
                    num_classes=6, split=how, preprocessing="(x + 1) / 2, clipped to [0, 1]",
                    clipped_values=clipped)

    return load

