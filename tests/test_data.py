import gzip
import io
import os
import pickle
import tarfile
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


@pytest.mark.parametrize("stem,bad", [("train-labels-idx1-ubyte", 255), ("t10k-labels-idx1-ubyte", 10)])
def test_idx_label_outside_0_to_9_is_a_clear_error(tmp_path, stem, bad):
    """A label of 255 (a corrupt or foreign label file) used to make a data set of 256 classes."""
    rng = np.random.default_rng(0)
    labels = {"train-labels-idx1-ubyte": np.arange(12) % 10, "t10k-labels-idx1-ubyte": np.arange(5)}
    labels[stem] = labels[stem].copy()
    labels[stem][3] = bad
    for s, n in (("train", 12), ("t10k", 5)):
        _write_idx(tmp_path / f"{s}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)), False)
        _write_idx(tmp_path / f"{s}-labels-idx1-ubyte", labels[f"{s}-labels-idx1-ubyte"], False)
    with pytest.raises(DataError, match=f"label file {stem} in .* holds the label {bad}; MNIST has the classes 0..9"):
        load_dataset("mnist", tmp_path)


def test_a_label_set_with_gaps_is_a_clear_error(tmp_path):
    """Purchase infers K from the labels: a stray label (here two 255s among 0..3) must not make 256 classes."""
    rng = np.random.default_rng(0)
    X = rng.integers(0, 2, (60, 600)).astype(np.float32)
    y = np.arange(60) % 4
    y[[7, 8]] = 255
    np.savez(tmp_path / "purchase.npz", features=X, labels=y)
    with pytest.raises(DataError, match=r"skip class\(es\) \[4, 5, 6, 7, 8"):
        load_dataset("purchase", tmp_path)


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
    with pytest.raises(DataError, match="Unknown data set 'cifar100'. Known data sets: cifar10, digits, fashion-mnist, "
                                        "har, har-uci, mnist, mnist5k, purchase."):
        load_dataset("cifar100")


@pytest.mark.skipif(not (SHARED / "mnist").is_dir(), reason="shared MNIST files not present on this machine")
@pytest.mark.parametrize("name,counts", [("mnist", [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]),
                                         ("fashion-mnist", [6000] * 10)])
def test_real_idx_files(name, counts):
    d = load_dataset(name, SHARED / name)
    assert d.X_train.shape == (60000, 784) and d.X_test.shape == (10000, 784)
    assert torch.bincount(d.y_train).tolist() == counts


def test_dataset_names_lists_new_loaders():
    from prune_unlearn.experiments.datasets import dataset_names

    assert dataset_names() == ["cifar10", "digits", "fashion-mnist", "har", "har-uci", "mnist", "mnist5k", "purchase"]


# ----------------------------------------------------------------------------------------------------- CIFAR-10

CIFAR_ORDER = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def _write_cifar_batches(folder: Path, n: int = 4, protocol: int = pickle.HIGHEST_PROTOCOL):
    """Six official-style batches of n images each; returns {batch name: (data, labels)}."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    for i, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        labels = [(i + j) % 10 for j in range(n)]
        batch = {b"batch_label": name.encode(), b"labels": labels, b"data": data,
                 b"filenames": [f"img{j}.png".encode() for j in range(n)]}
        raw = pickle.dumps(batch, protocol=protocol)
        if name == "data_batch_2":  # like the original files: protocol 2, globals named numpy.core.multiarray
            raw = pickle.dumps(batch, protocol=2).replace(b"numpy._core.", b"numpy.core.")
            assert b"cnumpy.core.multiarray\n_reconstruct" in raw and b"c_codecs\nencode" in raw
        (folder / name).write_bytes(raw)
        written[name] = (data, labels)
    return written


def test_cifar_python_batches(tmp_path, monkeypatch):
    monkeypatch.setenv("PRUNE_CACHE_DIR", str(tmp_path / "cache"))
    written = _write_cifar_batches(tmp_path / "cifar-10-batches-py")
    for where in (tmp_path, tmp_path / "cifar-10-batches-py"):  # parent folder, or the batch folder itself
        d = load_dataset("cifar10", where)
        assert d.X_train.shape == (20, 3, 32, 32) and d.X_test.shape == (4, 3, 32, 32)
        assert d.X_train.dtype == torch.float32 and d.y_train.dtype == torch.int64
        assert d.num_classes == 10 and (d.domain_lower, d.domain_upper) == (0.0, 1.0)
        data, labels = written["data_batch_3"]
        img = d.X_train[8]  # first image of the third batch
        # channel-major: R plane, then G, then B; each 32×32 row-major
        assert img[0, 0, 1] == torch.tensor(data[0, 1] / np.float32(255))
        assert img[1, 2, 3] == torch.tensor(data[0, 1024 + 2 * 32 + 3] / np.float32(255))
        assert img[2, 31, 31] == torch.tensor(data[0, 3071] / np.float32(255))
        assert d.y_train[8:12].tolist() == labels
        assert d.y_test.tolist() == written["test_batch"][1]
        assert torch.equal(d.X_test.reshape(4, -1), torch.from_numpy(written["test_batch"][0] / np.float32(255)))
    # the official download, cifar-10-python.tar.gz, read without extracting it
    with tarfile.open(tmp_path / "cifar-10-python.tar.gz", "w:gz") as tf:
        tf.add(tmp_path / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    (tmp_path / "archive").mkdir()
    (tmp_path / "cifar-10-python.tar.gz").rename(tmp_path / "archive" / "cifar-10-python.tar.gz")
    a = load_dataset("cifar10", tmp_path / "archive")
    assert a.notes["format"] == "python batches" and torch.equal(a.X_train, d.X_train)
    assert torch.equal(a.y_test, d.y_test)


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_cifar_batches_refuse_forbidden_globals(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    _write_cifar_batches(folder)
    marker = tmp_path / "pwned"
    with open(folder / "data_batch_4", "wb") as fh:
        pickle.dump({b"data": _Evil(marker), b"labels": [0]}, fh)
    with pytest.raises(DataError, match=r"data_batch_4 refers to the global (posix|os|nt)\.system.*refusing"):
        load_dataset("cifar10", tmp_path)
    assert not marker.exists()
    with open(folder / "data_batch_4", "wb") as fh:  # well-formed pickle, wrong content
        pickle.dump({b"data": np.zeros((2, 3072), np.float32), b"labels": [0, 1]}, fh)
    with pytest.raises(DataError, match=r"'data' must be a uint8 array of shape \(n, 3072\)"):
        load_dataset("cifar10", tmp_path)
    (folder / "data_batch_4").write_bytes(b"not a pickle")
    with pytest.raises(DataError, match="data_batch_4 is not a readable CIFAR-10 batch"):
        load_dataset("cifar10", tmp_path)


def _png_bytes(arr: np.ndarray, fmt: str = "PNG") -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt)
    return buf.getvalue()


def _image(seed: int, size: int = 32) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


def _write_image_tar(path: Path, members: dict[str, bytes]):
    with tarfile.open(path, "w:gz") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))


def test_cifar_image_archive_cache_and_corrupt_cache(tmp_path, monkeypatch):
    import prune_unlearn.experiments.datasets.cifar10 as data_mod

    monkeypatch.setenv("PRUNE_CACHE_DIR", str(tmp_path / "cache"))
    members = {"cifar10-images/README.md": b"hello"}
    # 2 classes × 3 train images (one JPEG) + 1 test image each, written in reverse name order
    for cls, seed in (("zebra", 10), ("apple", 20)):
        for k in (2, 1, 0):
            arr = _image(seed + k)
            fmt = "JPEG" if k == 2 else "PNG"
            members[f"cifar10-images/train/{cls}/{k:04d}.{fmt.lower().replace('jpeg', 'jpg')}"] = _png_bytes(arr, fmt)
        members[f"cifar10-images/test/{cls}/0000.png"] = _png_bytes(_image(seed + 5))
    members["cifar10-images/train/apple/._0000.png"] = b"AppleDouble junk"
    archive = tmp_path / "imgs" / "cifar10-images.tar.gz"
    archive.parent.mkdir()
    _write_image_tar(archive, members)

    calls = []
    real_decode = data_mod._decode_image
    monkeypatch.setattr(data_mod, "_decode_image", lambda b, w: calls.append(w) or real_decode(b, w))
    d = load_dataset("cifar10", archive.parent)
    assert len(calls) == 8 and d.notes["cache"].startswith("written")
    assert d.X_train.shape == (6, 3, 32, 32) and d.X_test.shape == (2, 3, 32, 32)
    assert d.notes["classes"] == ["apple", "zebra"] and d.num_classes == 2  # not the CIFAR names: sorted
    assert d.y_train.tolist() == [0, 0, 0, 1, 1, 1] and d.y_test.tolist() == [0, 1]
    # sorted by file name within a class; PNG pixels exact, channel-first
    assert torch.equal(d.X_train[0], torch.from_numpy(_image(20).transpose(2, 0, 1) / np.float32(255)))
    assert torch.equal(d.X_train[4], torch.from_numpy(_image(11).transpose(2, 0, 1) / np.float32(255)))
    assert torch.equal(d.X_test[1], torch.from_numpy(_image(15).transpose(2, 0, 1) / np.float32(255)))
    assert 0 <= float(d.X_train[2].min()) and float(d.X_train[2].max()) <= 1  # the JPEG

    def no_decode(b, w):
        raise AssertionError("decoded although cached")

    monkeypatch.setattr(data_mod, "_decode_image", no_decode)
    again = load_dataset("cifar10", archive)  # the archive itself as data_dir: same cache entry
    assert again.notes["cache"].startswith("hit")
    assert torch.equal(again.X_train, d.X_train) and torch.equal(again.y_test, d.y_test)

    cache_files = list((tmp_path / "cache").glob("cifar10-*.npz"))
    assert len(cache_files) == 1 and not list((tmp_path / "cache").glob("*.tmp"))
    cache_files[0].write_bytes(b"PK\x03\x04 truncated garbage")
    monkeypatch.setattr(data_mod, "_decode_image", real_decode)
    rebuilt = load_dataset("cifar10", archive.parent)
    assert rebuilt.notes["cache"].startswith("written") and torch.equal(rebuilt.X_train, d.X_train)
    monkeypatch.setattr(data_mod, "_decode_image", no_decode)
    assert load_dataset("cifar10", archive.parent).notes["cache"].startswith("hit")


def test_cifar_image_folders_cifar_order(tmp_path, monkeypatch):
    monkeypatch.setenv("PRUNE_CACHE_DIR", str(tmp_path / "cache"))
    root = tmp_path / "cifar10"
    for i, cls in enumerate(reversed(CIFAR_ORDER)):
        for split in ("train", "test"):
            (root / split / cls).mkdir(parents=True)
            (root / split / cls / "b.png").write_bytes(_png_bytes(_image(100 + i)))
        (root / "train" / cls / "a.jpg").write_bytes(_png_bytes(_image(200 + i), "JPEG"))
    (root / "train" / "truck" / "notes.txt").write_text("ignored")
    monkeypatch.setenv("PRUNE_DATA_DIR", str(tmp_path))  # found as $PRUNE_DATA_DIR/cifar10
    d = load_dataset("cifar10")
    assert d.notes["classes"] == CIFAR_ORDER and d.num_classes == 10
    assert d.X_train.shape == (20, 3, 32, 32) and d.X_test.shape == (10, 3, 32, 32)
    assert d.y_train.tolist() == [k for k in range(10) for _ in range(2)] and d.y_test.tolist() == list(range(10))
    # truck was created first (seed 100) and must get label 9; b.png follows a.jpg
    assert torch.equal(d.X_test[9], torch.from_numpy(_image(100).transpose(2, 0, 1) / np.float32(255)))
    assert torch.equal(d.X_train[19], d.X_test[9])
    again = load_dataset("cifar10")
    assert again.notes["cache"].startswith("hit") and torch.equal(again.X_train, d.X_train)
    (tmp_path / "not-a-dir").write_text("")
    monkeypatch.setenv("PRUNE_CACHE_DIR", str(tmp_path / "not-a-dir"))  # an unusable cache is not an error
    fresh = load_dataset("cifar10")
    assert fresh.notes["cache"].startswith("not written") and torch.equal(fresh.X_train, d.X_train)


def test_cifar_bad_images_and_missing_files(tmp_path, monkeypatch):
    monkeypatch.setenv("PRUNE_CACHE_DIR", str(tmp_path / "cache"))
    for split in ("train", "test"):
        (tmp_path / split / "cat").mkdir(parents=True)
        (tmp_path / split / "cat" / "0.png").write_bytes(_png_bytes(_image(1)))
    (tmp_path / "train" / "cat" / "1.png").write_bytes(_png_bytes(_image(2, size=16)))
    with pytest.raises(DataError, match=r"1\.png is 16×16 pixels; CIFAR-10 images are 32×32"):
        load_dataset("cifar10", tmp_path)
    (tmp_path / "train" / "cat" / "1.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(DataError, match=r"Cannot decode image .*1\.png"):
        load_dataset("cifar10", tmp_path)
    monkeypatch.delenv("PRUNE_DATA_DIR", raising=False)
    with pytest.raises(DataError, match=r"needs one of: the python batches data_batch_1 … data_batch_5 and "
                                        r"test_batch .*train/<class>/.*\.tar\.gz.*Looked in: .*nowhere.*HINT: .*"
                                        r"cifar-10-python\.tar\.gz"):
        load_dataset("cifar10", tmp_path / "nowhere")
    (tmp_path / "other").mkdir()
    _write_image_tar(tmp_path / "other" / "x.tar.gz", {"README": b"no images"})
    with pytest.raises(DataError, match="holds neither the CIFAR-10 python batches"):
        load_dataset("cifar10", tmp_path / "other")


REAL_CIFAR = SHARED / "cifar10-jpeg" / "cifar10-images.tar.gz"


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("PRUNE_SLOW_TESTS") != "1", reason="decodes 60,000 JPEGs; set PRUNE_SLOW_TESTS=1")
@pytest.mark.skipif(not REAL_CIFAR.is_file(), reason="shared CIFAR-10 JPEG archive not present on this machine")
def test_real_cifar_archive(tmp_path, monkeypatch):
    if not os.environ.get("PRUNE_CACHE_DIR"):  # keep the 184 MB cache out of ~/.cache unless asked for
        monkeypatch.setenv("PRUNE_CACHE_DIR", str(tmp_path / "cache"))
    d = load_dataset("cifar10", REAL_CIFAR.parent)
    assert d.X_train.shape == (50000, 3, 32, 32) and d.X_test.shape == (10000, 3, 32, 32)
    assert d.notes["classes"] == CIFAR_ORDER
    assert torch.bincount(d.y_train).tolist() == [5000] * 10 and torch.bincount(d.y_test).tolist() == [1000] * 10
    assert 0 <= float(d.X_train.min()) and float(d.X_train.max()) <= 1
    means = d.X_train.mean(dim=(0, 2, 3))
    assert torch.allclose(means, torch.tensor([0.4914, 0.4822, 0.4465]), atol=2e-3)
    cached = load_dataset("cifar10", REAL_CIFAR.parent)
    assert cached.notes["cache"].startswith("hit") and torch.equal(cached.X_test, d.X_test)


# ------------------------------------------------------------------------------------------------------ UCI HAR


def _write_har(root: Path, n_train: int = 24, n_test: int = 12, seed: int = 0):
    rng = np.random.default_rng(seed)
    out = {}
    for part, n in (("train", n_train), ("test", n_test)):
        (root / part).mkdir(parents=True, exist_ok=True)
        X = rng.uniform(-1, 1, (n, 561))
        X[0, :3] = [-1.0, 1.0, 0.0]
        y = np.arange(n) % 6 + 1
        # the UCI files: fixed-width, space-separated, with leading spaces
        (root / part / f"X_{part}.txt").write_text("\n".join(" " + " ".join(f"{v: .7e}" for v in row) for row in X)
                                                   + "\n")
        (root / part / f"y_{part}.txt").write_text("\n".join(str(v) for v in y) + "\n")
        out[part] = (X, y)
    return out


def test_har_uci_and_paper_splits(tmp_path):
    written = _write_har(tmp_path / "UCI HAR Dataset")
    uci = load_dataset("har-uci", tmp_path)  # finds the 'UCI HAR Dataset' subfolder
    assert uci.X_train.shape == (24, 561) and uci.X_test.shape == (12, 561) and uci.num_classes == 6
    assert uci.y_train.tolist() == [k % 6 for k in range(24)]
    assert uci.X_train[0, :3].tolist() == [0.0, 1.0, 0.5]
    expected = np.clip((np.float64(f"{written['test'][0][3, 7]: .7e}") + 1) / 2, 0, 1)
    assert float(uci.X_test[3, 7]) == pytest.approx(expected, abs=1e-7)
    assert 0 <= float(uci.X_train.min()) and float(uci.X_train.max()) <= 1

    paper = load_dataset("har", tmp_path / "UCI HAR Dataset")  # the folder itself
    assert paper.X_train.shape == (28, 561) and paper.X_test.shape == (8, 561)  # 36 merged, ceil(0.2 · 36) test
    assert sorted(torch.bincount(paper.y_train, minlength=6).tolist()) == [4, 4, 5, 5, 5, 5]
    merged = torch.cat([uci.X_train, uci.X_test])
    both = torch.cat([paper.X_train, paper.X_test])
    assert torch.equal(both[both[:, 0].argsort()], merged[merged[:, 0].argsort()])
    assert torch.equal(load_dataset("har", tmp_path).X_test, paper.X_test)  # deterministic


def test_har_validation(tmp_path):
    _write_har(tmp_path)
    X = (tmp_path / "test" / "X_test.txt").read_text().splitlines()
    (tmp_path / "test" / "X_test.txt").write_text("\n".join(x.rsplit(" ", 1)[0] for x in X) + "\n")
    with pytest.raises(DataError, match=r"X_test\.txt has 560 values per line; UCI HAR has 561"):
        load_dataset("har", tmp_path)
    _write_har(tmp_path)
    (tmp_path / "train" / "y_train.txt").write_text("1\n" * 23 + "7\n")
    with pytest.raises(DataError, match=r"y_train\.txt has the label 7; UCI HAR labels are the integers 1–6"):
        load_dataset("har-uci", tmp_path)
    (tmp_path / "train" / "y_train.txt").write_text("1\n" * 5)
    with pytest.raises(DataError, match=r"has 5 labels but .*X_train\.txt has 24 rows"):
        load_dataset("har-uci", tmp_path)
    _write_har(tmp_path)
    with open(tmp_path / "train" / "X_train.txt", "a") as fh:
        fh.write(" 1.0 2.0\n")
    with pytest.raises(DataError, match=r"Cannot parse .*X_train\.txt"):
        load_dataset("har", tmp_path)
    with pytest.raises(DataError, match=r"needs the files train/X_train\.txt, train/y_train\.txt, test/X_test\.txt, "
                                        r"test/y_test\.txt .*HINT:"):
        load_dataset("har", tmp_path / "nowhere")


# ----------------------------------------------------------------------------------------------------- Purchase


def _purchase_arrays(n_per_class: int = 10, k: int = 5, seed: int = 0):
    rng = np.random.default_rng(seed)
    n = n_per_class * k
    X = rng.integers(0, 2, (n, 600)).astype(np.uint8)
    X[:, :10] = (np.arange(n)[:, None] >> np.arange(10)) & 1  # the record's index, in binary
    y = rng.permutation(np.arange(n) % k)
    return X, y


def _check_purchase(d, X, y, k):
    n = len(y)
    assert d.X_train.shape == (n - int(0.2 * n), 600) and d.X_test.shape == (int(0.2 * n), 600)
    assert d.num_classes == k and d.X_train.dtype == torch.float32 and d.y_train.dtype == torch.int64
    assert torch.bincount(d.y_test, minlength=k).tolist() == [int(0.2 * n) // k] * k  # stratified
    for Xs, ys in ((d.X_train, d.y_train), (d.X_test, d.y_test)):
        idx = (Xs[:, :10].long() << torch.arange(10)).sum(1).numpy()
        assert np.array_equal(ys.numpy(), y[idx]) and np.array_equal(Xs.numpy(), X[idx].astype(np.float32))
    both = np.concatenate([(d.X_train[:, :10].long() << torch.arange(10)).sum(1), (d.X_test[:, :10].long()
                                                                                   << torch.arange(10)).sum(1)])
    assert sorted(both.tolist()) == list(range(n))


@pytest.mark.parametrize("labels", ["integer", "one-hot", "one-based"])
def test_purchase_npz(tmp_path, labels):
    X, y = _purchase_arrays()
    stored = {"integer": y, "one-hot": np.eye(5, dtype=np.float32)[y], "one-based": y + 1}[labels]
    np.savez(tmp_path / "purchase20.npz", features=X, labels=stored)
    d = load_dataset("purchase", tmp_path)
    _check_purchase(d, X, y, 5)
    assert d.notes["labels_shifted_from_1"] == (labels == "one-based")
    assert (d.domain_lower, d.domain_upper) == (0.0, 1.0)


def test_purchase_classic_csv(tmp_path, monkeypatch):
    X, y = _purchase_arrays(n_per_class=10, k=4, seed=1)
    (tmp_path / "purchase").mkdir()
    rows = [",".join([str(label + 1)] + [str(v) for v in row]) for label, row in zip(y, X)]
    (tmp_path / "purchase" / "dataset_purchase").write_text("\n".join(rows) + "\n")
    monkeypatch.setenv("PRUNE_DATA_DIR", str(tmp_path))
    d = load_dataset("purchase")
    _check_purchase(d, X, y, 4)
    assert d.notes["labels_shifted_from_1"] and d.X_test.shape[0] == 8


def test_purchase_validation(tmp_path):
    X, y = _purchase_arrays()
    path = tmp_path / "purchase.npz"
    bad = X.astype(np.float32)
    bad[3, 50] = 2.0
    np.savez(path, features=bad, labels=y)
    with pytest.raises(DataError, match=r"feature values in \[0, 2\]; Purchase features are 0/1"):
        load_dataset("purchase", tmp_path)
    bad[3, 50] = np.nan
    np.savez(path, features=bad, labels=y)
    with pytest.raises(DataError, match="non-finite feature values"):
        load_dataset("purchase", tmp_path)
    onehot = np.eye(5)[y]
    onehot[7, 0] = 1 - onehot[7, 0]
    np.savez(path, features=X, labels=onehot)
    with pytest.raises(DataError, match="one-hot .*row 7 is not"):
        load_dataset("purchase", tmp_path)
    np.savez(path, features=X[:, :599], labels=y)
    with pytest.raises(DataError, match="has 599 features per record; Purchase has 600"):
        load_dataset("purchase", tmp_path)
    np.savez(path, features=X, labels=np.zeros(len(y), dtype=np.int64))
    with pytest.raises(DataError, match="single class"):
        load_dataset("purchase", tmp_path)
    np.savez(path, X=X)
    with pytest.raises(DataError, match=r"has no array 'features' or 'labels' \(arrays: X\)"):
        load_dataset("purchase", tmp_path)
    path.unlink()
    rows = [",".join(["1"] + ["0"] * 600)] * 3 + [",".join(["2"] + ["1"] * 599)]
    (tmp_path / "purchase.csv").write_text("\n".join(rows) + "\n")
    with pytest.raises(DataError, match=r"Cannot parse .*purchase\.csv"):
        load_dataset("purchase", tmp_path)
    with pytest.raises(DataError, match=r"needs one of the files purchase\.npz, purchase20\.npz, dataset_purchase, "
                                        r"dataset_purchase\.csv, purchase\.csv .*HINT:"):
        load_dataset("purchase", tmp_path / "nowhere")


def test_cifar_cache_with_modified_arrays_is_never_used(tmp_path, monkeypatch):
    monkeypatch.setenv("PRUNE_CACHE_DIR", str(tmp_path / "cache"))
    for split in ("train", "test"):
        (tmp_path / "imgs" / split / "cat").mkdir(parents=True)
        (tmp_path / "imgs" / split / "cat" / "0.png").write_bytes(_png_bytes(_image(3)))
    first = load_dataset("cifar10", tmp_path / "imgs")
    (cache_file,) = (tmp_path / "cache").glob("cifar10-*.npz")
    with np.load(cache_file) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["x_train"] = arrays["x_train"].copy()
    arrays["x_train"][0, 0, 0, 0] ^= 0xFF  # same key, same stored hash, different pixels
    np.savez(cache_file, **arrays)
    with pytest.warns(UserWarning, match=r"does not match the hash stored with it .*decoding the images again"):
        again = load_dataset("cifar10", tmp_path / "imgs")
    assert torch.equal(again.X_train, first.X_train) and again.notes["cache"].startswith("written")


def test_cifar_truncated_archive_and_truncated_jpeg_are_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("PRUNE_CACHE_DIR", str(tmp_path / "cache"))
    members = {f"{split}/cat/{i}.jpg": _png_bytes(_image(i), "JPEG") for split in ("train", "test") for i in range(3)}
    archive = tmp_path / "a" / "cifar10-images.tar.gz"
    archive.parent.mkdir()
    _write_image_tar(archive, members)
    assert load_dataset("cifar10", archive).X_train.shape == (3, 3, 32, 32)
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "cifar10-images.tar.gz").write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    with pytest.raises(DataError, match=r"Cannot read archive .*cifar10-images\.tar\.gz: .*HINT: check that it is a "
                                        r"complete"):
        load_dataset("cifar10", tmp_path / "b")
    members["train/cat/1.jpg"] = members["train/cat/1.jpg"][:300]  # cut inside the compressed image data
    (tmp_path / "c").mkdir()
    _write_image_tar(tmp_path / "c" / "x.tar.gz", members)
    with pytest.raises(DataError, match=r"Cannot decode image .*x\.tar\.gz:train/cat/1\.jpg"):
        load_dataset("cifar10", tmp_path / "c")
