"""The hash chain of ledger events, and what each kind of event does to the request rows.

Every change to a ledger is an event ``(id, kind, created_at, body)``. Its ``entry_hash`` is
``sha256(prev_hash + canonical JSON of {id, kind, created_at, body})``, the first ``prev_hash`` being 64
zeros, so editing, deleting, inserting or reordering a row breaks the chain at that row.

The ``requests`` table is a cache of the events: replaying them (:func:`replay`) gives every request's row.
:data:`EVENT_KINDS` is the one place that says what an event of each kind does to those rows; a new kind of
event (or a new status) is one entry there plus a ledger format version whose schema allows it (the SQLite
``CHECK`` constraints of an existing file keep the kinds and statuses it was created with).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable, Iterable, Mapping, NamedTuple

from ..errors import LedgerError

__all__ = [
    "GENESIS_HASH", "STATUSES", "EVENT_KINDS", "MODEL_EVENTS", "EventKind", "Event", "RequestRow", "canonical",
    "entry_hash", "now", "link", "apply_event", "touched_ids", "replay", "check_links", "table_problems",
]

GENESIS_HASH = "0" * 64
STATUSES = ("pending", "processed", "undone", "consolidated", "rejected")


class Event(NamedTuple):
    """One row of the ``events`` table, with its body parsed."""

    id: int
    kind: str
    created_at: str
    body: dict
    prev_hash: str
    entry_hash: str
    state: str = "done"


class RequestRow(NamedTuple):
    """One row of the ``requests`` table: a request's current state, as replaying the events gives it."""

    id: int
    requester: str
    created_at: str
    status: str
    record: str
    result: str | None
    processed_event: int | None
    undone_event: int | None


def canonical(obj: Any) -> str:
    """The JSON text that is hashed and stored: sorted keys, no spaces."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def entry_hash(prev_hash: str, event_id: int, kind: str, created_at: str, body: dict) -> str:
    content = canonical({"id": event_id, "kind": kind, "created_at": created_at, "body": body})
    return hashlib.sha256((prev_hash + content).encode()).hexdigest()


def now() -> str:
    """An event's ``created_at``: UTC, ISO 8601, microseconds."""
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def link(last_id: int, last_hash: str, items: list[tuple[str, dict]], created_at: str) -> list[Event]:
    """Events for ``(kind, body)`` items, chained after the event ``last_id`` whose hash is ``last_hash``."""
    events, event_id, prev = [], last_id, last_hash
    for kind, body in items:
        event_id += 1
        entry = entry_hash(prev, event_id, kind, created_at, body)
        events.append(Event(event_id, kind, created_at, body, prev, entry))
        prev = entry
    return events


# --- what each kind of event does to the request rows -------------------------------------------------


def _advance(rows: Mapping[int, RequestRow], event: Event, request_id: int, verb: str, expected: str,
             **changes) -> RequestRow:
    """The row of ``request_id`` with ``changes``, which must have status ``expected`` before the event."""
    row = rows.get(request_id)
    if row is None or row.status != expected:
        raise LedgerError(f"Event {event.id} {verb} request {request_id}, which is "
                          f"{'unknown' if row is None else row.status}, not {expected}.")
    return row._replace(**changes)


def _add(rows: Mapping[int, RequestRow], event: Event) -> list[RequestRow]:
    rec = event.body["request"]
    if rec["id"] in rows:
        raise LedgerError(f"Event {event.id} adds request {rec['id']}, which already exists.")
    return [RequestRow(rec["id"], rec["requester"], rec["created_at"], "pending", canonical(rec), None, None, None)]


def _process(rows: Mapping[int, RequestRow], event: Event) -> list[RequestRow]:
    return [_advance(rows, event, res["id"], "processes", "pending", status="processed",
                     result=canonical({k: v for k, v in res.items() if k != "id"}), processed_event=event.id)
            for res in event.body["requests"]]


def _undo(rows: Mapping[int, RequestRow], event: Event) -> list[RequestRow]:
    return [_advance(rows, event, event.body["request"], "undoes", "processed", status="undone",
                     undone_event=event.id)]


def _consolidate(rows: Mapping[int, RequestRow], event: Event) -> list[RequestRow]:
    """Consolidated requests leave their patches (``patterns`` empty, claims kept as the record of what was
    proven); requests processed while the model retrained get the patches made for them on the new model."""
    out = []
    for rid in event.body["consolidated"]:
        row = rows.get(rid)
        result = json.loads(row.result) if row is not None and row.result else {}
        out.append(_advance(rows, event, rid, "consolidates", "processed", status="consolidated",
                            result=canonical({**result, "patterns": [], "consolidated_event": event.id})))
    for res in event.body["repatched"]:
        out.append(_advance(rows, event, res["id"], "re-patches", "processed",
                            result=canonical({**{k: v for k, v in res.items() if k != "id"},
                                              "repatched_event": event.id})))
    return out


