"""Rejecting pending requests: a hash-chained ``reject`` event per request, with the reason and who rejected it.

An operator rejects (or cancels, at the requester's word) a pending request with :func:`reject_request`;
``process`` rejects the requests it can never forget (:mod:`.process`) with :func:`reject_requests`. A rejected
request stays in the ledger with its reason and is never processed; only pending requests can be rejected
(a processed one is undone instead).
"""

from __future__ import annotations

from ..errors import LedgerError
from .chain import now
from .commit import exclusive
from .results import Request
from .store import Store

__all__ = ["REJECTED_BY", "MAX_REASON", "reject_requests", "reject_request"]

REJECTED_BY = ("operator", "process")
MAX_REASON = 2000  # characters: a reason is a sentence or a ticket reference, not a document


def reject_requests(store: Store, items: list[dict], by: str) -> list[int]:
    """Append one ``reject`` event per ``{"id", "reason"}`` item, in one transaction; the event ids.

    Call under the writer lock (:func:`.commit.exclusive`) so no ``process`` is forgetting them meanwhile."""
    if by not in REJECTED_BY:
        raise LedgerError(f"A rejection is made by one of {', '.join(REJECTED_BY)}, not {by!r}.")
    items_ = [("reject", {"request": int(i["id"]), "reason": str(i["reason"])[:MAX_REASON], "by": by})
              for i in items]
    with store.transaction():
        events = store.next_events(items_, now())
        store.insert(events)
    return [e.id for e in events]


def reject_request(store: Store, request_id: int, reason: str) -> Request:
    """Reject pending request ``request_id`` for ``reason`` (an operator's decision); the request afterwards."""
    if not isinstance(reason, str) or not reason.strip():
        raise LedgerError("A rejection needs a reason (a non-empty string), e.g. 'withdrawn by the requester' or "
                          "a ticket reference.")
    if len(reason) > MAX_REASON:
        raise LedgerError(f"The reason is {len(reason)} characters long; keep it under {MAX_REASON} (a sentence or "
                          "a ticket reference).")
    with exclusive(store):  # waits for a running process, which may be forgetting this very request
        request = Request.from_row(store.row(request_id))
        if request.status != "pending":
            hint = {"processed": "its points are forgotten; `prune ledger undo` removes its patches",
                    "undone": f"it was undone by event {request.undone_event}",
                    "rejected": f"it was rejected already ({(request.rejection or {}).get('reason')!r})"}
            raise LedgerError(f"Request {request.id} is {request.status}: only a pending request can be rejected; "
                              f"{hint.get(request.status, '')}.")
        reject_requests(store, [{"id": request.id, "reason": reason.strip()}], by="operator")
        return Request.from_row(store.row(request_id))
