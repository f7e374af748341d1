"""The ``prune`` command group: one command root per noun, each defined in its own module.

==============================================  ==========================
command                                         module
==============================================  ==========================
``train``                                       :mod:`.train`
``forget``, ``forget-class``                    :mod:`.forget`
``demo``                                        :mod:`.demo`
``audit``                                       :mod:`.audit`
``export``                                      :mod:`.export`
``bench``                                       :mod:`.bench`
``ledger add|list|process|undo|verify``         :mod:`.ledger`
==============================================  ==========================

Exit codes (:mod:`.policy`): 0 ok; 1 error (``Error: ...``); 2 usage; 3 a check failed.
"""

from __future__ import annotations

import click

from .._version import __version__
from .audit import audit_cmd
from .bench import bench
from .demo import demo
from .export import register as register_export
from .forget import forget_class_cmd, forget_cmd
from .ledger import register as register_ledger
from .policy import group
from .train import train

__all__ = ["cli", "main"]


@group()
@click.version_option(__version__, prog_name="prune")
def cli() -> None:
    """prune-unlearn: make a trained classifier forget chosen training points, with certificates.

    Exit codes: 0 ok, 1 error, 2 usage error, 3 a check failed (audit, ledger verify).
    """


for _command in (train, forget_cmd, forget_class_cmd, demo, audit_cmd, bench):
    cli.add_command(_command)
register_export(cli)
register_ledger(cli)


def main() -> None:  # console-script entry point
    cli(prog_name="prune")


if __name__ == "__main__":
    main()
