"""Recorded training: replayable bit for bit, SISA-sharded with checkpoints on disk, averaged logits as one MLP."""

import dataclasses
import json

import numpy as np
import pytest
import torch

from prune_unlearn.core.models import mlp
from prune_unlearn.errors import DataError, FormatError, InputValidationError
from prune_unlearn.experiments.manifest import DataManifest, check_manifest
from prune_unlearn.experiments.recorded import aggregate, partition, replay_shard, train_recorded
from prune_unlearn.experiments.records import RecordStore
from prune_unlearn.experiments.training import Recipe
from prune_unlearn.ops.engine import ProcessEngine

RECIPE = Recipe(lr=0.1, epochs=3, batch_size=64, seed=5)


def spec(digits, hidden=(16, 16)):
    return mlp(digits.input_dim, list(hidden), digits.num_classes).prune_architecture


def test_same_manifest_and_recipe_give_byte_identical_checkpoints(tmp_path, digits):
    n = torch.get_num_threads()
    try:
        torch.set_num_threads(2)  # the caller's thread setting does not matter: training uses one thread
        a = train_recorded(digits, spec(digits), RECIPE, tmp_path / "a", shards=2, slices=2)
        assert torch.get_num_threads() == 2 and not torch.are_deterministic_algorithms_enabled()  # restored
        torch.set_num_threads(1)
        b = train_recorded(digits, spec(digits), RECIPE, tmp_path / "b", shards=2, slices=2)
    finally:
        torch.set_num_threads(n)
    assert a.record == b.record and a.record_sha256 == b.record_sha256
    assert (tmp_path / "a" / "records" / f"{a.record_sha256}.json").read_bytes() == \
        (tmp_path / "b" / "records" / f"{b.record_sha256}.json").read_bytes()
    for entry in a.record.shard_table:  # every checkpoint file is the same bytes
        assert len(entry.checkpoints) == 3 and len(set(entry.checkpoints)) == 3
        for sha in entry.checkpoints:
            assert (tmp_path / "a" / "objects" / f"{sha}.safetensors").read_bytes() == \
                (tmp_path / "b" / "objects" / f"{sha}.safetensors").read_bytes()
    other = train_recorded(digits, spec(digits), Recipe(**{**RECIPE.to_dict(), "seed": 6}), tmp_path / "c",
                           shards=2, slices=2)
    assert other.record.model_sha256 != a.record.model_sha256  # the seed matters
    store = RecordStore(tmp_path / "a")
    assert [replay_shard(store, a.record, k, digits)["identical"] for k in range(2)] == [True, True]


def test_the_record_holds_the_sisa_schedule_and_the_data_manifest(tmp_path, digits):
    result = train_recorded(digits, spec(digits), RECIPE, tmp_path, shards=3, slices=2)
    record, store = result.record, RecordStore(tmp_path)
    assert (record.shards, record.slices, record.epochs_per_slice, record.aggregate) == (3, 2, 2, "mean-logits")
    assert record.n_points == len(digits.y_train) and record.dataset == "digits"
    parts = partition(len(digits.y_train), 3, 2, RECIPE.seed)
    for k, entry in enumerate(record.shard_table):
        manifest = store.get_manifest(entry.manifest)
        assert list(manifest.indices) == [i for s in parts[k] for i in s]  # training order
        assert entry.slice_sizes == tuple(len(s) for s in parts[k])
        check_manifest(manifest, digits, "test")
    data = json.loads((tmp_path / "records" / f"{result.record_sha256}.json").read_text())
    assert data["manifest_sha256"] == record.manifest_sha256 and data["determinism"]["threads"] == 1
    assert store.get_record(result.record_sha256) == record
    assert result.info()["sha256"] == result.record_sha256


def test_the_sharded_model_is_one_mlp_whose_logits_are_the_shards_mean(tmp_path, digits):
    recipe = Recipe(lr=0.1, epochs=15, batch_size=32, seed=5)
    result = train_recorded(digits, spec(digits, (16, 8)), recipe, tmp_path, shards=3, slices=1)
    model, store = result.model, RecordStore(tmp_path)
    assert model.prune_architecture["hidden"] == [48, 24]  # a plain Linear/ReLU network PRUNE can patch
    members = []
    for entry in result.record.shard_table:
        m = mlp(digits.input_dim, [16, 8], digits.num_classes)
        m.load_state_dict(store.get_state(entry.checkpoints[-1]))
        members.append(m.eval())
    with torch.no_grad():
        mean = torch.stack([m(digits.X_test) for m in members]).mean(0)
        out = model(digits.X_test)
    assert torch.allclose(out, mean, atol=1e-5)
    assert (out.argmax(1) == mean.argmax(1)).float().mean() > 0.99
    accuracy = (out.argmax(1) == digits.y_test).float().mean()
    assert accuracy > 0.8


