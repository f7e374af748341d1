"""Recorded training: training that an auditor can replay bit for bit, sharded and sliced as in SISA.

A recorded run keeps, in a :class:`~.records.RecordStore`, the recipe, the data manifest (every training point's
SHA-256, in order) and every checkpoint, and names them all in a :class:`~.records.TrainingRecord`. With
``shards = S`` and ``slices = R`` it follows the schedule of :class:`~.baselines.sisa.SISA`, promoted to a training
mode whose checkpoints live on disk:

* the training set is permuted (``torch.randperm`` seeded by ``recipe.seed``) and cut into ``S`` shards, each into
  ``R`` slices; shard ``k`` starts from ``build_model(spec, seed=derive_seed(recipe.seed, 0, k))``;
* for slice ``r`` it trains ``epochs_per_slice`` epochs (default SISA's ``round(2E / (R + 1))``) with
  :func:`~.training.train_model` on slices ``0 … r`` of its data, a fresh optimiser, ``seed =
  derive_seed(recipe.seed, 1, k, r)`` (also the global seed, for dropout), the last ``recipe.anneal_epochs`` of
  them at lr/10; checkpoint ``r + 1`` is the result;
* the model is the shard models' **averaged logits**. For MLPs the average of ``S`` networks is itself one MLP:
  hidden layers side by side (block-diagonal weights), the output layer's weights divided by ``S`` — still a
  Linear/ReLU network that PRUNE patches like any other (:func:`aggregate`). ``S = R = 1`` is plain training.

Determinism: each shard trains with one intra-op thread and ``torch.use_deterministic_algorithms(True)``
(:func:`deterministic_cpu`), every random draw comes from the seeds above, and the data come in manifest order,
so the same manifest and recipe give byte-identical checkpoints on the same torch version and CPU instruction
set (the record keeps both: :func:`determinism_info`). Retraining shard ``k`` from checkpoint ``j`` (its first
slice with withdrawn points) therefore gives exactly what training from scratch on the reduced data would.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import time
from dataclasses import dataclass
from typing import Callable, NamedTuple, Sequence

import numpy as np
import torch
from torch import nn

from .._crash import crash_point
from .._hashing import state_sha256
from ..core.models import build_model, mlp
from ..core.patches import model_state_sha256
from ..errors import InputValidationError
from .baselines.base import derive_seed
from .manifest import DataManifest, check_manifest, dataset_hashes
from .records import RecordStore, ShardEntry, TrainingRecord, canonical_json
from .training import Recipe, train_model

__all__ = ["ShardTask", "RecordedModel", "train_recorded", "run_shard_task", "aggregate", "deterministic_cpu",
           "determinism_info", "recipe_from_dict", "partition", "replay_shard", "inline_map", "AGGREGATES"]

AGGREGATES = {"single": "one model (shards = 1)",
              "mean-logits": "the mean of the shard models' logits, itself one MLP with block-diagonal hidden layers"}


@contextlib.contextmanager
def deterministic_cpu(threads: int = 1):
    """One intra-op thread and deterministic algorithms while training; the caller's settings afterwards."""
    before = (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled())
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.set_num_threads(before[0])
        torch.use_deterministic_algorithms(before[1])


def determinism_info() -> dict:
    """What byte-identical replay depends on besides the record: torch version, CPU kernels, thread count."""
    return {"torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability(), "threads": 1,
            "deterministic_algorithms": True}


