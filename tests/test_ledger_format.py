"""A ledger written by an earlier version of the code keeps verifying, reads back the same, is upgraded to the
current format version before its first write, and takes new events.

``tests/data/ledger_v1/`` holds a ledger (format version 1) and its model written by ``make_fixture.py`` with the code
of commit 4bbbe5f (before the ledger module was split), and ``expected.json``: what that code read back from them.
"""

import json
import shutil
import sqlite3
from pathlib import Path

import pytest
import torch

from prune_unlearn import Ledger, load, load_dataset
from prune_unlearn.errors import LedgerError
from prune_unlearn.ops import migrate
from prune_unlearn.ops.store import LEDGER_FORMAT_VERSION

REGION = {"radius": None}  # region-only: these tests check linear-region patches (forget's default is a ball)

FIXTURE = Path(__file__).parent / "data" / "ledger_v1"


@pytest.fixture
def old(tmp_path):
    """A copy of the fixture (opening a ledger may write to it; the committed files must stay as they are)."""
    for name in ("ledger.sqlite", "model.safetensors"):
        shutil.copyfile(FIXTURE / name, tmp_path / name)
    return tmp_path / "ledger.sqlite", tmp_path / "model.safetensors"


def read_back(ledger, ledger_path, model_path):
    verdict = ledger.verify(model_path).to_dict()
    verdict["model"] = Path(verdict["model"]).name
    return {"head": ledger.head, "repr": repr(ledger).replace(str(ledger_path), "ledger.sqlite"),
            "events": ledger.events(), "requests": [r.to_dict() for r in ledger.requests()], "verify": verdict}


def schema(path):
    conn = sqlite3.connect(path)
    try:
        return (conn.execute("SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY name").fetchall(),
                conn.execute("PRAGMA user_version").fetchone()[0],
                conn.execute("SELECT value FROM meta WHERE key = 'kind'").fetchone()[0])
    finally:
        conn.close()


def with_version_2_fields(expected):
    """What version 1 read back, plus what version 2 adds to the same reading: each request's
    ``consolidated_event`` (None: none was consolidated), ``domain`` (None: not recorded by version 1) and
    ``rejection`` (None), and the counts of consolidated and rejected requests in the repr."""
    out = json.loads(json.dumps(expected))
    for request in out["requests"]:
        request.update(consolidated_event=None, domain=None, rejection=None)
    out["repr"] = out["repr"][:-1] + ", consolidated=0, rejected=0)"
    return out


def test_an_earlier_ledger_verifies_and_reads_back_the_same(old):
    ledger_path, model_path = old
    expected = json.loads((FIXTURE / "expected.json").read_text())
    assert expected["verify"]["ok"] and expected["verify"]["n_events"] == 8
    assert {e["kind"] for e in expected["events"]} == {"add", "process", "undo"}
    assert {r["status"] for r in expected["requests"]} == {"pending", "processed", "undone"}
    before = ledger_path.read_bytes()
    with Ledger(ledger_path) as ledger:
        assert read_back(ledger, ledger_path, model_path) == with_version_2_fields(expected)
    assert ledger_path.read_bytes() == before  # reading and verifying write nothing (no upgrade either)
    assert schema(ledger_path)[1] == 1


def test_an_earlier_ledger_is_upgraded_before_its_first_write_to_the_schema_of_a_new_one(old, tmp_path):
    ledger_path, model_path = old
    expected = json.loads((FIXTURE / "expected.json").read_text())
    with Ledger(tmp_path / "new.sqlite") as new:
        new.add("zoe", indices=[1], data="digits")  # the file is created by the first write
    new_schema = schema(tmp_path / "new.sqlite")
    assert new_schema[1] == LEDGER_FORMAT_VERSION >= 2 and schema(ledger_path) != new_schema
    sql = {name: text for _, name, _, text in new_schema[0]}
    assert "'consolidate'" in sql["events"] and "'consolidated'" in sql["requests"]
    assert "'reject'" in sql["events"] and "'rejected'" in sql["requests"]
    with Ledger(ledger_path) as ledger:
        ledger.reject(5, "withdrawn by the requester")  # the first write upgrades the file first
        assert schema(ledger_path) == new_schema
        assert ledger.events()[:8] == expected["events"] and ledger.verify(model_path).ok  # the chain is unchanged
        assert ledger.get(5).status == "rejected" and ledger.events()[-1]["prev_hash"] == expected["head"]
        conn = sqlite3.connect(ledger_path)
        upgraded = conn.execute("SELECT value FROM meta WHERE key = 'upgraded_to_2'").fetchone()
        conn.close()
        assert upgraded is not None
    # the upgrade path is one registry with a step from every older version
    assert sorted(migrate.MIGRATIONS) == list(range(1, LEDGER_FORMAT_VERSION))
    assert set(migrate.VERSIONS) == set(range(1, LEDGER_FORMAT_VERSION + 1))


