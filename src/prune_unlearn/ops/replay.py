"""What an auditor does with a consolidated model: replay a shard's training and compare the bytes.

:func:`replay` finds the training record the ledger's last consolidation (or the model file) names, checks what
can be checked without training (the record and its manifests are intact, no consolidated request's point is
left in the data manifest, the recorded checkpoints aggregate to the model's base weights), then retrains each
shard asked for from scratch (its recorded manifest, recipe and seeds) and compares every checkpoint's hash.
It writes nothing.
"""

from __future__ import annotations

import json
from pathlib import Path

from torch import nn

from ..core.patches import model_state_sha256
from ..errors import FormatError, LedgerError
from ..experiments.recorded import aggregate, replay_shard
from ..experiments.records import RecordStore
from .chain import MODEL_EVENTS
from .consolidate import record_of, recorded_dataset
from .results import ReplayResult
from .store import Store
from .verification import verify

__all__ = ["replay"]


def _record(store: Store, model_path: Path | None, record_root, base: nn.Module | None):
    """The record store, record and hash to replay, and problems binding them to the ledger and model."""
    from ..core.serialization import load, load_info

    last = next((e for e in reversed(store.events(kinds=MODEL_EVENTS)) if e.kind == "consolidate"), None)
    problems = []
    if model_path is not None:
        problems += verify(store, model_path).problems
        try:
            header, model = load_info(model_path), load(model_path, base=base)
        except FormatError as exc:
            raise LedgerError(f"Cannot replay: {exc}") from None
        rstore, record, sha = record_of(header, model, Path(model_path), record_root)
        if last is not None and last.body["record"]["after"] != sha:
            problems.append(f"the model's training record {sha[:12]}… is not the one the last consolidation (event "
                            f"{last.id}) recorded, {last.body['record']['after'][:12]}…")
        return rstore, record, sha, problems
    if last is None:
        raise LedgerError("This ledger has no consolidation to replay. HINT: pass --model to replay the training "
                          "record the model file names.")
    rstore = RecordStore(record_root if record_root is not None else last.body["record"]["root"])
    sha = last.body["record"]["after"]
    try:
        return rstore, rstore.get_record(sha), sha, problems
    except FormatError as exc:
        raise LedgerError(f"Cannot replay: {exc}") from None


def replay(store: Store, model_path, shards: list[int], *, record_root=None, data=None, data_dir=None,
           base: nn.Module | None = None) -> ReplayResult:
    """:meth:`Ledger.replay <prune_unlearn.ops.ledger.Ledger.replay>` (its docstring says what it does)."""
    rstore, record, sha, problems = _record(store, Path(model_path) if model_path else None, record_root, base)
    bad = [k for k in shards if not 0 <= k < record.shards]
    if bad:
        raise LedgerError(f"The training record {sha[:12]}… has shards 0 to {record.shards - 1}; got {bad}.")
    ds = recorded_dataset(record, data, data_dir)
    try:
        manifests = [rstore.get_manifest(e.manifest) for e in record.shard_table]
        finals = [rstore.get_state(e.checkpoints[-1]) for e in record.shard_table]
    except FormatError as exc:
        raise LedgerError(f"Cannot replay: {exc}") from None
    in_training = {h for m in manifests for h in m.hashes}
    for row in store.rows(status="consolidated"):
        left = [h for h in json.loads(row.record)["point_sha256"] if h in in_training]
        if left:
            problems.append(f"request {row.id} is consolidated, but {len(left)} of its points are still in the "
                            f"data manifest of record {sha[:12]}…")
    if model_state_sha256(aggregate(record.architecture, finals)) != record.model_sha256:
        problems.append(f"the recorded final checkpoints do not aggregate to the record's model "
                        f"{record.model_sha256[:12]}…")
    results = [replay_shard(rstore, record, k, ds) for k in shards]
    problems += [f"shard {r['shard']}: replayed checkpoint(s) {r['mismatches']} differ from the record"
                 for r in results if not r["identical"]]
    return ReplayResult(ok=not problems, record=sha, shards=results, problems=problems)
