"""``cifar10``: images as ``(N, 3, 32, 32)`` float32 in [0, 1], from the official python batches, class-named
image folders, or one tar archive of either (formats and cache: see the package docstring)."""

from __future__ import annotations

import hashlib
import io
import pickle
import tarfile
import zlib
from pathlib import Path
from typing import Callable

import numpy as np

from ...errors import DataError
# The shared helpers under the names the CIFAR-10 code had in datasets.py, so that the code below is that
# code unchanged (a pure move; issue 16 edits it concurrently).
from .cache import CACHE_VERSION as _CACHE_VERSION
from .cache import cache_file as _cache_file
from .cache import cache_read as _cache_read
from .cache import cache_write as _cache_write
from .common import Dataset
from .common import candidate_dirs as _candidates
from .common import missing_data_error as _missing
from .common import pack as _pack

__all__ = ["CIFAR10_CLASSES", "load_cifar10"]

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


load_cifar10 = _cifar10  # the registry's entry point
