"""The dual bound's multiplier search (core/dual_search): in float32 and in bfloat16 the bound it leads to is
sound (never below the exact LP maximum), never above the box bound, and close to the LP on small heads;
its helpers (the box maximiser from the sign bit, row padding) match their plain definitions; the blocked
point_regions matches one pass over all points."""

import pytest
import torch

from _helpers.models import region_problem, tiny_mlp
from prune_unlearn.core import dual_search, regions
from prune_unlearn.core.confusion import margin_upper_bounds
from prune_unlearn.core.regions import HeadNetwork, point_regions
from prune_unlearn.core.split import split_model


def _problem(sizes, n, seed):
    _, _, head, _, pr, targets, theta, lo, hi = region_problem(sizes, n, seed)
    return head, pr, targets, theta, lo, hi


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("sizes,seed", [((6, 10, 8, 4), 0), ((5, 12, 3), 1), ((8, 9, 7, 6, 5), 2)])
def test_dual_bound_lies_between_the_exact_lp_and_the_box(monkeypatch, dtype, sizes, seed):
    monkeypatch.setattr(dual_search, "search_dtype", lambda: dtype)
    head, pr, targets, theta, lo, hi = _problem(sizes, 16, seed)
    box = margin_upper_bounds(head, pr.masks, theta, targets, lo, hi, "box").upper
    dual = margin_upper_bounds(head, pr.masks, theta, targets, lo, hi, "dual", dual_steps=200)
    lp = margin_upper_bounds(head, pr.masks, theta, targets, lo, hi, "lp").upper
    finite = torch.isfinite(box)
    assert torch.equal(finite, torch.isfinite(dual.upper))
    assert torch.all(dual.upper[finite] <= box[finite])
    # sound: the LP value is the exact maximum (certified through its own duals, so within rounding of it)
    assert torch.all(dual.upper[finite] >= lp[finite] - 1e-7 * (1 + lp[finite].abs()))
    # and it closes much of the gap from the box bound to the LP on each region's largest bound (on these heads
    # the plain float32 search of the previous version left 5%, 13% and 54% of it on average)
    worst = lambda u: u.max(dim=1).values  # noqa: E731
    left = (worst(dual.upper) - worst(lp)) / (worst(box) - worst(lp)).clamp(min=1e-12)
    assert float(left.mean()) <= 0.6, left
    assert torch.all(dual.multipliers >= 0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_returned_multipliers_reproduce_the_bound(monkeypatch, dtype):
    """The proof is the stored float32 multipliers: re-evaluating the float64 weak-duality formula at them gives
    a value no larger than the bound reported (the reported one adds the proven float32 rounding bound)."""
    from prune_unlearn.core.confusion import _dual_value, _label_rows, _region_terms

    monkeypatch.setattr(dual_search, "search_dtype", lambda: dtype)
    head, pr, targets, theta, lo, hi = _problem((6, 10, 8, 4), 10, 3)
    res = margin_upper_bounds(head, pr.masks, theta, targets, lo, hi, "dual", dual_steps=80)
    signs, _, w0, q = _region_terms(head, pr.masks, theta)
    rows = _label_rows(targets, 4)
    w0_rows = (rows * w0.unsqueeze(1)).sum(dim=-1)
    value, _ = _dual_value(head, pr.masks, rows, signs, w0_rows, q, res.multipliers.double(), lo, hi)
    others = torch.isfinite(res.upper)
    assert torch.all(value[others] <= res.upper[others] + 1e-9 * (1 + res.upper[others].abs()))


def test_upper_corner_from_the_sign_bit_matches_the_comparison():
    net = dual_search._Head((torch.randn(4, 7), torch.randn(3, 4)), (torch.randn(4), torch.randn(3)), torch.bfloat16,
                            torch.zeros(7), torch.ones(7))
    r = torch.randn(50, 7).to(torch.bfloat16)
    r[0, :3] = torch.tensor([1e-30, -1e-30, float("inf")])
    u = net.upper_corner(r)
    assert u.dtype == torch.bfloat16
    assert torch.equal(u.float(), (r > 0).float())
    assert torch.equal(net.upper_corner(torch.zeros(2, 7, dtype=torch.bfloat16)).float(), torch.ones(2, 7))


def test_padded_bfloat16_products_match_the_plain_product():
    net = dual_search._Head((torch.randn(16, 9), torch.randn(3, 16)), (torch.randn(16), torch.randn(3)),
                            torch.bfloat16, torch.zeros(9), torch.ones(9))
    for n in (1, 5, 127, 128, 129, 300):
        x = torch.randn(n, 9).to(torch.bfloat16)
        out = net._mm(x, net.first_t)
        assert out.shape == (n, 16)
        torch.testing.assert_close(out.float(), (x.float() @ net.first_t.float()), rtol=2e-2, atol=1e-2)


def test_blocked_point_regions_match_one_pass(monkeypatch):
    model = tiny_mlp((6, 10, 8, 4), seed=4)
    split = split_model(model)
    head = HeadNetwork.from_split(split)
    h = torch.rand(50, 6, generator=torch.Generator().manual_seed(5))
    whole = point_regions(head, split, h)
    monkeypatch.setattr(regions, "_BLOCK", 7)
    blocked = point_regions(head, split, h)
    for name in ("masks", "consistent"):
        assert torch.equal(getattr(whole, name), getattr(blocked, name)), name
    for name in ("slack", "min_slack", "float32_error", "logits"):  # float64 products of other sizes may round apart
        torch.testing.assert_close(getattr(whole, name), getattr(blocked, name), rtol=1e-12, atol=1e-12)
    z64, logits = head.forward(h.double())
    assert torch.equal(whole.masks, torch.cat(split.head_forward(h)[0], dim=1) > 0)
    assert torch.equal(whole.slack, torch.where(whole.masks, z64, -z64))
    assert torch.equal(whole.logits, logits)
