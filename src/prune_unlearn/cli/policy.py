"""The exit-code policy of every ``prune`` command, in one place.

====  ==========================================================================================
code  meaning
====  ==========================================================================================
0     ok
1     error: the library refused (:class:`~prune_unlearn.errors.PruneError`) or a file could not be
      read or written (``OSError``); shown as one ``Error: ...`` line on stderr, never a traceback
2     usage error (click: unknown option, bad value, missing argument)
3     it ran, but a check failed: ``audit`` rejected a claim, ``ledger verify`` found tampering
====  ==========================================================================================

Commands get the policy by being built with :func:`command` / :func:`group` (classes
:class:`PruneCommand` / :class:`PruneGroup`), so it holds however they are invoked: from the
``prune`` group, or on their own in a test. Old spellings kept for one release are made with
:func:`deprecated_alias`.
"""

from __future__ import annotations

from typing import NoReturn

import click

from ..errors import PruneError

__all__ = ["EXIT_OK", "EXIT_ERROR", "EXIT_USAGE", "EXIT_CHECK_FAILED", "CONTEXT_SETTINGS", "PruneCommand",
           "PruneGroup", "command", "group", "exit_check_failed", "error_message", "deprecated_alias"]

EXIT_OK = 0
EXIT_ERROR = 1  # click.ClickException's exit code
EXIT_USAGE = 2  # click.UsageError's exit code
EXIT_CHECK_FAILED = 3

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"]}


def error_message(exc: BaseException) -> str:
    """The text after ``Error: `` for an exception the policy turns into exit status 1."""
    if isinstance(exc, OSError) and exc.strerror and exc.filename is not None:
        return f"{exc.strerror}: {exc.filename}"  # "Permission denied: out/report.json", without "[Errno 13]"
    return str(exc)


class PruneCommand(click.Command):
    """A click command under the exit-code policy: library and OS errors become ``Error: ...``, exit 1."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (PruneError, OSError) as exc:
            raise click.ClickException(error_message(exc)) from None


class PruneGroup(click.Group):
    """A click group whose commands and sub-groups follow the policy too."""

    command_class = PruneCommand
    group_class = type  # sub-groups made with @group.group() are PruneGroups as well


def command(name: str | None = None, **kwargs):
    """``@click.command`` for a ``prune`` command (the policy, ``-h``)."""
    kwargs.setdefault("context_settings", CONTEXT_SETTINGS)
    return click.command(name, cls=PruneCommand, **kwargs)


def group(name: str | None = None, **kwargs):
    """``@click.group`` for a ``prune`` command root."""
    kwargs.setdefault("context_settings", CONTEXT_SETTINGS)
    return click.group(name, cls=PruneGroup, **kwargs)


def exit_check_failed() -> NoReturn:
    """End a command that ran and printed its result, but whose check failed (exit 3)."""
    raise click.exceptions.Exit(EXIT_CHECK_FAILED)


class _DeprecatedAlias(PruneCommand):
    def __init__(self, old: str, new: str, target: click.Command):
        help_text = f"Deprecated spelling of `{new}` (removed in the next release).\n\n{target.help or ''}"
        super().__init__(old.split()[-1], params=target.params, callback=target.callback, help=help_text,
                         short_help=f"Deprecated: use `{new}`.", hidden=True, context_settings=CONTEXT_SETTINGS)
        self.note = f"Deprecated: `{old}` is now `{new}`; the old spelling goes in the next release."

    def invoke(self, ctx: click.Context):
        click.echo(self.note, err=True)  # stderr: stdout stays one JSON document under --json
        return super().invoke(ctx)


def deprecated_alias(old: str, new: str, target: click.Command) -> click.Command:
    """A hidden command spelt ``old`` (e.g. ``"prune request add"``) that runs ``target`` (spelt ``new``) after a
    one-line deprecation note on stderr."""
    return _DeprecatedAlias(old, new, target)
