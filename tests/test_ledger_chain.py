"""The ledger's event table (ops.chain): what each kind of event does to the request rows, and the chain check."""

import json

import pytest

from prune_unlearn.errors import LedgerError
from prune_unlearn.ops.chain import (EVENT_KINDS, GENESIS_HASH, MODEL_EVENTS, STATUSES, canonical, check_links, link,
                                     replay)

T = "2026-01-01T00:00:00.000000+00:00"


def added(rid, requester="alice"):
    return ("add", {"request": {"id": rid, "requester": requester, "created_at": T, "source": "dataset",
                                "n_points": 1, "point_sha256": ["ab" * 32]}})


def processed(*rids):
    return ("process", {"requests": [{"id": r, "patterns": [f"p{r}"], "claims": [], "failed": []} for r in rids],
                        "model_after": "cd" * 32})


def test_replay_walks_each_request_through_its_statuses():
    events = link(0, GENESIS_HASH, [added(1), added(2, "bob"), processed(1, 2), ("undo", {"request": 1})], T)
    rows = replay(events)
    assert [(r.id, r.requester, r.status, r.processed_event, r.undone_event) for r in rows.values()] == [
        (1, "alice", "undone", 3, 4), (2, "bob", "processed", 3, None)]
    assert json.loads(rows[2].result) == {"patterns": ["p2"], "claims": [], "failed": []}
    assert rows[1].record == canonical(events[0].body["request"])
    assert {r.status for r in rows.values()} <= set(STATUSES)
    assert set(EVENT_KINDS) == {"add", "process", "undo", "consolidate", "reject"}
    assert MODEL_EVENTS == ("process", "undo", "consolidate")


def consolidated(rids, repatched=()):
    return ("consolidate", {"consolidated": list(rids), "model_after": "ef" * 32,
                            "repatched": [{"id": r, "patterns": [f"q{r}"], "claims": [], "failed": []}
                                          for r in repatched]})


def test_consolidate_retires_patches_and_re_patches_requests_processed_meanwhile():
    events = link(0, GENESIS_HASH, [added(1), added(2), added(3), processed(1), processed(2), added(4),
                                    consolidated([1], repatched=[2])], T)
    rows = replay(events)
    assert [r.status for r in rows.values()] == ["consolidated", "processed", "pending", "pending"]
    assert json.loads(rows[1].result) == {"patterns": [], "claims": [], "failed": [], "consolidated_event": 7}
    assert json.loads(rows[2].result) == {"patterns": ["q2"], "claims": [], "failed": [], "repatched_event": 7}
    assert (rows[1].processed_event, rows[2].processed_event) == (4, 5)  # when they were first processed


def rejected(rid, reason="withdrawn", by="operator"):
    return ("reject", {"request": rid, "reason": reason, "by": by})


def test_reject_takes_a_pending_request_out_of_the_queue_with_its_reason():
    events = link(0, GENESIS_HASH, [added(1), added(2), rejected(1, "duplicate of 2"), processed(2)], T)
    rows = replay(events)
    assert [(r.id, r.status, r.processed_event) for r in rows.values()] == [(1, "rejected", None), (2, "processed", 4)]
    assert json.loads(rows[1].result) == {"rejection": {"reason": "duplicate of 2", "by": "operator", "event": 3}}


@pytest.mark.parametrize("items,message", [
    ([added(1), ("undo", {"request": 1})], "Event 2 undoes request 1, which is pending, not processed."),
    ([added(1), processed(7)], "Event 2 processes request 7, which is unknown, not pending."),
    ([added(1), processed(1), processed(1)], "Event 3 processes request 1, which is processed, not pending."),
    ([added(1), added(1)], "Event 2 adds request 1, which already exists."),
    ([added(1), ("frobnicate", {})], "Event 2 has unknown kind 'frobnicate'."),
    ([added(1), consolidated([1])], "Event 2 consolidates request 1, which is pending, not processed."),
    ([added(1), processed(1), consolidated([1]), consolidated([1])],
     "Event 4 consolidates request 1, which is consolidated, not processed."),
    ([added(1), added(2), processed(1), consolidated([1], repatched=[2])],
     "Event 4 re-patches request 2, which is pending, not processed."),
    ([added(1), processed(1), rejected(1)], "Event 3 rejects request 1, which is processed, not pending."),
    ([added(1), rejected(1), processed(1)], "Event 3 processes request 1, which is rejected, not pending."),
    ([added(1), rejected(1), rejected(1)], "Event 3 rejects request 1, which is rejected, not pending."),
])
def test_replay_refuses_events_that_do_not_fit_the_requests(items, message):
    with pytest.raises(LedgerError, match=message.replace(".", r"\.").replace("(", r"\(")):
        replay(link(0, GENESIS_HASH, items, T))


def test_check_links_stops_at_the_first_broken_link():
    events = link(0, GENESIS_HASH, [added(1), added(2), added(3)], T)
    raw = [(e.id, e.kind, e.created_at, canonical(e.body), e.prev_hash, e.entry_hash, "done") for e in events]
    assert check_links(raw) == (events, [], None)
    edited = list(raw)
    edited[1] = edited[1][:3] + (edited[1][3].replace("alice", "mallory"),) + edited[1][4:]
    good, problems, first_bad = check_links(edited)
    assert good == events[:1] and first_bad == 2 and problems == [
        "event 2 (add): its entry_hash does not match its contents (the row was edited)"]
    good, problems, first_bad = check_links([raw[0], raw[2]])
    assert first_bad == 3 and problems[0].startswith("event 3 (add): its prev_hash does not match")
