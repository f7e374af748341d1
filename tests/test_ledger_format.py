"""A ledger written by an earlier version of the code keeps verifying, reads back the same, and takes new events.

``tests/data/ledger_v1/`` holds a ledger and its model written by ``make_fixture.py`` with the code of commit
4bbbe5f (before the ledger module was split), and ``expected.json``: what that code read back from them.
"""

import json
import shutil
import sqlite3
from pathlib import Path

import pytest
import torch

from prune_unlearn import Ledger, load, load_dataset

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


def test_an_earlier_ledger_verifies_and_reads_back_the_same(old):
    ledger_path, model_path = old
    expected = json.loads((FIXTURE / "expected.json").read_text())
    assert expected["verify"]["ok"] and expected["verify"]["n_events"] == 8
    assert {e["kind"] for e in expected["events"]} == {"add", "process", "undo"}
    assert {r["status"] for r in expected["requests"]} == {"pending", "processed", "undone"}
    before = ledger_path.read_bytes()
    with Ledger(ledger_path) as ledger:
        assert read_back(ledger, ledger_path, model_path) == expected
    assert ledger_path.read_bytes() == before  # reading and verifying write nothing


def test_new_ledgers_have_the_schema_of_the_earlier_version(old, tmp_path):
    with Ledger(tmp_path / "new.sqlite"):
        pass
    assert schema(tmp_path / "new.sqlite") == schema(old[0])


def test_an_earlier_ledger_takes_new_events_on_its_chain(old):
    ledger_path, model_path = old
    digits = load_dataset("digits")
    with Ledger(ledger_path) as ledger:
        head = ledger.head
        ledger.add("frank", indices=[200, 201], data="digits")
        added = ledger.events()[-1]
        assert (added["id"], added["prev_hash"]) == (9, head)
        result = ledger.process(model_path, data="digits")
        assert result.requests == [5, 6] and result.n_points == 3
        ledger.undo(2, model_path)
        assert ledger.verify(model_path).ok
        assert [r.status for r in ledger.requests()] == ["undone", "undone", "processed", "processed", "processed",
                                                         "processed"]
        live = [r for r in ledger.requests(status="processed") if r.source == "dataset"]
    model = load(model_path)
    for r in live:  # every live request's points are still forgotten
        labels = torch.tensor([c["label"] for c in r.claims])
        assert len(labels) == r.n_points and (model(digits.X_train[r.indices]).argmax(1) != labels).all()
