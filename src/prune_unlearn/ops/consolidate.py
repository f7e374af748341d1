"""Consolidation: retrain without the processed requests' points, retire their patches, and record it.

``Ledger.consolidate`` runs in three phases, so that requests keep arriving (and being processed) while the model
retrains, and so that a kill -9 at any moment leaves the current model and ledger as they were:

1. **plan** (under the writer lock, writes nothing): the model must come from recorded training (its header
   names a :class:`~prune_unlearn.experiments.records.TrainingRecord` whose aggregate is the model's base); every
   ``processed`` request is taken; its points (by hash) are dropped from the data manifest; each shard holding
   one retrains from its first affected slice. Requests about another data set, a manifest that does not match
   the data, an unreachable Ray cluster: refused here.
2. **retrain** (no lock): one task per affected shard on the engine (:mod:`.engine`); checkpoints go to the
   record store as they are made, so a killed run resumes where it stopped. The model and ledger are untouched.
3. **commit** (under the writer lock): the new training record is stored; requests processed meanwhile are
   patched again on the new model (``forget``, certified again); one ``consolidate`` event moves the planned
   requests to ``consolidated`` and is committed with the new model file (:func:`.commit.commit_model`).
"""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import dataclass, replace
from pathlib import Path

from torch import nn

from .._crash import crash_point
from .._hashing import pattern_sha256
from .._version import __version__
from ..core.patches import PatchedModel, model_state_sha256
from ..errors import FormatError, LedgerError, PruneError
from ..experiments.manifest import DataManifest, check_manifest, dataset_hashes
from ..experiments.recorded import ShardTask, aggregate, run_shard_task
from ..experiments.records import RecordStore, ShardEntry, TrainingRecord
from .chain import RequestRow
from .commit import commit_model, exclusive, load_model, lock_path, writer_lock
from .intake import DataSets, gather
from .process import honour
from .results import ConsolidateResult, Request
from .store import Store
from .verification import verify

__all__ = ["consolidate", "record_of", "recorded_dataset", "check_rows_owned", "CONSOLIDATE_CRASH_POINTS"]

# Test hook points (PRUNE_LEDGER_CRASH_AT) besides the model commit's own.
CONSOLIDATE_CRASH_POINTS = ("after_slice_checkpoint", "after_retraining", "after_record_write")


def record_of(header: dict, model: nn.Module, model_path: Path, record_root=None):
    """The record store, training record and record hash the model file names; refused unless the model's
    base weights are the ones that record produced."""
    tag = (header.get("info") or {}).get("training_record")
    if not isinstance(tag, dict) or "sha256" not in tag:
        raise LedgerError(f"The model {model_path} was not trained in recorded mode (its header names no training "
                          "record), so there is no recipe and data manifest to retrain it from. HINT: train it with "
                          "`prune train --recorded` (or prune_unlearn.experiments.recorded.train_recorded), then "
                          "process the ledger's requests on that model.")
    root = record_root if record_root is not None else tag.get("root")
    if not root:
        raise LedgerError(f"The header of {model_path} names training record {tag['sha256'][:12]}… but not its "
                          "folder. HINT: pass the record store's folder (--record).")
    store = RecordStore(root)
    try:
        record = store.get_record(tag["sha256"])
    except FormatError as exc:
        raise LedgerError(f"The training record of {model_path} cannot be read: {exc}") from None
    base = model.base if isinstance(model, PatchedModel) else model
    found = model_state_sha256(base)
    if found != record.model_sha256:
        raise LedgerError(f"The base weights of {model_path} are not the model its training record "
                          f"{tag['sha256'][:12]}… produced (they hash to {found[:12]}…, the record "
                          f"says {record.model_sha256[:12]}…). HINT: use the model file that recorded training (or "
                          "the last consolidation) wrote, and the ledger that patched it.")
    return store, record, tag["sha256"]


