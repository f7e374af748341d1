import copy
import dataclasses

import pytest
import torch

from prune_unlearn import Certificate, PatchedModel, forget, load, save
from prune_unlearn.verify.audit import audit
from prune_unlearn.errors import CertificateError


@pytest.fixture(scope="module")
def forgotten(digits, digits_small_model):
    idx = torch.randperm(len(digits.y_train), generator=torch.Generator().manual_seed(11))[:12]
    X, y = digits.X_train[idx], digits.y_train[idx]
    res = forget(digits_small_model, X, labels=y, bound="dual", seed=2, radius=None)
    return res, X, y


def _failed(result, name):
    return [c for c in result.failures if c.name == name]


def test_honest_certificate_passes_white_and_black_box(forgotten, digits, tmp_path):
    res, X, y = forgotten
    res.certificate.to_json(tmp_path / "cert.json")
    save(res.model, tmp_path / "m.safetensors")
    cert = Certificate.from_json(tmp_path / "cert.json")  # as an auditor receives it, with the proof file
    model = load(tmp_path / "m.safetensors")
    result = audit(model, cert, points=X, labels=y, exhaustive=True, locality_inputs=digits.X_test)
    assert result.passed, result.summary()
    counts = result.counts()
    assert counts["bounds"] == (12, 0) and counts["lp"][1] == 0 and counts["lp"][0] >= 12
    assert counts["points"] == (12, 0) and counts["locality"][1] == 0
    black = audit(model, cert, points=X, labels=y, mode="black-box")
    assert black.passed and set(black.counts()) == {"points"}


def test_box_and_cluster_certificates_pass(digits, digits_small_model):
    X, y = digits.X_train[:30], digits.y_train[:30]
    for kw in ({"bound": "box"}, {"strategy": "cluster", "bound": "dual"}, {"bound": "lp"}):
        res = forget(digits_small_model, X, labels=y, **kw)
        result = audit(res.model, res.certificate, points=X, labels=y, lp_samples=5)
        assert result.passed, (kw, result.summary())


def test_every_tampering_is_caught(forgotten):
    res, X, y = forgotten
    model, cert = res.model, res.certificate

    # 1. one changed weight in the base model
    m1 = copy.deepcopy(model)
    with torch.no_grad():
        m1.base[1].weight[0, 0] += 1e-3
    assert any("weights hash" in c.detail for c in audit(m1, cert, points=X, labels=y).failures)

    # 2. one edited margin (the claim is now stronger than what was proven)
    regions = copy.deepcopy(cert.regions)
    regions[0]["margin"] *= 50
    claims = [dict(c, margin=regions[0]["margin"]) if c["region"] == 0 else c for c in cert.claims]
    c2 = dataclasses.replace(cert, regions=regions, claims=claims)
    assert _failed(audit(model, c2, points=X, labels=y), "bounds")

    # 3. one removed patch
    keep = torch.ones(len(model.patches), dtype=torch.bool)
    keep[0] = False
    m3 = PatchedModel(model.base, model.patches.select(keep)).eval()
    r3 = audit(m3, cert, points=X, labels=y)
    assert any("patch-set hash" in c.detail for c in r3.failures)
    assert _failed(r3, "points")  # the point of the removed region is predicted correctly again

    # 4. one swapped point hash
    claims = copy.deepcopy(cert.claims)
    claims[0]["point_sha256"], claims[1]["point_sha256"] = claims[1]["point_sha256"], claims[0]["point_sha256"]
    r4 = audit(model, dataclasses.replace(cert, claims=claims), points=X, labels=y)
    assert _failed(r4, "points")

    # 5. one region claim made false, with every hash recomputed to match
    m5 = copy.deepcopy(model)
    r = cert.claims[0]["region"]
    t = int(m5.patches.targets[r])
    with torch.no_grad():
        m5.patches.values[r] *= 0.2          # a smaller patch: the target no longer wins everywhere
    regions = copy.deepcopy(cert.regions)
    regions[r]["H"] = float(m5.patches.values[r].abs().max())
    c5 = dataclasses.replace(cert, regions=regions, patches_sha256=m5.patches_sha256())
    r5 = audit(m5, c5, lp_samples=len(cert.regions))
    assert any(c.subject == f"region {r}" for c in _failed(r5, "bounds")), r5.summary()
    assert any(c.subject.startswith(f"region {r}") for c in _failed(r5, "lp"))
    assert t == int(m5.patches.targets[r])


def test_strict_raises_with_every_failure(forgotten):
    res, X, y = forgotten
    wrong = y.clone()
    wrong[:3] = (wrong[:3] + 1) % 10
    with pytest.raises(CertificateError, match="points.*data holder says"):
        audit(res.model, res.certificate, points=X, labels=wrong, strict=True)


def test_missing_proof_fails_dual_claims(forgotten):
    res, X, y = forgotten
    bare = dataclasses.replace(res.certificate, multipliers=None)
    result = audit(res.model, bare, points=X, labels=y)
    assert any("proof file" in c.detail for c in result.failures)


def test_point_hashes_are_sha256_of_the_float32_bytes():
    """A certificate names each point by SHA-256 of its values as the model sees them (float32, C order):
    checked against hashlib on bytes written out here, for a batch and for one point."""
    import hashlib

    import numpy as np

    from prune_unlearn._hashing import point_sha256, points_sha256

    x = torch.rand(7, 1, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(112))
    want = [hashlib.sha256(np.asarray(row, dtype="<f4").tobytes(order="C")).hexdigest() for row in x.numpy()]
    assert points_sha256(x) == want                        # float64 input: hashed as the float32 the model sees
    assert point_sha256(x[3]) == want[3] and points_sha256(x[:0]) == []
    assert points_sha256(x.permute(0, 1, 3, 2).contiguous().transpose(2, 3)) == want  # memory layout is irrelevant
    nudged = x.clone()
    nudged[2, 0, 5, 5] = float(np.nextafter(np.float32(x[2, 0, 5, 5]), np.float32(2)))  # one float32 ulp
    assert points_sha256(nudged)[2] != want[2] and points_sha256(nudged)[:2] == want[:2]
