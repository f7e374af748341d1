"""Progress bars behind one helper: on stderr, and silent unless asked for and stderr is a terminal."""

from __future__ import annotations

import sys
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


def progress_bar(iterable: Iterable[T] | None = None, *, enabled: bool = False, **kwargs):
    """A tqdm bar on stderr when ``enabled`` and stderr is a TTY; otherwise a do-nothing stand-in."""
    if not enabled or not sys.stderr.isatty():
        return _Silent(iterable if iterable is not None else [])
    from tqdm.auto import tqdm

    return tqdm(iterable, file=sys.stderr, leave=False, dynamic_ncols=True, **kwargs)