def recorded_dataset(record: TrainingRecord, data, data_dir):
    """The data set a record was trained on: ``data`` (a Dataset or name) if given and it is that one."""
    datasets = DataSets(data, data_dir)
    try:
        ds = datasets.named(record.dataset)
    except LedgerError:
        given = data if isinstance(data, str) else data.name
        raise LedgerError(f"The model was trained (recorded) on data set {record.dataset!r}, but the data set given "
                          f"is {given!r}. HINT: pass --data {record.dataset} (or leave --data out).") from None
    if len(ds.y_train) != record.n_train:
        raise LedgerError(f"Data set {ds.name!r} has {len(ds.y_train)} training points, but the model was trained on "
                          f"a version with {record.n_train}: the recorded manifest does not match the data. HINT: "
                          "use the data files (--data-dir) the model was trained with.")
    return ds


def check_rows_owned(model: nn.Module, rows: list[RequestRow], model_path: Path) -> None:
    """Refuse a model carrying patch rows no processed request owns (class patches from ``forget_class``, point
    patches from ``forget`` outside the ledger): retraining replaces the base they were certified on, and the
    consolidate event could not say which withdrawal they honoured, so dropping them silently is not allowed."""
    if not isinstance(model, PatchedModel):
        return
    classes = model.class_patches
    if classes is not None and len(classes):
        raise LedgerError(f"The model {model_path} carries {len(classes)} whole-class patch row(s) (forget_class), "
                          "which no ledger request owns; a retrained base would leave them uncertified. HINT: "
                          "consolidate the model before forgetting a class, then forget the class again on the "
                          "consolidated model.")
    owned = {p for row in rows for p in Request.from_row(row).patterns}
    ps = model.patches
    stray = [r for r in range(len(ps)) if pattern_sha256(ps.patterns[r]) not in owned]
    if stray:
        raise LedgerError(f"The model {model_path} carries {len(stray)} patched region(s) (e.g. region {stray[0]}) "
                          "that no processed request of this ledger owns (patched outside the ledger, e.g. by "
                          "`prune forget`). Consolidation would drop them without a record. HINT: add those points "
                          "as ledger requests and process them, or consolidate the model the ledger patched.")


@dataclass
class _Plan:
    """What phase 1 decided: the requests, the shards to retrain and how."""

    requests: list[int]
    manifests: dict[int, DataManifest]
    tasks: list[ShardTask]
    n_removed: int
    n_absent: int


def _plan(rows: list[RequestRow], store: RecordStore, record: TrainingRecord, ds) -> _Plan:
    """Phase 1: which training points go, which shards retrain from which slice (reads only)."""
    removed: set[str] = set()
    for row in rows:
        rec = json.loads(row.record)
        if rec.get("dataset") not in (None, record.dataset):
            raise LedgerError(f"Request {row.id} is about data set {rec['dataset']!r}, but the model was trained "
                              f"(recorded) on {record.dataset!r}: its points are not in the recorded manifest. "
                              "HINT: a ledger serves one model; undo the request, or keep a ledger per model.")
        removed.update(rec["point_sha256"])
    hashes = dataset_hashes(ds)
    manifests, tasks, seen = {}, [], set()
    for k, entry in enumerate(record.shard_table):
        manifest = store.get_manifest(entry.manifest)
        check_manifest(manifest, ds, f"the recorded manifest of shard {k}", hashes)
        keep = [h not in removed for h in manifest.hashes]
        seen.update(h for h, kept in zip(manifest.hashes, keep) if not kept)
        if all(keep):
            continue
        bounds = [sum(entry.slice_sizes[:r]) for r in range(len(entry.slice_sizes) + 1)]
        sizes = tuple(sum(keep[bounds[r]:bounds[r + 1]]) for r in range(len(entry.slice_sizes)))
        first = next(r for r in range(len(sizes)) if sizes[r] != entry.slice_sizes[r])
        if not sum(sizes):
            raise LedgerError(f"Consolidating would leave shard {k} without training data (every one of its points "
                              "was withdrawn). HINT: train with fewer shards.")
        manifests[k] = manifest.keep(keep)
        tasks.append(ShardTask(k, first, sizes, entry.checkpoints[first], manifests[k].sha256, record.architecture,
                               record.recipe, record.epochs_per_slice))
    n_removed = sum(sum(record.shard_table[t.shard].slice_sizes) - sum(t.slice_sizes) for t in tasks)
    return _Plan([r.id for r in rows], manifests, tasks, n_removed, len(removed - seen))


