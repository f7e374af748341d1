"""The data sets by name: one table of loaders (``data_dir`` or None → :class:`Dataset`) and one call."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from ...errors import DataError
from .arrays import is_arrays_path, load_arrays
from .builtin import digits, mnist5k
from .cifar10 import load_cifar10
from .common import Dataset
from .har import har_dataset
from .idx import idx_dataset
from .purchase import purchase

__all__ = ["dataset_names", "load_dataset"]

_REGISTRY: dict[str, Callable[[Path | None], Dataset]] = {
    "digits": digits,
    "mnist5k": mnist5k,
    "mnist": idx_dataset("mnist", "MNIST", "http://yann.lecun.com/exdb/mnist/"),
    "fashion-mnist": idx_dataset("fashion-mnist", "Fashion-MNIST", "https://github.com/zalandoresearch/fashion-mnist"),
    "cifar10": load_cifar10,
    "har": har_dataset("har"),
    "har-uci": har_dataset("har-uci"),
    "purchase": purchase,
}


def dataset_names() -> list[str]:
    return sorted(_REGISTRY)


def load_dataset(name: str, data_dir: str | os.PathLike | None = None) -> Dataset:
    """Load a data set by name.

    Parameters
    ----------
    name : {"digits", "mnist5k", "mnist", "fashion-mnist", "cifar10", "har", "har-uci", "purchase"} or a path
        See the docstring of :mod:`prune_unlearn.experiments.datasets` for each data set's files,
        preprocessing and split. A name ending in ``.npz`` is a user's own arrays, used as given
        (:mod:`prune_unlearn.experiments.datasets.arrays`).
    data_dir : path, optional
        Folder holding the data set's files (or a subfolder named like the data set). Defaults to
        ``$PRUNE_DATA_DIR/<name>``. Built-in data sets ignore it. For ``cifar10`` it may also name a
        ``.tar.gz`` archive.
    """
    if is_arrays_path(name):  # a user's own arrays, used as given (see .arrays)
        path = Path(name)
        if data_dir is not None and not path.is_absolute() and not path.exists():
            path = Path(data_dir) / path
        return load_arrays(path)
    if name not in _REGISTRY:
        raise DataError(f"Unknown data set {name!r}. Known data sets: {', '.join(dataset_names())}, or the path of "
                        "your own .npz (X_train, y_train, optional X_test, y_test, domain_lower, domain_upper).")
    return _REGISTRY[name](Path(data_dir) if data_dir is not None else None)
