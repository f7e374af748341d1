"""Ledger format versions, and the one place that upgrades a ledger file from version N to N+1.

A ledger file keeps the schema of the version that created it: the ``CHECK`` constraints of its ``events`` and
``requests`` tables list the event kinds and statuses of that version, so an older file would refuse the rows of a
newer event kind. Reading needs no upgrade (the columns are the same), so :mod:`.store` opens every known version
as it is and calls :func:`upgrade` only before its first write. Each step of :data:`MIGRATIONS` takes a file from
its version to the next in one SQLite transaction (a crash leaves the old version, whole), and the file's
``user_version`` says where it stands. Events are copied byte for byte, so the hash chain is unchanged.

To add a version: bump :data:`.store.LEDGER_FORMAT_VERSION`, say what it adds in :data:`VERSIONS`, and register
the step from the previous version in :data:`MIGRATIONS` (:func:`widen_checks` when the new version only adds
event kinds or statuses to :data:`.chain.EVENT_KINDS` / :data:`.chain.STATUSES`).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Callable, Sequence

from ..errors import LedgerError
from .chain import now

__all__ = ["VERSIONS", "MIGRATIONS", "widen_checks", "upgrade"]

#: what each ledger format version holds
VERSIONS = {
    1: "events add, process, undo; statuses pending, processed, undone",
    2: "events consolidate and reject; statuses consolidated (requests retrained away and their patches retired) "
       "and rejected (a pending request taken out of the queue, with the reason recorded)",
}


def _create_statements(schema: Sequence[str]) -> tuple[dict[str, str], list[str]]:
    """The CREATE TABLE statements of ``schema`` by table name, and its CREATE INDEX statements."""
    tables, indexes = {}, []
    for statement in schema:
        words = statement.split()
        if words[:2] == ["CREATE", "TABLE"]:
            tables[words[2]] = statement
        elif words[:2] == ["CREATE", "INDEX"]:
            indexes.append(statement)
    return tables, indexes


def widen_checks(conn: sqlite3.Connection, schema: Sequence[str], names: Sequence[str] = ("events", "requests")):
    """Rebuild tables ``names`` with their statements in ``schema`` (the current one), rows copied as they are.

    SQLite cannot alter a ``CHECK`` constraint, so each table is rebuilt (SQLite's documented procedure: rename,
    create, copy, drop) and its indexes recreated; the stored schema text ends up exactly that of a new file.
    """
    tables, indexes = _create_statements(schema)
    for name in names:
        for (index,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = ? AND "
                                     "sql IS NOT NULL", (name,)).fetchall():
            conn.execute(f"DROP INDEX {index}")
        conn.execute(f"ALTER TABLE {name} RENAME TO old_{name}")
        conn.execute(tables[name])
        conn.execute(f"INSERT INTO {name} SELECT * FROM old_{name}")
        conn.execute(f"DROP TABLE old_{name}")
    for statement in indexes:
        if statement.split(" ON ")[1].split()[0] in names:
            conn.execute(statement)


#: version N -> the step that takes a file from N to N + 1 (called inside a write transaction)
MIGRATIONS: dict[int, Callable[[sqlite3.Connection, Sequence[str]], None]] = {
    1: widen_checks,
}


def upgrade(conn: sqlite3.Connection, path: Path, schema: Sequence[str], target: int) -> int:
    """Upgrade the ledger open on ``conn`` to version ``target``, one step per transaction; the version reached."""
    while True:
        conn.execute("BEGIN IMMEDIATE")
        try:
            version = conn.execute("PRAGMA user_version").fetchone()[0]  # re-read: another writer may have done it
            if version >= target:
                conn.execute("COMMIT")
                return version
            step = MIGRATIONS.get(version)
            if step is None:
                raise LedgerError(f"The ledger {path} is of format version {version}, which this library cannot "
                                  f"upgrade (it upgrades versions {', '.join(map(str, sorted(MIGRATIONS)))}).")
            step(conn, schema)
            conn.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)",
                         (f"upgraded_to_{version + 1}", now()))
            conn.execute(f"PRAGMA user_version = {version + 1}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