def _retrain(plan: _Plan, store: RecordStore, ds, engine, progress: bool) -> list[dict]:
    """Phase 2: run the shard tasks (resuming any a killed run left); the store is the only thing written."""
    store.clean()
    calls = []
    for task in plan.tasks:
        store.put_manifest(plan.manifests[task.shard])
        X, y = plan.manifests[task.shard].points(ds)
        calls.append((str(store.root), task.to_dict(), X.numpy(), y.numpy()))
    results = engine.map(run_shard_task, calls, progress=progress, desc="retrain shards")
    crash_point("after_retraining")
    return results


def _new_record(plan: _Plan, results: list[dict], store: RecordStore, record: TrainingRecord, record_sha: str):
    table = list(record.shard_table)
    for task, result in zip(plan.tasks, results):
        old = table[task.shard]
        table[task.shard] = ShardEntry(task.manifest, task.slice_sizes,
                                       (*old.checkpoints[:task.start + 1], *result["checkpoints"]))
    model = aggregate(record.architecture, [store.get_state(e.checkpoints[-1]) for e in table])
    new = replace(record, shard_table=tuple(table), model_sha256=model_state_sha256(model),
                  generation=record.generation + 1, parent=record_sha,
                  removed={"requests": plan.requests, "points": plan.n_removed})
    sha = store.put_record(new)
    crash_point("after_record_write")
    return model, new, sha


def _repatch(model: nn.Module, rows: list[RequestRow], datasets: DataSets, options: dict, domain):
    """Forget ``rows`` (processed while the model retrained) on the new model, in batches; the patched model
    and, per request, what honours it now."""
    from ..unlearn.forget import forget

    honoured, size = [], options["batch_size"]
    for k in range(0, len(rows), size):
        chunk = rows[k:k + size]
        X, y, spans, ds_domain = gather(chunk, datasets, model)
        try:
            # the call's neighbourhood options (forget's default "auto", as process); none given: region-only
            result = forget(model, X, labels=y, bound=options["bound"], epsilon=options["epsilon"],
                            seed=options["seed"], domain=domain if domain is not None else ds_domain,
                            **options.get("neighbourhood", {"radius": None}))
        except PruneError as exc:
            raise LedgerError(f"Patching requests {chunk[0].id}–{chunk[-1].id} again on the retrained model failed "
                              f"(nothing was committed): {exc}") from None
        model = result.model
        honoured += honour(result.certificate, spans)
    return model, honoured


@contextlib.contextmanager
def _one_consolidation(store: Store):
    path = lock_path(store.path).with_name(store.path.name + ".consolidate.lock")
    with writer_lock(path, blocking=False) as held:
        if not held:
            raise LedgerError(f"Another consolidation of the ledger {store.path} is running. HINT: wait for it; "
                              "processing requests meanwhile is fine.")
        yield


