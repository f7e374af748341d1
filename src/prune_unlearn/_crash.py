"""Test hook for crash safety: ``PRUNE_LEDGER_CRASH_AT=<point>`` kills the process (SIGKILL) at that point.

Model commits (:mod:`prune_unlearn.ops.commit`), consolidation (:mod:`prune_unlearn.ops.consolidate`) and
recorded training (:mod:`prune_unlearn.experiments.recorded`) name their points; the tests kill a subprocess at
each and check what it left.
"""

from __future__ import annotations

import os
import signal

__all__ = ["CRASH_ENV", "crash_point"]

CRASH_ENV = "PRUNE_LEDGER_CRASH_AT"


def crash_point(name: str) -> None:
    """Kill this process now if ``$PRUNE_LEDGER_CRASH_AT`` is ``name``."""
    if os.environ.get(CRASH_ENV) == name:
        os.kill(os.getpid(), getattr(signal, "SIGKILL", signal.SIGTERM))
        os._exit(137)  # where SIGKILL does not exist
