import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from _helpers.models import tiny_mlp
from prune_unlearn import PatchedModel, PatchSet, forget
from prune_unlearn.core.regions import pack_patterns
from prune_unlearn.core.split import split_model


def _random_patchset(num_hidden, num_classes, masks, gen):
    r = len(masks)
    return PatchSet(
        num_hidden, num_classes,
        patterns=pack_patterns(masks),
        gate_lambda=torch.rand(r, generator=gen) * 100 + 1,
        values=torch.randn(r, num_classes, generator=gen),
        targets=torch.zeros(r, dtype=torch.int64),
        excluded=torch.zeros(r, num_classes, dtype=torch.bool),
        point_min_slack=torch.ones(r, dtype=torch.float64),
        region_threshold=torch.ones(r, dtype=torch.float64),
        certified_margin=torch.ones(r, dtype=torch.float64),
        bound_code=torch.zeros(r, dtype=torch.uint8),
        float32_robust=torch.ones(r, dtype=torch.bool),
    )


def _preacts(model, x):
    split = split_model(model)
    z, logits = split.head_forward(split.features(x))
    return torch.cat(z, dim=1), logits


def test_empty_patchset_reproduces_base_bit_for_bit():
    model = tiny_mlp((4, 8, 8, 3))
    patched = PatchedModel(model, PatchSet(16, 3)).eval()
    x = torch.rand(1000, 4, generator=torch.Generator().manual_seed(37)) * 4 - 2
    assert torch.equal(patched(x), model(x))


def test_fast_support_equals_dense_network_formula():
    model = tiny_mlp((4, 8, 8, 3), seed=1)
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(400, 4, generator=gen)
    z, _ = _preacts(model, x)
    # patch the patterns of half of the inputs; inputs in the gate band get fractional supports
    masks = torch.unique(z[:200] > 0, dim=0)
    ps = _random_patchset(16, 3, masks, gen)
    region, value = ps.support(z)
    dense = ps.support_dense(z)
    expected = dense.gather(1, region.clamp(min=0).unsqueeze(1)).squeeze(1) * (region >= 0)
    assert torch.equal(value, expected)
    assert torch.all((dense > 0).sum(dim=1) <= 1)            # supports never overlap
    assert torch.all(dense[region < 0] == 0)                  # no pattern match ⇒ no support anywhere
    assert (value > 0).any()


def test_hash_collisions_are_resolved_by_exact_comparison(monkeypatch):
    import prune_unlearn.core.point_patches as patches_mod

    zero = lambda active, weights: torch.zeros(len(active), dtype=torch.int64)  # noqa: E731
    monkeypatch.setattr(patches_mod, "_keys_exact", zero)
    monkeypatch.setattr(patches_mod, "_keys_fast", zero)
    model = tiny_mlp((4, 8, 8, 3), seed=2)
    x = torch.rand(300, 4, generator=torch.Generator().manual_seed(1))
    z, _ = _preacts(model, x)
    masks = torch.unique(z[:50] > 0, dim=0)
    ps = _random_patchset(16, 3, masks, torch.Generator().manual_seed(2))
    idx = ps.match(z > 0)
    ref = torch.tensor([next((r for r in range(len(masks)) if torch.equal(masks[r], zi > 0)), -1) for zi in z])
    assert torch.equal(idx, ref)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), scale=st.sampled_from([1e-1, 1e-3, 1e-5, 1e-7]))
def test_unsupported_inputs_keep_base_logits_bit_for_bit(seed, scale):
    model = tiny_mlp((4, 8, 8, 3), seed=3)
    gen = torch.Generator().manual_seed(seed)
    pts = torch.rand(5, 4, generator=gen)
    patched = forget(model, pts, labels=model(pts).argmax(1), seed=seed, radius=None).model
    # perturbations of the forgotten points at every scale, and uniform inputs (also off the box)
    x = torch.cat([pts.repeat(40, 1) + scale * torch.randn(200, 4, generator=gen),
                   torch.rand(200, 4, generator=gen) * 3 - 1])
    base, out = model(x), patched(x)
    region, value = patched.covering_region(x)
    changed = (base != out).any(dim=1)
    assert torch.all(value[changed] > 0)
    unsupported = value == 0
    assert torch.equal(out[unsupported], base[unsupported])