def recipe_from_dict(data: dict) -> Recipe:
    known = {f.name for f in dataclasses.fields(Recipe)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise InputValidationError(f"The recorded recipe has the key {unknown[0]!r}, which this library's Recipe "
                                   f"does not know (it has {', '.join(sorted(known))}). HINT: replay with the "
                                   "prune-unlearn version that recorded it.")
    return Recipe(**data)


def partition(n: int, shards: int, slices: int, seed: int) -> list[list[list[int]]]:
    """Training rows ``0 … n-1`` permuted by ``seed`` and cut into ``shards`` × ``slices`` (as SISA does)."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return [[s.tolist() for s in shard.tensor_split(slices)] for shard in perm.tensor_split(shards)]


@dataclass(frozen=True)
class ShardTask:
    """Train shard ``shard`` from checkpoint ``start`` through its last slice (everything else it needs)."""

    shard: int
    start: int
    slice_sizes: tuple[int, ...]
    start_checkpoint: str
    manifest: str
    architecture: dict
    recipe: dict
    epochs_per_slice: int

    @property
    def key(self) -> str:
        """Names the task's work: two tasks with the same key write the same checkpoints."""
        return hashlib.sha256(canonical_json({**dataclasses.asdict(self), **determinism_info()}).encode()).hexdigest()

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "slice_sizes": list(self.slice_sizes)}


def train_slices(model: nn.Module, X: torch.Tensor, y: torch.Tensor, task: ShardTask, first: int,
                 on_checkpoint: Callable[[int, dict], None]) -> None:
    """Train slices ``first … R-1`` of ``task``'s shard in place; ``on_checkpoint(r + 1, state)`` after each."""
    recipe = recipe_from_dict(task.recipe)
    for r in range(first, len(task.slice_sizes)):
        n = sum(task.slice_sizes[: r + 1])
        seed = derive_seed(recipe.seed, 1, task.shard, r)
        torch.manual_seed(seed)  # anything drawing from the global generator (dropout) replays too
        train_model(model, X[:n], y[:n], dataclasses.replace(recipe, epochs=task.epochs_per_slice, seed=seed))
        on_checkpoint(r + 1, model.state_dict())


def run_shard_task(root: str, task: dict, X: np.ndarray, y: np.ndarray) -> dict:
    """Run one :class:`ShardTask` (as a dict) on the shard's points ``X, y`` in manifest order; store-backed.

    Each checkpoint goes to the store as it is made, and the task's progress with it: a task killed midway
    resumes from its last checkpoint. Returns ``{"shard", "checkpoints", "seconds", "cpu_seconds",
    "resumed_slices"}``. A top-level function, so Ray and process pools can ship it.
    """
    spec = ShardTask(**{**task, "slice_sizes": tuple(task["slice_sizes"])})
    store = RecordStore(root)
    t0, cpu0 = time.perf_counter(), time.process_time()
    with deterministic_cpu():
        done = store.task_progress(spec.key)[: len(spec.slice_sizes) - spec.start]
        resumed = len(done)
        model = build_model(spec.architecture)
        model.load_state_dict(store.get_state(done[-1] if done else spec.start_checkpoint))
        X_t, y_t = torch.tensor(np.asarray(X)), torch.tensor(np.asarray(y), dtype=torch.int64)

        def keep(_: int, state: dict) -> None:
            done.append(store.put_state(state))
            store.save_task_progress(spec.key, done)
            crash_point("after_slice_checkpoint")

        train_slices(model, X_t, y_t, spec, spec.start + resumed, keep)
    return {"shard": spec.shard, "checkpoints": done, "seconds": time.perf_counter() - t0,
            "cpu_seconds": time.process_time() - cpu0, "resumed_slices": resumed}


def inline_map(fn, calls: Sequence[tuple], *, progress: bool = False, desc: str = "") -> list:
    """The engine of last resort: run the calls here, one after another."""
    from .._progress import progress_bar

    return [fn(*call) for call in progress_bar(calls, enabled=progress, desc=desc, unit="shard")]


