"""A user's own arrays: an ``.npz`` file with ``X_train``, ``y_train``, optionally ``X_test``, ``y_test``, and the
declared domain box ``domain_lower``, ``domain_upper`` (scalars). Used as given: no re-split, no scaling, so
training indices name the user's own rows.

Optional ``num_classes`` (a scalar) declares the class count (else the largest label + 1, every class present).
Read with ``allow_pickle=False``: object arrays are refused.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ...errors import DataError
from .common import Dataset, check_labels

__all__ = ["ARRAY_KEYS", "is_arrays_path", "load_arrays"]

ARRAY_KEYS = ("X_train", "y_train", "X_test", "y_test", "domain_lower", "domain_upper", "num_classes")
_HINT = ("HINT: np.savez('data.npz', X_train=X, y_train=y, X_test=Xt, y_test=yt, domain_lower=0.0, "
         "domain_upper=1.0)")


def is_arrays_path(name: str) -> bool:
    """Whether a ``--data`` value names a user's ``.npz`` file rather than a data set."""
    return str(name).endswith(".npz")


def _read(path: Path) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise DataError(f"No data file at {path}. {_HINT}")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except Exception as exc:  # noqa: BLE001 - not a zip, object arrays (pickles are refused), truncated, ...
        raise DataError(f"Cannot read {path} as an .npz of plain arrays: {type(exc).__name__}: {exc}") from None
    unknown = sorted(set(arrays) - set(ARRAY_KEYS))
    missing = [k for k in ("X_train", "y_train", "domain_lower", "domain_upper") if k not in arrays]
    if missing or unknown:
        what = (f"has no array {', '.join(map(repr, missing))}" if missing else
                f"has unknown array(s) {', '.join(map(repr, unknown))} (known: {', '.join(ARRAY_KEYS)})")
        raise DataError(f"{path} {what}. {_HINT}")
    if ("X_test" in arrays) != ("y_test" in arrays):
        raise DataError(f"{path} has only one of X_test and y_test; give both or neither.")
    return arrays


def _scalar(arrays: dict, key: str, path: Path) -> float:
    a = arrays[key]
    if a.ndim != 0 or a.dtype.kind not in "biuf" or not np.isfinite(a):
        raise DataError(f"{path}: {key!r} must be one finite number (the box is the same for every feature); got "
                        f"shape {a.shape}, dtype {a.dtype}.")
    return float(a)


def _inputs(arrays: dict, key: str, path: Path, lo: float, hi: float) -> torch.Tensor:
    X = arrays[key]
    if X.ndim < 2 or X.dtype.kind not in "biuf":
        raise DataError(f"{path}: {key!r} must be a numeric array of inputs, shape (n, features…); got shape "
                        f"{X.shape}, dtype {X.dtype}.")
    X = X.astype(np.float32)
    if not np.isfinite(X).all():
        rows = np.flatnonzero(~np.isfinite(X.reshape(len(X), -1)).all(axis=1))[:5].tolist()
        raise DataError(f"{path}: {key!r} has NaN or inf values (rows {rows}).")
    outside = np.flatnonzero(((X < lo) | (X > hi)).reshape(len(X), -1).any(axis=1))
    if len(outside):
        raise DataError(f"{path}: {key!r} rows {outside[:5].tolist()} lie outside the declared domain box "
                        f"[{lo:g}, {hi:g}] (values from {float(X.min()):g} to {float(X.max()):g}). HINT: declare the "
                        "box your inputs live in (domain_lower, domain_upper) or scale the inputs into it.")
    return torch.from_numpy(np.ascontiguousarray(X))


def _labels(arrays: dict, key: str, n: int, path: Path) -> torch.Tensor:
    y = arrays[key]
    if y.ndim != 1 or y.dtype.kind not in "iu":
        raise DataError(f"{path}: {key!r} must be a 1-D array of integer class labels; got shape {y.shape}, dtype "
                        f"{y.dtype}.")
    if len(y) != n:
        raise DataError(f"{path}: {key!r} has {len(y)} labels for {n} inputs; they must match.")
    return torch.from_numpy(y.astype(np.int64))


def load_arrays(path: str | Path) -> Dataset:
    """The :class:`Dataset` of a user's ``.npz`` (see the module docstring), named after the file."""
    path = Path(path)
    arrays = _read(path)
    lo, hi = _scalar(arrays, "domain_lower", path), _scalar(arrays, "domain_upper", path)
    if not lo < hi:
        raise DataError(f"{path}: the domain box [{lo:g}, {hi:g}] is empty; domain_lower must be below domain_upper.")
    X_train = _inputs(arrays, "X_train", path, lo, hi)
    y_train = _labels(arrays, "y_train", len(X_train), path)
    if "X_test" in arrays:
        X_test = _inputs(arrays, "X_test", path, lo, hi)
        y_test = _labels(arrays, "y_test", len(X_test), path)
        if X_test.shape[1:] != X_train.shape[1:]:
            raise DataError(f"{path}: X_test's inputs have shape {tuple(X_test.shape[1:])}, X_train's "
                            f"{tuple(X_train.shape[1:])}; they must match.")
    else:
        X_test, y_test = X_train[:0].clone(), y_train[:0].clone()
    if len(y_train) == 0:
        raise DataError(f"{path}: X_train holds no inputs.")
    declared = "num_classes" in arrays
    k = int(_scalar(arrays, "num_classes", path)) if declared else int(y_train.max()) + 1
    source = f"your arrays ({path})"
    check_labels(str(path), source, y_train, y_test, k, contiguous=not declared)
    return Dataset(str(path), X_train, y_train, X_test, y_test, k, domain_lower=lo, domain_upper=hi, source=source,
                   notes={"split": "as given (no re-split)", "test_set": "X_test" in arrays})