def test_an_interrupted_upgrade_leaves_the_earlier_version_whole(old, monkeypatch):
    ledger_path, model_path = old

    def fails_midway(conn, schema_statements):
        migrate.widen_checks(conn, schema_statements, names=("events",))
        raise RuntimeError("killed")

    before = ledger_path.read_bytes()
    monkeypatch.setitem(migrate.MIGRATIONS, 1, fails_midway)
    with Ledger(ledger_path) as ledger:
        with pytest.raises(RuntimeError, match="killed"):
            ledger.add("erin", indices=[300], data="digits")
        assert ledger.verify(model_path).ok
    assert ledger_path.read_bytes() == before and schema(ledger_path)[1] == 1


def test_upgrades_chain_one_step_per_version(old, monkeypatch):
    """What the next format version does (e.g. a new event kind): one more entry in MIGRATIONS. A
    version-1 file then goes 1 → 2 → … → the current version before its first write, one transaction per step,
    in order, each step seeing the version it upgrades from."""
    from prune_unlearn.ops import store

    ledger_path, model_path = old
    target = LEDGER_FORMAT_VERSION + 1
    seen = []

    def step(conn, schema_statements, real=migrate.widen_checks):
        seen.append(conn.execute("PRAGMA user_version").fetchone()[0])
        real(conn, schema_statements)

    for version in range(1, target):
        monkeypatch.setitem(migrate.MIGRATIONS, version, step)
    monkeypatch.setattr(store, "LEDGER_FORMAT_VERSION", target)
    with Ledger(ledger_path) as ledger:
        ledger.add("erin", indices=[300], data="digits")
        assert seen == list(range(1, target)) and ledger.verify(model_path).ok
    conn = sqlite3.connect(ledger_path)
    marks = [k for (k,) in conn.execute("SELECT key FROM meta WHERE key LIKE 'upgraded_to_%' ORDER BY key")]
    assert conn.execute("PRAGMA user_version").fetchone()[0] == target
    conn.close()
    assert marks == [f"upgraded_to_{v}" for v in range(2, target + 1)]


def test_a_ledger_of_a_newer_version_is_refused(old):
    conn = sqlite3.connect(old[0])
    conn.execute(f"PRAGMA user_version = {LEDGER_FORMAT_VERSION + 1}")
    conn.close()
    with pytest.raises(LedgerError, match=f"format version {LEDGER_FORMAT_VERSION + 1}; this library reads versions "
                                          f"1 to {LEDGER_FORMAT_VERSION}. HINT: upgrade"):
        Ledger(old[0])


def test_an_earlier_ledger_takes_new_events_on_its_chain(old):
    ledger_path, model_path = old
    digits = load_dataset("digits")
    with Ledger(ledger_path) as ledger:
        head = ledger.head
        ledger.add("frank", indices=[200, 201], data="digits")
        added = ledger.events()[-1]
        assert (added["id"], added["prev_hash"]) == (9, head)
        result = ledger.process(model_path, data="digits", neighbourhood=REGION)
        assert result.requests == [5, 6] and result.n_points == 3
        ledger.undo(2, model_path)
        assert ledger.verify(model_path).ok
        assert [r.status for r in ledger.requests()] == ["undone", "undone", "processed", "processed", "processed",
                                                         "processed"]
        assert schema(ledger_path)[1] == LEDGER_FORMAT_VERSION
        live = [r for r in ledger.requests(status="processed") if r.source == "dataset"]
    model = load(model_path)
    for r in live:  # every live request's points are still forgotten
        labels = torch.tensor([c["label"] for c in r.claims])
        assert len(labels) == r.n_points and (model(digits.X_train[r.indices]).argmax(1) != labels).all()
