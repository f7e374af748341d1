"""One way to print, for every ``prune`` command.

A command takes ``--json`` (and, where it shows progress, ``--silent``) through :func:`output_options` /
:func:`json_option`, which hand it an :class:`Output`. It then prints its result once with
:meth:`Output.result`: human text by default, or exactly one JSON document on stdout under ``--json``.
Status lines (:meth:`Output.note`) and progress bars go to stderr, and are off under ``--json``; progress
bars are also off under ``--silent``; when stderr is not a terminal they become a line every 30 s
(``prune_unlearn._progress``).
"""

from __future__ import annotations

import functools
import json

import click

__all__ = ["Output", "output_options", "json_option"]


class Output:
    """Where a command's result, notes and progress go."""

    def __init__(self, *, as_json: bool = False, silent: bool = False):
        self.as_json = as_json
        self.silent = silent
        self._printed = False

    @property
    def progress(self) -> bool:
        """Whether library calls may show progress (on stderr: a bar on a terminal, else a line every 30 s)."""
        return not (self.silent or self.as_json)

    def note(self, text: str) -> None:
        """A status line on stderr (not under ``--json``)."""
        if not self.as_json:
            click.echo(text, err=True)

    def result(self, data: dict, human: str) -> None:
        """Print the command's result: ``data`` as one JSON document under ``--json``, else ``human``."""
        if self._printed:  # a second JSON document would break `prune ... --json | jq`
            raise RuntimeError("A command printed its result twice.")
        self._printed = True
        click.echo(json.dumps(data, indent=1) if self.as_json else human)


def _json_flag(f):
    return click.option("--json", "as_json", is_flag=True,
                        help="Print exactly one JSON document (the result) to stdout.")(f)


def _silent_flag(f):
    return click.option("--silent", is_flag=True, help="No progress bars.")(f)


def _inject(f, *, with_silent: bool):
    @functools.wraps(f)
    def wrapper(*args, as_json: bool = False, silent: bool = False, **kwargs):
        return f(*args, output=Output(as_json=as_json, silent=silent), **kwargs)

    wrapper = _json_flag(wrapper)
    return _silent_flag(wrapper) if with_silent else wrapper


def output_options(f):
    """``--json`` and ``--silent``; the command receives ``output``, an :class:`Output`."""
    return _inject(f, with_silent=True)


def json_option(f):
    """``--json`` only (commands without progress bars); the command receives ``output``, an :class:`Output`."""
    return _inject(f, with_silent=False)
