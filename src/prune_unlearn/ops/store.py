"""The ledger file: one SQLite database with an append-only ``events`` table and its ``requests`` cache.

SQLite settings: ``journal_mode=DELETE`` keeps the ledger one self-contained file (no ``-wal``/``-shm`` files
to lose when copying it; works on network filesystems). ``synchronous=EXTRA`` is ``FULL`` (journal and database
fsynced at each commit) plus an fsync of the folder once the journal is deleted, which is the commit point in
this mode: a COMMIT is on disk before the model file is renamed (see :mod:`.commit`), even across a power loss.

The file is created by the first write, not by opening: a ledger that does not exist yet reads as empty (an
in-memory database with the same schema), so a refused first request leaves no file behind.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from pathlib import Path
from typing import Iterable

from .._version import __version__
from ..errors import LedgerError
from .chain import (EVENT_KINDS, GENESIS_HASH, STATUSES, Event, RequestRow, apply_event, canonical, link, replay,
                    touched_ids)
from .migrate import upgrade

__all__ = ["Store", "DEFAULT_LEDGER_PATH", "LEDGER_KIND", "LEDGER_FORMAT_VERSION"]

DEFAULT_LEDGER_PATH = "prune-ledger.sqlite"
LEDGER_KIND = "prune-request-ledger"
# 2: the consolidate and reject events, the consolidated and rejected statuses (ops/migrate.py upgrades
#    version-1 files before a write).
LEDGER_FORMAT_VERSION = 2


def _sql_in(values: Iterable[str]) -> str:
    return ", ".join(f"'{v}'" for v in values)


# The text of these statements is stored in every ledger file (sqlite_master); a format version keeps it.
# The CHECKs list the event kinds and statuses of this format version: a file keeps those it was created with.
_SCHEMA = (
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    f"""CREATE TABLE events (
        id INTEGER PRIMARY KEY,
        kind TEXT NOT NULL CHECK (kind IN ({_sql_in(EVENT_KINDS)})),
        created_at TEXT NOT NULL,
        body TEXT NOT NULL,
        prev_hash TEXT NOT NULL,
        entry_hash TEXT NOT NULL,
        state TEXT NOT NULL CHECK (state IN ('committing', 'done')))""",
    f"""CREATE TABLE requests (
        id INTEGER PRIMARY KEY,
        requester TEXT NOT NULL,
        created_at TEXT NOT NULL,
        status TEXT NOT NULL CHECK (status IN ({_sql_in(STATUSES)})),
        record TEXT NOT NULL,
        result TEXT,
        processed_event INTEGER,
        undone_event INTEGER)""",
    "CREATE INDEX requests_by_status ON requests (status, id)",
    "CREATE INDEX requests_by_requester ON requests (requester, id)",
)
_EVENT_COLUMNS = "id, kind, created_at, body, prev_hash, entry_hash, state"


def _create(conn: sqlite3.Connection, path: Path) -> None:
    """Lay out an empty database as a ledger (under the write lock, re-checking that no one else did)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        if conn.execute("PRAGMA user_version").fetchone()[0] == 0:
            tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master")]
            if tables:
                raise LedgerError(f"{path} is an SQLite database but not a prune request ledger (it has the tables "
                                  f"{tables}).")
            for statement in _SCHEMA:
                conn.execute(statement)
            conn.executemany("INSERT INTO meta VALUES (?, ?)",
                             [("kind", LEDGER_KIND), ("library_version", __version__)])
            conn.execute(f"PRAGMA user_version = {LEDGER_FORMAT_VERSION}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def _check_path(path: Path) -> None:
    if path.is_dir():
        raise LedgerError(f"The ledger path {path} is a folder; give a file name, e.g. {path / DEFAULT_LEDGER_PATH}.")
    blocker = next((p for p in path.parents if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        raise LedgerError(f"The ledger path {path} is under {blocker}, which is a file, not a folder. HINT: choose "
                          "another --ledger path.")


def _empty() -> sqlite3.Connection:
    """An in-memory ledger: what a ledger file that does not exist yet reads as."""
    conn = sqlite3.connect(":memory:", isolation_level=None)
    _create(conn, Path(":memory:"))
    conn.execute("INSERT OR REPLACE INTO meta VALUES ('in_memory', 'not created yet')")
    return conn


def _connect(path: Path) -> sqlite3.Connection:
    """Open (creating on first use) the ledger at ``path``; refuse any other file."""
    _check_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(str(path), timeout=60.0, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=DELETE")
        conn.execute("PRAGMA synchronous=EXTRA")
        if conn.execute("PRAGMA user_version").fetchone()[0] == 0:
            _create(conn, path)
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        kind = conn.execute("SELECT value FROM meta WHERE key = 'kind'").fetchone()
    except BaseException as exc:
        conn.close()
        if isinstance(exc, sqlite3.DatabaseError):
            raise LedgerError(f"{path} is not a prune request ledger: {exc}.") from None
        raise
    if kind is None or kind[0] != LEDGER_KIND:
        conn.close()
        raise LedgerError(f"{path} is not a prune request ledger (kind {kind and kind[0]!r}, version {version}).")
    if not 1 <= version <= LEDGER_FORMAT_VERSION:
        conn.close()
        raise LedgerError(f"The ledger {path} is of format version {version}; this library reads versions 1 to "
                          f"{LEDGER_FORMAT_VERSION}. HINT: upgrade prune-unlearn to use ledgers written by a newer "
                          "version.")
    return conn


class Store:
    """The ledger's SQLite file: connection, transactions, and reading and appending events and request rows.

    Writes happen inside :meth:`transaction`; :meth:`insert` keeps the requests table equal to what the
    events say (:func:`.chain.apply_event`). A file of an older format version is read as it is and upgraded
    (:mod:`.migrate`) before the first write; a file that does not exist yet is created by the first write.
    """

    def __init__(self, path: Path):
        self.path = path
        if path.exists():
            self.conn = _connect(path)
        else:
            _check_path(path)
            self.conn = _empty()
        self.version = self.conn.execute("PRAGMA user_version").fetchone()[0]

    @property
    def created(self) -> bool:
        """Whether the ledger file exists (it is created by the first write)."""
        return self.conn.execute("SELECT 1 FROM meta WHERE key = 'in_memory'").fetchone() is None

    def close(self) -> None:
        self.conn.close()

    def upgrade(self) -> None:
        """Create the file on the first write, and bring an older one to the current format version."""
        if not self.created:
            self.conn.close()
            self.conn = _connect(self.path)
            self.version = self.conn.execute("PRAGMA user_version").fetchone()[0]
        if self.version < LEDGER_FORMAT_VERSION:
            self.version = upgrade(self.conn, self.path, _SCHEMA, LEDGER_FORMAT_VERSION)

    @contextlib.contextmanager
    def transaction(self):
        """One SQLite write transaction: committed when the block ends, rolled back if it raises."""
        self.upgrade()
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    # --- events ------------------------------------------------------------------------------------------

    def head(self) -> str:
        """``entry_hash`` of the last event (64 zeros for an empty ledger)."""
        row = self.conn.execute("SELECT entry_hash FROM events ORDER BY id DESC LIMIT 1").fetchone()
        return row[0] if row else GENESIS_HASH

    def last_event_id(self) -> int:
        return self.conn.execute("SELECT COALESCE(MAX(id), 0) FROM events").fetchone()[0]

    def events(self, *, kinds: Iterable[str] | None = None, state: str | None = None) -> list[Event]:
        """Events in id order, optionally only those of some kinds and/or in a state."""
        clauses, params = [], []
        if kinds is not None:
            kinds = list(kinds)
            clauses.append(f"kind IN ({','.join('?' * len(kinds))})")
            params += kinds
        if state is not None:
            clauses.append("state = ?")
            params.append(state)
        where = ("WHERE " + " AND ".join(clauses)) if clauses else ""
        rows = self.conn.execute(f"SELECT {_EVENT_COLUMNS} FROM events {where} ORDER BY id", params).fetchall()
        return [Event(r[0], r[1], r[2], json.loads(r[3]), r[4], r[5], r[6]) for r in rows]

    def raw_events(self) -> list[tuple]:
        """Every event row as stored (body as text), for verification."""
        return self.conn.execute(f"SELECT {_EVENT_COLUMNS} FROM events ORDER BY id").fetchall()

    def has_committing(self) -> bool:
        return self.conn.execute("SELECT 1 FROM events WHERE state = 'committing' LIMIT 1").fetchone() is not None

    def next_events(self, items: list[tuple[str, dict]], created_at: str) -> list[Event]:
        """Events for ``(kind, body)`` items after the current head (call inside a write transaction)."""
        last = self.conn.execute("SELECT id, entry_hash FROM events ORDER BY id DESC LIMIT 1").fetchone()
        return link(*(last if last else (0, GENESIS_HASH)), items, created_at)

    def insert(self, events: list[Event], state: str = "done") -> None:
        """Append events and apply them to the requests table (inside a write transaction)."""
        self.conn.executemany(
            f"INSERT INTO events ({_EVENT_COLUMNS}) VALUES (?,?,?,?,?,?,?)",
            [(e.id, e.kind, e.created_at, canonical(e.body), e.prev_hash, e.entry_hash, state) for e in events])
        rows = self.rows_by_id([i for e in events for i in touched_ids(e)])
        changed: dict[int, RequestRow] = {}
        for event in events:
            for row in apply_event(rows, event):
                rows[row.id] = changed[row.id] = row
        self.conn.executemany("INSERT OR REPLACE INTO requests VALUES (?,?,?,?,?,?,?,?)", list(changed.values()))

    def mark_done(self, event_id: int) -> None:
        self.conn.execute("UPDATE events SET state = 'done' WHERE id = ?", (event_id,))

    def remove_event(self, event_id: int) -> None:
        """Delete an event (the last one: nothing may build on it) and rebuild the requests table without it."""
        with self.transaction():
            self.conn.execute("DELETE FROM events WHERE id = ?", (event_id,))
            rows = replay(self.events())
            self.conn.execute("DELETE FROM requests")
            self.conn.executemany("INSERT INTO requests VALUES (?,?,?,?,?,?,?,?)", list(rows.values()))

    # --- request rows --------------------------------------------------------------------------------------

    def _select_rows(self, where: str = "", params: tuple = ()) -> list[RequestRow]:
        return [RequestRow(*r) for r in self.conn.execute(f"SELECT * FROM requests {where} ORDER BY id", params)]

    def rows(self, *, status: str | None = None, requester: str | None = None) -> list[RequestRow]:
        """Request rows in id order, optionally only those with a status and/or from a requester."""
        clauses, params = [], []
        for column, value in (("status", status), ("requester", requester)):
            if value is not None:
                clauses.append(f"{column} = ?")
                params.append(value)
        return self._select_rows(("WHERE " + " AND ".join(clauses)) if clauses else "", tuple(params))

    def rows_from(self, first: int, n: int) -> list[RequestRow]:
        """The rows of requests ``first`` … ``first + n - 1``."""
        return self._select_rows("WHERE id >= ? AND id < ?", (first, first + n))

    def rows_by_id(self, ids: list[int]) -> dict[int, RequestRow]:
        out: dict[int, RequestRow] = {}
        for k in range(0, len(ids), 500):  # SQLite limits the number of bound parameters
            chunk = ids[k:k + 500]
            out.update((r.id, r) for r in self._select_rows(f"WHERE id IN ({','.join('?' * len(chunk))})",
                                                            tuple(chunk)))
        return out

    def row(self, request_id: int) -> RequestRow:
        """The row of one request; :class:`LedgerError` naming the ids there are if it does not exist."""
        rows = self._select_rows("WHERE id = ?", (int(request_id),))
        if not rows:
            n = self.conn.execute("SELECT COUNT(*), MIN(id), MAX(id) FROM requests").fetchone()
            known = f"ids run from {n[1]} to {n[2]}" if n[0] else "it holds no requests"
            raise LedgerError(f"No request with id {request_id} in the ledger {self.path} ({known}).")
        return rows[0]

    def next_request_id(self) -> int:
        return (self.conn.execute("SELECT MAX(id) FROM requests").fetchone()[0] or 0) + 1

    def n_requests(self) -> int:
        return self.conn.execute("SELECT COUNT(*) FROM requests").fetchone()[0]

    def status_counts(self) -> dict[str, int]:
        return dict(self.conn.execute("SELECT status, COUNT(*) FROM requests GROUP BY status").fetchall())
