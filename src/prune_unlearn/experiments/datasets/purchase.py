"""``purchase``: Purchase (600 binary features, K classes inferred from the labels) from an ``.npz`` or a CSV,
split stratified with ``n_test = int(0.2 * N)`` and ``random_state=0``."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ...errors import DataError
from .common import Dataset, candidate_dirs, checked_split, missing_data_error, pack, read_text_matrix

__all__ = ["purchase"]

_PURCHASE_FILES = ("purchase.npz", "purchase20.npz", "dataset_purchase", "dataset_purchase.csv", "purchase.csv")
_PURCHASE_FEATURES = 600
_PURCHASE_URL = ("the Acquire Valued Shoppers data as preprocessed by Shokri et al. (2017), e.g. "
                 "https://github.com/privacytrustlab/datasets (dataset_purchase)")


def _purchase_npz(path: Path) -> tuple[np.ndarray, np.ndarray, str, int | None]:
    """→ features, labels, label format, K when the labels are one-hot (else None)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = [k for k in ("features", "labels") if k not in z.files]
            if missing:
                raise DataError(f"{path} has no array {' or '.join(repr(k) for k in missing)} (arrays: "
                                f"{', '.join(z.files) or 'none'}). HINT: save it with np.savez(path, features=X, "
                                f"labels=y).")
            X, labels = z["features"], z["labels"]
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001 - not a zip, object arrays (pickles are refused), truncated, ...
        raise DataError(f"Cannot read {path} as an .npz of plain arrays: {type(exc).__name__}: {exc}") from None
    if X.ndim != 2:
        raise DataError(f"{path}: 'features' must be a 2-D array (records × {_PURCHASE_FEATURES}), got shape "
                        f"{X.shape}.")
    if X.dtype.kind not in "biuf" or labels.dtype.kind not in "biuf":
        raise DataError(f"{path}: 'features' and 'labels' must be numeric, got {X.dtype} and {labels.dtype}.")
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if len(labels) != len(X):
        raise DataError(f"{path} has {len(labels)} labels for {len(X)} records; they must match.")
    if labels.ndim == 2:
        onehot = labels.astype(np.float64)
        if not (np.isin(onehot, (0.0, 1.0)).all() and (onehot.sum(axis=1) == 1).all()):
            row = int(np.flatnonzero(~(np.isin(onehot, (0.0, 1.0)).all(axis=1) & (onehot.sum(axis=1) == 1)))[0])
            raise DataError(f"{path}: 2-D 'labels' must be one-hot (exactly one 1 per row); row {row} is not.")
        return X, onehot.argmax(axis=1), f"one-hot, {labels.shape[1]} columns", labels.shape[1]
    if labels.ndim != 1:
        raise DataError(f"{path}: 'labels' must be 1-D integers or 2-D one-hot, got shape {labels.shape}.")
    return X, labels, "integer", None


def purchase(data_dir: Path | None) -> Dataset:
    """The loader of ``purchase``: the first file found of ``purchase.npz`` … ``purchase.csv``."""
    candidates = candidate_dirs(data_dir, ("purchase",))
    path = next((d / f for d in candidates for f in _PURCHASE_FILES if (d / f).is_file()), None)
    if path is None:
        raise missing_data_error("purchase", f"one of the files {', '.join(_PURCHASE_FILES)} (an .npz with arrays "
                                 f"'features' N×{_PURCHASE_FEATURES} and 'labels', or a CSV with the label then "
                                 f"{_PURCHASE_FEATURES} 0/1 features per line)", candidates, _PURCHASE_URL)
    if path.suffix == ".npz":
        X, y, label_format, onehot_k = _purchase_npz(path)
    else:
        what = f"a label then {_PURCHASE_FEATURES} comma-separated 0/1 features per line"
        table = read_text_matrix(path, ",", np.float32, what)
        X, y, label_format, onehot_k = table[:, 1:], table[:, 0], "integer (first CSV column)", None
    if X.shape[1] != _PURCHASE_FEATURES:
        raise DataError(f"{path} has {X.shape[1]} features per record; Purchase has {_PURCHASE_FEATURES}.")
    X = X.astype(np.float32, copy=False)
    if not np.isfinite(X).all():
        raise DataError(f"{path} has non-finite feature values (NaN or inf); Purchase features are 0/1.")
    if X.min() < 0 or X.max() > 1:
        raise DataError(f"{path} has feature values in [{float(X.min()):g}, {float(X.max()):g}]; Purchase features "
                        f"are 0/1 (the domain is [0, 1]).")
    y = np.asarray(y)
    if y.dtype.kind == "f" and (not np.isfinite(y).all() or (y != np.round(y)).any()):
        raise DataError(f"{path} has non-integer labels; Purchase labels are class numbers.")
    y = y.astype(np.int64)
    shifted = onehot_k is None and y.min() == 1
    if shifted:  # the classic file numbers classes 1..K
        y = y - 1
    if y.min() < 0:
        raise DataError(f"{path} has the negative label {int(y.min())}; Purchase labels are 0..K-1 or 1..K.")
    k = onehot_k if onehot_k is not None else int(y.max()) + 1
    if k < 2:
        raise DataError(f"{path} has a single class; Purchase needs K ≥ 2 classes (20 or 100 in the paper).")
    Xtr, Xte, ytr, yte = checked_split("purchase", X, y, int(0.2 * len(y)), path)
    return pack("purchase", Xtr, ytr, Xte, yte, 1.0, f"Purchase ({path.name}) in {path.parent}", num_classes=onehot_k,
                split="stratified, n_test = int(0.2 * N), random_state=0", labels=label_format,
                labels_shifted_from_1=shifted)