def test_aggregate_of_one_shard_is_that_model_and_of_a_non_mlp_is_refused(digits):
    m = mlp(digits.input_dim, [8], digits.num_classes)
    state = {k: v.clone() for k, v in m.state_dict().items()}
    assert all(torch.equal(a, b) for a, b in zip(aggregate(m.prune_architecture, [state]).state_dict().values(),
                                                 state.values()))
    with pytest.raises(InputValidationError, match="needs an MLP"):
        aggregate({"kind": "vgg16"}, [state, state])


def test_bad_schedules_are_refused(tmp_path, digits):
    with pytest.raises(InputValidationError, match="'shards' parameter"):
        train_recorded(digits, spec(digits), RECIPE, tmp_path, shards=0)
    with pytest.raises(InputValidationError, match="fewer than shards × slices"):
        train_recorded(digits, spec(digits), RECIPE, tmp_path, shards=1000, slices=2)
    with pytest.raises(InputValidationError, match="needs an MLP architecture"):
        train_recorded(digits, {"kind": "vgg16"}, RECIPE, tmp_path, shards=2)
    with pytest.raises(InputValidationError, match="anneals its last 3 epoch\\(s\\) of every slice, but a slice trains 3"):
        train_recorded(digits, spec(digits), dataclasses.replace(RECIPE, anneal_epochs=3), tmp_path, slices=2,
                       epochs_per_slice=3)
    assert not (tmp_path / "records").exists()


def test_a_manifest_that_does_not_match_the_data_is_refused(tmp_path, digits):
    manifest = DataManifest.of(digits, [5, 3, 9])
    assert DataManifest.from_bytes(manifest.to_bytes()) == manifest
    changed = type(digits)("digits", digits.X_train.clone(), digits.y_train.clone(), digits.X_test, digits.y_test,
                           digits.num_classes)
    changed.X_train[3, 0] += 0.5
    with pytest.raises(DataError, match=r"Entry 1 of m \(training point 3 of 'digits'\) has SHA-256 .* does not match"):
        check_manifest(manifest, changed, "m")
    relabelled = type(digits)("digits", digits.X_train, digits.y_train.clone(), digits.X_test, digits.y_test,
                              digits.num_classes)
    relabelled.y_train[9] = (relabelled.y_train[9] + 1) % 10
    with pytest.raises(DataError, match="labels it"):
        check_manifest(manifest, relabelled, "m")
    with pytest.raises(FormatError, match="not a prune data manifest"):
        DataManifest.from_bytes(b"1 2 3\n")


def test_store_objects_are_checked_against_their_names(tmp_path, digits):
    result = train_recorded(digits, spec(digits), RECIPE, tmp_path, shards=1, slices=1)
    store = RecordStore(tmp_path)
    sha = result.record.shard_table[0].checkpoints[-1]
    path = tmp_path / "objects" / f"{sha}.safetensors"
    from safetensors.torch import load_file, save_file

    state = load_file(str(path))
    state[next(iter(state))][0] += 1.0
    save_file(state, str(path))
    with pytest.raises(FormatError, match="does not hash to its name"):
        store.get_state(sha)
    record_file = tmp_path / "records" / f"{result.record_sha256}.json"
    record_file.write_text(record_file.read_text().replace('"epochs_per_slice":3', '"epochs_per_slice":4'))
    with pytest.raises(FormatError, match="does not hash to its name"):
        store.get_record(result.record_sha256)


@pytest.mark.slow
def test_local_processes_train_the_same_bytes(tmp_path, digits):
    here = train_recorded(digits, spec(digits), RECIPE, tmp_path / "here", shards=2, slices=2)
    there = train_recorded(digits, spec(digits), RECIPE, tmp_path / "there", shards=2, slices=2,
                           engine=ProcessEngine(2))
    assert here.record_sha256 == there.record_sha256
    assert np.array_equal(here.model.state_dict()["1.weight"].numpy(), there.model.state_dict()["1.weight"].numpy())
