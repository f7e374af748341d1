import pytest
import torch

from prune_unlearn import audit, forget, forget_class, load, save
from prune_unlearn.core.bounds import certified_radius, stable_neurons
from prune_unlearn.errors import InputValidationError, UnsupportedModelError
from prune_unlearn.core.regions import HeadNetwork


@pytest.fixture(scope="module")
def forgotten_class(digits, digits_model):
    label = 3
    cls = digits.y_train == label
    res = forget_class(digits_model, label, digits.X_train[cls], seed=1,
                       train_data=(digits.X_train, digits.y_train), test_data=(digits.X_test, digits.y_test))
    return label, cls, res


def test_every_training_member_is_forgotten(digits, digits_model, forgotten_class):
    label, cls, res = forgotten_class
    r = res.report
    assert r.A_u_after == 0.0 and r.n_forgotten == int(cls.sum()) and r.n_failed == 0
    assert (res.model(digits.X_train[cls]).argmax(1) != label).all()
    e = r.whole_class
    assert e.A_u_after == 0.0 and e.A_tes_u_after < e.A_tes_u_before   # generalises to unseen points
    assert e.A_tes_r_before - e.A_tes_r_after <= 0.02                  # other classes barely touched
    assert e.changed_other_test == int((digits_model(digits.X_test[digits.y_test != label]).argmax(1)
                                            != res.model(digits.X_test[digits.y_test != label]).argmax(1)).sum())
    assert len(res.certificate.claims) == int(cls.sum()) and r.rounds and r.rounds[-1]["pending_points"] == 0
    assert len(res.model.class_patches) > 0 and e.crown_points > 0 and e.label == label


def test_relaxed_support_covers_the_certified_ball(digits, digits_small_model):
    label = 5
    X = digits.X_train[digits.y_train == label][:6]
    res = forget_class(digits_small_model, label, X, seed=0, radius_scale=1.0, max_rounds=1, delta=0.5)
    split = res.model.split
    head = HeadNetwork.from_split(split)
    h = split.features(X).double()
    lo, hi = torch.zeros(64, dtype=torch.float64), torch.ones(64, dtype=torch.float64)
    rad = certified_radius(head, h, torch.full((6,), label), lo, hi, iterations=8)
    sa, si = stable_neurons(head, h, rad, lo, hi)
    gen = torch.Generator().manual_seed(0)
    assert (rad > 0).sum() >= 4  # radius 0 only where the base model already mispredicts the member
    for i in (rad > 0).nonzero().flatten().tolist():
        noise = (torch.rand(500, 64, generator=gen, dtype=torch.float64) * 2 - 1) * rad[i]
        pts = (h[i] + noise).clamp(0, 1)
        z, logits = head.forward(pts)
        assert torch.all((z > 0)[:, sa[i]]) and torch.all((z < 0)[:, si[i]])  # stable signs hold on the ball
        assert torch.all(logits.argmax(1) == label)                              # and the class is kept there


def test_point_patches_on_top_of_class_patches_stay_certified(digits, digits_small_model, forgotten_class):
    label, cls, res = forgotten_class
    others = (~cls).nonzero().flatten()[:8]
    more = forget(res.model, digits.X_train[others], labels=digits.y_train[others], bound="dual", radius=None)
    assert (more.model(digits.X_train[others]).argmax(1) != digits.y_train[others]).all()
    assert (more.model(digits.X_train[cls]).argmax(1) != label).all()   # the class stays forgotten
    result = audit(more.model, more.certificate, points=digits.X_train[others], labels=digits.y_train[others],
                   exhaustive=True)
    assert result.passed, result.summary()


def test_class_certificate_audits_and_model_roundtrips(tmp_path, digits, forgotten_class):
    label, cls, res = forgotten_class
    result = audit(res.model, res.certificate, points=digits.X_train[cls], labels=digits.y_train[cls],
                   locality_inputs=digits.X_test)
    assert result.passed, result.summary()
    save(res.model, tmp_path / "class.safetensors")
    again = load(tmp_path / "class.safetensors")
    assert torch.equal(again(digits.X_test), res.model(digits.X_test))
    assert len(again.class_patches) == len(res.model.class_patches)


def test_class_errors(digits, digits_small_model, forgotten_class):
    X = digits.X_train[:5]
    with pytest.raises(InputValidationError, match="'label' parameter of forget_class must be a class in \\[0, 9\\]"):
        forget_class(digits_small_model, 12, X)
    with pytest.raises(InputValidationError, match="other than 3"):
        forget_class(digits_small_model, 3, X, target=3)
    with pytest.raises(UnsupportedModelError, match="unpatched model"):
        forget_class(forgotten_class[2].model, 3, X)
    with pytest.raises(InputValidationError, match="'radius' parameter of forget_class must be one of"):
        forget_class(digits_small_model, 3, X, radius="huge")


def _other_class_rows(model, X, label):
    return model(X).argmax(1) != label


def test_decision_gate_keeps_other_classes_bit_for_bit_where_the_relaxed_regions_reach_them(digits, digits_model):
    """A wide relaxed support reaches inputs of other classes; the decision gate keeps every input the base
    model does not assign to the class bit for bit, and without the gate those inputs do change."""
    label = 8
    X = digits.X_train[digits.y_train == label]
    common = dict(seed=2, radius_scale=4.0, intermediate="ibp", test_data=(digits.X_test, digits.y_test))
    gated = forget_class(digits_model, label, X, **common)
    plain = forget_class(digits_model, label, X, decision_gate=False, **common)
    assert gated.model.class_patches.gated and not plain.model.class_patches.gated
    inputs = torch.cat([digits.X_test, digits.X_train[digits.y_train != label]])
    with torch.no_grad():
        others = _other_class_rows(digits_model, inputs, label)
        base = digits_model(inputs)
        assert torch.equal(gated.model(inputs)[others], base[others])
        assert not torch.equal(plain.model(inputs)[others], base[others])   # the regions do reach them
    assert gated.report.whole_class.reach_other_test > 0.05
    other_test = digits.y_test != label
    wrongly_as_label = int((digits_model(digits.X_test[other_test]).argmax(1) == label).sum())
    e, p = gated.report.whole_class, plain.report.whole_class
    assert e.changed_other_test <= wrongly_as_label < p.changed_other_test   # only the base model's errors
    assert e.A_tes_r_after >= e.A_tes_r_before > p.A_tes_r_after
    assert e.A_tes_u_after <= 0.1 and gated.report.A_u_after == 0.0


