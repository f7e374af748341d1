"""The request ledger: requests, processing, undo, the hash chain, crash safety, and 10,000 requests."""

import hashlib
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from types import SimpleNamespace

import click
import numpy as np
import pytest
import torch
from click.testing import CliRunner

import prune_unlearn
from prune_unlearn import load, load_info, save
from prune_unlearn._hashing import point_sha256
from prune_unlearn.experiments.datasets import Dataset
from prune_unlearn.errors import LedgerError
from prune_unlearn.ops.ledger import CRASH_ENV, CRASH_POINTS, Ledger, read_points_file
from prune_unlearn.cli.ledger import register
from prune_unlearn.core.models import mlp
from prune_unlearn.core.split import split_model

REGION = {"radius": None}  # region-only: these tests check linear-region patches (forget's default is a ball)

SRC = str(Path(prune_unlearn.__file__).resolve().parents[1])


def tiny_model(seed=0):
    """A seeded 4-8-8-3 MLP (as ``_helpers.models.tiny_mlp``), built by prune so that its file reloads by itself."""
    torch.manual_seed(seed)
    return mlp(4, [8, 8], 3).eval()


def synthetic(model, n, seed=1, name="synthetic"):
    """Points in [0, 1]^4 labelled by the model's own predictions, as a Dataset."""
    X = torch.rand(n, 4, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        y = model(X).argmax(1)
    return Dataset(name, X, y, X[:0], y[:0], num_classes=3)


@pytest.fixture
def world(tmp_path):
    model = tiny_model()
    path = tmp_path / "model.safetensors"
    save(model, path)
    return SimpleNamespace(model=model, path=path, ds=synthetic(model, 300), ledger=tmp_path / "ledger.sqlite",
                           tmp=tmp_path, pending=tmp_path / "model.safetensors.pending")


def pattern_hash(packed):
    return hashlib.sha256(packed.numpy().tobytes()).hexdigest()


def covering_patterns(patched, X):
    rows, _ = patched.covering_region(X)
    return [pattern_hash(patched.patches.patterns[r]) if r >= 0 else None for r in rows.tolist()]


def region_keys(model, X):
    """The base model's activation pattern of each point (which linear region it lies in)."""
    split = split_model(model)
    with torch.no_grad():
        preacts, _ = split.head_forward(split.features(X))
    return [bytes(a.numpy()) for a in torch.cat(preacts, 1) > 0]


def assert_consistent(ledger, model_path, ds=None):
    """Model and ledger agree: the model is the last one the ledger wrote; pending requests have no patches;
    processed ones have their patches in the model and their points mispredicted; rejected ones no patches."""
    assert ledger.verify(model_path).ok, ledger.verify(model_path).problems
    last = [e for e in ledger.events() if e["kind"] in ("process", "undo")][-1]
    assert last["state"] == "done" and last["body"]["model_after"] == load_info(model_path)["tensors_sha256"]
    model = load(model_path)
    patterns = {pattern_hash(p) for p in model.patches.patterns}
    for r in ledger.requests():
        if r.status == "pending":
            assert r.patterns == [] and r.claims == [] and r.processed_event is None
        elif r.status == "rejected":
            assert r.patterns == []
        elif r.status == "processed":  # an undone request's patches may be gone (or kept for others): no claim
            assert set(r.patterns) <= patterns
            x = read_points_file(r.file)[0] if r.source == "file" else ds.X_train[r.indices]
            assert (model(x).argmax(1) != torch.tensor([c["label"] for c in r.claims])).all()


# --- requests ----------------------------------------------------------------------------------------


def test_schema_pragmas_and_adding_requests(world):
    from safetensors.torch import save_file

    ds = world.ds
    np.save(world.tmp / "pts.npy", ds.X_train[10:13].numpy())
    np.save(world.tmp / "lab.npy", np.array([2, 0, 1]))
    save_file({"X": ds.X_train[20:22].contiguous(), "y": ds.y_train[20:22].contiguous()}, world.tmp / "pts.safetensors")
    with Ledger(world.ledger) as ledger:
        assert not world.ledger.exists()  # created by the first write
        a = ledger.add("alice", indices=[0, 5], data=ds)
        assert ledger._store.conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
        assert ledger._store.conn.execute("PRAGMA synchronous").fetchone()[0] == 3  # EXTRA
        b = ledger.add("bob", points_file=world.tmp / "pts.npy", labels_file=world.tmp / "lab.npy", model=world.path)
        c = ledger.add("bob", points_file=world.tmp / "pts.safetensors", model=world.model)
        d = ledger.add("carol", points_file=world.tmp / "pts.npy", data=ds)  # training labels, found by hash
        e = ledger.add("dave", points_file=world.tmp / "pts.npy")  # no labels: the base model's prediction, later
    assert (a.id, a.source, a.dataset, a.indices, a.n_points) == (1, "dataset", "synthetic", [0, 5], 2)
    assert a.point_sha256 == [point_sha256(ds.X_train[i]) for i in (0, 5)] and a.labels == ds.y_train[[0, 5]].tolist()
    assert b.file_sha256 == hashlib.sha256((world.tmp / "pts.npy").read_bytes()).hexdigest()
    assert b.point_sha256 == [point_sha256(x) for x in ds.X_train[10:13]] and b.labels == [2, 0, 1]
    assert c.labels == ds.y_train[20:22].tolist() and c.file.endswith("pts.safetensors")
    assert d.labels == ds.y_train[10:13].tolist() and e.labels is None
    with Ledger(world.ledger) as ledger:  # persisted
        assert [r.id for r in ledger.requests(requester="bob")] == [2, 3]
        assert [r.status for r in ledger.requests()] == ["pending"] * 5
        assert ledger.requests(status="processed") == [] and ledger.get(4) == d
        assert [ev["kind"] for ev in ledger.events()] == ["add"] * 5
        assert ledger.verify().ok
        assert repr(ledger) == (f"Ledger({str(world.ledger)!r}, pending=5, processed=0, undone=0, consolidated=0, "
                                "rejected=0)")
        assert a.domain == [0.0, 1.0] and e.domain == [0.0, 1.0]  # the box each was checked against


@pytest.mark.parametrize("request_kwargs,match", [
    ({"indices": [1], "points_file": "pts.npy"}, "exactly one of the two"),
    ({}, "exactly one of the two"),
    ({"indices": [1]}, "Requests by index need the data set"),
    ({"indices": [300], "data": "DS"}, r"in \[0, 299\] of data set 'synthetic'; got indices out of range: \[300\]"),
    ({"indices": [1, 1], "data": "DS"}, "got repeated indices"),
    ({"points_file": "pts.txt"}, "must be .npy or .safetensors"),
    ({"points_file": "ints.npy"}, "must hold a float array"),
    ({"points_file": "pts.npy", "sha256": "ab" * 32}, "not the expected abab"),
    ({"points_file": "pts.npy", "labels_file": "ints.npy"}, r"must be 2 non-negative integers"),
    ({"points_file": "far.npy", "data": "DS"}, "not a training point of 'synthetic', so it has no training label"),
])
def test_add_refuses_malformed_requests(world, request_kwargs, match):
    np.save(world.tmp / "pts.npy", world.ds.X_train[:2].numpy())
    np.save(world.tmp / "far.npy", np.full((1, 4), 0.5, dtype=np.float32))
    np.save(world.tmp / "ints.npy", np.array([[1, 2, 3, 4]]))
    (world.tmp / "pts.txt").write_text("0.1 0.2\n")
    kwargs = {k: world.ds if v == "DS" else (world.tmp / v if k.endswith("_file") else v)
              for k, v in request_kwargs.items()}
    with Ledger(world.ledger) as ledger:
        with pytest.raises(LedgerError, match=match):
            ledger.add("alice", **kwargs)
        with pytest.raises(LedgerError, match="needs a requester"):
            ledger.add(" ", indices=[1], data=world.ds)
        assert ledger.requests() == [] and ledger.events() == []  # nothing written


def test_only_ledger_files_open(tmp_path):
    (tmp_path / "junk.sqlite").write_bytes(b"this is not a database at all" * 10)
    with pytest.raises(LedgerError, match="junk.sqlite is not a prune request ledger"):
        Ledger(tmp_path / "junk.sqlite")
    other = sqlite3.connect(tmp_path / "other.sqlite")
    other.execute("CREATE TABLE t (x)")
    other.commit()
    other.close()
    with pytest.raises(LedgerError, match=r"is an SQLite database but not a prune request ledger \(it has the tables"):
        Ledger(tmp_path / "other.sqlite")


# --- process -----------------------------------------------------------------------------------------


def test_process_records_patches_without_duplicates_and_a_second_run_changes_nothing(world):
    ds = world.ds
    with Ledger(world.ledger) as ledger:
        for k in range(12):
            ledger.add(f"user{k % 3}", indices=list(range(3 * k, 3 * k + 1 + k % 3)), data=ds)
        result = ledger.process(world.path, data=ds, batch_size=5, neighbourhood=REGION)
        assert result.requests == list(range(1, 13)) and len(result.batches) == 3
        assert result.n_points == 24 and result.n_failed == 0 and result.n_forgotten == 24
        patched = load(world.path)
        patterns = [pattern_hash(p) for p in patched.patches.patterns]
        assert len(patterns) == len(set(patterns)) == result.n_regions  # one patch per region, never two
        for r in ledger.requests():
            x, y = ds.X_train[r.indices], ds.y_train[r.indices]
            assert r.status == "processed" and (patched(x).argmax(1) != y).all()
            assert r.patterns == sorted(set(covering_patterns(patched, x)))
            assert [c["point_sha256"] for c in r.claims] == r.point_sha256
            assert [c["pattern_sha256"] for c in r.claims] == covering_patterns(patched, x)
        events = ledger.events()
        assert [e["kind"] for e in events] == ["add"] * 12 + ["process"] * 3
        batch_patterns = [{p for q in e["body"]["requests"] for p in q["patterns"]} for e in events[12:]]
        assert batch_patterns[0] & (batch_patterns[1] | batch_patterns[2])  # later batches re-solved earlier regions
        assert load_info(world.path)["info"]["ledger"] == {"event": 15, "entry_hash": ledger.head}
        verdict = ledger.verify(world.path)
        assert verdict.ok, verdict.problems
    model_bytes, ledger_bytes = world.path.read_bytes(), world.ledger.read_bytes()
    with Ledger(world.ledger) as ledger:
        again = ledger.process(world.path, data=ds, batch_size=5, neighbourhood=REGION)
    assert again.requests == [] and again.summary() == "nothing to do: no pending requests"
    assert world.path.read_bytes() == model_bytes and world.ledger.read_bytes() == ledger_bytes
    assert not world.pending.exists()


def test_requests_arriving_over_time_and_labels_from_the_model(world):
    ds = world.ds
    np.save(world.tmp / "later.npy", ds.X_train[50:53].numpy())
    with Ledger(world.ledger) as ledger:
        ledger.add("a", indices=[0, 1], data=ds)
        ledger.process(world.path, data=ds, neighbourhood=REGION)
        ledger.add("b", points_file=world.tmp / "later.npy")  # labels: the base model's predictions
        result = ledger.process(world.path, neighbourhood=REGION)
        assert result.requests == [2] and result.n_failed == 0
        req = ledger.get(2)
        assert [c["label"] for c in req.claims] == ds.y_train[50:53].tolist()
        assert_consistent(ledger, world.path, ds)
        np.save(world.tmp / "later.npy", ds.X_train[60:61].numpy())
        ledger.add("c", points_file=world.tmp / "later.npy")
        np.save(world.tmp / "later.npy", ds.X_train[61:62].numpy())  # the file of a pending request changes
        ledger.add("d", indices=[62], data=ds)
        result = ledger.process(world.path, data=ds, neighbourhood=REGION)  # request 3 is skipped (it stays pending), 4 is not blocked
        assert result.requests == [4] and [s["id"] for s in result.skipped] == [3] and result.rejected == []
        assert re.search("Request 3: the points file .*later.npy changed since the request was added .*HINT: put "
                         "back the original file", result.skipped[0]["reason"])
        assert "skipped request 3 (still pending): Request 3: the points file" in result.summary()
        assert [r.status for r in ledger.requests()] == ["processed", "processed", "pending", "processed"]
        np.save(world.tmp / "later.npy", ds.X_train[60:61].numpy())  # put back: processed by the next run
        assert ledger.process(world.path, neighbourhood=REGION).requests == [3]
        assert_consistent(ledger, world.path, ds)


def test_model_file_must_be_the_one_the_ledger_wrote(world):
    ds = world.ds
    with Ledger(world.ledger) as ledger:
        ledger.add("a", indices=[0, 1], data=ds)
        ledger.process(world.path, data=ds, neighbourhood=REGION)
        ledger.add("b", indices=[2], data=ds)
        other = world.tmp / "base-copy.safetensors"
        save(world.model, other)  # the unpatched model
        with pytest.raises(LedgerError, match=r"the model file .*base-copy.safetensors does not match the ledger: "
                                              r"its tensors hash to .*HINT: pass the model file written by the last"):
            ledger.process(other, data=ds, neighbourhood=REGION)
        verdict = ledger.verify(other)
        assert not verdict.ok and "does not match the ledger" in verdict.problems[0]
        same_tensors = world.tmp / "relabelled.safetensors"
        save(load(world.path), same_tensors)  # same tensors, but the header no longer names the ledger event
        assert "its header names ledger entry None" in ledger.verify(same_tensors).problems[0]
        assert ledger.verify(world.path).ok and ledger.get(2).status == "pending"


# --- undo --------------------------------------------------------------------------------------------


def test_undo_restores_base_logits_bit_for_bit_unless_another_request_shares_the_region(world):
    ds, base = world.ds, world.model
    regions = defaultdict(list)
    for i, key in enumerate(region_keys(base, ds.X_train)):
        regions[key].append(i)
    by_size = sorted(regions.values(), key=len)
    solo = by_size[0][0]                     # alone in its region (no other request there)
    shared_a, shared_b = by_size[-1][:2]     # two requests in one region
    with Ledger(world.ledger) as ledger:
        ledger.add("solo", indices=[solo], data=ds)
        ledger.add("shares", indices=[shared_a], data=ds)
        ledger.add("shares too", indices=[shared_b], data=ds)
        ledger.process(world.path, data=ds, neighbourhood=REGION)
        x_solo = ds.X_train[[solo]]
        assert not torch.equal(load(world.path)(x_solo), base(x_solo))

        undone = ledger.undo(1, world.path)
        assert len(undone.removed_patterns) == 1 and undone.kept_patterns == [] and undone.n_regions == 1
        assert torch.equal(load(world.path)(x_solo), base(x_solo))  # base logits, bit for bit

        # Request 3 is live and lies in the same region as request 2: undoing 2 keeps that region patched.
        kept = ledger.undo(2, world.path)
        assert kept.removed_patterns == [] and kept.kept_patterns == ledger.get(3).patterns
        x_shared, y_shared = ds.X_train[[shared_a, shared_b]], ds.y_train[[shared_a, shared_b]]
        assert (load(world.path)(x_shared).argmax(1) != y_shared).all()

        ledger.undo(3, world.path)  # the last request there: now the region goes, and all logits are the base's
        final = load(world.path)
        assert len(final.patches) == 0 and torch.equal(final(ds.X_train), base(ds.X_train))
        assert [r.status for r in ledger.requests()] == ["undone"] * 3
        assert [e["kind"] for e in ledger.events()][-3:] == ["undo"] * 3
        assert ledger.verify(world.path).ok


def test_undo_errors(world):
    with Ledger(world.ledger) as ledger:
        ledger.add("a", indices=[0], data=world.ds)
        with pytest.raises(LedgerError, match=r"No request with id 9 in the ledger .* \(ids run from 1 to 1\)"):
            ledger.undo(9, world.path)
        with pytest.raises(LedgerError, match="Request 1 is pending: only a processed request can be undone; it has "
                                              "no patches yet"):
            ledger.undo(1, world.path)
        ledger.process(world.path, data=world.ds, neighbourhood=REGION)
        ledger.undo(1, world.path)
        with pytest.raises(LedgerError, match="Request 1 is undone: .* it was undone by event 3"):
            ledger.undo(1, world.path)


# --- hash chain --------------------------------------------------------------------------------------


def _swap_events(conn):
    conn.execute("UPDATE events SET id = -1 WHERE id = 2")
    conn.execute("UPDATE events SET id = 2 WHERE id = 3")
    conn.execute("UPDATE events SET id = 3 WHERE id = -1")


def _rehash_edited_event(conn):
    """A forger who knows the hash function: edit event 2 and recompute its entry_hash."""
    from prune_unlearn.ops.chain import entry_hash

    eid, kind, created, body, prev = conn.execute(
        "SELECT id, kind, created_at, body, prev_hash FROM events WHERE id = 2").fetchone()
    body = json.loads(body)
    body["request"]["requester"] = "mallory"
    conn.execute("UPDATE events SET body = ?, entry_hash = ? WHERE id = 2",
                 (json.dumps(body), entry_hash(prev, eid, kind, created, body)))
    conn.execute("UPDATE requests SET requester = 'mallory' WHERE id = 2")


@pytest.mark.parametrize("tamper,first_bad,message", [
    (lambda c: c.execute("UPDATE events SET body = replace(body, 'user1', 'mallory') WHERE id = 2"), 2,
     "event 2 (add): its entry_hash does not match its contents (the row was edited)"),
    (lambda c: c.execute("DELETE FROM events WHERE id = 3"), 4,
     "event 4 (add): its prev_hash does not match the entry_hash of the event before it"),
    (_swap_events, 2, "event 2 (add): its prev_hash does not match"),
    (_rehash_edited_event, 3, "event 3 (add): its prev_hash does not match"),
    (lambda c: c.execute("UPDATE requests SET status = 'pending', result = NULL WHERE id = 1"), None,
     "request 1: the requests table differs from the events in status, result (status 'pending', "
     "the events say 'processed')"),
])
def test_verify_detects_edited_deleted_or_reordered_rows(world, tamper, first_bad, message):
    with Ledger(world.ledger) as ledger:
        for k in range(4):
            ledger.add(f"user{k}", indices=[k], data=world.ds)
        ledger.process(world.path, data=world.ds, neighbourhood=REGION)
        ledger.add("late", indices=[10], data=world.ds)
        assert ledger.verify(world.path).ok
    conn = sqlite3.connect(world.ledger)
    tamper(conn)
    conn.commit()
    conn.close()
    with Ledger(world.ledger) as ledger:
        verdict = ledger.verify()
        assert not verdict.ok and verdict.first_bad_event == first_bad and verdict.problems[0].startswith(message)
        with pytest.raises(LedgerError, match="failed verification: " + re.escape(message.split(":")[0])):
            ledger.verify(strict=True)
        with pytest.raises(LedgerError, match="failed verification.*HINT: run `prune ledger verify`"):
            ledger.process(world.path, data=world.ds, neighbourhood=REGION)


# --- crash safety ------------------------------------------------------------------------------------


def _process_in_subprocess(ledger_path, model_path, crash_at):
    code = ("import sys, torch; torch.set_num_threads(1); from prune_unlearn.ops.ledger import Ledger; "
            "Ledger(sys.argv[1]).process(sys.argv[2], neighbourhood={'radius': None})")
    env = {**os.environ, "PYTHONPATH": SRC, CRASH_ENV: crash_at}
    return subprocess.run([sys.executable, "-c", code, str(ledger_path), str(model_path)], env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("crash_at,outcome", [
    ("after_pending_write", "old"), ("after_ledger_commit", "new"), ("after_rename", "new"),
])
def test_kill_9_during_process_leaves_model_and_ledger_both_old_or_both_new(world, crash_at, outcome):
    assert crash_at in CRASH_POINTS
    ds = world.ds
    for k in range(5):  # file requests: the subprocess needs nothing but the ledger and the model
        np.save(world.tmp / f"r{k}.npy", ds.X_train[4 * k:4 * k + 4].numpy())
    with Ledger(world.ledger) as ledger:
        for k in range(2):
            ledger.add(f"u{k}", points_file=world.tmp / f"r{k}.npy")
        ledger.process(world.path, neighbourhood=REGION)
        for k in range(2, 5):
            ledger.add(f"u{k}", points_file=world.tmp / f"r{k}.npy")
        n_events = len(ledger.events())
    model_before = world.path.read_bytes()

    proc = _process_in_subprocess(world.ledger, world.path, crash_at)
    assert proc.returncode == -signal.SIGKILL, proc.stderr

    raw = sqlite3.connect(world.ledger)  # what the crash left, before any recovery
    states = [s for (s,) in raw.execute("SELECT state FROM events ORDER BY id")]
    raw.close()
    if crash_at == "after_pending_write":
        assert len(states) == n_events and world.pending.exists()  # the transaction never committed
    else:
        assert len(states) == n_events + 1 and states[-1] == "committing"
    assert (world.path.read_bytes() == model_before) == (crash_at != "after_rename")

    with Ledger(world.ledger) as ledger:  # reopening recovers
        assert_consistent(ledger, world.path)
        statuses = [r.status for r in ledger.requests()]
        if outcome == "old":
            assert world.path.read_bytes() == model_before and len(ledger.events()) == n_events
            assert statuses == ["processed"] * 2 + ["pending"] * 3
        else:
            assert not world.pending.exists() and len(ledger.events()) == n_events + 1
            assert statuses == ["processed"] * 5
        again = ledger.process(world.path, neighbourhood=REGION)  # completes
        assert len(again.requests) == (3 if outcome == "old" else 0)
        assert_consistent(ledger, world.path)
        assert [r.status for r in ledger.requests()] == ["processed"] * 5 and not world.pending.exists()


def test_kill_9_during_undo_recovers(world):
    np.save(world.tmp / "r.npy", world.ds.X_train[:3].numpy())
    with Ledger(world.ledger) as ledger:
        ledger.add("a", points_file=world.tmp / "r.npy")
        ledger.process(world.path, neighbourhood=REGION)
    code = ("import sys; from prune_unlearn.ops.ledger import Ledger; Ledger(sys.argv[1]).undo(1, sys.argv[2])")
    env = {**os.environ, "PYTHONPATH": SRC, CRASH_ENV: "after_ledger_commit"}
    proc = subprocess.run([sys.executable, "-c", code, str(world.ledger), str(world.path)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    with Ledger(world.ledger) as ledger:
        assert ledger.get(1).status == "undone" and ledger.verify(world.path).ok
        assert len(load(world.path).patches) == 0


# --- 10,000 requests ---------------------------------------------------------------------------------


def test_ten_thousand_one_point_requests_in_batches_of_a_thousand(world):
    ds = synthetic(world.model, 10_000, seed=2, name="synthetic-10k")
    t0 = time.perf_counter()
    with Ledger(world.ledger) as ledger:
        ledger.add_many([{"requester": f"user{i % 97}", "indices": [i]} for i in range(10_000)], data=ds)
        t_add = time.perf_counter() - t0
        result = ledger.process(world.path, data=ds, batch_size=1000, neighbourhood=REGION)
        t_process = time.perf_counter() - t0 - t_add
        assert len(result.batches) == 10 and result.n_points == 10_000 and result.n_failed == 0
        patched = load(world.path)
        assert (patched(ds.X_train).argmax(1) != ds.y_train).all()  # every point mispredicted
        patterns = [pattern_hash(p) for p in patched.patches.patterns]
        assert len(patterns) == len(set(patterns)) < 1000  # many requests share a region; none is patched twice
        covering = covering_patterns(patched, ds.X_train)
        requests = ledger.requests()
        assert all(r.status == "processed" and r.patterns == [covering[r.indices[0]]] for r in requests)
        t1 = time.perf_counter()
        assert ledger.verify(world.path).ok
        t_verify = time.perf_counter() - t1
    per_batch = ", ".join(f"{b['seconds']:.2f}" for b in result.batches)
    print(f"\n10,000 requests: add_many {t_add:.2f} s, process {t_process:.2f} s ({per_batch} s per batch), "
          f"verify {t_verify:.2f} s; {len(patterns)} patched regions")


# --- command line ------------------------------------------------------------------------------------


@pytest.fixture
def prune():
    @click.group(context_settings={"help_option_names": ["-h", "--help"]})
    def group():
        pass

    register(group)
    return group


def briefly_trained_digits_mlp(digits):
    """FC(16×16) on digits after 30 full-batch SGD steps (a second on 2 cores): a realistic, cheap model."""
    torch.manual_seed(0)
    model = mlp(digits.input_dim, [16, 16], digits.num_classes)
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.5)
    for _ in range(30):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(digits.X_train), digits.y_train).backward()
        opt.step()
    return model.eval()


def test_cli_add_list_process_undo_verify(tmp_path, digits, prune):
    base = briefly_trained_digits_mlp(digits)
    model = tmp_path / "digits.safetensors"
    save(base, model)
    led = ["--ledger", str(tmp_path / "requests.sqlite")]

    def run(*args):
        return CliRunner().invoke(prune, [str(a) for a in args])

    res = run("ledger", "add", *led, "--requester", "alice", "--data", "digits", "--index", 3, "--index", 17, "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["id"] == 1 and json.loads(res.output)["status"] == "pending"
    np.save(tmp_path / "pts.npy", digits.X_train[[40, 41]].numpy())
    np.save(tmp_path / "lab.npy", digits.y_train[[40, 41]].numpy())
    digest = hashlib.sha256((tmp_path / "pts.npy").read_bytes()).hexdigest()
    res = run("ledger", "add", *led, "--who", "bob", "--points", tmp_path / "pts.npy", "--labels",
              tmp_path / "lab.npy", "--sha256", digest)
    assert res.exit_code == 1 and "its labels cannot be checked against a number of classes" in res.output
    res = run("ledger", "add", *led, "--who", "bob", "--points", tmp_path / "pts.npy", "--labels",
              tmp_path / "lab.npy", "--sha256", digest, "--model", model)
    assert res.exit_code == 0 and "request 2 from bob: 2 point(s), pending" in res.output

    res = run("ledger", "list", *led, "--json")
    doc = json.loads(res.output)
    assert [r["status"] for r in doc["requests"]] == ["pending", "pending"]
    res = run("ledger", "process", *led, "--model", model, "--json")  # index requests' data set: the one they name
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["n_forgotten"] == 4 and json.loads(res.output)["requests"] == [1, 2]
    assert "nothing to do" in run("ledger", "process", *led, "--model", model).output
    res = run("ledger", "verify", *led, "--model", model, "--json")
    assert res.exit_code == 0 and json.loads(res.output)["ok"] is True

    res = run("ledger", "undo", 1, *led, "--model", model, "--json")
    assert res.exit_code == 0, res.output
    undone = json.loads(res.output)
    x = digits.X_train[[3, 17]]
    if not undone["kept_patterns"]:  # no other live request in those regions
        assert torch.equal(load(model)(x), base(x))
    res = run("ledger", "list", *led, "--status", "undone")
    assert "alice" in res.output and res.output.strip().endswith("1 request(s)")

    (tmp_path / "idx.txt").write_text("5, 6\n7\n")
    res = run("ledger", "add", *led, "--who", "carol", "--data", "digits", "--indices", tmp_path / "idx.txt")
    assert res.exit_code == 0 and "request 3 from carol: 3 point(s), pending" in res.output
    res = run("ledger", "list", *led, "--requester", "carol", "--status", "pending", "--json")
    assert [r["indices"] for r in json.loads(res.output)["requests"]] == [[5, 6, 7]]

    res = run("ledger", "undo", 1, *led, "--model", model)
    assert res.exit_code == 1 and "Error: Request 1 is undone" in res.output
    res = run("ledger", "undo", 9, *led, "--model", model)
    assert res.exit_code == 1 and "Error: No request with id 9" in res.output
    res = run("ledger", "add", *led, "--requester", "x")
    assert res.exit_code == 2 and "Name the points with --index/--indices" in res.output
    res = run("ledger", "list", "--ledger", tmp_path / "missing.sqlite")
    assert res.exit_code == 1 and "Error: No ledger at" in res.output

    conn = sqlite3.connect(tmp_path / "requests.sqlite")
    conn.execute("UPDATE events SET body = replace(body, 'alice', 'mallory') WHERE id = 1")
    conn.commit()
    conn.close()
    res = run("ledger", "verify", *led)
    assert res.exit_code == 3 and "FAILED" in res.output and "event 1 (add)" in res.output


def test_every_ledger_command_has_help_with_an_example(prune):
    for path in (["ledger", "add"], ["ledger", "list"], ["ledger", "process"], ["ledger", "undo"],
                 ["ledger", "verify"]):
        res = CliRunner().invoke(prune, [*path, "-h"])
        assert res.exit_code == 0 and "Example: prune " + " ".join(path) in res.output


# --- models that carry whole-class patches --------------------------------------------------------------


@pytest.fixture
def class_world(tmp_path):
    """The tiny model with class 0 forgotten by ``forget_class``, saved where a ledger processes requests."""
    from prune_unlearn import forget_class

    model = tiny_model()
    ds = synthetic(model, 300)
    members = ds.X_train[ds.y_train == 0]
    patched = forget_class(model, 0, members, seed=0).model
    assert patched.has_class_patches
    path = tmp_path / "model.safetensors"
    save(patched, path)
    return SimpleNamespace(model=patched, base=model, path=path, ds=ds, members=members,
                           ledger=tmp_path / "ledger.sqlite")


def test_process_and_undo_on_a_class_patched_model_keep_the_class_forgotten(class_world):
    """Both defects of issue 10: the ledger hashed a class-patched model without its class rows (so
    `process` failed with "does not hash"), and `undo` rebuilt the model without them (the class came back)."""
    w = class_world
    forgotten_before = (w.model(w.members).argmax(1) != 0).float().mean()
    assert forgotten_before == 1.0
    others = (w.ds.y_train != 0).nonzero().flatten()[:3].tolist()
    with Ledger(w.ledger) as ledger:
        ledger.add("alice", indices=others[:2], data=w.ds)
        ledger.add("bob", indices=others[2:], data=w.ds)
        result = ledger.process(w.path, data=w.ds, neighbourhood=REGION)
        processed = load(w.path)
        assert result.model_sha256 == processed.sha256() == load_info(w.path)["tensors_sha256"]
        assert processed.has_class_patches
        assert torch.equal(processed.class_patches.values, w.model.class_patches.values)
        assert (processed(w.members).argmax(1) != 0).all()
        assert (processed(w.ds.X_train[others]).argmax(1) != w.ds.y_train[others]).all()

        ledger.undo(1, w.path)
        undone = load(w.path)
        assert undone.has_class_patches and undone.patches_sha256() != processed.patches_sha256()
        assert (undone(w.members).argmax(1) != 0).all()          # the class is still forgotten
        assert (undone(w.ds.X_train[others[2:]]).argmax(1) != w.ds.y_train[others[2:]]).all()
        assert ledger.verify(w.path).ok
