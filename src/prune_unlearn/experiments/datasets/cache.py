"""A cache of decoded data (e.g. CIFAR-10 image folders) as uncompressed ``.npz`` files in ``$PRUNE_CACHE_DIR``
(default ``~/.cache/prune-unlearn/``), keyed by a string that names the source and its version."""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np

__all__ = ["CACHE_DIR_ENV", "CACHE_VERSION", "arrays_sha256", "cache_dir", "cache_file", "cache_read", "cache_write"]

CACHE_DIR_ENV = "PRUNE_CACHE_DIR"

# 2: every cache file carries a SHA-256 of its arrays, checked on every read.
CACHE_VERSION = 2


def cache_dir() -> Path | None:
    env = os.environ.get(CACHE_DIR_ENV)
    if env:
        return Path(env)
    try:
        return Path.home() / ".cache" / "prune-unlearn"
    except RuntimeError:  # no home directory: no cache
        return None


def cache_file(kind: str, key: str) -> Path | None:
    directory = cache_dir()
    if directory is None:
        return None
    return directory / f"{kind}-{hashlib.sha256(key.encode()).hexdigest()[:24]}.npz"


def arrays_sha256(arrays: dict[str, np.ndarray]) -> str:
    """SHA-256 of named arrays: names, dtypes, shapes and bytes, in sorted name order."""
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(f"{name}|{a.dtype.str}|{a.shape}\n".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def cache_read(path: Path | None, key: str, names: tuple[str, ...]) -> dict[str, np.ndarray] | None:
    """The cached arrays, or None when there is no cache file or it is corrupt, stale, foreign or modified.

    A file whose arrays do not match the hash stored with them is never used: a warning names it and the
    caller decodes the data again (and rewrites the file)."""
    if path is None or not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            if str(z["key"]) != key:
                return None
            arrays, stored = {n: z[n] for n in names}, str(z["sha256"])
    except Exception:  # noqa: BLE001 - any unreadable cache is simply rebuilt
        return None
    if arrays_sha256(arrays) != stored:
        warnings.warn(f"The decoded-image cache {path} does not match the hash stored with it (modified or "
                      f"damaged); ignoring it and decoding the images again.", stacklevel=2)
        return None
    return arrays


def cache_write(path: Path | None, key: str, arrays: dict[str, np.ndarray]) -> str:
    """Write atomically (temporary file + rename); a cache that cannot be written is not an error."""
    if path is None:
        return "not written: no cache directory (set PRUNE_CACHE_DIR)"
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, key=np.array(key), sha256=np.array(arrays_sha256(arrays)), **arrays)
        os.replace(tmp, path)
        tmp = None
    except OSError as exc:
        return f"not written: {exc}"
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
    return f"written: {path}"