def aggregate(architecture: dict, states: list[dict]) -> nn.Module:
    """The model whose logits are the mean of the shard models' (one shard: that model).

    For an MLP ``FC(h1 × h2 …)`` and ``S`` shards this is ``FC(S·h1 × S·h2 …)``: first layers stacked, hidden
    layers block-diagonal, output weights side by side divided by ``S`` and output bias the mean.
    """
    if len(states) == 1:
        model = build_model(architecture)
        model.load_state_dict(states[0])
        return model.eval()
    if architecture.get("kind") != "mlp":
        raise InputValidationError(f"Sharded recorded training needs an MLP (its shards' mean is again an MLP that "
                                   f"PRUNE can patch); got architecture {architecture.get('kind')!r}. HINT: use "
                                   "shards=1 for this architecture.")
    S, hidden = len(states), list(architecture["hidden"])
    merged = mlp(architecture["input_dim"], [S * h for h in hidden], architecture["num_classes"])
    members = []
    for state in states:
        member = build_model(architecture)
        member.load_state_dict(state)
        members.append([m for m in member if isinstance(m, nn.Linear)])
    with torch.no_grad():
        for depth, layer in enumerate(m for m in merged if isinstance(m, nn.Linear)):
            weights = [lin[depth].weight for lin in members]
            biases = [lin[depth].bias for lin in members]
            if depth == len(hidden):  # output layer: the mean of the shards' logits
                layer.weight.copy_(torch.cat(weights, dim=1) / S if hidden else torch.stack(weights).sum(0) / S)
                layer.bias.copy_(torch.stack(biases).sum(0) / S)
            else:
                layer.weight.copy_(torch.cat(weights, dim=0) if depth == 0 else torch.block_diag(*weights))
                layer.bias.copy_(torch.cat(biases))
    return merged.eval()


class RecordedModel(NamedTuple):
    """What :func:`train_recorded` returns: the aggregate model, its record, the record's hash and store."""

    model: nn.Module
    record: TrainingRecord
    record_sha256: str
    root: str
    seconds: float

    def info(self) -> dict:
        """The ``training_record`` entry of a saved model's ``info``: what consolidation and replay start from.

        >>> save(result.model, "model.safetensors", info={"training_record": result.info()})  # doctest: +SKIP
        """
        return {"root": self.root, "sha256": self.record_sha256, "generation": self.record.generation,
                "manifest_sha256": self.record.manifest_sha256}


