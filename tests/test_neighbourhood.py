"""Certified neighbourhoods (issue 11): the guarantees, checked independently of the code that proves them."""

import math

import numpy as np
import pytest
import torch

from prune_unlearn import InputValidationError, audit, forget, load, save
from prune_unlearn.core.neighbourhood import NeighbourhoodSet, box_overlaps, outward_box
from prune_unlearn.core.patches import PatchedModel, PatchSet
from prune_unlearn.verify.audit_neighbourhood import linear_bounds, max_violation_milp

R = 3 / 16  # digits pixels are multiples of 1/16: a ball of 3 grey levels


def _layers(model):
    lins = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    return [m.weight.detach().double().numpy() for m in lins], [m.bias.detach().double().numpy() for m in lins]


def _ball_samples(lo, hi, n, gen):
    """Random points, random corners and face points of the box (float32)."""
    u = torch.rand(n, lo.numel(), generator=gen, dtype=torch.float64)
    corners = (torch.rand(n, lo.numel(), generator=gen) < 0.5).to(torch.float64)
    lo64, hi64 = lo.double(), hi.double()
    return torch.cat([lo64 + u * (hi64 - lo64), lo64 + corners * (hi64 - lo64)]).float()


@pytest.fixture(scope="module")
def small(digits, digits_small_model):
    idx = torch.arange(12)
    res = forget(digits_small_model, digits.X_train[idx], labels=digits.y_train[idx], radius=R, seed=3)
    return digits_small_model, idx, res


def test_every_point_mispredicted_and_claimed_on_its_ball(small, digits):
    model, idx, res = small
    assert res.report.n_certified_neighbourhood == len(idx) and res.report.n_failed == 0
    with torch.no_grad():
        assert (res.model(digits.X_train[idx]).argmax(1) != digits.y_train[idx]).all()
    entry = res.certificate.neighbourhoods[0]
    assert entry["radius"] == pytest.approx(R) and entry["outer_distance"] > 0
    assert all(c["proved"] == "neighbourhood" and c["float32_proved"] for c in res.certificate.claims)


def test_target_wins_on_the_whole_ball_exact_milp(small, digits, one_thread):
    """An independent exact check: MILP max of f_l − f_t over the box ∩ domain, against the stored patch."""
    model, idx, res = small
    rows = res.model.neighbourhoods
    ws, bs = _layers(model)
    for k in range(3):
        lo = np.maximum(rows.lower[k].double().numpy(), 0.0)
        hi = np.minimum(rows.upper[k].double().numpy(), 1.0)
        t = int(rows.targets[k])
        others = [lab for lab in range(10) if lab != t]
        _, hidden = linear_bounds(ws, bs, lo, hi, np.eye(10)[others])
        solved = max_violation_milp(ws, bs, lo, hi, hidden, t, others)
        d = rows.values[k].double().numpy()
        for lab, (value, _) in solved.items():
            assert value is not None
            assert d[t] - d[lab] - value >= float(rows.certified_margin[k]) - 1e-6


def test_float32_model_predicts_target_everywhere_sampled_on_the_ball(small):
    _, _, res = small
    rows = res.model.neighbourhoods
    gen = torch.Generator().manual_seed(0)
    for k in range(len(rows)):
        lo = torch.clamp(rows.lower[k], min=0.0)
        hi = torch.clamp(rows.upper[k], max=1.0)
        h = _ball_samples(lo, hi, 200, gen)
        with torch.no_grad():
            out = res.model(h)
        assert (out.argmax(1) == rows.targets[k]).all()
        assert (res.model.neighbourhood_support(h)[:, k] == 1.0).all()


def test_support_zero_beyond_outer_distance_and_base_logits_bit_for_bit(small, digits):
    model, _, res = small
    rows = res.model.neighbourhoods
    gen = torch.Generator().manual_seed(1)
    lo, hi = rows.lower.double(), rows.upper.double()
    outer = rows.outer_distance().unsqueeze(1)
    centre = (lo + hi) / 2
    probe = centre + (torch.rand(centre.shape, generator=gen, dtype=torch.float64) * 2 - 1) * (hi - lo) / 2
    j = torch.randint(0, lo.shape[1], (len(rows),), generator=gen)
    probe[torch.arange(len(rows)), j] = hi[torch.arange(len(rows)), j] + outer[:, 0]
    h = probe.float()
    h[torch.arange(len(rows)), j] = torch.nextafter(h[torch.arange(len(rows)), j], torch.tensor(float("inf")))
    support = res.model.neighbourhood_support(h)
    assert (support[torch.arange(len(rows)), torch.arange(len(rows))] == 0).all()
    # inputs with no support at all: the base model's logits, bit for bit (the test set, far from every ball)
    with torch.no_grad():
        free = (res.model.neighbourhood_support(digits.X_test) == 0).all(dim=1)
        assert free.sum() > 0.9 * len(digits.X_test)
        assert torch.equal(res.model(digits.X_test)[free], model(digits.X_test)[free])


