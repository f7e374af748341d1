import pytest
import torch

from _helpers.models import TinyConvNet, lp_min_margin, reference_region, tiny_mlp
from prune_unlearn import PatchedModel, forget
from prune_unlearn.errors import InputValidationError, UncertifiedWarning, UnsupportedModelError
from prune_unlearn.unlearn.forget import CERTIFIED_FACTOR
from prune_unlearn.core.regions import HeadNetwork, point_regions


def _forget_indices(n, k, seed=0):
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:k]


@pytest.mark.parametrize("strategy", ["per-point", "cluster"])
def test_every_point_forgotten_and_nothing_else_changes(digits, digits_model, strategy):
    idx = _forget_indices(len(digits.y_train), 60)
    X_rem, y_rem = digits.remaining(idx)
    res = forget(digits_model, digits.X_train[idx], labels=digits.y_train[idx], strategy=strategy, delta=1.0,
                 test_data=(digits.X_test, digits.y_test), remaining_data=(X_rem, y_rem), seed=1, radius=None)
    r = res.report
    assert r.A_u_after == 0.0 and r.n_forgotten == 60 and r.n_failed == 0
    assert (res.model(digits.X_train[idx]).argmax(1) != digits.y_train[idx]).all()
    assert r.changed_tes == 0 and r.changed_res == 0
    assert r.A_tes_after == r.A_tes_before and r.A_res_after == r.A_res_before
    if strategy == "per-point":
        assert r.n_certified_region == 60
    else:
        assert r.n_certified_region + r.n_certified_point == 60 and len(r.rounds) >= 1
        assert r.rounds[-1]["forgotten_share"] == 1.0
    # real inputs outside every patched region: bit-identical logits
    region, value = res.model.covering_region(digits.X_test)
    assert torch.equal(res.model(digits.X_test)[value == 0], digits_model(digits.X_test)[value == 0])
    assert (value > 0).sum() == 0


def test_region_claims_hold_by_independent_lp_and_in_float32_at_vertices(digits, digits_small_model):
    model = digits_small_model
    idx = _forget_indices(len(digits.y_train), 8, seed=3)
    res = forget(model, digits.X_train[idx], labels=digits.y_train[idx], bound="dual", epsilon=0.05, seed=0, radius=None)
    ps = res.model.patches
    lo = torch.zeros(64, dtype=torch.float64)
    hi = torch.ones(64, dtype=torch.float64)
    checked = 0
    for claim in res.certificate.claims:
        assert claim["proved"] == "region"
        r = claim["region"]
        x = digits.X_train[idx[claim["index"]]]
        A, c, W, w, s = reference_region(res.model.split.linears, x)
        values = ps.values[r].double()
        t = int(ps.targets[r])
        theta = float(ps.region_threshold[r])
        assert theta == pytest.approx(CERTIFIED_FACTOR / float(ps.gate_lambda[r]))
        for lab in range(10):
            if lab == t:
                continue
            m, vertex = lp_min_margin(A, c, s, theta, W, w, values, t, lab, lo, hi)
            assert m >= claim["margin"] - 1e-7 >= 0.05 - 1e-6  # the claimed margin holds on the whole region
            # the float32 model, as served, keeps the flip at the LP's extreme point
            if bool(ps.float32_robust[r]):
                out = res.model(vertex.float().unsqueeze(0))[0]
                assert int(out.argmax()) == t
                checked += 1
    assert checked > 0


def test_float32_flag_scales_with_the_domain_box(digits, digits_small_model):
    """A region's float32 flag promises float32-exact gates on the whole certified region, but rounding grows
    with the magnitude of what the head sums. On a domain box far larger than the points (as behind a conv
    prefix, where the interval feature box reaches ~1e8) the flag must not carry over from the points: every
    region still flagged keeps the target at its LP minimisers in float32 (the audit's check)."""
    from prune_unlearn import audit

    idx = _forget_indices(len(digits.y_train), 6, seed=5)
    x, y = digits.X_train[idx], digits.y_train[idx]
    wide = forget(digits_small_model, x, labels=y, domain=(-1e5, 1e5), radius=None)
    unit = forget(digits_small_model, x, labels=y, domain=(0.0, 1.0), radius=None)
    assert int(unit.model.patches.float32_robust.sum()) > 0  # at the data's scale most regions are flagged
    assert int(wide.model.patches.float32_robust.sum()) == 0
    result = audit(wide.model, wide.certificate, points=x, labels=y, exhaustive=True)
    assert result.passed, result.summary()


