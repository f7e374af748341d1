"""What the ledger hands back: a :class:`Request` and the outcome of ``process``, ``undo`` and ``verify``."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

__all__ = ["Request", "ProcessResult", "UndoResult", "VerifyResult", "ConsolidateResult", "ReplayResult"]


@dataclass(frozen=True)
class Request:
    """One withdrawal request and what became of it.

    ``patterns`` are the ``pattern_sha256`` of the patched regions covering its points (as in the
    certificate); ``claims`` hold one entry per forgotten point, ``failed`` the points that could not be.
    ``domain`` is the box its points were checked against when it was added (None for requests added before
    boxes were recorded); ``rejection`` the reason, who rejected it and the event, for a rejected request.
    A ``consolidated`` request has no patterns left (the model was retrained without its points by event
    ``consolidated_event``); its claims stay as the record of what its patches proved.
    """

    id: int
    requester: str
    created_at: str
    status: str
    source: str
    dataset: str | None
    indices: list | None
    file: str | None
    file_sha256: str | None
    labels_file: str | None
    n_points: int
    point_sha256: list
    labels: list | None
    patterns: list = field(default_factory=list)
    claims: list = field(default_factory=list)
    failed: list = field(default_factory=list)
    processed_event: int | None = None
    undone_event: int | None = None
    consolidated_event: int | None = None
    domain: list | None = None
    rejection: dict | None = None

    @classmethod
    def from_row(cls, row) -> "Request":
        """The request a row of the requests table (:class:`.chain.RequestRow`) describes."""
        rec = json.loads(row.record)
        res = json.loads(row.result) if row.result else {}
        return cls(
            id=row.id, requester=row.requester, created_at=row.created_at, status=row.status,
            source=rec["source"], dataset=rec.get("dataset"), indices=rec.get("indices"), file=rec.get("file"),
            file_sha256=rec.get("file_sha256"), labels_file=rec.get("labels_file"), n_points=rec["n_points"],
            point_sha256=rec["point_sha256"], labels=rec.get("labels"), patterns=res.get("patterns", []),
            claims=res.get("claims", []), failed=res.get("failed", []), processed_event=row.processed_event,
            undone_event=row.undone_event, consolidated_event=res.get("consolidated_event"), domain=rec.get("domain"),
            rejection=res.get("rejection"),
        )

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class ProcessResult:
    """What one :meth:`Ledger.process` call did: ``requests`` it processed (empty when nothing was pending),
    ``skipped`` (``{"id", "reason"}``: points unreadable now, still pending) and ``rejected`` (never forgettable
    on this model, rejected with the reason)."""

    requests: list
    n_points: int
    n_forgotten: int
    n_failed: int
    batches: list
    n_regions: int | None
    model_sha256: str | None
    ledger_head: str
    seconds: float
    skipped: list = field(default_factory=list)
    rejected: list = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        if not (self.requests or self.skipped or self.rejected):
            return "nothing to do: no pending requests"
        lines = [f"processed {len(self.requests)} request(s) ({self.n_points} points) in {len(self.batches)} "
                 f"batch(es): {self.n_forgotten} forgotten, {self.n_failed} failed; the model has {self.n_regions} "
                 f"patched region(s); {self.seconds:.2f} s; ledger head {self.ledger_head[:12]}…"]
        lines += [f"rejected request {r['id']}: {r['reason']}" for r in self.rejected]
        lines += [f"skipped request {s['id']} (still pending): {s['reason']}" for s in self.skipped]
        return "\n".join(lines)


@dataclass(frozen=True)
class UndoResult:
    """What :meth:`Ledger.undo` removed; ``kept_patterns`` are regions still needed by other live requests."""

    request: int
    event: int
    removed_patterns: list
    kept_patterns: list
    n_regions: int
    model_sha256: str
    ledger_head: str

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        kept = (f"; kept {len(self.kept_patterns)} region(s) shared with other live requests"
                if self.kept_patterns else "")
        return (f"undid request {self.request}: removed {len(self.removed_patterns)} patched region(s){kept}; "
                f"the model has {self.n_regions} patched region(s); ledger head {self.ledger_head[:12]}…")


@dataclass(frozen=True)
class VerifyResult:
    """Outcome of :meth:`Ledger.verify`: ``problems`` is empty when the ledger (and model) check out."""

    ok: bool
    n_events: int
    n_requests: int
    head: str
    first_bad_event: int | None
    model: str | None
    problems: list

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        what = f"ledger ({self.n_events} events, {self.n_requests} requests)" + (f" and model {self.model}"
                                                                                 if self.model else "")
        if self.ok:
            return f"OK: {what} verified; head {self.head}"
        return f"FAILED: {what}:\n" + "\n".join(f"  - {p}" for p in self.problems)


@dataclass(frozen=True)
class ConsolidateResult:
    """What :meth:`Ledger.consolidate` did; ``requests`` is empty when nothing was processed (nothing written).

    ``shards_retrained`` maps each retrained shard to its first affected slice (the checkpoint it restarted
    from); ``tasks`` gives each shard task's wall and CPU seconds; ``repatched`` are requests processed while
    the model retrained, patched again on the new model.
    """

    requests: list
    repatched: list
    n_points_removed: int
    n_points_absent: int
    shards_retrained: dict
    slices_retrained: int
    record_before: str | None
    record_after: str | None
    manifest_after: str | None
    model_before: str | None
    model_after: str | None
    engine: dict
    tasks: list
    retrain_seconds: float
    seconds: float
    event: int | None
    ledger_head: str

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        if not self.requests:
            return "nothing to do: no processed requests to consolidate"
        shards = ", ".join(f"{k} from slice {j}" for k, j in sorted(self.shards_retrained.items(), key=lambda kv:
                                                                   int(kv[0])))
        again = f"; re-patched {len(self.repatched)} request(s) processed meanwhile" if self.repatched else ""
        return (f"consolidated {len(self.requests)} request(s): removed {self.n_points_removed} training point(s) "
                f"({self.n_points_absent} were not in the training data), retrained shard(s) {shards or 'none'} "
                f"({self.slices_retrained} slice(s)) on {self.engine.get('name')} with "
                f"{self.engine.get('workers')} worker(s) in {self.retrain_seconds:.1f} s{again}; "
                f"{self.seconds:.1f} s in all; training record {self.record_after[:12]}…, ledger head "
                f"{self.ledger_head[:12]}…")


@dataclass(frozen=True)
class ReplayResult:
    """Outcome of :meth:`Ledger.replay`: each shard retrained from its recorded manifest and recipe."""

    ok: bool
    record: str
    shards: list
    problems: list

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        lines = [f"shard {s['shard']}: {s['checkpoints']} checkpoint(s) "
                 f"{'byte-identical' if s['identical'] else 'DIFFERENT at ' + str(s['mismatches'])} "
                 f"({s['seconds']:.1f} s)" for s in self.shards]
        head = "OK" if self.ok else "FAILED"
        return "\n".join([f"{head}: replay of training record {self.record[:12]}…", *("  " + x for x in lines),
                          *("  - " + p for p in self.problems)])
