"""Consolidation: retrain without the processed requests' points (only the affected shards, from their first affected
slice), retire their patches, re-patch requests processed meanwhile, record it; crash safety, bad input, Ray."""

import dataclasses
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import prune_unlearn
from prune_unlearn import Ledger, load, load_info, save
from prune_unlearn.core.models import mlp
from prune_unlearn.core.patches import PatchedModel, model_state_sha256
from prune_unlearn.errors import DataError, EngineError, LedgerError
from prune_unlearn.experiments.datasets import Dataset
from prune_unlearn.experiments.recorded import train_recorded
from prune_unlearn.experiments.records import RecordStore
from prune_unlearn.experiments.training import Recipe
from prune_unlearn.ops.engine import SerialEngine, make_engine, ray_available
from prune_unlearn.ops.ledger import CONSOLIDATE_CRASH_POINTS, CRASH_ENV, CRASH_POINTS

REGION = {"radius": None}  # region-only: these tests check linear-region patches (forget's default is a ball)

SRC = str(Path(prune_unlearn.__file__).resolve().parents[1])
RECIPE = Recipe(lr=0.1, epochs=3, batch_size=64, seed=5)


def recorded_world(tmp_path, digits, shards=2, slices=2):
    """A recorded FC(16×16) on digits (S shards × R slices), its model file and an empty ledger."""
    spec = mlp(digits.input_dim, [16, 16], digits.num_classes).prune_architecture
    result = train_recorded(digits, spec, RECIPE, tmp_path / "record", shards=shards, slices=slices)
    path = tmp_path / "model.safetensors"
    save(result.model, path, info={"dataset": "digits", "training_record": result.info()})
    return SimpleNamespace(path=path, ledger=tmp_path / "ledger.sqlite", store=RecordStore(tmp_path / "record"),
                           trained=result, tmp=tmp_path)


def location(world, index):
    """(shard, slice) of training point ``index`` in the world's record."""
    for k, entry in enumerate(world.trained.record.shard_table):
        rows = list(world.store.get_manifest(entry.manifest).indices)
        if index in rows:
            pos, bound = rows.index(index), 0
            for r, size in enumerate(entry.slice_sizes):
                bound += size
                if pos < bound:
                    return k, r
    raise AssertionError(index)


