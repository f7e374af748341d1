import pytest
import torch

from _helpers.models import reference_region, tiny_mlp
from prune_unlearn.core.regions import (
    HeadNetwork,
    affine_logits,
    masked_backward,
    pack_patterns,
    pattern_words,
    point_regions,
    region_halfspaces,
    unpack_patterns,
)
from prune_unlearn.core.split import split_model

SHAPES = [(4, 8, 8, 3), (5, 6, 2), (3, 4), (6, 10, 7, 5, 4)]


@pytest.mark.parametrize("sizes", SHAPES)
def test_affine_maps_match_autograd(sizes):
    model = tiny_mlp(sizes, seed=sum(sizes))
    split = split_model(model)
    head = HeadNetwork.from_split(split)
    h = torch.rand(6, sizes[0], generator=torch.Generator().manual_seed(25))
    pr = point_regions(head, split, h)
    W, w = affine_logits(head, pr.masks)
    A, c = region_halfspaces(head, pr.masks)
    for i in range(len(h)):
        A_ref, c_ref, W_ref, w_ref, _ = reference_region(split.linears, h[i])
        torch.testing.assert_close(W[i], W_ref, rtol=0, atol=1e-12)
        torch.testing.assert_close(w[i], w_ref, rtol=0, atol=1e-12)
        torch.testing.assert_close(A[i], A_ref, rtol=0, atol=1e-12)
        torch.testing.assert_close(c[i], c_ref, rtol=0, atol=1e-12)
        # on its own region the affine map reproduces the network's logits
        torch.testing.assert_close(W[i] @ h[i].double() + w[i], pr.logits[i], rtol=0, atol=1e-12)


def test_masked_backward_is_linear_in_coefficients():
    model = tiny_mlp((5, 7, 6, 4), seed=3)
    split = split_model(model)
    head = HeadNetwork.from_split(split)
    pr = point_regions(head, split, torch.rand(3, 5, generator=torch.Generator().manual_seed(43)))
    out = torch.randn(3, 2, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(44))
    hid = torch.randn(3, 2, 13, dtype=torch.float64, generator=torch.Generator().manual_seed(45))
    W, _ = affine_logits(head, pr.masks)
    A, _ = region_halfspaces(head, pr.masks)
    expected = torch.einsum("pkc,pcd->pkd", out, W) + torch.einsum("pkn,pnd->pkd", hid, A)
    torch.testing.assert_close(masked_backward(head, pr.masks, out, hid), expected, rtol=0, atol=1e-12)


def test_point_regions_slack_and_consistency():
    model = tiny_mlp((4, 8, 8, 3), seed=0)
    split = split_model(model)
    head = HeadNetwork.from_split(split)
    h = torch.rand(50, 4, generator=torch.Generator().manual_seed(56))
    pr = point_regions(head, split, h)
    z64, _ = head.forward(h)
    assert torch.equal(pr.masks, z64 > 0)
    assert torch.all(pr.slack >= 0) and torch.all(pr.consistent)
    torch.testing.assert_close(pr.min_slack, z64.abs().min(dim=1).values)
    assert torch.all(pr.float32_error < 1e-5)


def test_pattern_packing_roundtrip_and_keys():
    gen = torch.Generator().manual_seed(0)
    for n in (1, 7, 8, 31, 32, 33, 512):
        masks = torch.rand(20, n, generator=gen) > 0.5
        assert torch.equal(unpack_patterns(pack_patterns(masks), n), masks)
        words = pattern_words(masks)
        same = (words.unsqueeze(0) == words.unsqueeze(1)).all(-1)
        ref = (masks.unsqueeze(0) == masks.unsqueeze(1)).all(-1)
        assert torch.equal(same, ref)


@pytest.mark.parametrize("p,n", [(0, 12), (5, 0), (37, 13), (2500, 70)])
def test_packed_patterns_and_words_match_their_bitwise_definitions(p, n):
    """Blocked packing, table unpacking and blocked words against the plain bit arithmetic (also empty shapes and
    more points than one block)."""
    from prune_unlearn.core.regions import pack_patterns, pattern_words, unpack_patterns

    masks = torch.rand(p, n, generator=torch.Generator().manual_seed(p + n)) < 0.5
    packed = pack_patterns(masks)
    assert packed.shape == (p, (n + 7) // 8) and packed.dtype == torch.uint8
    for i in range(min(p, 40)):
        for j in range(n):
            assert bool((int(packed[i, j // 8]) >> (j % 8)) & 1) == bool(masks[i, j])
    assert torch.equal(unpack_patterns(packed, n), masks)
    words = pattern_words(masks)
    assert words.shape == (p, max(1, (n + 31) // 32))
    for i in range(min(p, 40)):
        for w in range(words.shape[1]):
            expected = sum(1 << (j - 32 * w) for j in range(32 * w, min(n, 32 * w + 32)) if masks[i, j])
            assert int(words[i, w]) == expected
