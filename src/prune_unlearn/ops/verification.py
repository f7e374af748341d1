"""Verifying a ledger: its hash chain, its requests table against the events, and its model file."""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import LedgerError
from .chain import check_links, table_problems
from .commit import model_problems
from .results import VerifyResult
from .store import Store

__all__ = ["verify"]


def verify(store: Store, model_path: str | os.PathLike | None = None, *, strict: bool = False) -> VerifyResult:
    """Recompute the hash chain, replay it against the requests table, and check the model file.

    Reports the first event whose chain link or contents do not hold, any request whose row differs from
    what the events say, any event still committing, and (with ``model_path``) a model file that is not the
    one the last model event wrote. With ``strict=True`` a failed check raises :class:`LedgerError`.
    """
    raw = store.raw_events()
    events, problems, first_bad = check_links(raw)
    if not problems:
        problems += table_problems(events, {r.id: r for r in store.rows()})
        problems += [f"event {e.id} ({e.kind}) is still committing: a process/undo was interrupted or is "
                     "running. HINT: run `prune ledger process` to finish or roll it back"
                     for e in events if e.state == "committing"]
        if model_path is not None:
            problems += model_problems(Path(model_path), events)
    result = VerifyResult(ok=not problems, n_events=len(raw), n_requests=store.n_requests(), head=store.head(),
                          first_bad_event=first_bad, model=str(model_path) if model_path is not None else None,
                          problems=problems)
    if strict and problems:
        more = f" (and {len(problems) - 1} more problem(s))" if len(problems) > 1 else ""
        raise LedgerError(f"The ledger {store.path} failed verification: {problems[0]}{more}. HINT: run "
                          "`prune ledger verify` for the full list; restore the ledger (and model) from a backup.")
    return result