def test_points_just_outside_a_patched_region_are_unchanged(digits, digits_model):
    idx = _forget_indices(len(digits.y_train), 10, seed=4)
    res = forget(digits_model, digits.X_train[idx], labels=digits.y_train[idx], radius=None)
    split = res.model.split
    head = HeadNetwork.from_split(split)
    outside = []
    for i in idx:
        x = digits.X_train[i]
        A, c, _, _, s = reference_region(split.linears, x)
        slack = s * (A @ x.double() + c)
        for k in torch.argsort(slack)[:5]:  # cross each of the 5 nearest boundaries by a hair
            a = s[k] * A[k]
            step = (slack[k] * (1 + 1e-4) + 1e-6) / (a @ a)
            outside.append((x.double() - step * a).float())
    xo = torch.stack(outside)
    pr = point_regions(head, split, xo)
    region, value = res.model.covering_region(xo)
    assert torch.all(region == -1) and torch.all(value == 0)
    assert torch.equal(res.model(xo), digits_model(xo))
    assert pr.masks.shape[0] == len(outside)


def test_deterministic_for_a_seed_and_runner_up_targets(digits, digits_model):
    idx = _forget_indices(len(digits.y_train), 20, seed=5)
    X, y = digits.X_train[idx], digits.y_train[idx]
    a = forget(digits_model, X, labels=y, seed=7, strategy="cluster", radius=None)
    b = forget(digits_model, X, labels=y, seed=7, strategy="cluster", radius=None)
    assert torch.equal(a.model.patches.values, b.model.patches.values)
    assert a.certificate.claims == b.certificate.claims
    c = forget(digits_model, X, labels=y, seed=7, target="runner-up", radius=None)
    logits = digits_model(X)
    logits[torch.arange(20), y] = -float("inf")
    assert [cl["target"] for cl in c.certificate.claims] == logits.argmax(1).tolist()


def test_cluster_with_delta_below_one_stops_early(digits, digits_model):
    idx = _forget_indices(len(digits.y_train), 50, seed=6)
    with pytest.warns(UncertifiedWarning, match=r"of 50 point\(s\) were not forgotten \(not reached"):
        res = forget(digits_model, digits.X_train[idx], labels=digits.y_train[idx], strategy="cluster", delta=0.5,
                     n_clusters=3, bound="box", radius=None)
    r = res.report
    assert r.n_failed > 0
    assert r.rounds and r.rounds[-1]["forgotten_share"] >= 0.5
    assert r.n_forgotten == round(r.rounds[-1]["forgotten_share"] * 50)
    assert all(f["reason"].startswith("not reached") for f in r.failed)


def test_forgetting_more_points_on_a_patched_model(digits, digits_model):
    idx = _forget_indices(len(digits.y_train), 30, seed=8)
    first = forget(digits_model, digits.X_train[idx[:20]], labels=digits.y_train[idx[:20]], radius=None)
    second = forget(first.model, digits.X_train[idx[10:]], labels=digits.y_train[idx[10:]], radius=None)
    # points 10..19 are in already patched regions: re-solved, not duplicated
    assert len(second.model.patches) == 30
    assert (second.model(digits.X_train[idx]).argmax(1) != digits.y_train[idx]).all()
    assert torch.equal(second.model(digits.X_test), digits_model(digits.X_test))


