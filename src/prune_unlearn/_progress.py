"""Progress bars behind one helper: on stderr when asked for; a bar on a terminal, a line every 30 s otherwise."""

from __future__ import annotations

import sys
import time
from typing import Iterable, TypeVar

T = TypeVar("T")


class _Silent:
    def __init__(self, iterable):
        self._it = iterable

    def __iter__(self):
        return iter(self._it)

    def update(self, n: int = 1) -> None:
        pass

    def set_postfix(self, *args, **kwargs) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        pass


class _Lines(_Silent):
    """Progress as plain lines on stderr (a log file or pipe, where a bar would be noise): ``desc: k/total unit``
    at most every ``LINE_SECONDS`` seconds, so a long command never stays silent."""

    LINE_SECONDS = 30.0

    def __init__(self, iterable, desc: str = "", total: int | None = None, unit: str = "it", **_):
        super().__init__(iterable if iterable is not None else [])
        self.desc, self.unit, self.n = desc or "progress", unit, 0
        self.total = total if total is not None else (len(iterable) if hasattr(iterable, "__len__") else None)
        self.start = self.last = time.monotonic()

    def __iter__(self):
        for item in self._it:
            yield item
            self.update()

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        if now - self.last >= self.LINE_SECONDS:
            self.last = now
            of = f"/{self.total}" if self.total is not None else ""
            print(f"{self.desc}: {self.n}{of} {self.unit} ({now - self.start:.0f} s)", file=sys.stderr, flush=True)


def progress_bar(iterable: Iterable[T] | None = None, *, enabled: bool = False, **kwargs):
    """A tqdm bar on stderr when ``enabled`` and stderr is a TTY; a line every 30 s when ``enabled`` and stderr is
    a file or pipe; otherwise a do-nothing stand-in."""
    if not enabled:
        return _Silent(iterable if iterable is not None else [])
    if not sys.stderr.isatty():
        return _Lines(iterable, **kwargs)
    from tqdm.auto import tqdm

    return tqdm(iterable, file=sys.stderr, leave=False, dynamic_ncols=True, **kwargs)
