"""Certified neighbourhoods through the ledger, the CLI and the export (issue 11)."""

import json

import pytest
import torch
from click.testing import CliRunner

from prune_unlearn import Ledger, load, save
from prune_unlearn.cli import cli
from prune_unlearn.core.models import mlp
from prune_unlearn.experiments.datasets import Dataset


def tiny_model(seed=0):
    """A seeded 4-8-8-3 MLP built by prune (its file reloads by itself)."""
    torch.manual_seed(seed)
    return mlp(4, [8, 8], 3).eval()


@pytest.fixture
def world(tmp_path):
    model = tiny_model()
    path = tmp_path / "model.safetensors"
    save(model, path)
    X = torch.rand(60, 4, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = model(X).argmax(1)
    return model, path, Dataset("synthetic", X, y, X[:0], y[:0], num_classes=3), tmp_path


def test_process_with_a_radius_then_undo_restores_base_outputs(world):
    model, path, ds, tmp = world
    nb = {"radius": 0.02, "outer": 0.5}
    with Ledger(tmp / "ledger.sqlite") as ledger:
        ledger.add("alice", indices=[0, 1], data=ds)
        ledger.add("bob", indices=[2], data=ds)
        result = ledger.process(path, data=ds, neighbourhood=nb)
        assert result.n_failed == 0
        patched = load(path)
        assert len(patched.neighbourhoods) == 3 and len(patched.patches) == 0
        reqs = ledger.requests()
        assert all(k.startswith("ball:") for r in reqs for k in r.patterns)
        assert reqs[0].claims[0]["radius"] == pytest.approx(0.02)
        with torch.no_grad():
            assert (patched(ds.X_train[:3]).argmax(1) != ds.y_train[:3]).all()
        ledger.undo(2, path)
        after = load(path)
        assert len(after.neighbourhoods) == 2
        with torch.no_grad():
            # bob's point is answered by the base model again, bit for bit; alice's stay forgotten
            assert torch.equal(after(ds.X_train[2:3]), model(ds.X_train[2:3]))
            assert (after(ds.X_train[:2]).argmax(1) != ds.y_train[:2]).all()
        assert ledger.verify(path).ok


@pytest.fixture(scope="module")
def digits_model_file(tmp_path_factory):
    d = tmp_path_factory.mktemp("nbhd-cli")
    path = d / "digits.safetensors"
    res = CliRunner().invoke(cli, ["train", "--data", "digits", "--epochs", "8", "--out", str(path), "--json"])
    assert res.exit_code == 0, res.output
    return path


@pytest.fixture(scope="module")
def digits_small_model_file(digits_small_model, tmp_path_factory):
    """The FC(32×32) digits model saved by prune: small enough for the audit's exact MILPs over the balls to finish
    in seconds (on FC(256×256) each of them ran into its 10 s limit: 4.5 minutes for three balls)."""
    path = tmp_path_factory.mktemp("nbhd-cli-small") / "digits-small.safetensors"
    save(digits_small_model, path)
    return path


def test_cli_forget_with_a_radius_audit_and_export(digits_small_model_file, tmp_path):
    out = tmp_path / "out"
    res = CliRunner().invoke(cli, ["forget", "--model", str(digits_small_model_file), "--data", "digits", "--count", "3",
                                   "--radius", "1/64", "--out", str(out), "--json"])
    assert res.exit_code == 0, res.output
    report = json.loads(res.output)
    assert report["n_certified_neighbourhood"] == 3 and report["changed_tes"] == 0
    cert = json.loads((out / "certificate.json").read_text())
    assert len(cert["neighbourhoods"]) == 3 and cert["neighbourhoods"][0]["radius"] == 1 / 64
    res = CliRunner().invoke(cli, ["audit", "--model", str(out / "patched.safetensors"), "--certificate",
                                   str(out / "certificate.json"), "--data", "digits", "--indices",
                                   str(out / "forget_indices.txt"), "--json"])
    assert res.exit_code == 0, res.output
    counts = json.loads(res.output)["counts"]
    assert counts["ball-bounds"]["passed"] == 3
    # the exact MILP over each of the three balls (and the float32 model at its maximisers) passed
    assert counts["ball-milp"]["passed"] == 6 and counts["ball-milp"].get("failed", 0) == 0
    pytest.importorskip("onnx")
    vnn = tmp_path / "vnn"
    res = CliRunner().invoke(cli, ["export", "--model", str(out / "patched.safetensors"), "--certificate",
                                   str(out / "certificate.json"), "--out", str(vnn), "--json"])
    assert res.exit_code == 0, res.output
    info = json.loads(res.output)
    assert len(info["properties"]) == 3 and (vnn / "ball_0.vnnlib").is_file() and (vnn / "patched.onnx").is_file()
    text = (vnn / "ball_0.vnnlib").read_text()
    assert "(assert (>= X_0 " in text and "(assert (or" in text
    assert len((vnn / "instances.csv").read_text().splitlines()) == 3


def test_exported_ball_network_matches_the_patched_model(digits_model_file, tmp_path):
    from prune_unlearn import forget, load_dataset
    from prune_unlearn.verify.export_neighbourhood import BallNormalForm

    ds = load_dataset("digits")
    model = load(digits_model_file)
    res = forget(model, ds.X_train[:3], labels=ds.y_train[:3], radius=0.1)
    net = BallNormalForm(res.model, [0, 1, 2])
    with torch.no_grad():
        h = torch.cat([ds.X_train[:3], ds.X_test[:50]])
        assert torch.allclose(net(h), res.model(h), atol=1e-5)
        assert (net(ds.X_train[:3]).argmax(1) == res.model.neighbourhoods.targets).all()


@pytest.mark.parametrize("radius, message", [
    ("-0.1", "Error: The 'radius' parameter of forget must be a finite float > 0"),
    ("nan", "Error: The 'radius' parameter of forget must be a finite float > 0"),
    ("2", "Error: The 'radius' parameter of forget must be at most the domain's widest side"),
    ("wide", "Invalid value for --radius"),
])
def test_cli_bad_radius_writes_nothing(digits_model_file, tmp_path, radius, message):
    out = tmp_path / "out"
    res = CliRunner().invoke(cli, ["forget", "--model", str(digits_model_file), "--data", "digits", "--count", "3",
                                   "--radius", radius, "--out", str(out)])
    assert res.exit_code in (1, 2) and message in res.output, res.output
    assert not out.exists()


@pytest.mark.parametrize("radius", [-0.1, float("nan"), 5.0])
def test_ledger_process_with_a_bad_radius_writes_nothing(world, radius):
    from prune_unlearn.errors import PruneError

    model, path, ds, tmp = world
    before = path.read_bytes()
    with Ledger(tmp / "ledger.sqlite") as ledger:
        ledger.add("alice", indices=[0, 1], data=ds)
        with pytest.raises(PruneError, match="radius"):
            ledger.process(path, data=ds, neighbourhood={"radius": radius})
        assert [r.status for r in ledger.requests()] == ["pending"]
        assert ledger.verify(path).ok
    assert path.read_bytes() == before
