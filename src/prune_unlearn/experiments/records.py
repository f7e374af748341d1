"""Where recorded training keeps its evidence: a content-addressed folder, and the training record.

A record store is a folder (local, or shared by every worker of a cluster) with

* ``objects/<sha256>.safetensors``: checkpoints (a shard model's state dict, named by its tensors' hash,
  :func:`prune_unlearn._hashing.state_sha256`);
* ``objects/<sha256>.manifest``: data manifests (:class:`.manifest.DataManifest`, named by the hash of the bytes);
* ``records/<sha256>.json``: training records (:class:`TrainingRecord`, named by the hash of their canonical JSON);
* ``tasks/<key>.json``: the checkpoints a shard-training task has written so far, so a killed run resumes.

Every file is written to a temporary name, fsynced and renamed, and never changed afterwards: a crash leaves at
most a stray temporary file (removed by :meth:`RecordStore.clean`), and a record names all it depends on by hash,
so a consolidation adds a new record beside the old one and changes nothing the current model relies on.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .._hashing import state_sha256
from ..core.serialization import atomic_replace
from ..errors import FormatError
from .manifest import DataManifest

__all__ = ["RecordStore", "TrainingRecord", "ShardEntry", "RECORD_KIND", "RECORD_FORMAT_VERSION", "canonical_json"]

RECORD_KIND = "prune-training-record"
RECORD_FORMAT_VERSION = 1


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))



def _write_bytes(path: Path, data: bytes) -> None:
    def write(tmp):
        with open(tmp, "wb") as fh:
            fh.write(data)

    atomic_replace(path, write)


@dataclass(frozen=True)
class ShardEntry:
    """One shard of a record: its data manifest, slice sizes, and the hash of each checkpoint.

    Checkpoint ``j`` is the shard model's state after slices ``0 … j-1`` (checkpoint 0: the initial weights).
    """

    manifest: str
    slice_sizes: tuple[int, ...]
    checkpoints: tuple[str, ...]

    def to_dict(self) -> dict:
        return {"manifest": self.manifest, "slice_sizes": list(self.slice_sizes), "checkpoints": list(self.checkpoints)}


@dataclass(frozen=True)
class TrainingRecord:
    """Everything needed to replay a recorded training run, and what it produced.

    ``architecture`` is one shard model's spec; ``recipe`` the :class:`~prune_unlearn.experiments.training.Recipe`
    (its ``seed`` derives every other seed, see :mod:`.recorded`); ``shard_table`` one :class:`ShardEntry` per
    shard; ``model_sha256`` the tensors hash of the model they aggregate to (the saved model file's
    ``tensors_sha256``). A consolidation's record has ``generation`` one more than its ``parent``'s.
    """

    dataset: str
    n_train: int
    architecture: dict
    recipe: dict
    shards: int
    slices: int
    epochs_per_slice: int
    aggregate: str
    shard_table: tuple[ShardEntry, ...]
    model_sha256: str
    determinism: dict
    generation: int = 0
    parent: str | None = None
    removed: dict = field(default_factory=dict)

    @property
    def manifest_sha256(self) -> str:
        """Hash of the whole data manifest: of the shard manifests' hashes, in shard order."""
        return hashlib.sha256(canonical_json([e.manifest for e in self.shard_table]).encode()).hexdigest()

    @property
    def n_points(self) -> int:
        return sum(sum(e.slice_sizes) for e in self.shard_table)

    def to_dict(self) -> dict:
        out = {"kind": RECORD_KIND, "format_version": RECORD_FORMAT_VERSION}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[f.name] = [e.to_dict() for e in value] if f.name == "shard_table" else value
        out["manifest_sha256"] = self.manifest_sha256
        return out

    @classmethod
    def from_dict(cls, data: dict, where: str = "the training record") -> "TrainingRecord":
        if data.get("kind") != RECORD_KIND or data.get("format_version") != RECORD_FORMAT_VERSION:
            raise FormatError(f"{where} is not a prune training record of format version {RECORD_FORMAT_VERSION} "
                              f"(kind {data.get('kind')!r}, version {data.get('format_version')!r}).")
        names = [f.name for f in dataclasses.fields(cls)]
        missing = [n for n in names if n not in data and n not in ("generation", "parent", "removed")]
        if missing:
            raise FormatError(f"{where} does not have the key {missing[0]!r}.")
        values = {n: data[n] for n in names if n in data}
        try:
            values["shard_table"] = tuple(ShardEntry(e["manifest"], tuple(e["slice_sizes"]), tuple(e["checkpoints"]))
                                          for e in data["shard_table"])
        except (KeyError, TypeError) as exc:
            raise FormatError(f"{where} has a malformed shard table: {exc}") from None
        record = cls(**values)
        if data.get("manifest_sha256") != record.manifest_sha256:
            raise FormatError(f"{where} names data manifest {str(data.get('manifest_sha256'))[:12]}…, but its shard "
                              f"manifests hash to {record.manifest_sha256[:12]}… (the record was edited).")
        return record


