"""The request ledger: withdrawal requests arrive over time, are forgotten once, and can be listed or undone.

A ledger is one SQLite file with two tables:

* ``events``, append-only and hash-chained. Every change is an event: ``add`` (a request arrived),
  ``process`` (a batch of requests was forgotten), ``undo`` (a request's patches were removed). Each row
  stores ``entry_hash = sha256(prev_hash + canonical JSON of {id, kind, created_at, body})``; the first
  ``prev_hash`` is 64 zeros. Editing, deleting, inserting or reordering a row breaks the chain at that row.
* ``requests``, the current state of every request (status, the patched regions that honoured it). It is a
  cache of the events: :meth:`Ledger.verify` replays the events and compares.

A request names its points by training-set index of a data set, or by a file (``.npy``, or ``.safetensors``
with ``X`` and optionally ``y``). The ledger keeps their hashes (SHA-256 of each point as float32, of the
file) and labels, never the points; ``process`` re-reads them and checks the hashes.

Model and ledger are tied together: each ``process``/``undo`` event records the model's tensor hash before
and after (``tensors_sha256`` of the file header), and the model file's header ``info["ledger"]`` holds that
event's id and ``entry_hash``.

Crash safety: after a kill -9 at any instant, model file and ledger are both old or both new
---------------------------------------------------------------------------------------------
Model-changing work (``process``, ``undo``) holds an exclusive lock on ``<ledger>.lock`` and commits each
batch in three steps:

1. in one SQLite write transaction: build the event, write the new model to ``<model>.pending`` (temp file,
   fsync, rename, fsync folder) with the event's hash in its header, insert the event with
   ``state='committing'`` and update the requests; COMMIT (durable, see below);
2. ``os.replace(<model>.pending, <model>)``, fsync the folder;
3. mark the event ``state='done'``.

Recovery runs before every ``process``/``undo`` and when a ledger is opened while no writer holds the lock.
For a ``committing`` event: the model file already holds the new model → mark done (roll forward); the
``.pending`` file holds it → rename it over the model, mark done (roll forward); the model file still holds
the old model and the event is the last one → delete the event and restore the requests (roll back). A crash
before the COMMIT leaves no event (SQLite rolls the transaction back) and at most a stray ``.pending`` file,
which the next ``process``/``undo`` deletes.

SQLite settings: ``journal_mode=DELETE`` keeps the ledger one self-contained file (no ``-wal``/``-shm`` files
to lose when copying it; works on network filesystems). ``synchronous=EXTRA`` is ``FULL`` (journal and database
fsynced at each commit) plus an fsync of the folder once the journal is deleted, which is the commit point in
this mode: a COMMIT is on disk before step 2 renames the model, even across a power loss.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import signal
import sqlite3
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Mapping, NamedTuple

import numpy as np
import torch
from torch import nn

from .._version import __version__
from .._hashing import point_sha256, points_sha256
from ..core.patches import model_state_sha256
from .._progress import progress_bar
from .._validation import check_positive_int
from ..errors import FormatError, LedgerError, PruneError

__all__ = [
    "Ledger", "Request", "ProcessResult", "UndoResult", "VerifyResult", "read_points_file",
    "STATUSES", "DEFAULT_LEDGER_PATH", "CRASH_ENV", "CRASH_POINTS",
]

DEFAULT_LEDGER_PATH = "prune-ledger.sqlite"
LEDGER_KIND = "prune-request-ledger"
LEDGER_FORMAT_VERSION = 1
GENESIS_HASH = "0" * 64
STATUSES = ("pending", "processed", "undone")
MODEL_EVENTS = ("process", "undo")
# Test hook: PRUNE_LEDGER_CRASH_AT=<point> kills the process (SIGKILL) at that step of a model commit.
CRASH_ENV = "PRUNE_LEDGER_CRASH_AT"
CRASH_POINTS = ("after_pending_write", "after_ledger_commit", "after_rename")

_SCHEMA = (
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    """CREATE TABLE events (
        id INTEGER PRIMARY KEY,
        kind TEXT NOT NULL CHECK (kind IN ('add', 'process', 'undo')),
        created_at TEXT NOT NULL,
        body TEXT NOT NULL,
        prev_hash TEXT NOT NULL,
        entry_hash TEXT NOT NULL,
        state TEXT NOT NULL CHECK (state IN ('committing', 'done')))""",
    """CREATE TABLE requests (
        id INTEGER PRIMARY KEY,
        requester TEXT NOT NULL,
        created_at TEXT NOT NULL,
        status TEXT NOT NULL CHECK (status IN ('pending', 'processed', 'undone')),
        record TEXT NOT NULL,
        result TEXT,
        processed_event INTEGER,
        undone_event INTEGER)""",
    "CREATE INDEX requests_by_status ON requests (status, id)",
    "CREATE INDEX requests_by_requester ON requests (requester, id)",
)


# --- results ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    """One withdrawal request and what became of it.

    ``patterns`` are the ``pattern_sha256`` of the patched regions covering its points (as in the
    certificate); ``claims`` hold one entry per forgotten point, ``failed`` the points that could not be.
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

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class ProcessResult:
    """What one :meth:`Ledger.process` call did; ``requests`` is empty when nothing was pending."""

    requests: list
    n_points: int
    n_forgotten: int
    n_failed: int
    batches: list
    n_regions: int | None
    model_sha256: str | None
    ledger_head: str
    seconds: float

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        if not self.requests:
            return "nothing to do: no pending requests"
        return (f"processed {len(self.requests)} request(s) ({self.n_points} points) in {len(self.batches)} "
                f"batch(es): {self.n_forgotten} forgotten, {self.n_failed} failed; the model has {self.n_regions} "
                f"patched region(s); {self.seconds:.2f} s; ledger head {self.ledger_head[:12]}…")


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


