"""Output paths: checked before any work starts, and output folders written as a whole or not at all.

:class:`OutputFolder` (``forget``, ``forget-class``, ``export``, ``demo``): the command checks ``--out`` and
creates a temporary folder next to it (``.<name>.partial-<pid>-<random>``, in the nearest folder that exists)
before it loads anything; it writes every file there, and one ``rename`` makes the folder appear whole. A
kill -9 at any moment leaves either no ``--out`` (or the old one) or the complete new one, plus at most a
stray ``.partial`` folder, which the next command writing that ``--out`` deletes. An existing ``--out`` that
holds files is refused, unless the command is told to replace it (``--overwrite``; ``demo`` always
replaces its folder): the new folder is then swapped in with one atomic exchange (Linux ``renameat2``), or,
where that does not exist, the old folder is renamed aside, the new one renamed in and the old one deleted.

:func:`check_output_file` (``train``): the file's folder must be writable (probed) before training starts.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import secrets
import shutil
from pathlib import Path

from .._crash import crash_point
from ..errors import InputValidationError

__all__ = ["OutputFolder", "check_output_file", "FOLDER_CRASH_POINTS"]

# Test hook (PRUNE_LEDGER_CRASH_AT): kill -9 between writing the files and making the folder appear.
FOLDER_CRASH_POINTS = ("output_files_written", "output_before_rename", "output_after_rename")


def _existing_ancestor(path: Path, option: str) -> Path:
    """The nearest folder above ``path`` that exists; refuse a path under a file."""
    for parent in path.absolute().parents:
        if parent.exists():
            if not parent.is_dir():
                raise InputValidationError(f"{option} {path} is under {parent}, which is a file, not a folder. "
                                           f"HINT: choose another {option}.")
            return parent
    raise InputValidationError(f"{option} {path}: no folder above it exists.")


def _cannot_write(path: Path, where: Path, exc: OSError, option: str) -> InputValidationError:
    return InputValidationError(f"Cannot write {option} {path}: {exc.strerror or exc} in {where}. HINT: choose a "
                                f"folder you can write to (nothing was computed or written).")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux ``renameat2(RENAME_EXCHANGE)``); False where that is not available."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):  # kernel or file system without the exchange
        return False
    raise OSError(err, os.strerror(err), str(b))


class OutputFolder:
    """``--out`` checked now, written in a temporary folder, renamed into place when the ``with`` block ends.

    ``with OutputFolder(out, overwrite=...) as tmp:`` — write into ``tmp``; if the block raises, the temporary
    folder is deleted and ``out`` is left as it was.
    """

    def __init__(self, out: Path, *, overwrite: bool = False, option: str = "--out"):
        self.out = Path(out)
        self.option = option
        if self.out.exists() and not self.out.is_dir():
            raise InputValidationError(f"{option} {self.out} is a file; it must be a folder (or a path that does not "
                                       "exist yet).")
        self.replace = self.out.is_dir() and any(self.out.iterdir())
        if self.replace and not overwrite:
            raise InputValidationError(
                f"{option} {self.out} already exists and holds files; an output folder is written as a whole, never "
                f"into an earlier one. HINT: choose a new folder, delete this one, or pass --overwrite to replace it "
                "as a whole.")
        self.home = _existing_ancestor(self.out, option)
        self._remove_stale()
        self.tmp = self.home / f".{self.out.name}.partial-{os.getpid()}-{secrets.token_hex(4)}"
        try:
            self.tmp.mkdir()
        except OSError as exc:
            raise _cannot_write(self.out, self.home, exc, option) from None

    def _remove_stale(self) -> None:
        """Delete ``.partial`` folders of this ``--out`` left by killed runs (their process is gone)."""
        for stale in self.home.glob(f".{self.out.name}.partial-*"):
            pid = stale.name.rsplit(".partial-", 1)[1].split("-")[0]
            if pid.isdigit() and not _alive(int(pid)):
                shutil.rmtree(stale, ignore_errors=True)

    def __enter__(self) -> Path:
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return
        self.commit()

    def commit(self) -> None:
        """Make the folder appear whole at ``out`` (see the module docstring)."""
        crash_point("output_files_written")
        for path in self.tmp.iterdir():
            with open(path, "rb") as fh:
                os.fsync(fh.fileno())
        _fsync_dir(self.tmp)
        self.out.parent.mkdir(parents=True, exist_ok=True)
        crash_point("output_before_rename")
        replace = self.out.is_dir() and any(self.out.iterdir())
        try:
            if not replace:
                os.replace(self.tmp, self.out)  # onto a missing or empty folder: one rename
            elif _exchange(self.tmp, self.out):
                shutil.rmtree(self.tmp)  # now the old folder
            else:
                aside = self.home / f".{self.out.name}.replaced-{os.getpid()}-{secrets.token_hex(4)}"
                os.replace(self.out, aside)
                os.replace(self.tmp, self.out)
                shutil.rmtree(aside)
        except OSError as exc:
            raise InputValidationError(f"Could not move the finished output into {self.option} {self.out}: "
                                       f"{exc.strerror or exc}. The complete output is in {self.tmp}.") from None
        crash_point("output_after_rename")
        _fsync_dir(self.out.parent)


def check_output_file(path: Path, option: str = "--out") -> None:
    """Refuse, before any work, an output file that cannot be written: a folder, under a file, or in a folder
    where no file can be created (probed by creating and deleting one)."""
    path = Path(path)
    if path.is_dir():
        raise InputValidationError(f"{option} {path} is a folder; give a file name, e.g. {path / 'model.safetensors'}.")
    home = _existing_ancestor(path, option)
    probe = home / f".{path.name}.probe-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        probe.touch(exist_ok=False)
    except OSError as exc:
        raise _cannot_write(path, home, exc, option) from None
    with contextlib.suppress(OSError):
        probe.unlink()