def test_feature_space_patch_on_a_conv_model():
    model = TinyConvNet().eval()
    x = torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    y = model(x).argmax(1)
    res = forget(model, x, labels=y, head="classifier", bound="dual", radius=None)
    assert (res.model(x).argmax(1) != y).all()
    assert res.report.n_certified_region == 6
    other = torch.rand(500, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    region, value = res.model.covering_region(other)
    assert torch.equal(res.model(other)[value == 0], model(other)[value == 0])
    # the feature-space box from interval propagation contains every feature vector of the input box
    lo, hi = torch.tensor(res.certificate.domain["lower"]), torch.tensor(res.certificate.domain["upper"])
    feats = res.model.split.features(other).double()
    assert torch.all(feats >= lo - 1e-9) and torch.all(feats <= hi + 1e-9)


# --- bad input ---------------------------------------------------------------------------------

def test_errors_name_the_problem():
    model = tiny_mlp((4, 8, 8, 3))
    x = torch.rand(3, 4, generator=torch.Generator().manual_seed(142))
    with pytest.raises(InputValidationError, match=r"'points' parameter of forget has shape \(3, 5\)"):
        forget(model, torch.rand(3, 5, generator=torch.Generator().manual_seed(144)), radius=None)
    bad = x.clone()
    bad[1, 2] = float("nan")
    with pytest.raises(InputValidationError, match="contains NaN or inf values \\(rows \\[1\\]"):
        forget(model, bad, radius=None)
    with pytest.raises(InputValidationError, match=r"labels in \[0, 2\].*Got \[7\]"):
        forget(model, x, labels=torch.tensor([0, 7, 1]), radius=None)
    for labels in (torch.tensor([0.0, 1.0, 2.0]), torch.tensor([True, False, True])):  # whole floats too
        with pytest.raises(InputValidationError, match=r"'labels' parameter of forget must be integer class labels "
                                                       r"\(an integer dtype\). Got 'a torch.(float32|bool) tensor'"):
            forget(model, x, labels=labels, radius=None)
    with pytest.raises(InputValidationError, match="inconsistent numbers of samples: 3 points but 2 labels"):
        forget(model, x, labels=torch.tensor([0, 1]), radius=None)
    with pytest.raises(InputValidationError, match="outside the input domain box \\(rows \\[0\\]"):
        forget(model, torch.cat([x[:1] + 5, x[1:]]), radius=None)
    with pytest.raises(InputValidationError, match="'epsilon' parameter of forget must be a float in \\(0, inf\\)"):
        forget(model, x, epsilon=-0.1, radius=None)
    with pytest.raises(InputValidationError, match="'strategy' parameter of forget must be one of"):
        forget(model, x, strategy="magic", radius=None)
    with pytest.raises(UnsupportedModelError, match="training mode"):
        forget(tiny_mlp((4, 8, 3)).train(), x, radius=None)


def test_unsupported_heads_are_refused_with_a_hint():
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3)).eval()
    # the trailing run of Linear/ReLU is just the last Linear: fine, region = whole space
    res = forget(model, torch.rand(2, 4, generator=torch.Generator().manual_seed(166)), radius=None)
    assert res.report.n_forgotten == 2
    with pytest.raises(UnsupportedModelError, match="Layer `1` is Tanh; the patched head may contain only Linear"):
        forget(model, torch.rand(2, 4, generator=torch.Generator().manual_seed(169)), head="0", radius=None)
    with pytest.raises(UnsupportedModelError, match="pass head="):
        forget(TinyConvNet().eval(), torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(171)), radius=None)
    with pytest.raises(UnsupportedModelError, match="no submodule named 'nope'"):
        forget(TinyConvNet().eval(), torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(173)), head="nope", radius=None)

    class Scaled(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.classifier = torch.nn.Linear(4, 3)

        def forward(self, x):
            return 2 * self.classifier(x)

    with pytest.raises(UnsupportedModelError, match="not exactly head\\(prefix\\(x\\)\\)"):
        forget(Scaled().eval(), torch.rand(2, 4, generator=torch.Generator().manual_seed(184)), head="classifier", radius=None)


def test_input_model_is_not_modified(digits, digits_model):
    before = {k: v.clone() for k, v in digits_model.state_dict().items()}
    res = forget(digits_model, digits.X_train[:5], labels=digits.y_train[:5], radius=None)
    assert all(torch.equal(before[k], v) for k, v in digits_model.state_dict().items())
    assert isinstance(res.model, PatchedModel) and res.model.unpatched() is digits_model