def _reject(rows: Mapping[int, RequestRow], event: Event) -> list[RequestRow]:
    """A pending request leaves the queue for good, with the reason (and who rejected it) as its result."""
    body = event.body
    result = canonical({"rejection": {"reason": body["reason"], "by": body["by"], "event": event.id}})
    return [_advance(rows, event, body["request"], "rejects", "pending", status="rejected", result=result)]


@dataclass(frozen=True)
class EventKind:
    """What events of one kind do.

    ``apply`` gives the request rows the event creates or changes (raising :class:`LedgerError` when the
    event does not fit the rows), ``touches`` the ids of existing requests it changes (read from its body),
    and ``writes_model`` says whether it records a model file written under the ledger's writer lock.
    """

    apply: Callable[[Mapping[int, RequestRow], Event], list[RequestRow]]
    touches: Callable[[dict], list[int]]
    writes_model: bool = False


EVENT_KINDS: dict[str, EventKind] = {
    "add": EventKind(_add, lambda body: []),
    "process": EventKind(_process, lambda body: [r["id"] for r in body["requests"]], writes_model=True),
    "undo": EventKind(_undo, lambda body: [body["request"]], writes_model=True),
    "consolidate": EventKind(_consolidate, lambda body: [*body["consolidated"], *(r["id"] for r in body["repatched"])],
                             writes_model=True),
    "reject": EventKind(_reject, lambda body: [body["request"]]),
}
MODEL_EVENTS = tuple(kind for kind, spec in EVENT_KINDS.items() if spec.writes_model)


def _kind(event: Event) -> EventKind:
    spec = EVENT_KINDS.get(event.kind)
    if spec is None:
        raise LedgerError(f"Event {event.id} has unknown kind {event.kind!r}.")
    return spec


def apply_event(rows: Mapping[int, RequestRow], event: Event) -> list[RequestRow]:
    """The request rows ``event`` creates or changes, given the rows before it."""
    return _kind(event).apply(rows, event)


def touched_ids(event: Event) -> list[int]:
    """Ids of the existing requests ``event`` changes."""
    return _kind(event).touches(event.body)


def replay(events: Iterable[Event]) -> dict[int, RequestRow]:
    """Every request's row after ``events``, by id."""
    rows: dict[int, RequestRow] = {}
    for event in events:
        for row in apply_event(rows, event):
            rows[row.id] = row
    return rows


# --- verification -------------------------------------------------------------------------------------


def check_links(raw: Iterable[tuple]) -> tuple[list[Event], list[str], int | None]:
    """Recompute the chain over raw ``events`` rows (id, kind, created_at, body text, prev_hash, entry_hash,
    state), in id order: the events up to the first bad one, its problem, and its id (None if all hold)."""
    events: list[Event] = []
    prev = GENESIS_HASH
    for eid, kind, created, body_text, prev_hash, entry, state in raw:
        try:
            body = json.loads(body_text)
        except ValueError:
            body = None
        if prev_hash != prev:
            return events, [f"event {eid} ({kind}): its prev_hash does not match the entry_hash of the event "
                            "before it (a row was deleted, inserted or reordered)"], eid
        if body is None or entry != entry_hash(prev_hash, eid, kind, created, body):
            return events, [f"event {eid} ({kind}): its entry_hash does not match its contents (the row was "
                            "edited)"], eid
        events.append(Event(eid, kind, created, body, prev_hash, entry, state))
        prev = entry
    return events, [], None


def table_problems(events: list[Event], actual: Mapping[int, RequestRow]) -> list[str]:
    """How the requests table (``actual``) differs from what replaying ``events`` gives."""
    try:
        expected = replay(events)
    except (LedgerError, KeyError, TypeError) as exc:
        return [f"the events do not replay: {exc}"]
    problems = []
    for rid in sorted(set(expected) | set(actual)):
        want, got = expected.get(rid), actual.get(rid)
        if want == got:
            continue
        if got is None:
            problems.append(f"request {rid} is missing from the requests table")
        elif want is None:
            problems.append(f"request {rid} is in the requests table but no event added it")
        else:
            fields = [f for f in RequestRow._fields if getattr(want, f) != getattr(got, f)]
            problems.append(f"request {rid}: the requests table differs from the events in {', '.join(fields)} "
                            f"(status {got.status!r}, the events say {want.status!r})")
    return problems
