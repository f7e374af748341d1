"""The float32 masked backward pass and its proven rounding bound (core/sound_backward), and the vectorised
bookkeeping that forgets many points at once (units, targets) against their one-at-a-time definitions."""

from fractions import Fraction
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from prune_unlearn.core.confusion import margin_upper_bounds
from prune_unlearn.core.regions import HeadNetwork, PointRegions, masked_backward
from prune_unlearn.core.sound_backward import SoundBackward
from prune_unlearn.unlearn import targets as target_rules
from prune_unlearn.unlearn.problem import group_units


def _head(sizes, seed, spread=1.0):
    """A float32-exact head; ``spread`` widens the weights' dynamic range (more cancellation, larger errors)."""
    g = torch.Generator().manual_seed(seed)
    ws, bs = [], []
    for a, b in zip(sizes[:-1], sizes[1:]):
        scale = torch.exp(spread * torch.randn(b, a, generator=g))
        ws.append((torch.randn(b, a, generator=g) * scale / a**0.5).to(torch.float32).to(torch.float64))
        bs.append((torch.randn(b, generator=g) * 0.1).to(torch.float32).to(torch.float64))
    return HeadNetwork(tuple(ws), tuple(bs))


def _exact_backward(head, mask, out_row, hidden_row):
    """``masked_backward`` for one region and one row in exact rational arithmetic."""
    sizes = head.hidden_sizes
    starts = np.cumsum([0, *sizes])
    g = [Fraction(float(v)) for v in out_row]
    for j in range(len(head.weights) - 1, 0, -1):
        w = head.weights[j].numpy()
        n_in = w.shape[1]
        m = mask[starts[j - 1]: starts[j]]
        hid = hidden_row[starts[j - 1]: starts[j]] if hidden_row is not None else None
        new = []
        for i in range(n_in):
            v = sum((g[o] * Fraction(float(w[o, i])) for o in range(len(g))), Fraction(0)) if m[i] else Fraction(0)
            new.append(v + (Fraction(float(hid[i])) if hid is not None else 0))
        g = new
    w0 = head.weights[0].numpy()
    return [sum((g[o] * Fraction(float(w0[o, i])) for o in range(len(g))), Fraction(0)) for i in range(w0.shape[1])]


@pytest.mark.parametrize("sizes,spread,seed", [((12, 9, 7, 4), 0.5, 0), ((10, 8, 6, 5, 3), 2.0, 1),
                                               ((6, 5, 2), 3.0, 2)])
def test_rounding_bound_holds_in_exact_arithmetic(sizes, spread, seed):
    head = _head(sizes, seed, spread)
    g = torch.Generator().manual_seed(seed + 10)
    lo = (torch.rand(sizes[0], generator=g, dtype=torch.float64) - 0.7) * 3  # not float32 numbers
    hi = lo + torch.rand(sizes[0], generator=g, dtype=torch.float64) * 2
    sb = SoundBackward.build(head, lo, hi)
    assert sb is not None
    p, k, n = 3, 3, head.num_hidden
    masks = torch.rand(p, n, generator=g) < 0.6
    out = torch.randint(-1, 2, (p, k, head.num_classes), generator=g).to(torch.float32)
    mu = (torch.rand(p, k, n, generator=g) * torch.exp(spread * torch.randn(p, k, n, generator=g))).to(torch.float32)
    hidden = (masks.to(torch.float32) * 2 - 1).unsqueeze(1) * mu
    for hid in (None, hidden):
        r, err = sb.rows(masks, out, hid)
        value, box_err, size = sb.box_max(r)
        rho = torch.maximum(lo.abs(), hi.abs())
        for i in range(p):
            for j in range(k):
                exact = _exact_backward(head, masks[i].tolist(), out[i, j].tolist(),
                                        None if hid is None else hid[i, j].tolist())
                dev = sum(Fraction(float(rho[t])) * abs(Fraction(float(r[i, j, t])) - exact[t])
                          for t in range(sizes[0]))
                assert dev <= Fraction(float(err[i, j])), (dev, float(err[i, j]))
                # the box maximum of the float32 row, exactly, against value ± box_err
                box = sum(max(Fraction(float(lo[t])) * Fraction(float(r[i, j, t])),
                              Fraction(float(hi[t])) * Fraction(float(r[i, j, t]))) for t in range(sizes[0]))
                assert abs(box - Fraction(float(value[i, j]))) <= Fraction(float(box_err[i, j]))
                assert float(size[i, j]) >= float(sum(abs(r[i, j].double()) * ((lo + hi).abs() / 2 + (hi - lo) / 2)))


def test_float32_bounds_are_sound_and_close_to_float64():
    head = _head((30, 16, 16, 5), 3)
    g = torch.Generator().manual_seed(4)
    masks = torch.rand(40, head.num_hidden, generator=g) < 0.5
    theta = torch.rand(40, generator=g, dtype=torch.float64) * 0.01
    targets = torch.randint(0, 5, (40,), generator=g)
    lo, hi = torch.zeros(30, dtype=torch.float64), torch.ones(30, dtype=torch.float64)
    b32 = margin_upper_bounds(head, masks, theta, targets, lo, hi, "box").upper
    # the float64 pass (the reference the float32 one replaces): masked_backward of every row e_l − e_t
    eye = torch.eye(5, dtype=torch.float64)
    rows = eye.unsqueeze(0) - eye[targets].unsqueeze(1)
    r64 = masked_backward(head, masks, rows)
    from prune_unlearn.core.regions import region_offsets
    _, w0 = region_offsets(head, masks)
    exact = (rows * w0.unsqueeze(1)).sum(-1) + torch.maximum(r64 * lo, r64 * hi).sum(-1)
    finite = torch.isfinite(b32)
    assert torch.all(b32[finite] >= exact[finite])  # float64 is accurate to ~1e-14 here; the bound adds ~1e-5
    assert torch.all(b32[finite] <= exact[finite] + 1e-3 * (1 + exact[finite].abs()))
    assert torch.equal(torch.isinf(b32), torch.nn.functional.one_hot(targets, 5).bool())


