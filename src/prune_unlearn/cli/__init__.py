"""The ``prune`` command line: a thin layer over the library."""

from .main import cli, main

__all__ = ["cli", "main"]
