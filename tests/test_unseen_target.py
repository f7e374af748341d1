"""target="unseen": forgotten points answer as a reference model that never saw them, with a two-sided band."""

import copy

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from prune_unlearn import InputValidationError, Reference, audit, forget, save
from prune_unlearn.cli.main import cli
from prune_unlearn.core.models import mlp
from prune_unlearn.core.split import split_model
from prune_unlearn.experiments.training import Recipe, train_model
from prune_unlearn.verify.certificate import Certificate


@pytest.fixture(scope="module")
def setup(digits, digits_small_model, one_thread):
    """A base model, and a reference trained (same recipe) on the training points outside fold 0."""
    n = len(digits.y_train)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(3))
    seen = torch.ones(n, dtype=torch.bool)
    seen[perm[: n // 2]] = False
    torch.manual_seed(2)
    g = mlp(digits.input_dim, [32, 32], digits.num_classes)
    g = train_model(g, digits.X_train[seen], digits.y_train[seen], Recipe(lr=0.1, epochs=20, batch_size=32)).model
    idx = perm[:40]  # all in the fold the reference never saw
    return digits_small_model.eval(), Reference(g.eval(), digits.X_train[seen], "fold 0 out"), idx, seen


def _forget(ds, f, ref, idx, **kw):
    return forget(f, ds.X_train[idx], labels=ds.y_train[idx], target="unseen", reference=ref,
                  domain=(ds.domain_lower, ds.domain_upper), test_data=(ds.X_test, ds.y_test),
                  remaining_data=ds.remaining(idx), **kw)


def test_points_answer_as_the_reference_and_nothing_else_changes(digits, setup):
    f, ref, idx, _ = setup
    res = _forget(digits, f, ref, idx)
    x = digits.X_train[idx]
    with torch.no_grad():
        got, want = res.model(x), ref.model(x)
    assert torch.allclose(got, want, atol=1e-4, rtol=1e-5)
    assert torch.equal(got.argmax(1), want.argmax(1))
    assert res.report.changed_tes == 0 and res.report.changed_res == 0 and res.report.n_failed == 0
    assert len(res.certificate.claims) == len(idx)
    claim = res.certificate.claims[0]
    assert claim["kind"] == "unseen" and claim["reference"]["seen_count"] == len(ref.seen)
    result = audit(res.model, res.certificate, points=x, labels=digits.y_train[idx], locality_inputs=digits.X_test)
    assert result.passed, result.summary()
    assert any(c.name == "band" for c in result.checks)


def test_band_holds_on_sampled_inputs_of_each_region(digits, setup):
    """Inputs sampled near each point that keep its activation pattern (inside its region, where the patch acts)
    have every patched margin inside the claimed band."""
    f, ref, idx, _ = setup
    res = _forget(digits, f, ref, idx[:10])
    split = split_model(res.model.base, None)
    gen = torch.Generator().manual_seed(0)
    checked = 0
    for claim in res.certificate.claims:
        x = digits.X_train[idx[claim["index"]]]
        h = (x + 0.02 * torch.randn(400, x.numel(), generator=gen)).clamp(0, 1)
        with torch.no_grad():
            pre_x, _ = split.head_forward(x.unsqueeze(0))
            pre_h, _ = split.head_forward(h)
            same = (torch.cat(pre_h, 1) > 0).eq(torch.cat(pre_x, 1) > 0).all(1)
            out = res.model(h[same]).double()
        lower = torch.tensor(claim["band"]["lower"])
        upper = torch.tensor(claim["band"]["upper"])
        margins = out.unsqueeze(2) - out.unsqueeze(1)
        assert bool((margins >= lower - 1e-6).all() and (margins <= upper + 1e-6).all())
        checked += int(same.sum())
    assert checked > 0


def test_audit_rejects_a_narrowed_band_and_changed_reference_logits(digits, setup):
    f, ref, idx, _ = setup
    res = _forget(digits, f, ref, idx[:5])
    data = res.certificate.to_dict()
    bad = copy.deepcopy(data)
    up = np.array(bad["claims"][0]["band"]["upper"])
    up[0, 1] -= 1.0  # claims a tighter band than the region allows
    bad["claims"][0]["band"]["upper"] = up.tolist()
    result = audit(res.model, Certificate.from_dict(bad))
    assert not result.passed and any(c.name == "band" and not c.passed for c in result.checks)
    bad = copy.deepcopy(data)
    bad["claims"][1]["reference_logits"][0] += 0.5
    result = audit(res.model, Certificate.from_dict(bad), points=digits.X_train[idx[:5]],
                   labels=digits.y_train[idx[:5]])
    assert any(c.name == "points" and not c.passed and "differ from the reference" in c.detail for c in result.checks)


def test_bad_input_is_refused_before_patching(digits, setup):
    f, ref, idx, seen = setup
    overlapping = seen.nonzero().flatten()[:3]  # points the reference trained on
    with pytest.raises(InputValidationError, match="reference set overlaps the forgotten points: 3 of 43"):
        _forget(digits, f, ref, torch.cat([idx, overlapping]))
    with pytest.raises(InputValidationError, match="needs 'reference'"):
        forget(f, digits.X_train[idx], target="unseen")
    with pytest.raises(InputValidationError, match="used by target='unseen' only"):
        forget(f, digits.X_train[idx], target="random", reference=ref)
    with pytest.raises(InputValidationError, match="strategy='per-point' only"):
        forget(f, digits.X_train[idx], target="unseen", reference=ref, strategy="cluster")
    with pytest.raises(InputValidationError, match="must be a Reference"):
        forget(f, digits.X_train[idx], target="unseen", reference=ref.model)
    with pytest.raises(InputValidationError, match="'target' parameter of forget"):
        forget(f, digits.X_train[idx], target="nope")


def test_a_second_reference_answers_for_points_the_first_saw(digits, setup):
    f, ref, idx, seen = setup
    other = Reference(copy.deepcopy(ref.model), digits.X_train[~seen], "fold 1 out")  # saw only fold 0
    pts = torch.cat([idx[:3], seen.nonzero().flatten()[:3]])
    res = _forget(digits, f, [ref, other], pts)
    assert [c["reference"]["index"] for c in res.certificate.claims] == [0, 0, 0, 1, 1, 1]


def test_cli_target_unseen_writes_a_passing_certificate_and_refuses_overlap(digits, setup, tmp_path):
    f, ref, idx, seen = setup
    save(f, tmp_path / "f.safetensors")
    save(ref.model, tmp_path / "g.safetensors")
    (tmp_path / "seen.txt").write_text("\n".join(map(str, seen.nonzero().flatten().tolist())))
    (tmp_path / "forget.txt").write_text("\n".join(map(str, idx[:8].tolist())))
    (tmp_path / "bad.txt").write_text("\n".join(map(str, seen.nonzero().flatten()[:2].tolist())))
    base = ["forget", "--model", str(tmp_path / "f.safetensors"), "--data", "digits", "--target", "unseen",
            "--reference", str(tmp_path / "g.safetensors"), "--reference-indices", str(tmp_path / "seen.txt")]
    res = CliRunner().invoke(cli, base + ["--indices", str(tmp_path / "bad.txt"), "--out", str(tmp_path / "bad")])
    assert res.exit_code == 1 and "Error: The reference set overlaps the forgotten points" in res.output
    assert not (tmp_path / "bad").exists()
    nope = [a if a != "unseen" else "as-if-unseen" for a in base]  # a target name that does not exist
    res = CliRunner().invoke(cli, nope + ["--indices", str(tmp_path / "forget.txt"), "--out", str(tmp_path / "bad")])
    assert res.exit_code == 2 and "'as-if-unseen' is not one of 'random', 'runner-up', 'unseen'" in res.output
    assert not (tmp_path / "bad").exists()
    res = CliRunner().invoke(cli, base + ["--indices", str(tmp_path / "forget.txt"), "--out", str(tmp_path / "ok")])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(cli, ["audit", "--model", str(tmp_path / "ok" / "patched.safetensors"), "--certificate",
                                   str(tmp_path / "ok" / "certificate.json"), "--data", "digits", "--indices",
                                   str(tmp_path / "forget.txt")])
    assert res.exit_code == 0, res.output


# --- calibration: a temperature fitted on held-out data neither model trained on -------------------------------

def test_fit_scale_recovers_a_known_temperature():
    """A reference whose logits are the base model's divided by 1.7 (same ranking, less confident) is scaled
    back by 1.7; one that already matches gets 1."""
    from prune_unlearn.unlearn.calibration import fit_scale

    gen = torch.Generator().manual_seed(0)
    base = 4.0 * torch.randn(2000, 10, generator=gen, dtype=torch.float64)
    labels = torch.randint(0, 10, (2000,), generator=gen)
    base[torch.arange(2000), labels] += 6.0  # mostly right, some confidently wrong
    scale, before, after = fit_scale(base / 1.7, base, labels)
    assert scale == pytest.approx(1.7, rel=1e-3) and after < 1e-8 < before
    assert fit_scale(base, base, labels)[0] == pytest.approx(1.0, rel=1e-3)


def test_calibrated_reference_answers_with_scaled_logits_certified_and_audited(digits, setup):
    f, ref, idx, _ = setup
    cal = ref.calibrated(f, digits.X_test[:200], digits.y_test[:200])
    assert cal.calibration is not None and cal.scale != 1.0 and ref.calibration is None
    assert cal.calibration.mismatch_after <= cal.calibration.mismatch_before
    assert cal.describe()["seen_sha256"] == ref.describe()["seen_sha256"] and cal.describe()["scale"] == cal.scale
    res = _forget(digits, f, cal, idx)
    x = digits.X_train[idx]
    with torch.no_grad():
        got, want = res.model(x).double(), cal.scale * ref.model(x).double()
    assert torch.allclose(got, want, atol=1e-4, rtol=1e-5)
    assert res.report.changed_tes == 0 and res.report.changed_res == 0 and res.report.n_failed == 0
    claim = res.certificate.claims[0]
    assert claim["reference"]["scale"] == cal.scale
    assert claim["reference"]["calibration"]["held_out_count"] == 200
    assert len(claim["reference"]["calibration"]["held_out_sha256"]) == 64
    result = audit(res.model, res.certificate, points=x, labels=digits.y_train[idx], locality_inputs=digits.X_test)
    assert result.passed, result.summary()
    bad = copy.deepcopy(res.certificate.to_dict())  # a scale that does not produce the recorded logits
    bad["claims"][0]["reference"]["scale"] = cal.scale * 1.1
    result = audit(res.model, Certificate.from_dict(bad))
    assert any(c.name == "band" and not c.passed and "× its scale" in c.detail for c in result.checks)


def test_fit_affine_recovers_a_known_affine_map():
    """Reference logits that are a known affine image of the base model's (W invertible) are mapped back exactly."""
    from prune_unlearn.unlearn.calibration import fit_affine

    gen = torch.Generator().manual_seed(1)
    f = 3.0 * torch.randn(500, 10, generator=gen, dtype=torch.float64)
    W = torch.eye(10, dtype=torch.float64) * 0.7 + 0.05 * torch.randn(10, 10, generator=gen, dtype=torch.float64)
    b = torch.randn(10, generator=gen, dtype=torch.float64)
    g = (f - b) @ torch.linalg.inv(W).T        # so that W g + b = f
    W_fit, b_fit = fit_affine(g, f)
    assert torch.allclose(W_fit, W, atol=1e-8) and torch.allclose(b_fit, b, atol=1e-8)


def test_affine_calibration_answers_with_the_mapped_logits_certified_and_audited(digits, setup):
    """method="affine": the patched logits at each point are W·g(x) + b (recorded in the certificate), the audit
    re-derives them from the raw logits, and a tampered map fails the audit."""
    f, ref, idx, _ = setup
    held = torch.arange(360)
    cal = ref.calibrated(f, digits.X_test[held], digits.y_test[held], method="affine")
    c = cal.calibration
    assert c.map == "affine" and cal.scale == 1.0 and c.mismatch_after < c.mismatch_before
    W, b = torch.tensor(c.weight, dtype=torch.float64), torch.tensor(c.bias, dtype=torch.float64)
    res = _forget(digits, f, cal, idx)
    x = digits.X_train[idx]
    with torch.no_grad():
        got, want = res.model(x).double(), ref.model(x).double() @ W.T + b
        # the map fits the base model's logits on the held-out points better than the raw reference does
        gh, fh = ref.model(digits.X_test).double(), f(digits.X_test).double()
    assert float(((gh @ W.T + b - fh) ** 2).mean()) < float(((gh - fh) ** 2).mean())
    assert torch.allclose(got, want, atol=1e-4, rtol=1e-5)
    assert res.report.changed_tes == 0 and res.report.changed_res == 0 and res.report.n_failed == 0
    recorded = res.certificate.claims[0]["reference"]["calibration"]
    assert recorded["map"] == "affine" and np.allclose(recorded["weight"], W.numpy()) and len(recorded["bias"]) == 10
    result = audit(res.model, res.certificate, points=x, labels=digits.y_train[idx], locality_inputs=digits.X_test)
    assert result.passed, result.summary()
    bad = copy.deepcopy(res.certificate.to_dict())
    bad["claims"][0]["reference"]["calibration"]["bias"][3] += 0.5
    result = audit(res.model, Certificate.from_dict(bad))
    assert any(c.name == "band" and not c.passed and "affine map" in c.detail for c in result.checks)


def test_affine_calibration_needs_enough_held_out_points_and_a_known_method(digits, setup):
    f, ref, _, _ = setup
    with pytest.raises(InputValidationError, match=r"at least 110 held-out points for the affine map"):
        ref.calibrated(f, digits.X_test[:100], digits.y_test[:100], method="affine")
    with pytest.raises(InputValidationError, match=r"'method' parameter of Reference.calibrated must be one of "
                                                   r"'temperature', 'affine'"):
        ref.calibrated(f, digits.X_test[:100], digits.y_test[:100], method="isotonic")


def test_calibration_refuses_overlapping_or_too_small_held_out_sets(digits, setup):
    f, ref, idx, seen = setup
    trained_on = seen.nonzero().flatten()[:5]
    held = torch.cat([digits.X_test[:100], digits.X_train[trained_on]])
    with pytest.raises(InputValidationError, match="overlaps the reference's training data: 5 of 105"):
        ref.calibrated(f, held, torch.cat([digits.y_test[:100], digits.y_train[trained_on]]))
    with pytest.raises(InputValidationError, match="at least 50 held-out points"):
        ref.calibrated(f, digits.X_test[:10], digits.y_test[:10])
    # a held-out set that contains points being forgotten: refused by forget, the model left as it was
    cal = ref.calibrated(f, torch.cat([digits.X_test[:100], digits.X_train[idx[:2]]]),
                         torch.cat([digits.y_test[:100], digits.y_train[idx[:2]]]))
    before = {k: v.clone() for k, v in f.state_dict().items()}
    with pytest.raises(InputValidationError, match="calibration held-out set .* contains 2 of the 40"):
        _forget(digits, f, cal, idx)
    assert all(torch.equal(before[k], v) for k, v in f.state_dict().items())


def test_cli_calibrate_on_scales_the_reference_and_audits(digits, setup, tmp_path):
    f, ref, idx, seen = setup
    save(f, tmp_path / "f.safetensors")
    save(ref.model, tmp_path / "g.safetensors")
    (tmp_path / "seen.txt").write_text("\n".join(map(str, seen.nonzero().flatten().tolist())))
    (tmp_path / "forget.txt").write_text("\n".join(map(str, idx[:8].tolist())))
    (tmp_path / "held.txt").write_text("\n".join(map(str, range(150))))
    base = ["forget", "--model", str(tmp_path / "f.safetensors"), "--data", "digits", "--target", "unseen",
            "--reference", str(tmp_path / "g.safetensors"), "--reference-indices", str(tmp_path / "seen.txt"),
            "--indices", str(tmp_path / "forget.txt")]
    res = CliRunner().invoke(cli, base + ["--calibrate-on", str(tmp_path / "held.txt"), "--out", str(tmp_path / "ok")])
    assert res.exit_code == 0, res.output
    cert = Certificate.from_json(tmp_path / "ok" / "certificate.json")
    assert cert.claims[0]["reference"]["calibration"]["held_out_count"] == 150
    res = CliRunner().invoke(cli, ["audit", "--model", str(tmp_path / "ok" / "patched.safetensors"), "--certificate",
                                   str(tmp_path / "ok" / "certificate.json"), "--data", "digits", "--indices",
                                   str(tmp_path / "forget.txt")])
    assert res.exit_code == 0, res.output
    (tmp_path / "few.txt").write_text("1 2 3")
    res = CliRunner().invoke(cli, base + ["--calibrate-on", str(tmp_path / "few.txt"), "--out", str(tmp_path / "bad")])
    assert res.exit_code == 1 and "Error:" in res.output and "at least 50" in res.output
    assert not (tmp_path / "bad").exists()


def test_conv_prefix_points_answer_as_the_reference_and_region_sharers_are_reported_failed():
    """Behind a conv prefix the head is patched in feature space: points alone in their linear region answer
    with the reference's logits and are audited; a region carries one constant patch, so a second forgotten
    point in the same region cannot get its own reference's answer and is reported failed, never claimed."""
    from _helpers.models import TinyConvNet
    from prune_unlearn.errors import UncertifiedWarning

    gen = torch.Generator().manual_seed(0)
    X, y = torch.rand(300, 1, 8, 8, generator=gen), torch.randint(0, 3, (300,), generator=gen)
    f, g = TinyConvNet(seed=0).eval(), TinyConvNet(seed=1).eval()
    split = split_model(f, "classifier")
    with torch.no_grad():
        pre, _ = split.head_forward(split.prefix(X[:150]).flatten(1))
    _, region = torch.unique(torch.cat([z > 0 for z in pre], 1), dim=0, return_inverse=True)
    counts = torch.bincount(region)
    alone = [i for i in range(150) if counts[region[i]] == 1][:3]  # regions no other candidate shares
    crowded = int(counts.argmax())
    pair = [i for i in range(150) if region[i] == crowded][:2]
    assert len(alone) == 3 and len(pair) == 2
    idx = torch.tensor(alone + pair)
    with pytest.warns(UncertifiedWarning, match="1 of 5"):
        res = forget(f, X[idx], labels=y[idx], target="unseen", reference=Reference(g, X[150:], "second half"),
                     head="classifier", domain=(0.0, 1.0))
    assert [fl["index"] for fl in res.report.failed] == [4]  # the crowded region's second point
    claimed = sorted(c["index"] for c in res.certificate.claims)
    assert claimed == [0, 1, 2, 3]
    with torch.no_grad():
        assert torch.allclose(res.model(X[idx[:4]]), g(X[idx[:4]]), atol=1e-4, rtol=1e-5)
        pre, _ = split.head_forward(split.prefix(X).flatten(1))
        pattern = torch.cat([z > 0 for z in pre], 1)
        patched = (pattern.unsqueeze(1) == pattern[idx].unsqueeze(0)).all(-1).any(1)
        assert (~patched[150:]).sum() > 50
        assert torch.equal(res.model(X[150:][~patched[150:]]), f(X[150:][~patched[150:]]))  # bit for bit
    result = audit(res.model, res.certificate, points=X[idx[:4]], labels=y[idx[:4]], locality_inputs=X[150:])
    assert result.passed, result.summary()