def test_no_float32_pass_where_its_bound_would_not_hold():
    head = _head((8, 6, 3), 5)
    lo, hi = torch.zeros(8, dtype=torch.float64), torch.ones(8, dtype=torch.float64)
    assert SoundBackward.build(head, lo, hi) is not None
    inexact = HeadNetwork((head.weights[0] + 1e-12, head.weights[1]), head.biases)  # not float32 numbers
    assert SoundBackward.build(inexact, lo, hi) is None
    assert SoundBackward.build(head, lo, torch.full((8,), float("inf"), dtype=torch.float64)) is None
    before = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("medium")  # may use bf16/TF32 products: no γ_k bound
        assert SoundBackward.build(head, lo, hi) is None
        masks = torch.ones(2, 6, dtype=torch.bool)
        ub = margin_upper_bounds(head, masks, torch.full((2,), 0.01, dtype=torch.float64), torch.tensor([0, 1]),
                                 lo, hi, "box").upper  # the float64 pass
        assert torch.isfinite(ub).sum() == 4
    finally:
        torch.set_float32_matmul_precision(before)


def test_group_units_matches_its_definition():
    g = torch.Generator().manual_seed(6)
    n, hidden = 200, 10
    base = torch.rand(12, hidden, generator=g) < 0.5
    masks = base[torch.randint(0, 12, (n,), generator=g)]  # many points share a region
    slack = torch.rand(n, hidden, generator=g, dtype=torch.float64)
    consistent = torch.rand(n, generator=g) < 0.9
    pr = PointRegions(masks, slack, slack.min(1).values, torch.rand(n, generator=g, dtype=torch.float64) * 1e-6,
                      consistent, torch.randn(n, 4, generator=g, dtype=torch.float64))
    labels = torch.randint(0, 4, (n,), generator=g)
    units = group_units(pr, labels, 4, None)
    ok = consistent.nonzero().flatten().tolist()
    order, groups = [], {}
    for i in ok:  # units in order of their first point, members in point order
        key = tuple(masks[i].tolist())
        if key not in groups:
            groups[key] = []
            order.append(key)
        groups[key].append(i)
    assert len(units) == len(order)
    for u, key in enumerate(order):
        members = groups[key]
        assert units.members[u].tolist() == members
        assert units.masks[u].tolist() == list(key)
        assert float(units.min_slack[u]) == float(pr.min_slack[members].min())
        assert float(units.f32_error[u]) == float(pr.float32_error[members].max())
        assert units.excluded[u].nonzero().flatten().tolist() == sorted(set(labels[members].tolist()))
    point_unit = units.point_unit(n)
    for u, key in enumerate(order):
        assert all(int(point_unit[i]) == u for i in groups[key])
    assert all(int(point_unit[i]) == -1 for i in range(n) if not consistent[i])


def test_random_targets_draw_as_one_draw_per_unit():
    """The vectorised rule makes the same draws, in the same order, as one ``rng.integers`` per unit."""
    g = torch.Generator().manual_seed(7)
    for trial in range(10):
        units = 60
        excluded = torch.rand(units, 10, generator=g) < 0.3
        excluded[excluded.all(dim=1)] = False
        keep = torch.randint(-1, 10, (units,), generator=g)
        ids = torch.randperm(units, generator=g)[:40].tolist()
        keep_k = keep[:40] if trial % 2 else None

        def problem():
            return SimpleNamespace(target="random", rng=np.random.default_rng(trial),
                                   units=SimpleNamespace(excluded=excluded))

        one_by_one, vectorised = problem(), problem()
        expected = []
        for k, u in enumerate(ids):
            allowed = (~excluded[u]).nonzero().flatten()
            if keep_k is not None and keep_k[k] >= 0 and not excluded[u, keep_k[k]]:
                expected.append(int(keep_k[k]))
            else:
                expected.append(int(allowed[one_by_one.rng.integers(len(allowed))]))
        got = target_rules.choose_targets(vectorised, ids, keep_k)
        assert got.tolist() == expected
        assert one_by_one.rng.integers(1 << 30) == vectorised.rng.integers(1 << 30)  # same generator state after


def test_fused_box_bound_gives_the_same_numbers_as_rows_then_box_max():
    """``box_bound`` (rows into a reused buffer, made absolute in place) is ``rows`` then ``box_max``, bit for bit,
    also when a smaller call reuses the buffer of a larger one."""
    head = _head((12, 9, 7, 4), 3, 1.0)
    g = torch.Generator().manual_seed(4)
    lo = -torch.rand(12, generator=g, dtype=torch.float64)
    hi = lo + torch.rand(12, generator=g, dtype=torch.float64) * 2
    sb = SoundBackward.build(head, lo, hi)
    for p in (5, 2):
        masks = torch.rand(p, head.num_hidden, generator=g) < 0.5
        out = torch.randint(-1, 2, (p, 3, head.num_classes), generator=g).to(torch.float32)
        hidden = (torch.rand(p, 3, head.num_hidden, generator=g)).to(torch.float32)
        for hid in (None, hidden):
            r, err = sb.rows(masks, out, hid)
            expected = (*sb.box_max(r), err)
            got = sb.box_bound(masks, out, hid)
            for a, b in zip(got, expected):
                assert torch.equal(a, b)
