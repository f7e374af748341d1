"""The 'forgotten label is not predicted' region properties (``prune export --not-predicted``): written for every
region claim's label, bound into export.json, rounded so that UNSAT implies the claim, and proved by Marabou."""

import json
import re
from fractions import Fraction

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from _helpers.marabou import solve_region_properties

from prune_unlearn import forget, save
from prune_unlearn.errors import InputValidationError
from prune_unlearn.verify.bundle import export_bundle, file_sha256

pytest.importorskip("onnx", reason="the export extra is not installed")


@pytest.fixture(scope="module")
def forgotten(digits, digits_small_model, one_thread):
    idx = torch.randperm(len(digits.y_train), generator=torch.Generator().manual_seed(0))[:10]
    X, y = digits.X_train[idx], digits.y_train[idx]
    res = forget(digits_small_model, X, labels=y, seed=0, radius=None)
    return res, X, y


def _region_logits(folder, x):
    import onnxruntime as ort

    sess = ort.InferenceSession(str(folder / "region_network.onnx"), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x.flatten(1).numpy().astype(np.float32)})[0].astype(np.float64)


def test_not_predicted_properties_are_bound_sound_and_not_vacuous(forgotten, tmp_path):
    res, X, y = forgotten
    ps, cert = res.model.patches, res.certificate
    doc = export_bundle(res.model, tmp_path, certificate=cert, onnx=False, not_predicted=True)
    claimed = {(c["region"], c["label"]) for c in cert.claims if c["proved"] == "region"}
    entries = doc["not_predicted"]
    assert claimed and {(e["region"], e["label"]) for e in entries} == claimed
    rows = (tmp_path / "instances.csv").read_text().splitlines()
    c = ps.num_classes
    region, _ = res.model.covering_region(X)
    base_predicted = 0
    for e in entries:
        r, lab = e["region"], e["label"]
        assert e["target"] == int(ps.targets[r]) != lab
        path = tmp_path / e["vnnlib"]
        assert doc["files"][path.name]["sha256"] == file_sha256(path)  # bound like every other file
        assert f"region_network.onnx,{path.name},300" in rows
        text = path.read_text()
        assert "(or" not in text  # one conjunction: a single query
        # the same box and pattern bounds as the region's claim file (only the unsafe set differs)
        claim_text = (tmp_path / f"region_{r}.vnnlib").read_text()
        pattern = [ln for ln in claim_text.splitlines()
                   if ln.startswith("(assert (") and "Y_" in ln and " (- " not in ln]
        assert pattern and all(ln in text for ln in pattern)
        gaps = {int(o): Fraction(g) for a, o, g in re.findall(r"\(assert \(>= \(- Y_(\d+) Y_(\d+)\) (-?[0-9.]+)\)\)",
                                                              text) if int(a) == lab}
        assert set(gaps) == set(range(c)) - {lab}
        d = ps.values[r].double().numpy()
        for o, g in gaps.items():  # rounded down: the written counterexample set contains the true one
            assert g <= Fraction(float(d[o])) - Fraction(float(d[lab]))
            assert float(g) == pytest.approx(d[o] - d[lab], abs=1e-6)
        # not vacuous: at the forgotten point, the base logits satisfy the bounds and the unsafe set without
        # the patch (the base model predicted its label there), and the patch breaks the unsafe set
        for i in np.flatnonzero((region == r).numpy() & (y == lab).numpy()):
            yv = _region_logits(tmp_path, X[i: i + 1])[0]
            s = ps.masks()[r].numpy() * 2 - 1
            assert np.all(s * yv[c:] >= float(ps.region_threshold[r]) * (1 - 1e-6))
            if int(np.argmax(yv[:c])) == lab:
                assert all(yv[lab] - yv[o] >= 0 for o in gaps)
                base_predicted += 1
            assert not all(yv[lab] - yv[o] >= float(g) for o, g in gaps.items())
    assert base_predicted >= len(entries) // 2


def test_not_predicted_needs_the_certificate(forgotten, tmp_path):
    res, _, _ = forgotten
    with pytest.raises(InputValidationError, match="certificate"):
        export_bundle(res.model, tmp_path / "a", not_predicted=True)
    assert not (tmp_path / "a").exists()
    from prune_unlearn.cli import cli

    save(res.model, tmp_path / "m.safetensors")
    res.certificate.to_json(tmp_path / "c.json")
    base = ["export", "--model", str(tmp_path / "m.safetensors"), "--vnnlib", "--not-predicted"]
    run = CliRunner().invoke(cli, [*base, "--out", str(tmp_path / "b")])
    assert run.exit_code == 1 and run.output.startswith("Error: ") and "--certificate" in run.output
    run = CliRunner().invoke(cli, [*base, "--certificate", str(tmp_path / "c.json"), "--out", str(tmp_path / "c"),
                                   "--gzip"])
    assert run.exit_code == 0, run.output
    written = json.loads((tmp_path / "c" / "export.json").read_text())
    assert written["not_predicted"] and all(e["vnnlib"].endswith(".vnnlib.gz") for e in written["not_predicted"])


def test_marabou_proves_not_predicted_properties(forgotten, tmp_path):
    """Marabou in a child process (a crash in the optional C++ verifier must not take the suite down)."""
    pytest.importorskip("maraboupy.Marabou", reason="maraboupy is not installed (optional verifier)")
    res, _, _ = forgotten
    doc = export_bundle(res.model, tmp_path, certificate=res.certificate, onnx=False, not_predicted=True)
    props = [e["vnnlib"] for e in doc["not_predicted"][:3]]
    results = solve_region_properties(props, tmp_path)
    assert [code for code, _ in results] == ["unsat"] * len(props) and all(t < 60 for _, t in results)