def test_members_left_to_exact_rows_and_members_already_mispredicted(digits, digits_small_model):
    """max_relaxed=0 sends every member to an exact region row of the point patch set (listed in the
    certificate); a member the base model already mispredicts is claimed as such, and the audit checks it."""
    label = 4
    X = torch.cat([digits.X_train[digits.y_train == label][:20], digits.X_train[digits.y_train == 7][:1]])
    res = forget_class(digits_small_model, label, X, seed=0, max_relaxed=0)
    assert len(res.model.class_patches) == 0 and len(res.model.patches) > 0
    assert len(res.certificate.regions) == len(res.model.patches)
    assert res.certificate.claims[-1]["bound"] == "base model"
    labels = torch.full((21,), label)
    result = audit(res.model, res.certificate, points=X, labels=labels)
    assert result.passed, result.summary()
    forged = res.certificate.to_dict()
    forged["claims"][0]["bound"] = "base model"   # the base model predicts this member: the claim is false
    from prune_unlearn.verify.certificate import Certificate
    bad = audit(res.model, Certificate.from_dict(forged), points=X, labels=labels)
    assert not bad.passed and any("already mispredicted" in c.detail for c in bad.failures)


def test_intermediate_and_gate_errors(digits, digits_small_model):
    X = digits.X_train[:5]
    with pytest.raises(InputValidationError, match="'intermediate' parameter of forget_class must be one of"):
        forget_class(digits_small_model, 3, X, intermediate="lp")
    with pytest.raises(InputValidationError, match="'decision_gate' parameter of forget_class must be True or False"):
        forget_class(digits_small_model, 3, X, decision_gate="yes")


def test_version_1_file_reads_as_an_ungated_class_patch_set(tmp_path, forgotten_class):
    """Files written before the decision gate (format 1, no decision_lambda) still load, ungated."""
    import json

    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from prune_unlearn._hashing import state_sha256

    res = forgotten_class[2]
    path = tmp_path / "v1.safetensors"
    save(res.model, path)
    with safe_open(str(path), framework="pt") as fh:
        header = json.loads(fh.metadata()["prune_unlearn"])
    tensors = {k: v for k, v in load_file(str(path)).items() if not k.endswith("decision_lambda")}
    header.update(format_version=1, tensors_sha256=state_sha256(tensors))
    save_file(tensors, str(path), metadata={"prune_unlearn": json.dumps(header)})
    old = load(path)
    assert not old.class_patches.gated and len(old.class_patches) == len(res.model.class_patches)


def test_relaxed_support_matches_eq_11_written_out():
    """The vectorised support (with its exact "some support is already 1" shortcut) against Eq. 11 computed
    one support and one row at a time: ReLU(Σ_{i∈S} clamp(λ s_i z_i, 0, 1) − |S| + 1), max per group."""
    from prune_unlearn.core.patches import ClassPatchSet
    from prune_unlearn.core.regions import pack_patterns

    gen = torch.Generator().manual_seed(3)
    for trial in range(20):
        n_hidden, n_sup, n_groups = 12 + trial, 3 + 2 * trial, 1 + trial % 3
        patterns = torch.rand(n_sup, n_hidden, generator=gen) < 0.5
        stable = torch.rand(n_sup, n_hidden, generator=gen) < 0.7
        lam = torch.rand(n_sup, generator=gen) * 20 + 0.5
        group = torch.randint(0, n_groups, (n_sup,), generator=gen)
        group[:n_groups] = torch.arange(n_groups)
        sets = ClassPatchSet(n_hidden, 4, patterns=pack_patterns(patterns), stable=pack_patterns(stable),
                             gate_lambda=lam, group=group, values=torch.randn(n_groups, 4, generator=gen),
                             targets=torch.zeros(n_groups, dtype=torch.int64), label=torch.tensor([0]))
        # rows near the supports' patterns (so many match), some deep inside, some near boundaries
        signs = patterns[torch.randint(0, n_sup, (300,), generator=gen)].float() * 2 - 1
        z = signs * (0.05 + torch.rand(300, n_hidden, generator=gen)) * 8 * torch.rand(300, 1, generator=gen)
        flip = torch.rand(300, n_hidden, generator=gen) < 0.03
        z[flip] = -z[flip]
        got = sets.relaxed_support(z)
        want = torch.zeros(300, n_groups, dtype=torch.float64)
        s = patterns.double() * 2 - 1
        for r in range(n_sup):
            terms = (float(lam[r]) * s[r] * z.double()).clamp(0, 1)
            value = torch.relu(terms[:, stable[r]].sum(dim=1) - int(stable[r].sum()) + 1)
            want[:, group[r]] = torch.maximum(want[:, group[r]], value)
        assert (want == 1).any() and ((want > 0) & (want < 1)).any() and (want == 0).any()
        torch.testing.assert_close(got.double(), want, rtol=0, atol=1e-5)
        assert torch.equal(got == 1, want == 1)
