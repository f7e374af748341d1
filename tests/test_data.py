import gzip
from pathlib import Path

import numpy as np
import pytest
import torch

from prune_unlearn import load_dataset
from prune_unlearn.errors import DataError

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def test_builtin_datasets():
    d = load_dataset("digits")
    assert d.X_train.shape == (1437, 64) and d.X_test.shape == (360, 64)
    assert d.X_train.min() >= 0 and d.X_train.max() <= 1 and d.num_classes == 10
    m = load_dataset("mnist5k")
    assert m.X_train.shape == (4000, 784) and m.X_test.shape == (1000, 784)
    assert set(m.y_train.unique().tolist()) == set(range(10))


def _write_idx(path: Path, arr: np.ndarray, compress: bool):
    header = bytes([0, 0, 8, arr.ndim]) + b"".join(int(s).to_bytes(4, "big") for s in arr.shape)
    data = header + arr.astype(np.uint8).tobytes()
    if compress:
        with gzip.open(str(path) + ".gz", "wb") as fh:
            fh.write(data)
    else:
        path.write_bytes(data)


@pytest.mark.parametrize("compress", [True, False])
def test_idx_reader_on_written_fixture(tmp_path, compress):
    rng = np.random.default_rng(0)
    _write_idx(tmp_path / "train-images-idx3-ubyte", rng.integers(0, 256, (12, 28, 28)), compress)
    _write_idx(tmp_path / "train-labels-idx1-ubyte", np.arange(12) % 10, compress)
    _write_idx(tmp_path / "t10k-images-idx3-ubyte", rng.integers(0, 256, (5, 28, 28)), compress)
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.arange(5), compress)
    d = load_dataset("mnist", tmp_path)
    assert d.X_train.shape == (12, 784) and d.y_test.tolist() == [0, 1, 2, 3, 4]
    assert 0 <= float(d.X_train.min()) and float(d.X_train.max()) <= 1


def test_truncated_idx_and_missing_files(tmp_path):
    _write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((3, 2, 2)), False)
    for stem in ("train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        _write_idx(tmp_path / stem, np.zeros(3), False)
    raw = (tmp_path / "train-images-idx3-ubyte").read_bytes()
    (tmp_path / "train-images-idx3-ubyte").write_bytes(raw[:-1])
    with pytest.raises(DataError, match="truncated"):
        load_dataset("mnist", tmp_path)
    with pytest.raises(DataError, match="needs the files train-images-idx3-ubyte.gz"):
        load_dataset("fashion-mnist", tmp_path / "nowhere")


def test_unknown_dataset():
    with pytest.raises(DataError, match="Unknown data set 'cifar100'. Known data sets: digits"):
        load_dataset("cifar100")


@pytest.mark.skipif(not (SHARED / "mnist").is_dir(), reason="shared MNIST files not present on this machine")
@pytest.mark.parametrize("name,counts", [("mnist", [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]),
                                         ("fashion-mnist", [6000] * 10)])
def test_real_idx_files(name, counts):
    d = load_dataset(name, SHARED / name)
    assert d.X_train.shape == (60000, 784) and d.X_test.shape == (10000, 784)
    assert torch.bincount(d.y_train).tolist() == counts