def test_served_support_equals_dense_formula(small, digits):
    _, _, res = small
    rows = res.model.neighbourhoods
    gen = torch.Generator().manual_seed(2)
    lo, hi = rows.lower.repeat(20, 1), rows.upper.repeat(20, 1)
    outer = rows.outer_distance().float().repeat(20).unsqueeze(1)
    near = lo + torch.rand(lo.shape, generator=gen) * (hi - lo)  # inside the boxes
    cols = torch.randint(0, lo.shape[1], (len(near), 2), generator=gen)
    push = torch.rand(len(near), 2, generator=gen) * 1.3 * outer  # one or two coordinates into / past the band
    push[: len(near) // 3] = 0  # a third stay inside their box
    near.scatter_(1, cols, hi.gather(1, cols) + push)
    h = torch.cat([near, digits.X_test[:200]])
    z, logits = res.model.split.head_forward(h)
    z = torch.cat(z, 1)
    dense = rows.support_dense(h, z)
    b, k, v = rows.support(h, z)
    fast = torch.zeros_like(dense)
    fast[b, k] = v
    assert torch.equal(fast, dense)
    assert ((dense > 0) & (dense < 1)).any() and (dense == 1).any()  # the probes reach the band and the box


def test_overlapping_balls_share_a_target_and_both_claims_hold(digits_small_model, digits):
    x = digits.X_train[:1].clone()
    x2 = (x + 1 / 16).clamp(0, 1)  # a near-copy inside the first ball's outer band, with another label
    y = digits.y_train[:1]
    y2 = (y + 1) % 10
    res = forget(digits_small_model, torch.cat([x, x2]), labels=torch.cat([y, y2]), radius=R, seed=0)
    rows = res.model.neighbourhoods
    assert len(rows) == 2 and int(rows.targets[0]) == int(rows.targets[1])
    assert int(rows.targets[0]) not in (int(y), int(y2))
    _assert_balls_predict_their_targets(res.model, rows, seed=3)


def _assert_balls_predict_their_targets(model, rows, seed: int) -> None:
    """300 samples of every ball (clipped to [0, 1]) are all predicted as the ball's target."""
    gen = torch.Generator().manual_seed(seed)
    for k in range(len(rows)):
        h = _ball_samples(rows.lower[k].clamp(min=0), rows.upper[k].clamp(max=1), 300, gen)
        with torch.no_grad():
            assert (model(h).argmax(1) == rows.targets[k]).all()


def test_forgetting_next_to_a_prior_ball_resolves_its_target(digits_small_model, digits):
    x = digits.X_train[5:6]
    first = forget(digits_small_model, x, labels=digits.y_train[5:6], radius=R, seed=0)
    t0 = int(first.model.neighbourhoods.targets[0])
    # a second request whose label is the first row's target, right next to it: the component needs a new target
    x2 = (x + 1 / 32).clamp(0, 1)
    second = forget(first.model, x2, labels=torch.tensor([t0]), radius=R, seed=0)
    rows = second.model.neighbourhoods
    assert len(rows) == 2 and second.report.n_regions_resolved == 1
    assert int(rows.targets[0]) == int(rows.targets[1]) != t0
    _assert_balls_predict_their_targets(second.model, rows, seed=4)


def test_region_mode_next_to_a_ball_takes_its_target(digits_small_model, digits):
    x = digits.X_train[7:8]
    first = forget(digits_small_model, x, labels=digits.y_train[7:8], radius=R, seed=0)
    t0 = int(first.model.neighbourhoods.targets[0])
    second = forget(first.model, x, labels=digits.y_train[7:8], seed=5, radius=None)  # region-only on the same point
    assert int(second.model.patches.targets[0]) == t0


def test_save_load_round_trip_and_audit(small, digits, tmp_path, one_thread):
    _, idx, res = small
    save(res.model, tmp_path / "m.safetensors")
    res.certificate.to_json(tmp_path / "c.json")
    loaded = load(tmp_path / "m.safetensors")
    assert loaded.sha256() == res.model.sha256()
    with torch.no_grad():
        assert torch.equal(loaded(digits.X_test), res.model(digits.X_test))
    from prune_unlearn import Certificate

    cert = Certificate.from_json(tmp_path / "c.json")
    result = audit(loaded, cert, points=digits.X_train[idx], labels=digits.y_train[idx], milp_samples=2)
    assert result.passed, result.summary()
    counts = result.counts()
    assert counts["ball-bounds"][0] == len(idx) and counts["ball-milp"][0] >= 2


def test_audit_rejects_a_tampered_patch(small, digits, one_thread):
    _, idx, res = small
    rows = res.model.neighbourhoods
    fields = {k: v.clone() for k, v in rows.tensors().items()}
    fields["values"][0] = 0.0
    fields["values"][0, int(rows.targets[0])] = 1e-3
    bad = res.model.with_patches(neighbourhoods=NeighbourhoodSet(rows.input_dim, rows.num_hidden, rows.num_classes,
                                                                   **fields))
    result = audit(bad, res.certificate, points=digits.X_train[idx], labels=digits.y_train[idx], milp_samples=0)
    assert not result.passed
    assert any(c.name in ("hashes", "neighbourhoods", "ball-bounds") for c in result.failures)


def test_region_and_ball_rows_vanish_outside_the_region(digits_small_model, digits):
    idx = torch.arange(6)
    res = forget(digits_small_model, digits.X_train[idx], labels=digits.y_train[idx], radius=R, within_region=True,
                 bound="dual", seed=1)
    rows = res.model.neighbourhoods
    assert bool(rows.has_region().all()) and res.report.n_failed == 0
    with torch.no_grad():
        assert (res.model(digits.X_train[idx]).argmax(1) != digits.y_train[idx]).all()
    # inputs of the ball with another activation pattern than the point's get support 0
    gen = torch.Generator().manual_seed(5)
    h = _ball_samples(rows.lower[0].clamp(min=0), rows.upper[0].clamp(max=1), 400, gen)
    z, _ = res.model.split.head_forward(h)
    z = torch.cat(z, 1)
    other = ((z > 0) != rows.masks()[0]).any(dim=1)
    assert other.any()
    assert (res.model.neighbourhood_support(h)[other, 0] == 0).all()


@pytest.mark.parametrize("radius, match", [
    (-0.1, "'radius' parameter of forget must be a finite float > 0"),
    (float("nan"), "'radius' parameter of forget must be a finite float > 0"),
    (float("inf"), "'radius' parameter of forget must be a finite float > 0"),
    (0.0, "'radius' parameter of forget must be a finite float > 0"),
    (1.5, "'radius' parameter of forget must be at most the domain's widest side"),
    ("wide", "'radius' parameter of forget must be a float"),
])
def test_bad_radius_is_refused(digits_small_model, digits, radius, match):
    with pytest.raises(InputValidationError, match=match):
        forget(digits_small_model, digits.X_train[:2], labels=digits.y_train[:2], radius=radius)


def test_radius_without_a_known_domain_is_refused(digits_small_model, digits):
    with pytest.raises(InputValidationError, match="'radius' parameter of forget needs a known, bounded input domain"):
        forget(digits_small_model, digits.X_train[:2], labels=digits.y_train[:2], radius=0.1, domain=None)
    with pytest.raises(InputValidationError, match="'min_radius' parameter of forget must be at most max_radius"):
        forget(digits_small_model, digits.X_train[:2], radius="search", min_radius=0.2, max_radius=0.1)


def test_radius_search_is_clamped_and_proven(digits_small_model, digits):
    idx = torch.arange(8)
    res = forget(digits_small_model, digits.X_train[idx], labels=digits.y_train[idx], radius="search",
                 min_radius=1 / 16, max_radius=4 / 16)
    r = res.model.neighbourhoods.radius
    assert ((r >= 1 / 16) & (r <= 4 / 16)).all() and res.report.n_failed == 0


def test_box_overlaps_matches_brute_force():
    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(150, 12, generator=g), torch.rand(90, 12, generator=g)
    la, ha, lb, hb = a - 0.3, a + 0.3, b - 0.2, b + 0.2
    ia, ib = box_overlaps(la, ha, lb, hb)
    ref = ((la.unsqueeze(1) <= hb.unsqueeze(0)) & (lb.unsqueeze(0) <= ha.unsqueeze(1))).all(-1).nonzero()
    assert set(zip(ia.tolist(), ib.tolist())) == set(map(tuple, ref.tolist())) and len(ref) > 0


def test_outward_box_contains_the_float64_box():
    g = torch.Generator().manual_seed(1)
    lo = torch.rand(50, 30, generator=g, dtype=torch.float64)
    hi = lo + 1e-3 * math.pi
    lo32, hi32 = outward_box(lo, hi)
    assert (lo32.double() <= lo).all() and (hi32.double() >= hi).all()


def test_removing_every_ball_row_gives_back_the_state_without_neighbourhoods(small):
    """What the ledger's undo relies on: dropping the last ball row removes the kind (no empty ``neighbourhoods.*``
    tensors stay behind), so the model's state is byte for byte the one before any ball was added; a model
    without balls that gets no rows stays without."""
    base, _, res = small
    before = PatchedModel.wrap(base)
    n = len(res.model.neighbourhoods)
    emptied = res.model.select_neighbourhood_rows(torch.zeros(n, dtype=torch.bool))
    assert emptied.neighbourhoods is None
    assert emptied.state_dict().keys() == before.state_dict().keys() and emptied.sha256() == before.sha256()
    assert len(res.model.select_neighbourhood_rows(torch.ones(n, dtype=torch.bool)).neighbourhoods) == n
    none_added = before.add_neighbourhood_rows(res.model.neighbourhoods.select(torch.zeros(n, dtype=torch.bool)))
    assert none_added.neighbourhoods is None and none_added.sha256() == before.sha256()