# --- small helpers ---------------------------------------------------------------------------------


class _Event(NamedTuple):
    id: int
    kind: str
    created_at: str
    body: dict
    prev_hash: str
    entry_hash: str
    state: str = "done"


class _Row(NamedTuple):
    """A row of the ``requests`` table."""

    id: int
    requester: str
    created_at: str
    status: str
    record: str
    result: str | None
    processed_event: int | None
    undone_event: int | None


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def _entry_hash(prev_hash: str, event_id: int, kind: str, created_at: str, body: dict) -> str:
    content = _canonical({"id": event_id, "kind": kind, "created_at": created_at, "body": body})
    return hashlib.sha256((prev_hash + content).encode()).hexdigest()


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def _crash_point(name: str) -> None:
    if os.environ.get(CRASH_ENV) == name:
        os.kill(os.getpid(), getattr(signal, "SIGKILL", signal.SIGTERM))
        os._exit(137)  # where SIGKILL does not exist


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _pending_path(model_path: Path) -> Path:
    return model_path.with_name(model_path.name + ".pending")


def _file_model_sha256(path: Path) -> str | None:
    """The tensors hash of a saved model, or ``None`` if there is no readable, intact model there."""
    from ..core.serialization import load_info

    try:
        return load_info(path)["tensors_sha256"] if path.is_file() else None
    except FormatError:
        return None


def _pattern_sha256(packed: torch.Tensor) -> str:
    """As in certificates: SHA-256 of a region's packed activation pattern."""
    return hashlib.sha256(packed.cpu().numpy().tobytes()).hexdigest()


