import pytest
import torch

from _helpers.models import lp_min_margin, reference_region, region_problem
from prune_unlearn.core.confusion import confusion_patch, margin_upper_bounds, patch_margins


def test_bounds_are_ordered_and_lp_is_exact():
    model, split, head, h, pr, targets, theta, lo, hi = region_problem()
    box = margin_upper_bounds(head, pr.masks, theta, targets, lo, hi, "box").upper
    dual = margin_upper_bounds(head, pr.masks, theta, targets, lo, hi, "dual", dual_steps=200).upper
    lp = margin_upper_bounds(head, pr.masks, theta, targets, lo, hi, "lp").upper
    finite = torch.isfinite(box)
    assert torch.all(dual[finite] <= box[finite] + 1e-9)
    assert torch.all(lp[finite] <= dual[finite] + 1e-7)
    zero = torch.zeros(3, dtype=torch.float64)
    for i in range(len(h)):
        A, c, W, w, s = reference_region(split.linears, h[i])
        for lab in range(3):
            if lab == targets[i]:
                continue
            # exact max of f_l − f_t over the tightened region, by scipy on autograd-built constraints
            ref, _ = lp_min_margin(A, c, s, float(theta[i]), W, w, zero, int(targets[i]), lab, lo, hi)
            exact_max = -ref
            assert lp[i, lab] >= exact_max - 1e-9            # sound
            assert lp[i, lab] <= exact_max + 1e-6 * (1 + abs(exact_max))  # and tight


@pytest.mark.parametrize("method", ["box", "dual", "lp"])
def test_bounds_contain_sampled_values(method):
    model, split, head, h, pr, targets, theta, lo, hi = region_problem(sizes=(3, 6, 5, 4), n=6, seed=2)
    ub = margin_upper_bounds(head, pr.masks, theta, targets, lo, hi, method).upper
    gen = torch.Generator().manual_seed(0)
    samples = torch.rand(20000, 3, generator=gen, dtype=torch.float64)
    z, logits = head.forward(samples)
    for i in range(len(h)):
        s = pr.masks[i].double() * 2 - 1
        inside = ((z * s) >= theta[i]).all(dim=1)
        if inside.sum() == 0:
            continue
        diff = logits[inside] - logits[inside][:, targets[i]].unsqueeze(1)
        others = torch.arange(4) != targets[i]
        assert torch.all(diff.max(dim=0).values[others] <= ub[i][others] + 1e-12)


def test_confusion_patch_is_minimal_and_meets_margin():
    upper = torch.tensor([[float("-inf"), 2.0, -1.0, 0.5], [3.0, float("-inf"), 3.0, -4.0],
                          [-5.0, -6.0, float("-inf"), -7.0]], dtype=torch.float64)
    targets = torch.tensor([0, 1, 2])
    eps = 0.1
    d = confusion_patch(upper, targets, eps)
    margins = patch_margins(upper, targets, d)
    assert torch.all(margins >= eps)
    # ‖d‖∞ = max_l (U_l + ε) / 2, the optimum of min ‖d‖∞ s.t. d_t − d_l ≥ U_l + ε
    expected = torch.tensor([2.1 / 2, 3.1 / 2, 0.0], dtype=torch.float64)
    torch.testing.assert_close(d.abs().max(dim=1).values.double(), expected, atol=1e-6, rtol=0)
    assert torch.all(d[2] == 0)  # target already wins by ε: no patch