def files(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_consolidate_retrains_only_the_affected_shard_from_its_first_affected_slice(tmp_path, digits):
    world = recorded_world(tmp_path, digits)
    old = world.trained.record
    # one point in the last slice of one shard: only that shard retrains, from its last checkpoint
    index = next(i for i in range(len(digits.y_train)) if location(world, i)[1] == 1)
    shard = location(world, index)[0]
    with Ledger(world.ledger) as ledger:
        ledger.add("alice", indices=[index], data="digits")
        ledger.process(world.path)
        assert isinstance(load(world.path), PatchedModel)
        result = ledger.consolidate(world.path, engine="local", workers=1)
        assert result.requests == [1] and result.repatched == [] and result.n_points_removed == 1
        assert result.shards_retrained == {str(shard): 1} and result.slices_retrained == 1
        assert ledger.get(1).status == "consolidated" and ledger.get(1).patterns == []
        assert ledger.get(1).consolidated_event == result.event and ledger.get(1).claims  # claims kept as history
        assert ledger.verify(world.path).ok
        event = ledger.events()[-1]
    new = world.store.get_record(result.record_after)
    assert new.parent == world.trained.record_sha256 and new.generation == 1
    assert new.shard_table[1 - shard] == old.shard_table[1 - shard]  # untouched shard: same manifest, checkpoints
    assert new.shard_table[shard].checkpoints[:2] == old.shard_table[shard].checkpoints[:2]
    assert new.shard_table[shard].checkpoints[2] != old.shard_table[shard].checkpoints[2]
    assert digits_hash(digits, index) not in world.store.get_manifest(new.shard_table[shard].manifest).hashes
    model = load(world.path)  # no patches left: a plain model, the record's aggregate
    assert not isinstance(model, PatchedModel) and model_state_sha256(model) == new.model_sha256
    info = load_info(world.path)["info"]["training_record"]
    assert info["sha256"] == result.record_after and info["manifest_sha256"] == new.manifest_sha256
    body = event["body"]
    assert event["kind"] == "consolidate" and body["consolidated"] == [1]
    assert body["record"]["before"] == world.trained.record_sha256 and body["record"]["after"] == result.record_after
    assert body["manifest_after"] == new.manifest_sha256 and body["engine"] == {"name": "serial", "workers": 1}
    assert body["model_before"] == result.model_before and body["model_after"] == result.model_after
    assert body["seconds"]["retraining"] > 0
    with Ledger(world.ledger) as ledger:  # an auditor replays the retrained shard: byte-identical
        replayed = ledger.replay([shard], world.path)
        assert replayed.ok and replayed.shards[0]["identical"] and replayed.shards[0]["checkpoints"] == 3
        with pytest.raises(LedgerError, match="is consolidated: only a processed request can be undone"):
            ledger.undo(1, world.path)
        again = ledger.consolidate(world.path, engine="local", workers=1)  # nothing processed: nothing written
        assert again.requests == [] and len(ledger.events()) == 3


def digits_hash(digits, index):
    from prune_unlearn._hashing import point_sha256

    return point_sha256(digits.X_train[index])


class ProcessingWhileRetraining(SerialEngine):
    """Runs the shard tasks here, after adding and processing more requests through a second ledger handle."""

    def __init__(self, world, indices):
        self.world, self.indices = world, indices

    def map(self, fn, calls, **kwargs):
        with Ledger(self.world.ledger) as other:
            other.add_many([{"requester": "late", "indices": [i]} for i in self.indices], data="digits")
            other.process(self.world.path, neighbourhood=REGION)  # region patches, as the asserts below
            other.add("later", indices=[self.indices[-1] + 1], data="digits")  # stays pending
        return super().map(fn, calls, **kwargs)


def test_requests_processed_while_retraining_are_patched_again_and_certified(tmp_path, digits):
    world = recorded_world(tmp_path, digits)
    first, late = [10, 20, 30, 40], [100, 200, 300]
    with Ledger(world.ledger) as ledger:
        ledger.add_many([{"requester": "early", "indices": [i]} for i in first], data="digits")
        ledger.process(world.path, neighbourhood=REGION)
        result = ledger.consolidate(world.path, engine=ProcessingWhileRetraining(world, late), neighbourhood=REGION)
        assert result.requests == [1, 2, 3, 4] and result.repatched == [5, 6, 7]
        assert [r.status for r in ledger.requests()] == ["consolidated"] * 4 + ["processed"] * 3 + ["pending"]
        assert ledger.verify(world.path).ok
        repatched = ledger.requests(status="processed")
    model = load(world.path)
    assert isinstance(model, PatchedModel) and len(model.patches) == len({p for r in repatched for p in r.patterns})
    new_base = model.base
    assert model_state_sha256(new_base) == world.store.get_record(result.record_after).model_sha256
    with torch.no_grad():  # the late requests' points are forgotten by patches certified on the new model
        for r in repatched:
            claim = r.claims[0]
            assert claim["proved"] == "region" and claim["margin"] > 0
            assert model(digits.X_train[r.indices]).argmax(1).item() == claim["target"] != claim["label"]
        # the consolidated points have no patch: the model answers with the retrained base there
        assert torch.equal(model(digits.X_train[first]), new_base(digits.X_train[first]))
    # re-patched claims are recorded by the consolidate event, whose hash chain verifies
    with Ledger(world.ledger) as ledger:
        event = ledger.events()[-1]
        assert [r["id"] for r in event["body"]["repatched"]] == [5, 6, 7]
        assert ledger.requests(status="processed")[0].claims == event["body"]["repatched"][0]["claims"]


def test_bad_input_is_refused_and_nothing_is_written(tmp_path, digits):
    world = recorded_world(tmp_path, digits)
    with Ledger(world.ledger) as ledger:
        ledger.add("a", indices=[1, 2], data="digits")
        ledger.process(world.path)
    snapshot = lambda: (files(world.tmp / "record"), world.ledger.read_bytes(), world.path.read_bytes())  # noqa
    before = snapshot()

    other = Dataset("other", digits.X_train[:50] + 0.0, digits.y_train[:50], digits.X_test, digits.y_test, 10)
    with Ledger(world.ledger) as ledger:
        with pytest.raises(LedgerError, match="trained \\(recorded\\) on data set 'digits', but the data set given "
                                              "is 'other'"):
            ledger.consolidate(world.path, engine="local", workers=1, data=other)
        changed = Dataset("digits", digits.X_train.clone(), digits.y_train, digits.X_test, digits.y_test, 10)
        changed.X_train[:, 0] += 0.01
        with pytest.raises(DataError, match="the manifest does not match the data"):
            ledger.consolidate(world.path, engine="local", workers=1, data=changed)
        with pytest.raises(EngineError, match="Unknown engine 'spark'"):
            ledger.consolidate(world.path, engine="spark")
        if ray_available():
            with pytest.raises(EngineError, match="Cannot reach the Ray cluster at 127.0.0.1:1 .*HINT"):
                ledger.consolidate(world.path, engine="ray", ray_address="127.0.0.1:1")
        with pytest.raises(EngineError, match="not host:port"):
            ledger.consolidate(world.path, engine="ray" if ray_available() else "auto", ray_address="nowhere")
    assert snapshot() == before

    plain = tmp_path / "plain.safetensors"  # a model not trained in recorded mode
    save(world.trained.model, plain)
    led2 = tmp_path / "l2.sqlite"
    with Ledger(led2) as ledger:
        ledger.add("a", indices=[1], data="digits")
        ledger.process(plain)
        state = (led2.read_bytes(), plain.read_bytes())
        with pytest.raises(LedgerError, match="was not trained in recorded mode .* HINT: train it with "
                                              "`prune train --recorded`"):
            ledger.consolidate(plain, engine="local", workers=1)
    assert (led2.read_bytes(), plain.read_bytes()) == state

    led3 = tmp_path / "l3.sqlite"  # a request about another data set than the recorded one
    copy = tmp_path / "copy.safetensors"
    copy.write_bytes(before[2])
    with Ledger(led3) as ledger:
        ledger.add("b", indices=[3], data=other)
        ledger.process(copy, data=other)
        state = (led3.read_bytes(), copy.read_bytes())
        with pytest.raises(LedgerError, match="Request 1 is about data set 'other', but the model was trained "
                                              "\\(recorded\\) on 'digits'"):
            ledger.consolidate(copy, engine="local", workers=1)
    assert (led3.read_bytes(), copy.read_bytes()) == state and files(world.tmp / "record") == before[0]


def test_rows_no_request_owns_are_refused_and_nothing_is_written(tmp_path, digits):
    from prune_unlearn import forget

    world = recorded_world(tmp_path, digits)
    patched = forget(load(world.path), digits.X_train[50:52], labels=digits.y_train[50:52], seed=0, radius=None).model
    save(patched, world.path, info=load_info(world.path)["info"])  # patched outside the ledger: same record
    with Ledger(world.ledger) as ledger:
        ledger.add("a", indices=[1], data="digits")
        ledger.process(world.path)
        state = (world.ledger.read_bytes(), world.path.read_bytes(), files(world.tmp / "record"))
        with pytest.raises(LedgerError, match="patched region\\(s\\) .* that no processed request of this ledger owns"):
            ledger.consolidate(world.path, engine="local", workers=1)
        assert ledger.get(1).status == "processed" and ledger.verify(world.path).ok
    assert (world.ledger.read_bytes(), world.path.read_bytes(), files(world.tmp / "record")) == state


class UndoingWhileRetraining(SerialEngine):
    def __init__(self, world, request_id):
        self.world, self.request_id = world, request_id

    def map(self, fn, calls, **kwargs):
        with Ledger(self.world.ledger) as other:
            other.undo(self.request_id, self.world.path)
        return super().map(fn, calls, **kwargs)


def test_a_request_undone_while_retraining_stops_the_commit_and_a_rerun_consolidates_the_rest(tmp_path, digits):
    world = recorded_world(tmp_path, digits)
    with Ledger(world.ledger) as ledger:
        ledger.add_many([{"requester": "r", "indices": [i]} for i in (5, 6, 7)], data="digits")
        ledger.process(world.path)
        n_events = len(ledger.events())
        with pytest.raises(LedgerError, match=r"Request\(s\) \[2\] left the processed state .* run the consolidation "
                                              "again"):
            ledger.consolidate(world.path, engine=UndoingWhileRetraining(world, 2))
        assert [r.status for r in ledger.requests()] == ["processed", "undone", "processed"]
        assert len(ledger.events()) == n_events + 1 and ledger.verify(world.path).ok  # only the undo happened
        result = ledger.consolidate(world.path, engine="local", workers=1)
        assert result.requests == [1, 3] and ledger.verify(world.path).ok
        hashes = {h for e in world.store.get_record(result.record_after).shard_table
                  for h in world.store.get_manifest(e.manifest).hashes}
        assert digits_hash(digits, 6) in hashes and not {digits_hash(digits, 5), digits_hash(digits, 7)} & hashes


def test_one_consolidation_at_a_time_and_points_never_trained_on(tmp_path, digits):
    import numpy as np

    from prune_unlearn.ops.commit import writer_lock

    world = recorded_world(tmp_path, digits, shards=1, slices=1)
    np.save(tmp_path / "unseen.npy", digits.X_test[:1].numpy())  # a point the model was never trained on
    with Ledger(world.ledger) as ledger:
        ledger.add("a", indices=[1], data="digits")
        ledger.add("b", points_file=tmp_path / "unseen.npy", labels_file=None)
        ledger.process(world.path)
        lock = world.ledger.with_name(world.ledger.name + ".consolidate.lock")
        with writer_lock(lock):
            with pytest.raises(LedgerError, match="Another consolidation of the ledger .* is running"):
                ledger.consolidate(world.path, engine="local", workers=1)
        result = ledger.consolidate(world.path, engine="local", workers=1)  # unsharded: the whole model retrains
        assert result.shards_retrained == {"0": 0} and result.slices_retrained == 1
        assert result.requests == [1, 2] and (result.n_points_removed, result.n_points_absent) == (1, 1)
        assert [r.status for r in ledger.requests()] == ["consolidated"] * 2 and ledger.verify(world.path).ok


# --- crash safety -------------------------------------------------------------------------------------


def _consolidate_in_subprocess(world, crash_at):
    code = ("import sys, torch; torch.set_num_threads(1); from prune_unlearn.ops.ledger import Ledger; "
            "Ledger(sys.argv[1]).consolidate(sys.argv[2], engine='local', workers=1)")
    env = {**os.environ, "PYTHONPATH": SRC, CRASH_ENV: crash_at}
    return subprocess.run([sys.executable, "-c", code, str(world.ledger), str(world.path)], env=env,
                          capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, digits):
    """The outcome of an uninterrupted consolidation of the crash tests' ledger."""
    world = _crash_world(tmp_path_factory.mktemp("reference"), digits)
    with Ledger(world.ledger) as ledger:
        result = ledger.consolidate(world.path, engine="local", workers=1)
    return result


def _crash_world(tmp_path, digits):
    world = recorded_world(tmp_path, digits)
    with Ledger(world.ledger) as ledger:
        ledger.add_many([{"requester": f"u{i}", "indices": [i, i + 700]} for i in range(0, 40, 4)], data="digits")
        ledger.process(world.path)
        ledger.add("pending", indices=[999], data="digits")
    return world


@pytest.mark.parametrize("crash_at", [*CONSOLIDATE_CRASH_POINTS, *CRASH_POINTS])
def test_kill_9_during_consolidate_leaves_a_verifying_ledger_and_a_rerun_finishes_the_same(tmp_path, digits,
                                                                                            reference, crash_at):
    world = _crash_world(tmp_path, digits)
    model_before = world.path.read_bytes()
    with Ledger(world.ledger) as ledger:
        n_events = len(ledger.events())
    proc = _consolidate_in_subprocess(world, crash_at)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    committed = crash_at in ("after_ledger_commit", "after_rename")
    with Ledger(world.ledger) as ledger:  # reopening recovers: both old or both new
        assert ledger.verify(world.path).ok
        statuses = [r.status for r in ledger.requests()]
        if committed:
            assert statuses == ["consolidated"] * 10 + ["pending"] and len(ledger.events()) == n_events + 1
        else:
            assert statuses == ["processed"] * 10 + ["pending"] and len(ledger.events()) == n_events
            assert world.path.read_bytes() == model_before
        result = ledger.consolidate(world.path, engine="local", workers=1)  # completes (or has nothing left)
        assert ledger.verify(world.path).ok
        assert [r.status for r in ledger.requests()] == ["consolidated"] * 10 + ["pending"]
        head = ledger.events()[-1]["body"]
    # resumed or not, the retrained model is the uninterrupted run's, byte for byte
    assert head["record"]["after"] == reference.record_after and head["model_after"] == reference.model_after
    if not committed:
        assert result.record_after == reference.record_after
    if crash_at == "after_slice_checkpoint":  # the killed task's first checkpoint was reused, not retrained
        progress = [json.loads(p.read_text()) for p in (world.tmp / "record" / "tasks").glob("*.json")]
        assert any(len(p["checkpoints"]) == 2 for p in progress)


# --- Ray -------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def local_ray():
    ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'prune-unlearn[ray]')")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # as RayEngine does for its own local instance
    os.environ.setdefault("RAY_worker_niceness", "0")
    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join([SRC, os.environ.get("PYTHONPATH", "")])}})
    yield ray
    ray.shutdown()