def consolidate(store: Store, model_path: Path, *, engine_factory, record_root=None, data=None, data_dir=None,
                options: dict, domain=None, base: nn.Module | None = None, progress: bool = False):
    """:meth:`Ledger.consolidate <prune_unlearn.ops.ledger.Ledger.consolidate>` (its docstring says what it does)."""
    t0 = time.perf_counter()
    with _one_consolidation(store):
        with exclusive(store):  # phase 1: a consistent snapshot; nothing is written
            rows = store.rows(status="processed")
            if not rows:
                return ConsolidateResult([], [], 0, 0, {}, 0, None, None, None, None, None, {}, [], 0.0,
                                         time.perf_counter() - t0, None, store.head())
            verify(store, strict=True)
            header, model = load_model(store, model_path, base)
            rstore, record, record_sha = record_of(header, model, model_path, record_root)
            ds = recorded_dataset(record, data, data_dir)
            plan = _plan(rows, rstore, record, ds)
            check_rows_owned(model, rows, model_path)
        with engine_factory() as engine:  # an unreachable cluster is refused before anything is written
            described = engine.describe()
            t1 = time.perf_counter()
            results = _retrain(plan, rstore, ds, engine, progress)
            retrain_seconds = time.perf_counter() - t1
        with exclusive(store):  # phase 3
            return _commit(store, model_path, plan, results, rstore, record, record_sha, ds, options, domain, base,
                           described, retrain_seconds, t0)


def _commit(store, model_path, plan, results, rstore, record, record_sha, ds, options, domain, base, engine,
            retrain_seconds, t0) -> ConsolidateResult:
    verify(store, strict=True)
    header, current = load_model(store, model_path, base)
    tag = (header.get("info") or {}).get("training_record") or {}
    if tag.get("sha256") != record_sha:
        raise LedgerError(f"The model {model_path} changed its training record while this consolidation ran "
                          "(another consolidation committed). Nothing was committed; run again.")
    status = {r.id: r.status for r in store.rows_by_id(plan.requests).values()}
    gone = [rid for rid in plan.requests if status.get(rid) != "processed"]
    if gone:
        raise LedgerError(f"Request(s) {gone[:5]} left the processed state (undone) while the model retrained without "
                          "their points. Nothing was committed. HINT: run the consolidation again (finished shards "
                          "are reused).")
    new_base, new_record, new_sha = _new_record(plan, results, rstore, record, record_sha)
    planned = set(plan.requests)
    others = [r for r in store.rows(status="processed") if r.id not in planned]
    datasets = DataSets(ds, None)
    new_model, repatched = _repatch(new_base, others, datasets, options, domain) if others else (new_base, [])
    before = header["tensors_sha256"]
    shards = {str(t.shard): t.start for t in plan.tasks}
    body = {"consolidated": plan.requests, "repatched": repatched, "model_before": before,
            "n_regions": len(new_model.patches) if isinstance(new_model, PatchedModel) else 0,
            "record": {"root": str(rstore.root.resolve()), "before": record_sha, "after": new_sha,
                       "generation": new_record.generation},
            "manifest_before": record.manifest_sha256, "manifest_after": new_record.manifest_sha256,
            "points_removed": plan.n_removed, "points_absent": plan.n_absent,
            "retrained": {"shards": shards, "slices": sum(len(t.slice_sizes) - t.start for t in plan.tasks),
                          "tasks": [{k: r[k] for k in ("shard", "seconds", "cpu_seconds", "resumed_slices")}
                                    for r in results]},
            "engine": engine, "seconds": {"retraining": retrain_seconds, "total": time.perf_counter() - t0},
            "options": options, "library_version": __version__}
    info = {**(header.get("info") or {}), "training_record": {
        "root": str(rstore.root.resolve()), "sha256": new_sha, "generation": new_record.generation,
        "manifest_sha256": new_record.manifest_sha256}}
    event = commit_model(store, "consolidate", body, new_model, model_path, {**header, "info": info})
    return ConsolidateResult(
        requests=plan.requests, repatched=[r["id"] for r in repatched], n_points_removed=plan.n_removed,
        n_points_absent=plan.n_absent, shards_retrained=shards, slices_retrained=body["retrained"]["slices"],
        record_before=record_sha, record_after=new_sha, manifest_after=new_record.manifest_sha256,
        model_before=before, model_after=event.body["model_after"], engine=engine, tasks=body["retrained"]["tasks"],
        retrain_seconds=retrain_seconds,
        seconds=time.perf_counter() - t0, event=event.id, ledger_head=store.head())