def read_points_file(path: str | os.PathLike) -> tuple[torch.Tensor, torch.Tensor | None, str]:
    """Points (float32, one per row), labels if the file has them, and the file's SHA-256.

    ``.npy``: a float array of shape (n, ...). ``.safetensors``: tensor ``X`` and optionally ``y``.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise LedgerError(f"Cannot read the points file {path}: {exc.strerror or exc}.") from None
    digest = hashlib.sha256(raw).hexdigest()
    labels = None
    try:
        if path.suffix == ".npy":
            X = torch.from_numpy(np.load(io.BytesIO(raw), allow_pickle=False))
        elif path.suffix == ".safetensors":
            from safetensors.torch import load as load_safetensors

            tensors = load_safetensors(raw)
            if "X" not in tensors:
                raise LedgerError(f"The points file {path} has no tensor 'X' (it has {sorted(tensors)}).")
            X, labels = tensors["X"], tensors.get("y")
        else:
            raise LedgerError(f"The points file {path} must be .npy or .safetensors (with X and optionally y).")
    except (ValueError, OSError) as exc:
        raise LedgerError(f"The points file {path} is not a readable {path.suffix} file: {exc}") from None
    if X.dim() < 2 or len(X) == 0 or not X.is_floating_point():
        raise LedgerError(f"The points file {path} must hold a float array of shape (n, ...) with n ≥ 1, one "
                          f"point per row; got {X.dtype} of shape {tuple(X.shape)}. HINT: save a single point as "
                          "shape (1, d).")
    X = X.to(torch.float32)
    if not bool(torch.isfinite(X).all()):
        raise LedgerError(f"The points file {path} holds NaN or infinite values.")
    if labels is not None:
        labels = _check_labels(labels, len(X), f"y in {path}")
    return X, labels, digest


def _check_labels(labels: Any, n: int, where: str) -> torch.Tensor:
    t = torch.as_tensor(labels)
    if t.dtype.is_floating_point or t.dtype == torch.bool or t.dtype.is_complex or tuple(t.shape) != (n,) \
            or (n and int(t.min()) < 0):
        raise LedgerError(f"The labels ({where}) must be {n} non-negative integers, one per point; got dtype "
                          f"{t.dtype} and shape {tuple(t.shape)}.")
    return t.to(torch.int64)


def _apply_event(rows: dict[int, _Row], event: _Event) -> list[_Row]:
    """The request rows an event creates or changes: the one place that says what each event means."""
    body, eid = event.body, event.id
    if event.kind == "add":
        rec = body["request"]
        if rec["id"] in rows:
            raise LedgerError(f"Event {eid} adds request {rec['id']}, which already exists.")
        return [_Row(rec["id"], rec["requester"], rec["created_at"], "pending", _canonical(rec), None, None, None)]
    if event.kind == "process":
        out = []
        for res in body["requests"]:
            row = rows.get(res["id"])
            if row is None or row.status != "pending":
                raise LedgerError(f"Event {eid} processes request {res['id']}, which is "
                                  f"{'unknown' if row is None else row.status}, not pending.")
            result = _canonical({k: v for k, v in res.items() if k != "id"})
            out.append(row._replace(status="processed", result=result, processed_event=eid))
        return out
    if event.kind == "undo":
        row = rows.get(body["request"])
        if row is None or row.status != "processed":
            raise LedgerError(f"Event {eid} undoes request {body['request']}, which is "
                              f"{'unknown' if row is None else row.status}, not processed.")
        return [row._replace(status="undone", undone_event=eid)]
    raise LedgerError(f"Event {eid} has unknown kind {event.kind!r}.")


def _request_ids(event: _Event) -> list[int]:
    if event.kind == "add":
        return [event.body["request"]["id"]]
    if event.kind == "process":
        return [r["id"] for r in event.body["requests"]]
    return [event.body["request"]]


def _replay(events: Iterable[_Event]) -> dict[int, _Row]:
    rows: dict[int, _Row] = {}
    for event in events:
        for row in _apply_event(rows, event):
            rows[row.id] = row
    return rows


def _to_request(row: _Row) -> Request:
    rec = json.loads(row.record)
    res = json.loads(row.result) if row.result else {}
    return Request(
        id=row.id, requester=row.requester, created_at=row.created_at, status=row.status,
        source=rec["source"], dataset=rec.get("dataset"), indices=rec.get("indices"), file=rec.get("file"),
        file_sha256=rec.get("file_sha256"), labels_file=rec.get("labels_file"), n_points=rec["n_points"],
        point_sha256=rec["point_sha256"], labels=rec.get("labels"), patterns=res.get("patterns", []),
        claims=res.get("claims", []), failed=res.get("failed", []), processed_event=row.processed_event,
        undone_event=row.undone_event,
    )


class _Datasets:
    """Data sets by name: ``data`` (a :class:`Dataset` or a name) if it fits, others loaded on demand."""

    def __init__(self, data, data_dir):
        self._data, self._dir, self._cache, self._labels = data, data_dir, {}, {}

    def given(self):
        if self._data is None:
            return None
        return self.named(self._data) if isinstance(self._data, str) else self._data

    def named(self, name: str):
        if self._data is not None:
            given = self._data if isinstance(self._data, str) else self._data.name
            if given != name:
                raise LedgerError(f"A request is about data set {name!r}, but the data set given is {given!r}.")
            if not isinstance(self._data, str):
                return self._data
        if name not in self._cache:
            from ..experiments.datasets import load_dataset

            self._cache[name] = load_dataset(name, self._dir)
        return self._cache[name]

    def training_label(self, ds, x: torch.Tensor) -> int | None:
        """The training label of a point of ``ds`` found by its hash (None if it is not a training point)."""
        if ds.name not in self._labels:
            self._labels[ds.name] = dict(zip(points_sha256(ds.X_train), ds.y_train.tolist()))
        return self._labels[ds.name].get(point_sha256(x))


def _describe(spec: Mapping[str, Any], datasets: _Datasets) -> dict:
    """The record of a new request (without id and time), validated; no write happens before all are."""
    unknown = set(spec) - {"requester", "indices", "points_file", "labels_file", "sha256"}
    if unknown:
        raise LedgerError(f"Unknown request field(s) {sorted(unknown)}; a request has requester, indices or "
                          "points_file, and optionally labels_file and sha256.")
    requester = spec.get("requester")
    if not isinstance(requester, str) or not requester.strip():
        raise LedgerError(f"A request needs a requester (who asked): a non-empty string. Got {requester!r}.")
    indices, points_file = spec.get("indices"), spec.get("points_file")
    if (indices is None) == (points_file is None):
        raise LedgerError("A request names its points either by training-set indices (indices=, with data=) or "
                          "by a file (points_file=), exactly one of the two.")
    if indices is not None:
        if spec.get("labels_file") or spec.get("sha256"):
            raise LedgerError("labels_file and sha256 go with points_file, not with indices.")
        ds = datasets.given()
        if ds is None:
            raise LedgerError("Requests by index need the data set they index. HINT: pass data='digits' (a name) "
                              "or data=<Dataset>.")
        idx = [int(i) for i in torch.as_tensor(indices).flatten().tolist()]
        n = len(ds.y_train)
        bad = [i for i in idx if not 0 <= i < n]
        if not idx or bad or len(set(idx)) != len(idx):
            problem = ("no index" if not idx else f"indices out of range: {bad[:5]}" if bad else "repeated indices")
            raise LedgerError(f"A request needs distinct training-set indices in [0, {n - 1}] of data set "
                              f"{ds.name!r}; got {problem}.")
        X = ds.X_train[torch.tensor(idx)]
        return {"requester": requester, "source": "dataset", "dataset": ds.name, "indices": idx, "file": None,
                "file_sha256": None, "labels_file": None, "n_points": len(idx),
                "point_sha256": points_sha256(X), "labels": ds.y_train[torch.tensor(idx)].tolist()}
    path = Path(points_file).resolve()
    X, labels, digest = read_points_file(path)
    if spec.get("sha256") and spec["sha256"].lower() != digest:
        raise LedgerError(f"The points file {path} has SHA-256 {digest}, not the expected {spec['sha256']}.")
    labels_file = None
    if spec.get("labels_file"):
        labels_file = Path(spec["labels_file"]).resolve()
        try:
            labels = _check_labels(np.load(labels_file, allow_pickle=False), len(X), str(labels_file))
        except (OSError, ValueError) as exc:
            raise LedgerError(f"Cannot read the labels file {labels_file}: {exc}") from None
    ds = datasets.given()
    if labels is None and ds is not None:  # default: the training labels
        found = [datasets.training_label(ds, x) for x in X]
        if None in found:
            raise LedgerError(f"Point {found.index(None)} of {path} is not a training point of {ds.name!r}, so it "
                              "has no training label. HINT: give its labels (labels_file= / --labels).")
        labels = torch.tensor(found)
    return {"requester": requester, "source": "file", "dataset": ds.name if ds is not None else None,
            "indices": None, "file": str(path), "file_sha256": digest,
            "labels_file": str(labels_file) if labels_file else None, "n_points": len(X),
            "point_sha256": points_sha256(X), "labels": labels.tolist() if labels is not None else None}


# --- the ledger ------------------------------------------------------------------------------------


class Ledger:
    """Withdrawal requests and the patches that honoured each, in a hash-chained SQLite file.

    Requests are added at any time (``pending``), forgotten in batches by :meth:`process` (``processed``:
    the ledger records which patched regions honour each), and can be undone (``undone``: their regions
    leave the model unless another live request needs them). Opening creates the file on first use.

    Examples
    --------
    >>> with Ledger("requests.sqlite") as ledger:                    # doctest: +SKIP
    ...     ledger.add("alice@example.org", indices=[3, 17], data="digits")
    ...     ledger.process("model.safetensors", data="digits")
    ...     ledger.undo(1, "model.safetensors")
    ...     assert ledger.verify("model.safetensors").ok

    Notes
    -----
    The model file is rewritten in place; keep only the copy the ledger last wrote (``verify`` with the
    model path, or any ``process``/``undo``, refuses another). The chain detects edits of any row but not
    the removal of trailing rows on its own: the model header (which names the last model event) and the
    requests table catch those that matter.
    """

    def __init__(self, path: str | os.PathLike = DEFAULT_LEDGER_PATH):
        self.path = Path(path)
        self._lock_path = self.path.with_name(self.path.name + ".lock")
        self._conn = self._connect()
        if self._conn.execute("SELECT 1 FROM events WHERE state = 'committing' LIMIT 1").fetchone():
            with self._writer_lock(blocking=False) as locked:
                if locked:  # else a live writer is finishing it
                    self._recover(strict=False)

    # --- connection, transactions, lock --------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        if self.path.is_dir():
            raise LedgerError(f"The ledger path {self.path} is a folder; give a file name, e.g. "
                              f"{self.path / DEFAULT_LEDGER_PATH}.")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(str(self.path), timeout=60.0, isolation_level=None)
        try:
            conn.execute("PRAGMA journal_mode=DELETE")
            conn.execute("PRAGMA synchronous=EXTRA")
            if conn.execute("PRAGMA user_version").fetchone()[0] == 0:
                conn.execute("BEGIN IMMEDIATE")
                try:  # re-checked under the write lock: another process may have created it meanwhile
                    if conn.execute("PRAGMA user_version").fetchone()[0] == 0:
                        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master")]
                        if tables:
                            raise LedgerError(f"{self.path} is an SQLite database but not a prune request ledger "
                                              f"(it has the tables {tables}).")
                        for statement in _SCHEMA:
                            conn.execute(statement)
                        conn.executemany("INSERT INTO meta VALUES (?, ?)",
                                         [("kind", LEDGER_KIND), ("library_version", __version__)])
                        conn.execute(f"PRAGMA user_version = {LEDGER_FORMAT_VERSION}")
                    conn.execute("COMMIT")
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            kind = conn.execute("SELECT value FROM meta WHERE key = 'kind'").fetchone()
        except BaseException as exc:
            conn.close()
            if isinstance(exc, sqlite3.DatabaseError):
                raise LedgerError(f"{self.path} is not a prune request ledger: {exc}.") from None
            raise
        if kind is None or kind[0] != LEDGER_KIND or version != LEDGER_FORMAT_VERSION:
            conn.close()
            raise LedgerError(f"{self.path} is not a prune request ledger of format version "
                              f"{LEDGER_FORMAT_VERSION} (kind {kind and kind[0]!r}, version {version}).")
        return conn

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> "Ledger":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        try:
            counts = dict(self._conn.execute("SELECT status, COUNT(*) FROM requests GROUP BY status").fetchall())
        except sqlite3.ProgrammingError:
            return f"Ledger({str(self.path)!r}, closed)"
        return f"Ledger({str(self.path)!r}, " + ", ".join(f"{s}={counts.get(s, 0)}" for s in STATUSES) + ")"

    @contextlib.contextmanager
    def _transaction(self):
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")

    @contextlib.contextmanager
    def _writer_lock(self, blocking: bool = True):
        """One model-changing writer at a time; the OS drops the lock when its holder dies (even on kill -9)."""
        try:
            import fcntl
        except ImportError:  # no flock (Windows): one writer at a time is up to the caller
            yield True
            return
        fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
            except BlockingIOError:
                yield False
                return
            try:
                yield True
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    # --- reading -------------------------------------------------------------------------------------

    @property
    def head(self) -> str:
        """``entry_hash`` of the last event (64 zeros for an empty ledger)."""
        row = self._conn.execute("SELECT entry_hash FROM events ORDER BY id DESC LIMIT 1").fetchone()
        return row[0] if row else GENESIS_HASH

    def events(self) -> list[dict]:
        """Every event, oldest first, with its parsed body."""
        return [e._asdict() for e in self._events()]

    def _events(self, where: str = "", params: tuple = ()) -> list[_Event]:
        rows = self._conn.execute(f"SELECT id, kind, created_at, body, prev_hash, entry_hash, state FROM events "
                                  f"{where} ORDER BY id", params).fetchall()
        return [_Event(r[0], r[1], r[2], json.loads(r[3]), r[4], r[5], r[6]) for r in rows]

    def _rows(self, where: str = "", params: tuple = ()) -> list[_Row]:
        return [_Row(*r) for r in self._conn.execute(f"SELECT * FROM requests {where} ORDER BY id", params)]

    def _rows_by_id(self, ids: list[int]) -> dict[int, _Row]:
        out: dict[int, _Row] = {}
        for k in range(0, len(ids), 500):
            chunk = ids[k:k + 500]
            out.update((r.id, r) for r in self._rows(f"WHERE id IN ({','.join('?' * len(chunk))})", tuple(chunk)))
        return out

    def requests(self, *, status: str | None = None, requester: str | None = None) -> list[Request]:
        """Requests in id order, optionally only those with a status and/or from a requester."""
        if status is not None and status not in STATUSES:
            raise LedgerError(f"The 'status' parameter of Ledger.requests must be one of {', '.join(STATUSES)}. "
                              f"Got {status!r} instead.")
        clauses, params = [], []
        for column, value in (("status", status), ("requester", requester)):
            if value is not None:
                clauses.append(f"{column} = ?")
                params.append(value)
        where = ("WHERE " + " AND ".join(clauses)) if clauses else ""
        return [_to_request(r) for r in self._rows(where, tuple(params))]

    def get(self, request_id: int) -> Request:
        rows = self._rows("WHERE id = ?", (int(request_id),))
        if not rows:
            n = self._conn.execute("SELECT COUNT(*), MIN(id), MAX(id) FROM requests").fetchone()
            known = f"ids run from {n[1]} to {n[2]}" if n[0] else "it holds no requests"
            raise LedgerError(f"No request with id {request_id} in the ledger {self.path} ({known}).")
        return _to_request(rows[0])

    # --- writing events ------------------------------------------------------------------------------

    def _chain(self, items: list[tuple[str, dict]], created_at: str) -> list[_Event]:
        """Events for ``(kind, body)`` items after the current head (call inside a write transaction)."""
        last = self._conn.execute("SELECT id, entry_hash FROM events ORDER BY id DESC LIMIT 1").fetchone()
        event_id, prev = last if last else (0, GENESIS_HASH)
        events = []
        for kind, body in items:
            event_id += 1
            entry = _entry_hash(prev, event_id, kind, created_at, body)
            events.append(_Event(event_id, kind, created_at, body, prev, entry))
            prev = entry
        return events

    def _insert(self, events: list[_Event], state: str = "done") -> None:
        """Append events and apply them to the requests table (inside a write transaction)."""
        self._conn.executemany(
            "INSERT INTO events (id, kind, created_at, body, prev_hash, entry_hash, state) VALUES (?,?,?,?,?,?,?)",
            [(e.id, e.kind, e.created_at, _canonical(e.body), e.prev_hash, e.entry_hash, state) for e in events])
        rows = self._rows_by_id([i for e in events if e.kind != "add" for i in _request_ids(e)])
        changed: dict[int, _Row] = {}
        for event in events:
            for row in _apply_event(rows, event):
                rows[row.id] = changed[row.id] = row
        self._conn.executemany("INSERT OR REPLACE INTO requests VALUES (?,?,?,?,?,?,?,?)", list(changed.values()))

    def add(self, requester: str, *, indices=None, points_file=None, labels_file=None, sha256: str | None = None,
            data=None, data_dir=None) -> Request:
        """Record a pending withdrawal request.

        Parameters
        ----------
        requester : str
            Who asked (name, e-mail, ticket id).
        indices : sequence of int, optional
            Training-set indices of the points, in ``data``.
        points_file : path, optional
            ``.npy`` (float array, one point per row) or ``.safetensors`` (``X``, optionally ``y``).
        labels_file : path, optional
            ``.npy`` of integer labels for ``points_file``. Default: ``y`` of the file, else the training
            labels found in ``data`` by point hash, else the base model's prediction when processed.
        sha256 : str, optional
            Refuse ``points_file`` unless it has this SHA-256.
        data : str or Dataset, optional
            The data set (name or object); needed with ``indices``.
        """
        return self.add_many([{"requester": requester, "indices": indices, "points_file": points_file,
                               "labels_file": labels_file, "sha256": sha256}], data=data, data_dir=data_dir)[0]

    def add_many(self, requests: Iterable[Mapping[str, Any]], *, data=None, data_dir=None) -> list[Request]:
        """Record many requests (dicts with :meth:`add`'s keywords) in one transaction: all or none."""
        datasets = _Datasets(data, data_dir)
        specs = [{k: v for k, v in spec.items() if v is not None} for spec in requests]
        records = [_describe(spec, datasets) for spec in specs]
        if not records:
            return []
        created = _now()
        with self._transaction():
            first = (self._conn.execute("SELECT MAX(id) FROM requests").fetchone()[0] or 0) + 1
            items = [("add", {"request": {"id": first + k, "created_at": created, **rec}})
                     for k, rec in enumerate(records)]
            self._insert(self._chain(items, created))
        return [_to_request(r) for r in self._rows("WHERE id >= ? AND id < ?", (first, first + len(records)))]

    # --- verification --------------------------------------------------------------------------------

    def verify(self, model_path: str | os.PathLike | None = None, *, strict: bool = False) -> VerifyResult:
        """Recompute the hash chain, replay it against the requests table, and check the model file.

        Reports the first event whose chain link or contents do not hold, any request whose row differs
        from what the events say, and (with ``model_path``) a model file that is not the one the last
        ``process``/``undo`` wrote. With ``strict=True`` a failed check raises :class:`LedgerError`.
        """
        raw = self._conn.execute("SELECT id, kind, created_at, body, prev_hash, entry_hash, state FROM events "
                                 "ORDER BY id").fetchall()
        problems: list[str] = []
        first_bad = None
        events: list[_Event] = []
        prev = GENESIS_HASH
        for eid, kind, created, body_text, prev_hash, entry_hash, state in raw:
            try:
                body = json.loads(body_text)
            except ValueError:
                body = None
            if prev_hash != prev:
                problems.append(f"event {eid} ({kind}): its prev_hash does not match the entry_hash of the event "
                                "before it (a row was deleted, inserted or reordered)")
            elif body is None or entry_hash != _entry_hash(prev_hash, eid, kind, created, body):
                problems.append(f"event {eid} ({kind}): its entry_hash does not match its contents (the row was "
                                "edited)")
            if problems:
                first_bad = eid
                break
            events.append(_Event(eid, kind, created, body, prev_hash, entry_hash, state))
            prev = entry_hash
        if not problems:
            problems += self._table_problems(events)
            problems += [f"event {e.id} ({e.kind}) is still committing: a process/undo was interrupted or is "
                         "running. HINT: run `prune process` to finish or roll it back"
                         for e in events if e.state == "committing"]
            if model_path is not None:
                problems += self._model_problems(Path(model_path), events)
        n_requests = self._conn.execute("SELECT COUNT(*) FROM requests").fetchone()[0]
        result = VerifyResult(ok=not problems, n_events=len(raw), n_requests=n_requests, head=self.head,
                              first_bad_event=first_bad, model=str(model_path) if model_path is not None else None,
                              problems=problems)
        if strict and problems:
            more = f" (and {len(problems) - 1} more problem(s))" if len(problems) > 1 else ""
            raise LedgerError(f"The ledger {self.path} failed verification: {problems[0]}{more}. HINT: run "
                              "`prune ledger verify` for the full list; restore the ledger (and model) from a backup.")
        return result

    def _table_problems(self, events: list[_Event]) -> list[str]:
        try:
            expected = _replay(events)
        except (LedgerError, KeyError, TypeError) as exc:
            return [f"the events do not replay: {exc}"]
        actual = {r.id: r for r in self._rows()}
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
                fields = [f for f in _Row._fields if getattr(want, f) != getattr(got, f)]
                problems.append(f"request {rid}: the requests table differs from the events in {', '.join(fields)} "
                                f"(status {got.status!r}, the events say {want.status!r})")
        return problems

    def _model_problems(self, model_path: Path, events: list[_Event]) -> list[str]:
        from ..core.serialization import load_info

        try:
            header = load_info(model_path)
        except FormatError as exc:
            return [f"model: {exc}"]
        tag = (header.get("info") or {}).get("ledger")
        last = next((e for e in reversed(events) if e.kind in MODEL_EVENTS), None)
        if last is None:
            return [f"the model {model_path} names ledger event {tag.get('event')}, but this ledger has never "
                    "written a model"] if tag else []
        if header["tensors_sha256"] != last.body["model_after"]:
            return [self._mismatch_message(model_path, header["tensors_sha256"], last)]
        if not isinstance(tag, dict) or tag.get("event") != last.id or tag.get("entry_hash") != last.entry_hash:
            return [f"the model {model_path} has the tensors of event {last.id}, but its header names ledger entry "
                    f"{tag!r}, not event {last.id} ({last.entry_hash})"]
        return []

    @staticmethod
    def _mismatch_message(model_path: Path, found: str | None, last: _Event) -> str:
        return (f"the model file {model_path} does not match the ledger: its tensors hash to "
                f"{(found or 'nothing')[:12]}…, but the ledger's last model event ({last.id}, {last.kind}) wrote "
                f"{last.body['model_after'][:12]}… to {last.body['model_file']}. HINT: pass the model file written "
                "by the last `prune process` / `prune request undo` of this ledger")

    # --- recovery ------------------------------------------------------------------------------------

    def _recover(self, strict: bool) -> None:
        """Finish or roll back a model commit interrupted by a crash (see the module docstring)."""
        for event in self._events("WHERE state = 'committing'"):
            model = Path(event.body["model_file"])
            pending = _pending_path(model)
            now = _file_model_sha256(model)
            if now != event.body["model_after"] and _file_model_sha256(pending) == event.body["model_after"]:
                os.replace(pending, model)
                _fsync_dir(model.parent)
                now = event.body["model_after"]
            if now == event.body["model_after"]:
                self._conn.execute("UPDATE events SET state = 'done' WHERE id = ?", (event.id,))
            elif now == event.body["model_before"] and event.id == self._last_event_id():
                with self._transaction():
                    self._conn.execute("DELETE FROM events WHERE id = ?", (event.id,))
                    rows = _replay(self._events())
                    self._conn.execute("DELETE FROM requests")
                    self._conn.executemany("INSERT INTO requests VALUES (?,?,?,?,?,?,?,?)", list(rows.values()))
            elif strict:
                raise LedgerError(
                    f"Event {event.id} ({event.kind}) was interrupted and can be neither finished nor rolled back: "
                    f"{model} holds neither the model before it nor the one after it, and {pending} does not hold "
                    "the new model. HINT: put back the model file this ledger last wrote, then run again.")
            else:
                continue
            if pending.exists():
                pending.unlink()

    def _last_event_id(self) -> int:
        return self._conn.execute("SELECT COALESCE(MAX(id), 0) FROM events").fetchone()[0]

    # --- model commits -------------------------------------------------------------------------------

    def _load_model(self, model_path: Path, base: nn.Module | None):
        """The model file the ledger last wrote, and its header (call under the writer lock, after verify)."""
        from ..core.serialization import load, load_info

        events = self._events("WHERE kind IN ('process', 'undo')")
        pending = _pending_path(model_path)
        if pending.exists():  # left by a crash before its event was committed
            pending.unlink()
        header = load_info(model_path)
        if events and header["tensors_sha256"] != events[-1].body["model_after"]:
            raise LedgerError(self._mismatch_message(model_path, header["tensors_sha256"], events[-1]) + ".")
        return header, load(model_path, base=base)

    def _commit_model(self, kind: str, body: dict, model: nn.Module, model_path: Path, header: dict) -> _Event:
        """Write ``model`` over ``model_path`` and append the event, both or neither (module docstring)."""
        from ..core.serialization import save

        pending = _pending_path(model_path)
        body = {**body, "model_file": str(model_path.resolve()), "model_after": model_state_sha256(model)}
        with self._transaction():
            (event,) = self._chain([(kind, body)], _now())
            info = {**(header.get("info") or {}), "ledger": {"event": event.id, "entry_hash": event.entry_hash}}
            save(model, pending, info=info, architecture=header.get("architecture"))
            if _file_model_sha256(pending) != body["model_after"]:
                raise LedgerError(f"Internal error: the model written to {pending} does not hash to what the ledger "
                                  "would record; nothing was changed.")
            _crash_point("after_pending_write")
            self._insert([event], state="committing")
        _crash_point("after_ledger_commit")
        os.replace(pending, model_path)
        _fsync_dir(model_path.resolve().parent)
        _crash_point("after_rename")
        self._conn.execute("UPDATE events SET state = 'done' WHERE id = ?", (event.id,))
        return event

    # --- process -------------------------------------------------------------------------------------

    def process(self, model_path: str | os.PathLike, *, data=None, data_dir=None, batch_size: int = 1000,
                bound: str = "box", epsilon: float = 0.05, seed: int = 0, domain=None, base: nn.Module | None = None,
                progress: bool = False) -> ProcessResult:
        """Forget every pending request once, in id order, ``batch_size`` requests per batch.

        Each batch calls :func:`prune_unlearn.forget` on the current patched model (a region that already has
        a patch is re-solved, never patched twice), rewrites ``model_path`` and appends one ``process`` event
        recording, per request, the patched regions that cover its points and a claim per point. With nothing
        pending it changes nothing. ``data`` (name or Dataset) supplies index requests' points (default: each
        request's data set, loaded by name); ``domain`` defaults to that data set's box, else [0, 1].
        ``bound``, ``epsilon`` and ``seed`` are passed to ``forget``; ``base`` to :func:`prune_unlearn.load`.
        """
        from ..unlearn.forget import forget

        batch_size = check_positive_int("batch_size", "Ledger.process", batch_size)
        model_path = Path(model_path)
        t_start = time.perf_counter()
        with self._writer_lock():
            self._recover(strict=True)
            pending = self._rows("WHERE status = 'pending'")
            if not pending:
                return ProcessResult([], 0, 0, 0, [], None, None, self.head, time.perf_counter() - t_start)
            self.verify(strict=True)
            header, model = self._load_model(model_path, base)
            before = header["tensors_sha256"]
            datasets = _Datasets(data, data_dir)
            batches, n_points, n_failed = [], 0, 0
            chunks = [pending[k:k + batch_size] for k in range(0, len(pending), batch_size)]
            for chunk in progress_bar(chunks, enabled=progress, desc="process", unit="batch"):
                t0 = time.perf_counter()
                X, y, spans, ds_domain = self._gather(chunk, datasets, model)
                try:
                    result = forget(model, X, labels=y, bound=bound, epsilon=epsilon, seed=seed,
                                    domain=domain if domain is not None else ds_domain)
                except PruneError as exc:
                    raise LedgerError(f"Forgetting requests {chunk[0].id}–{chunk[-1].id} failed (earlier batches "
                                      f"were committed): {exc}") from None
                honoured = _honoured(result.certificate, spans)
                body = {"requests": honoured, "model_before": before, "n_regions": len(result.model.patches),
                        "options": {"bound": bound, "epsilon": epsilon, "seed": seed, "batch_size": batch_size},
                        "library_version": __version__}
                event = self._commit_model("process", body, result.model, model_path, header)
                model, before = result.model, event.body["model_after"]
                failed = sum(len(h["failed"]) for h in honoured)
                batches.append({"event": event.id, "requests": [r.id for r in chunk], "n_points": len(X),
                                "n_failed": failed, "seconds": time.perf_counter() - t0})
                n_points += len(X)
                n_failed += failed
        return ProcessResult(
            requests=[r.id for r in pending], n_points=n_points, n_forgotten=n_points - n_failed, n_failed=n_failed,
            batches=batches, n_regions=len(model.patches), model_sha256=before, ledger_head=self.head,
            seconds=time.perf_counter() - t_start)

    @staticmethod
    def _gather(rows: list[_Row], datasets: _Datasets, model: nn.Module):
        """Points and labels of requests, re-read from their data set or file and checked against the hashes."""
        from ..core.patches import PatchedModel

        base = model.base if isinstance(model, PatchedModel) else model
        xs, ys, spans, domain, start = [], [], [], (0.0, 1.0), 0
        for row in rows:
            rec = json.loads(row.record)
            if rec["source"] == "dataset":
                ds = datasets.named(rec["dataset"])
                domain = (ds.domain_lower, ds.domain_upper)
                if max(rec["indices"]) >= len(ds.y_train):
                    raise LedgerError(f"Request {row.id} names training indices up to {max(rec['indices'])}, but "
                                      f"data set {ds.name!r} has {len(ds.y_train)} training points.")
                x, where = ds.X_train[torch.tensor(rec["indices"])], f"data set {ds.name!r}"
            else:
                x, _, digest = read_points_file(rec["file"])
                where = rec["file"]
                if digest != rec["file_sha256"]:
                    raise LedgerError(f"Request {row.id}: the points file {where} changed since the request was "
                                      f"added (SHA-256 {digest[:12]}…, recorded {rec['file_sha256'][:12]}…). HINT: "
                                      "put back the original file.")
            if points_sha256(x) != rec["point_sha256"]:
                raise LedgerError(f"Request {row.id}: its points in {where} no longer match the hashes recorded when "
                                  "it was added. HINT: use the same data set version (and --data-dir) as then.")
            if xs and x.shape[1:] != xs[0].shape[1:]:
                raise LedgerError(f"Request {row.id} has points of shape {tuple(x.shape[1:])}, but request "
                                  f"{rows[0].id} has {tuple(xs[0].shape[1:])}; a model takes one input shape.")
            if rec["labels"] is not None:
                y = torch.tensor(rec["labels"], dtype=torch.int64)
            else:  # no label given: the base model's prediction
                with torch.no_grad():
                    y = base(x).argmax(1).cpu()
            xs.append(x)
            ys.append(y)
            spans.append((row.id, start, start + len(x)))
            start += len(x)
        return torch.cat(xs), torch.cat(ys), spans, domain

    # --- undo ----------------------------------------------------------------------------------------

    def undo(self, request_id: int, model_path: str | os.PathLike, *, base: nn.Module | None = None) -> UndoResult:
        """Remove the patched regions that only this request needs, and mark it ``undone``.

        Regions that also cover points of another live (processed, not undone) request stay patched: their
        claims still need them. Elsewhere the model's outputs are the base model's again, bit for bit.
        """
        from ..core.patches import PatchedModel

        model_path = Path(model_path)
        with self._writer_lock():
            self._recover(strict=True)
            self.verify(strict=True)
            request = self.get(request_id)
            if request.status != "processed":
                hint = ("it has no patches yet (it is forgotten by the next `prune process`)"
                        if request.status == "pending" else f"it was undone by event {request.undone_event}")
                raise LedgerError(f"Request {request.id} is {request.status}: only a processed request can be undone; "
                                  f"{hint}.")
            header, model = self._load_model(model_path, base)
            if not isinstance(model, PatchedModel):
                raise LedgerError(f"The model {model_path} has no patches, yet request {request.id} is processed.")
            live = {p for r in self.requests(status="processed") if r.id != request.id for p in r.patterns}
            mine = set(request.patterns)
            ps = model.patches
            row_patterns = [_pattern_sha256(ps.patterns[r]) for r in range(len(ps))]
            keep = torch.tensor([p not in mine or p in live for p in row_patterns], dtype=torch.bool)
            patched = model.select_point_rows(keep).eval()
            removed = sorted(p for p, k in zip(row_patterns, keep.tolist()) if not k)
            body = {"request": request.id, "removed_patterns": removed, "kept_patterns": sorted(mine & live),
                    "model_before": header["tensors_sha256"], "n_regions": len(patched.patches)}
            event = self._commit_model("undo", body, patched, model_path, header)
        return UndoResult(request=request.id, event=event.id, removed_patterns=removed,
                          kept_patterns=sorted(mine & live), n_regions=len(patched.patches),
                          model_sha256=event.body["model_after"], ledger_head=self.head)


def _honoured(certificate, spans: list[tuple[int, int, int]]) -> list[dict]:
    """Per request: the patterns of the regions covering its points, a claim per point, its failed points."""
    pattern = [r["pattern_sha256"] for r in certificate.regions]
    claims = {c["index"]: c for c in certificate.claims}
    failed: dict[int, list] = {}
    for f in certificate.failed:
        failed.setdefault(f["index"], []).append(f)
    out = []
    for request_id, lo, hi in spans:
        mine = [claims[i] for i in range(lo, hi) if i in claims]
        out.append({
            "id": request_id,
            "patterns": sorted({pattern[c["region"]] for c in mine}),
            "claims": [{"point_sha256": c["point_sha256"], "label": c["label"], "target": c["target"],
                        "pattern_sha256": pattern[c["region"]], "proved": c["proved"], "margin": c["margin"]}
                       for c in mine],
            "failed": [{"point_sha256": f["point_sha256"], "label": f["label"], "reason": f["reason"]}
                       for i in range(lo, hi) for f in failed.get(i, [])],
        })
    return out