@pytest.mark.slow
def test_consolidation_on_local_ray_gives_the_serial_result(tmp_path, digits, local_ray, reference):
    world = _crash_world(tmp_path, digits)
    with Ledger(world.ledger) as ledger, make_engine("ray") as engine:
        result = ledger.consolidate(world.path, engine=engine)
        assert ledger.verify(world.path).ok
    assert result.engine == {"name": "ray", "workers": 2, "address": "local"}
    assert result.record_after == reference.record_after and result.model_after == reference.model_after
    assert local_ray.is_initialized()  # the caller's instance is left running


# --- command line ------------------------------------------------------------------------------------------


def test_cli_train_recorded_consolidate_and_verify_replay(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from prune_unlearn.cli.main import cli

    monkeypatch.chdir(tmp_path)
    run = lambda *args: CliRunner().invoke(cli, list(args))  # noqa: E731
    res = run("train", "--data", "digits", "--out", "m.safetensors", "--recorded", "--shards", "2", "--slices", "2",
              "--epochs", "3", "--engine", "local", "--workers", "1", "--json")
    assert res.exit_code == 0, res.output
    trained = json.loads(res.output)
    assert trained["training_record"]["root"] == str((tmp_path / "m.safetensors.record").resolve())
    assert trained["engine"] == {"name": "serial", "workers": 1}
    assert run("ledger", "add", "--requester", "a", "--data", "digits", "--index", "3", "--index", "17").exit_code == 0
    assert run("ledger", "process", "--model", "m.safetensors").exit_code == 0
    res = run("ledger", "consolidate", "--model", "m.safetensors", "--ray-address", "127.0.0.1:1")
    assert res.exit_code == 1 and res.output.startswith("Error: ")  # unreachable cluster (or no Ray): nothing written
    res = run("ledger", "consolidate", "--model", "m.safetensors", "--engine", "local", "--workers", "1", "--json")
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert out["requests"] == [1] and out["engine"]["name"] == "serial"
    res = run("ledger", "verify", "--model", "m.safetensors", "--replay", "0", "--replay", "1", "--json")
    assert res.exit_code == 0, res.output
    verdict = json.loads(res.output)
    assert verdict["ok"] and verdict["replay"]["ok"] and [s["identical"] for s in verdict["replay"]["shards"]] == [
        True, True]
    res = run("ledger", "verify", "--model", "m.safetensors", "--replay", "2")
    assert res.exit_code == 1 and "has shards 0 to 1; got [2]" in res.output

    import prune_unlearn.experiments.recorded as recorded

    real = recorded.train_model

    def drifting(model, X, y, recipe, **kw):  # a replay on a machine whose training differs
        return real(model, X, y, dataclasses.replace(recipe, lr=recipe.lr * 1.01), **kw)

    monkeypatch.setattr(recorded, "train_model", drifting)
    res = run("ledger", "verify", "--model", "m.safetensors", "--replay", "0")
    assert res.exit_code == 3 and "DIFFERENT at [1, 2]" in res.output, res.output
    res = run("train", "--data", "digits", "--out", "x.safetensors", "--shards", "2")
    assert res.exit_code == 2 and "go with --recorded" in res.output
    res = run("ledger", "consolidate", "-h")
    assert res.exit_code == 0 and "Example: prune ledger consolidate" in res.output