def _check_sharding(ds, spec: dict, shards: int, slices: int, epochs_per_slice: int | None) -> None:
    for name, value in (("shards", shards), ("slices", slices)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InputValidationError(f"The {name!r} parameter of train_recorded must be a positive integer. "
                                       f"Got {value!r} instead.")
    if epochs_per_slice is not None and (not isinstance(epochs_per_slice, int) or epochs_per_slice < 1):
        raise InputValidationError(f"The 'epochs_per_slice' parameter of train_recorded must be a positive integer "
                                   f"or None. Got {epochs_per_slice!r} instead.")
    if len(ds.y_train) < shards * slices:
        raise InputValidationError(f"{ds.name!r} has {len(ds.y_train)} training points, fewer than shards × slices "
                                   f"= {shards * slices}; every slice needs a point. HINT: use fewer shards or slices.")
    if shards > 1 and spec.get("kind") != "mlp":
        raise InputValidationError(f"Sharded recorded training needs an MLP architecture; got {spec.get('kind')!r}. "
                                   "HINT: use shards=1 (slices still work).")


def train_recorded(ds, spec: dict, recipe: Recipe, root, *, shards: int = 1, slices: int = 1,
                   epochs_per_slice: int | None = None, engine=None, progress: bool = False) -> RecordedModel:
    """Train ``spec`` on ``ds``'s training split with ``recipe``, recording everything needed to replay it.

    Parameters
    ----------
    ds : Dataset
    spec : dict
        One shard model's architecture (:func:`~prune_unlearn.core.models.build_model`); an MLP when ``shards > 1``.
    recipe : Recipe
        ``recipe.seed`` seeds the partition, every initialisation and every slice's shuffling.
    root : path
        The record store (created if needed); the returned record is stored there, with every checkpoint.
    shards, slices : int
        SISA sharding; 1 and 1 is unsharded training.
    epochs_per_slice : int, optional
        Default: ``round(2 · recipe.epochs / (slices + 1))`` (``recipe.epochs`` when ``slices = 1``).
    engine : optional
        Runs one task per shard: an object with ``map(fn, calls, progress=, desc=)`` (see
        :mod:`prune_unlearn.ops.engine`); default: here, one shard after another.
    """
    _check_sharding(ds, spec, shards, slices, epochs_per_slice)
    epochs = epochs_per_slice or max(1, round(2 * recipe.epochs / (slices + 1)))
    if recipe.anneal_epochs >= epochs:
        raise InputValidationError(f"The recipe anneals its last {recipe.anneal_epochs} epoch(s) of every slice, but "
                                   f"a slice trains {epochs}. HINT: anneal fewer epochs or raise epochs_per_slice.")
    t0 = time.perf_counter()
    store = RecordStore(root)
    store.clean()
    hashes = dataset_hashes(ds)
    tasks, calls = [], []
    for k, shard in enumerate(partition(len(ds.y_train), shards, slices, recipe.seed)):
        manifest = DataManifest.of(ds, [i for s in shard for i in s], hashes)
        init = build_model(spec, seed=derive_seed(recipe.seed, 0, k))
        task = ShardTask(k, 0, tuple(len(s) for s in shard), store.put_state(init.state_dict()),
                         store.put_manifest(manifest), spec, recipe.to_dict(), epochs)
        X, y = manifest.points(ds)
        tasks.append(task)
        calls.append((str(store.root), task.to_dict(), X.numpy(), y.numpy()))
    results = (engine.map if engine is not None else inline_map)(run_shard_task, calls, progress=progress,
                                                                 desc="train shards")
    table = tuple(ShardEntry(t.manifest, t.slice_sizes, (t.start_checkpoint, *r["checkpoints"]))
                  for t, r in zip(tasks, results))
    model = aggregate(spec, [store.get_state(e.checkpoints[-1]) for e in table])
    record = TrainingRecord(dataset=ds.name, n_train=len(ds.y_train), architecture=spec, recipe=recipe.to_dict(),
                            shards=shards, slices=slices, epochs_per_slice=epochs,
                            aggregate="mean-logits" if shards > 1 else "single", shard_table=table,
                            model_sha256=model_state_sha256(model), determinism=determinism_info())
    return RecordedModel(model, record, store.put_record(record), str(store.root.resolve()),
                         time.perf_counter() - t0)


def replay_shard(store: RecordStore, record: TrainingRecord, shard: int, ds) -> dict:
    """Retrain shard ``shard`` from scratch with its recorded manifest and recipe, in memory; compare every
    checkpoint's hash with the record's. Returns ``{"shard", "identical", "checkpoints", "mismatches",
    "seconds"}`` (``mismatches``: indices of checkpoints that differ). Writes nothing."""
    if not 0 <= shard < record.shards:
        raise InputValidationError(f"The record has shards 0 … {record.shards - 1}; got shard {shard}.")
    entry = record.shard_table[shard]
    manifest = store.get_manifest(entry.manifest)
    check_manifest(manifest, ds, f"the manifest of shard {shard}")
    recipe = recipe_from_dict(record.recipe)
    t0 = time.perf_counter()
    task = ShardTask(shard, 0, entry.slice_sizes, entry.checkpoints[0], entry.manifest, record.architecture,
                     record.recipe, record.epochs_per_slice)
    model = build_model(record.architecture, seed=derive_seed(recipe.seed, 0, shard))  # from scratch
    got = [state_sha256(model.state_dict())]
    with deterministic_cpu():
        X, y = manifest.points(ds)
        train_slices(model, X, y, task, 0, lambda _, state: got.append(state_sha256(state)))
    mismatches = [j for j, (a, b) in enumerate(zip(got, entry.checkpoints)) if a != b]
    if len(got) != len(entry.checkpoints):
        mismatches.append(min(len(got), len(entry.checkpoints)))
    return {"shard": shard, "identical": not mismatches, "checkpoints": len(got), "mismatches": mismatches,
            "seconds": time.perf_counter() - t0}
