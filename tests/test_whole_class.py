import pytest
import torch

from prune_unlearn import audit, forget, forget_class, load, save
from prune_unlearn.bounds import certified_radius, stable_neurons
from prune_unlearn.errors import InputValidationError, UnsupportedModelError
from prune_unlearn.regions import HeadNetwork


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
    e = r.extra
    assert e["A_u_after"] == 0.0 and e["A_tes_u_after"] < e["A_tes_u_before"]   # generalises to unseen points
    assert e["A_tes_r_before"] - e["A_tes_r_after"] <= 0.02                      # other classes barely touched
    assert e["changed_other_test"] == int((digits_model(digits.X_test[digits.y_test != label]).argmax(1)
                                            != res.model(digits.X_test[digits.y_test != label]).argmax(1)).sum())
    assert len(res.certificate.claims) == int(cls.sum()) and r.rounds and r.rounds[-1]["pending_points"] == 0
    assert len(res.model.class_patches) > 0 and r.timings["crown_points"] > 0


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
    more = forget(res.model, digits.X_train[others], labels=digits.y_train[others], bound="dual")
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