class RecordStore:
    """A content-addressed folder of checkpoints, manifests, training records and task progress."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"RecordStore({str(self.root)!r})"

    def _object(self, sha: str, suffix: str) -> Path:
        if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
            raise FormatError(f"{sha!r} is not a SHA-256 (64 lowercase hex digits).")
        return self.root / "objects" / f"{sha}{suffix}"

    def clean(self) -> None:
        """Remove temporary files a killed writer left behind."""
        for sub in ("objects", "records", "tasks"):
            for tmp in (self.root / sub).glob(".*.tmp"):
                tmp.unlink(missing_ok=True)

    # --- checkpoints --------------------------------------------------------------------------------------

    def put_state(self, state: dict[str, torch.Tensor]) -> str:
        """Store a state dict (once: an existing object is kept); its tensors hash."""
        from safetensors.torch import save_file

        tensors = {k: v.detach().cpu().contiguous().clone() for k, v in state.items()}
        sha = state_sha256(tensors)
        path = self._object(sha, ".safetensors")
        if not path.exists():
            atomic_replace(path, lambda tmp: save_file(tensors, tmp))
        return sha

    def has_state(self, sha: str) -> bool:
        return self._object(sha, ".safetensors").is_file()

    def get_state(self, sha: str) -> dict[str, torch.Tensor]:
        """The state dict stored as ``sha``, checked against its hash."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        path = self._object(sha, ".safetensors")
        try:
            state = load_file(str(path))
        except (SafetensorError, OSError) as exc:
            raise FormatError(f"Checkpoint {sha[:12]}… is missing or unreadable in the record store {self.root} "
                              f"({exc}). HINT: the store must hold every checkpoint its records name.") from None
        if state_sha256(state) != sha:
            raise FormatError(f"Checkpoint {path} does not hash to its name (the file was modified or corrupted).")
        return state

    # --- manifests and records ------------------------------------------------------------------------------

    def put_manifest(self, manifest: DataManifest) -> str:
        raw = manifest.to_bytes()
        sha = hashlib.sha256(raw).hexdigest()
        path = self._object(sha, ".manifest")
        if not path.exists():
            _write_bytes(path, raw)
        return sha

    def get_manifest(self, sha: str) -> DataManifest:
        path = self._object(sha, ".manifest")
        try:
            raw = path.read_bytes()
        except OSError as exc:
            raise FormatError(f"Data manifest {sha[:12]}… is missing from the record store {self.root} "
                              f"({exc.strerror or exc}).") from None
        if hashlib.sha256(raw).hexdigest() != sha:
            raise FormatError(f"The data manifest {path} does not hash to its name (the file was modified).")
        return DataManifest.from_bytes(raw, str(path))

    def put_record(self, record: TrainingRecord) -> str:
        raw = canonical_json(record.to_dict()).encode()
        sha = hashlib.sha256(raw).hexdigest()
        path = self.root / "records" / f"{sha}.json"
        if not path.exists():
            _write_bytes(path, raw)
        return sha

    def get_record(self, sha: str) -> TrainingRecord:
        self._object(sha, "")  # validates the name
        path = self.root / "records" / f"{sha}.json"
        try:
            raw = path.read_bytes()
        except OSError as exc:
            raise FormatError(f"No training record {sha[:12]}… in the record store {self.root} "
                              f"({exc.strerror or exc}). HINT: pass the record folder the model was trained "
                              "with (--record).") from None
        if hashlib.sha256(raw).hexdigest() != sha:
            raise FormatError(f"The training record {path} does not hash to its name (the file was modified).")
        try:
            data = json.loads(raw)
        except ValueError as exc:
            raise FormatError(f"The training record {path} is not JSON: {exc}") from None
        return TrainingRecord.from_dict(data, str(path))

    # --- task progress (resuming a killed run) ---------------------------------------------------------------

    def task_progress(self, key: str) -> list[str]:
        """Checkpoints a task has written so far, in order (only those still in the store and intact)."""
        path = self.root / "tasks" / f"{key}.json"
        try:
            done = json.loads(path.read_text())["checkpoints"]
        except (OSError, ValueError, KeyError, TypeError):
            return []
        out = []
        for sha in done:
            if not (isinstance(sha, str) and self.has_state(sha)):
                break
            out.append(sha)
        return out

    def save_task_progress(self, key: str, checkpoints: list[str]) -> None:
        _write_bytes(self.root / "tasks" / f"{key}.json", canonical_json({"checkpoints": checkpoints}).encode())
