"""CROWN / IBP bounds of the head, certified radii and stable neurons (``prune_unlearn.core.bounds``).

Every claim is checked against something independent: dense sampling (with box corners), a naive
one-point-at-a-time CROWN written from the textbook formulas, scipy LPs on a single linear region,
and autograd region maps from ``tests/_helpers/models.py``.
"""

from __future__ import annotations

import itertools

import pytest
import torch
from _helpers.models import lp_min_margin, reference_region, tiny_mlp
from torch import nn

from prune_unlearn.core.bounds import (
    CrownBounds,
    certified_radius,
    crown_head_bounds,
    ibp_head_bounds,
    margin_lower_bounds,
    stable_neurons,
)
from prune_unlearn.errors import InputValidationError
from prune_unlearn.core.regions import HeadNetwork
from prune_unlearn.core.split import split_model

# (input, hidden…, classes): two hidden layers, one, none, three, and a wide-ish one.
SHAPES = [(4, 8, 8, 3), (5, 6, 2), (3, 4), (6, 10, 7, 5, 4), (3, 12, 12, 3)]
SHAPE_IDS = ["-".join(map(str, s)) for s in SHAPES]
F64 = torch.float64


pytestmark = pytest.mark.usefixtures("one_thread")


def _head(sizes, seed=None):
    model = tiny_mlp(sizes, seed=sum(sizes) if seed is None else seed)
    split = split_model(model)
    return HeadNetwork.from_split(split), split


def _trained_head(seed=0):
    """A small MLP fitted for a few hundred Adam steps on a seeded 3-class toy problem."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(300, 4, generator=gen)
    y = (x[:, 0] + x[:, 1] > 1).long() + (x[:, 2] > 0.5).long()
    model = tiny_mlp((4, 16, 16, 3), seed=seed).train()
    opt = torch.optim.Adam(model.parameters(), lr=0.03)
    for _ in range(150):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    model.eval()
    return HeadNetwork.from_split(split_model(model))


def _random_boxes(p, d, gen, max_radius=0.3):
    centre = torch.rand(p, d, generator=gen, dtype=F64)
    radius = max_radius * (0.1 + 0.9 * torch.rand(p, d, generator=gen, dtype=F64))
    return centre - radius, centre + radius


def _unit_box_points(head, n, gen):
    """``n`` uniform points of the unit box, the head's hidden pre-activations and predicted labels there,
    and the box's bounds."""
    d = head.input_dim
    x = torch.rand(n, d, generator=gen, dtype=F64)
    z, logits = head.forward(x)
    return x, z, logits.argmax(1), torch.zeros(d, dtype=F64), torch.ones(d, dtype=F64)


def _box_samples(lo, hi, n, gen):
    """``n`` points of the box ``[lo, hi]`` (d,): all corners (or random ones if d > 8), faces, interior."""
    d = lo.shape[0]
    if d <= 8:
        bits = torch.tensor(list(itertools.product([0.0, 1.0], repeat=d)), dtype=F64)
    else:
        bits = torch.randint(0, 2, (256, d), generator=gen).to(F64)
    k = max(0, n - len(bits))
    faces = torch.randint(0, 2, (k // 2, d), generator=gen).to(F64)
    free = torch.rand(k // 2, d, generator=gen, dtype=F64) < 0.3
    faces = torch.where(free, torch.rand(k // 2, d, generator=gen, dtype=F64), faces)
    inner = torch.rand(k - k // 2, d, generator=gen, dtype=F64)
    t = torch.cat([bits, faces, inner])
    return lo + (hi - lo) * t


def _naive_crown(head, lo, hi):
    """Textbook CROWN for one box, unbatched: every layer from scratch, intersected with plain IBP."""
    ws, bs = head.weights, head.biases
    ibp_hidden, ibp_out = ibp_head_bounds(head, lo.unsqueeze(0), hi.unsqueeze(0))
    ibp = [(l[0], u[0]) for l, u in ibp_hidden] + [(ibp_out[0][0], ibp_out[1][0])]
    c, r = (lo + hi) / 2, (hi - lo) / 2
    bounds = []
    for k in range(len(ws)):
        sides = []
        for sign in (1.0, -1.0):  # lower bound of sign * z_k
            lam, beta = sign * ws[k], sign * bs[k]
            for i in range(k - 1, -1, -1):
                l, u = bounds[i]
                unstable = (l < 0) & (u > 0)
                s = torch.where(unstable, u / (u - l), (l >= 0).to(F64))
                t = torch.where(unstable, -s * l, torch.zeros_like(l))
                alpha = torch.where(unstable, (u >= -l).to(F64), (l >= 0).to(F64))
                pos, neg = lam.clamp(min=0), lam.clamp(max=0)
                beta = beta + neg @ t
                lam = pos * alpha + neg * s
                beta = beta + lam @ bs[i]
                lam = lam @ ws[i]
            sides.append(sign * (lam @ c - lam.abs() @ r + beta))
        bounds.append((torch.maximum(sides[0], ibp[k][0]), torch.minimum(sides[1], ibp[k][1])))
    hidden = bounds[:-1]
    cat = (lambda ts: torch.cat(ts)) if hidden else (lambda ts: torch.zeros(0, dtype=F64))
    return cat([b[0] for b in hidden]), cat([b[1] for b in hidden]), bounds[-1][0], bounds[-1][1]


def _margins(logits, labels):
    m = logits.gather(-1, labels.unsqueeze(-1)) - logits
    return m


# --- (a) soundness ---------------------------------------------------------------------------------


@pytest.mark.parametrize("sizes", SHAPES, ids=SHAPE_IDS)
def test_ibp_and_crown_bounds_contain_every_sample(sizes):
    head, _ = _head(sizes)
    gen = torch.Generator().manual_seed(1)
    p, d, c = 3, sizes[0], sizes[-1]
    lo, hi = _random_boxes(p, d, gen)
    labels = torch.randint(0, c, (p,), generator=gen)
    spec = torch.randn(p, 2, c, generator=gen, dtype=F64)
    crown = crown_head_bounds(head, lo, hi)
    crown_spec = crown_head_bounds(head, lo, hi, spec=spec)
    ibp_hidden, (ibp_lo, ibp_hi) = ibp_head_bounds(head, lo, hi)
    margin_lo = margin_lower_bounds(head, lo, hi, labels)
    assert isinstance(crown, CrownBounds)
    assert crown.hidden_lower.shape == (p, head.num_hidden) and crown.out_lower.shape == (p, c)
    assert crown_spec.out_lower.shape == (p, 2)
    assert len(ibp_hidden) == len(sizes) - 2
    if ibp_hidden:
        ibp_hl = torch.cat([b[0] for b in ibp_hidden], 1)
        ibp_hu = torch.cat([b[1] for b in ibp_hidden], 1)
    else:
        ibp_hl = ibp_hu = torch.zeros(p, 0, dtype=F64)
    for i in range(p):
        h = _box_samples(lo[i], hi[i], 2000, gen)
        z, f = head.forward(h)
        for low, up in ((crown.hidden_lower, crown.hidden_upper), (ibp_hl, ibp_hu)):
            assert torch.all(z >= low[i]) and torch.all(z <= up[i])
        for low, up in ((crown.out_lower, crown.out_upper), (ibp_lo, ibp_hi)):
            assert torch.all(f >= low[i]) and torch.all(f <= up[i])
        g = f @ spec[i].T
        assert torch.all(g >= crown_spec.out_lower[i]) and torch.all(g <= crown_spec.out_upper[i])
        m = _margins(f, labels[i].expand(len(f)))
        m[:, labels[i]] = float("inf")
        assert torch.all(m >= margin_lo[i])
        assert torch.isinf(margin_lo[i, labels[i]])
        # Not vacuous: the bounds are finite and CROWN's logit bounds are within the samples' reach.
        assert torch.isfinite(crown.out_lower[i]).all()


@pytest.mark.parametrize("sizes", SHAPES, ids=SHAPE_IDS)
def test_crown_matches_a_naive_textbook_implementation(sizes):
    head, _ = _head(sizes)
    gen = torch.Generator().manual_seed(2)
    lo, hi = _random_boxes(4, sizes[0], gen)
    got = crown_head_bounds(head, lo, hi)
    for i in range(4):
        ref = _naive_crown(head, lo[i], hi[i])
        for a, b in zip((got.hidden_lower[i], got.hidden_upper[i], got.out_lower[i], got.out_upper[i]), ref):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-9)


def test_sound_on_a_box_with_a_zero_width_side_and_on_a_point():
    head, _ = _head((4, 8, 8, 3))
    gen = torch.Generator().manual_seed(3)
    lo, hi = _random_boxes(2, 4, gen)
    lo[0, 1] = hi[0, 1]
    lo[1] = hi[1]  # a single point: CROWN is exact there (up to the rounding safety)
    crown = crown_head_bounds(head, lo, hi)
    z, f = head.forward(hi)
    assert torch.all(z >= crown.hidden_lower) and torch.all(z <= crown.hidden_upper)
    assert torch.all(f >= crown.out_lower) and torch.all(f <= crown.out_upper)
    torch.testing.assert_close(crown.out_lower[1], f[1], rtol=0, atol=1e-9)
    torch.testing.assert_close(crown.out_upper[1], f[1], rtol=0, atol=1e-9)


# --- (b) CROWN vs IBP ----------------------------------------------------------------------------


@pytest.mark.parametrize("sizes", SHAPES, ids=SHAPE_IDS)
def test_crown_is_never_looser_than_ibp(sizes):
    head, _ = _head(sizes)
    gen = torch.Generator().manual_seed(4)
    lo, hi = _random_boxes(6, sizes[0], gen, max_radius=0.5)
    crown = crown_head_bounds(head, lo, hi)
    ibp_hidden, (ibp_lo, ibp_hi) = ibp_head_bounds(head, lo, hi)
    for (il, iu), cl, cu in zip(ibp_hidden, head.split_hidden(crown.hidden_lower), head.split_hidden(crown.hidden_upper)):
        assert torch.all(cl >= il) and torch.all(cu <= iu)
    assert torch.all(crown.out_lower >= ibp_lo) and torch.all(crown.out_upper <= ibp_hi)


def test_crown_is_tighter_than_ibp_on_a_trained_network():
    head = _trained_head()
    gen = torch.Generator().manual_seed(5)
    lo, hi = _random_boxes(20, 4, gen, max_radius=0.15)
    crown = crown_head_bounds(head, lo, hi)
    ibp_hidden, (ibp_lo, ibp_hi) = ibp_head_bounds(head, lo, hi)
    ratio = (crown.out_upper - crown.out_lower).mean() / (ibp_hi - ibp_lo).mean()
    assert ratio < 0.8, ratio
    second_ibp = ibp_hidden[1][1] - ibp_hidden[1][0]
    second = head.split_hidden(crown.hidden_upper - crown.hidden_lower)[1]
    assert second.mean() < 0.9 * second_ibp.mean()
    assert (second < second_ibp - 1e-9).any()


@pytest.mark.parametrize("sizes", SHAPES, ids=SHAPE_IDS)
def test_skipping_ibp_stable_neurons_keeps_outputs_and_signs(sizes):
    head, _ = _head(sizes)
    gen = torch.Generator().manual_seed(6)
    lo, hi = _random_boxes(5, sizes[0], gen, max_radius=0.2)
    full = crown_head_bounds(head, lo, hi)
    fast = crown_head_bounds(head, lo, hi, refine_stable=False)
    torch.testing.assert_close(fast.out_lower, full.out_lower, rtol=0, atol=1e-12)
    torch.testing.assert_close(fast.out_upper, full.out_upper, rtol=0, atol=1e-12)
    assert torch.equal(fast.hidden_lower > 0, full.hidden_lower > 0)
    assert torch.equal(fast.hidden_upper < 0, full.hidden_upper < 0)
    assert torch.all(fast.hidden_lower <= full.hidden_lower + 1e-12)


# --- (c) exact on one linear region ---------------------------------------------------------------


@pytest.mark.parametrize("sizes", [s for s in SHAPES if len(s) > 2], ids=[i for s, i in zip(SHAPES, SHAPE_IDS) if len(s) > 2])
def test_margin_bounds_equal_the_lp_minimum_inside_one_region(sizes):
    head, split = _head(sizes)
    gen = torch.Generator().manual_seed(7)
    cands = torch.rand(64, sizes[0], generator=gen, dtype=F64)
    z, logits = head.forward(cands)
    checked = 0
    for i in z.abs().min(dim=1).values.argsort(descending=True)[:3].tolist():  # the largest slacks
        x = cands[i]
        A, c, W, w, signs = reference_region(split.linears, x)
        rho = 0.5 * ((A @ x + c).abs() / A.abs().sum(dim=1)).min()  # keeps every neuron's sign
        lo, hi = x - rho, x + rho
        y = int(logits[i].argmax())
        got = margin_lower_bounds(head, lo.unsqueeze(0), hi.unsqueeze(0), torch.tensor([y]))[0]
        for label in range(sizes[-1]):
            if label == y:
                continue
            value, _ = lp_min_margin(A, c, signs, 0.0, W, w, torch.zeros(sizes[-1], dtype=F64), y, label, lo, hi)
            assert value is not None
            assert got[label] <= value + 1e-9
            assert abs(float(got[label]) - value) <= 1e-8
            checked += 1
    assert checked >= 3


def test_head_without_hidden_layer_is_exact_on_any_box():
    head, _ = _head((5, 3))
    gen = torch.Generator().manual_seed(8)
    lo, hi = _random_boxes(4, 5, gen, max_radius=1.0)
    crown = crown_head_bounds(head, lo, hi)
    w, b = head.weights[0], head.biases[0]
    c, r = (lo + hi) / 2, (hi - lo) / 2
    torch.testing.assert_close(crown.out_lower, c @ w.T + b - r @ w.abs().T, rtol=0, atol=1e-9)
    torch.testing.assert_close(crown.out_upper, c @ w.T + b + r @ w.abs().T, rtol=0, atol=1e-9)
    assert crown.hidden_lower.shape == (4, 0)


# --- (d) certified radius --------------------------------------------------------------------------


@pytest.mark.parametrize("sizes", SHAPES, ids=SHAPE_IDS)
def test_certified_radius_is_sound(sizes):
    head, _ = _head(sizes)
    gen = torch.Generator().manual_seed(9)
    x, _, y, lower, upper = _unit_box_points(head, 6, gen)
    radius = certified_radius(head, x, y, lower, upper)
    assert radius.dtype == F64 and radius.shape == (6,)
    max_r = torch.maximum(x - lower, upper - x).amax(1)
    assert torch.all(radius >= 0) and torch.all(radius <= max_r)
    assert (radius > 0).sum() >= 4
    for i in range(6):
        blo, bhi = torch.maximum(x[i] - radius[i], lower), torch.minimum(x[i] + radius[i], upper)
        _, f = head.forward(_box_samples(blo, bhi, 2000, gen))
        assert torch.all(f.argmax(1) == y[i])
        m = _margins(f, y[i].expand(len(f)))
        m[:, y[i]] = float("inf")
        assert torch.all(m > 0)


def test_certified_radius_is_zero_when_mispredicted_and_not_far_from_the_empirical_radius():
    head = _trained_head()
    gen = torch.Generator().manual_seed(10)
    x = torch.rand(10, 4, generator=gen, dtype=F64)
    _, logits = head.forward(x)
    y = logits.argmax(1)
    lower, upper = torch.zeros(4, dtype=F64), torch.ones(4, dtype=F64)
    assert torch.all(certified_radius(head, x, (y + 1) % 3, lower, upper) == 0)
    r = certified_radius(head, x, y, lower, upper)
    assert torch.all(r > 0)
    # Sampling finds a label change within a modest factor of the certified radius.
    scales = torch.logspace(0, 2, 25, dtype=F64)
    flips = []
    for i in range(10):
        for scale in scales:
            rho = float(r[i] * scale)
            blo, bhi = torch.maximum(x[i] - rho, lower), torch.minimum(x[i] + rho, upper)
            _, f = head.forward(_box_samples(blo, bhi, 300, gen))
            if (f.argmax(1) != y[i]).any():
                flips.append(float(scale))
                break
    assert len(flips) >= 5
    assert min(flips) > 1.0 and sorted(flips)[len(flips) // 2] < 4.0, flips


def test_certified_radius_monotone_in_iterations_and_respects_max_radius():
    head, _ = _head((4, 8, 8, 3))
    gen = torch.Generator().manual_seed(11)
    x = torch.rand(8, 4, generator=gen, dtype=F64)
    y = head.forward(x)[1].argmax(1)
    lower, upper = torch.zeros(4, dtype=F64), torch.ones(4, dtype=F64)
    tol = 1e-6
    r10 = certified_radius(head, x, y, lower, upper, iterations=10, tol=tol)
    r30 = certified_radius(head, x, y, lower, upper, iterations=30, tol=tol)
    assert torch.all(r30 >= r10 - tol)
    assert (r30 > r10).any()
    capped = certified_radius(head, x, y, lower, upper, max_radius=0.25 * r30, iterations=10)
    assert torch.all(capped <= 0.25 * r30)
    assert torch.all(certified_radius(head, x, y, lower, upper, iterations=0) == 0)
    # tol stops early: with a coarse tolerance the bracket is no finer than needed
    coarse = certified_radius(head, x, y, lower, upper, iterations=30, tol=1e-2)
    assert torch.all(coarse <= r30 + 1e-12) and torch.all(r30 - coarse <= 1e-2 + 1e-12)


def test_certified_radius_of_a_linear_head_reaches_the_margin_distance():
    head, _ = _head((3, 2))
    x = torch.tensor([[0.5, 0.5, 0.5]], dtype=F64)
    y = head.forward(x)[1].argmax(1)
    lower, upper = torch.full((3,), -10.0, dtype=F64), torch.full((3,), 10.0, dtype=F64)
    r = certified_radius(head, x, y, lower, upper, iterations=40, tol=0.0)
    w = head.weights[0][y[0]] - head.weights[0][1 - y[0]]
    margin = float(head.forward(x)[1][0, y[0]] - head.forward(x)[1][0, 1 - y[0]])
    exact = margin / float(w.abs().sum())  # L∞ distance to the decision boundary
    assert r[0] <= exact and r[0] >= exact * (1 - 1e-6)


# --- (e) stable neurons ----------------------------------------------------------------------------


@pytest.mark.parametrize("sizes", [s for s in SHAPES if len(s) > 2], ids=[i for s, i in zip(SHAPES, SHAPE_IDS) if len(s) > 2])
def test_stable_neurons_keep_their_sign_on_the_certified_ball(sizes):
    head, _ = _head(sizes)
    gen = torch.Generator().manual_seed(12)
    x, z0, y, lower, upper = _unit_box_points(head, 5, gen)
    radius = certified_radius(head, x, y, lower, upper)
    active, inactive = stable_neurons(head, x, radius, lower, upper)
    assert active.shape == (5, head.num_hidden) and active.dtype == torch.bool
    assert not (active & inactive).any()
    assert torch.equal(active, active & (z0 > 0)) and torch.equal(inactive, inactive & (z0 < 0))
    blo, bhi = torch.maximum(x - radius[:, None], lower), torch.minimum(x + radius[:, None], upper)
    full = crown_head_bounds(head, blo, bhi)
    assert torch.equal(active, full.hidden_lower > 0) and torch.equal(inactive, full.hidden_upper < 0)
    for i in range(5):
        z, _ = head.forward(_box_samples(blo[i], bhi[i], 2000, gen))
        assert torch.all(z[:, active[i]] > 0) and torch.all(z[:, inactive[i]] < 0)
    # a point ball: every neuron with a non-zero pre-activation is stable, with its own sign
    a0, i0 = stable_neurons(head, x, 0.0, lower, upper)
    assert torch.equal(a0, z0 > 0) and torch.equal(i0, z0 < 0)
    # a larger ball: still no sign contradicting the point's own
    a2, i2 = stable_neurons(head, x, 2 * radius + 0.05, lower, upper)
    assert torch.equal(a2, a2 & (z0 > 0)) and torch.equal(i2, i2 & (z0 < 0))


# --- (f) batching ----------------------------------------------------------------------------------


@pytest.mark.parametrize("sizes", SHAPES, ids=SHAPE_IDS)
def test_batched_results_equal_per_point_results(sizes):
    head, _ = _head(sizes)
    gen = torch.Generator().manual_seed(13)
    d, c = sizes[0], sizes[-1]
    lo, hi = _random_boxes(5, d, gen, max_radius=0.2)
    labels = torch.randint(0, c, (5,), generator=gen)
    batch = crown_head_bounds(head, lo, hi)
    margins = margin_lower_bounds(head, lo, hi, labels)
    x, _, y, lower, upper = _unit_box_points(head, 5, gen)
    radius = certified_radius(head, x, y, lower, upper)
    active, inactive = stable_neurons(head, x, radius, lower, upper)
    for i in range(5):
        one = crown_head_bounds(head, lo[i:i + 1], hi[i:i + 1])
        for a, b in zip((batch.hidden_lower, batch.hidden_upper, batch.out_lower, batch.out_upper),
                        (one.hidden_lower, one.hidden_upper, one.out_lower, one.out_upper)):
            torch.testing.assert_close(a[i:i + 1], b, rtol=0, atol=1e-12)
        torch.testing.assert_close(margins[i:i + 1], margin_lower_bounds(head, lo[i:i + 1], hi[i:i + 1], labels[i:i + 1]),
                                   rtol=0, atol=1e-12)
        r_one = certified_radius(head, x[i:i + 1], y[i:i + 1], lower, upper)
        torch.testing.assert_close(radius[i:i + 1], r_one, rtol=0, atol=1e-12)
        a_one, i_one = stable_neurons(head, x[i:i + 1], radius[i:i + 1], lower, upper)
        assert torch.equal(active[i:i + 1], a_one) and torch.equal(inactive[i:i + 1], i_one)


def test_broadcast_forms_of_boxes_and_spec():
    head, _ = _head((4, 8, 8, 3))
    lo, hi = torch.zeros(4, dtype=F64), torch.full((4,), 0.1, dtype=F64)
    one = crown_head_bounds(head, lo, hi)
    assert one.out_lower.shape == (1, 3)
    spec = torch.tensor([[1.0, -1.0, 0.0]], dtype=F64)
    with_spec = crown_head_bounds(head, lo.expand(2, 4), hi.expand(2, 4), spec=spec)
    explicit = crown_head_bounds(head, lo.expand(2, 4), hi.expand(2, 4), spec=spec.expand(2, 1, 3))
    assert with_spec.out_lower.shape == (2, 1)
    assert torch.equal(with_spec.out_lower, explicit.out_lower) and torch.equal(with_spec.out_upper, explicit.out_upper)
    eye = crown_head_bounds(head, lo, hi, spec=torch.eye(3, dtype=F64))
    assert torch.equal(eye.out_lower, one.out_lower) and torch.equal(eye.out_upper, one.out_upper)


# --- validation ------------------------------------------------------------------------------------


def test_invalid_inputs_are_refused():
    head, _ = _head((4, 8, 8, 3))
    lo, hi = torch.zeros(2, 4, dtype=F64), torch.ones(2, 4, dtype=F64)
    with pytest.raises(InputValidationError):
        crown_head_bounds(head, hi, lo)  # inverted box
    with pytest.raises(InputValidationError):
        crown_head_bounds(head, lo[:, :3], hi[:, :3])  # wrong dimension
    with pytest.raises(InputValidationError):
        crown_head_bounds(head, lo, hi, spec=torch.ones(2, 2, 5))
    with pytest.raises(InputValidationError):
        margin_lower_bounds(head, lo, hi, torch.tensor([0, 3]))
    x = torch.full((2, 4), 0.5, dtype=F64)
    with pytest.raises(InputValidationError):
        certified_radius(head, x + 1.0, torch.tensor([0, 1]), lo[0], hi[0])  # outside the domain
    with pytest.raises(InputValidationError):
        certified_radius(head, x, torch.tensor([0, 1]), lo[0], hi[0], max_radius=-1.0)
    with pytest.raises(InputValidationError):
        stable_neurons(head, x, -0.1, lo[0], hi[0])


# --- optional cross-check with an independent package ----------------------------------------------


def test_agrees_with_the_bound_propagation_package():
    """Cross-check with ``bound-propagation`` (GPL; not a dependency): same adaptive CROWN."""
    bp = pytest.importorskip(
        "bound_propagation", reason="optional cross-check: the GPL package bound-propagation is not installed"
    )
    head, split = _head((5, 8, 8, 3), seed=3)
    layers = []
    for lin in split.linears:
        layers += [nn.Linear(lin.in_features, lin.out_features).double(), nn.ReLU()]
        layers[-2].load_state_dict({k: v.double() for k, v in lin.state_dict().items()})
    net = bp.BoundModelFactory().build(nn.Sequential(*layers[:-1]))
    gen = torch.Generator().manual_seed(14)
    lo, hi = _random_boxes(4, 5, gen, max_radius=0.2)
    theirs = net.crown(bp.HyperRectangle(lo, hi)).concretize()
    ours = crown_head_bounds(head, lo, hi)
    for i in range(4):
        _, f = head.forward(_box_samples(lo[i], hi[i], 1000, gen))
        assert torch.all(f >= theirs.lower[i] - 1e-9) and torch.all(f <= theirs.upper[i] + 1e-9)
    # Same relaxation; ours also intersects with IBP, so it is at least as tight on average.
    ours_w = (ours.out_upper - ours.out_lower).mean()
    theirs_w = (theirs.upper - theirs.lower).to(F64).mean()
    assert ours_w <= theirs_w * 1.01 + 1e-9


def test_certified_radius_resolves_radii_far_below_the_box_width():
    """The search falls by factors of 8 before bisecting, so 8 steps find a radius 1,000× smaller than the
    box (plain halving of [0, max] would return 0 after 8 steps below max/256)."""
    head, _ = _head((3, 2))
    x = torch.tensor([[0.5, 0.5, 0.5]], dtype=F64)
    y = head.forward(x)[1].argmax(1)
    margin = float(head.forward(x)[1][0, y[0]] - head.forward(x)[1][0, 1 - y[0]])
    w = head.weights[0][y[0]] - head.weights[0][1 - y[0]]
    exact = margin / float(w.abs().sum())
    wide = 1000 * exact
    lower, upper = torch.full((3,), 0.5 - wide, dtype=F64), torch.full((3,), 0.5 + wide, dtype=F64)
    r = certified_radius(head, x, y, lower, upper, iterations=8)
    assert 0.8 * exact <= r[0] <= exact


def test_warm_started_float32_search_returns_float64_proven_radii_close_to_the_plain_search():
    """A guess (good or off by 10×), a relative stop and a float32 search change how the radius is found,
    not what is promised: every radius returned is proven by a fresh float64 CROWN call, and it lies
    within the stopping precision of the plain float64 search."""
    head = _trained_head()
    gen = torch.Generator().manual_seed(12)
    x = torch.rand(24, 4, generator=gen, dtype=F64)
    y = head.forward(x)[1].argmax(1)
    lower, upper = torch.zeros(4, dtype=F64), torch.ones(4, dtype=F64)
    plain = certified_radius(head, x, y, lower, upper, iterations=40, tol=0.0)
    assert torch.all(plain > 0)
    guess = float(plain.median())
    for start in (guess, 10 * guess, 0.1 * guess):
        for dtype in (F64, torch.float32):
            r = certified_radius(head, x, y, lower, upper, iterations=30, tol=0.0, rtol=0.05, start=start,
                                 search_dtype=dtype)
            assert r.dtype == F64
            blo, bhi = torch.maximum(x - r.unsqueeze(1), lower), torch.minimum(x + r.unsqueeze(1), upper)
            assert torch.all(margin_lower_bounds(head, blo, bhi, y) > 0)  # proven in float64
            # within the bracket's precision of the fine search (CROWN is not strictly monotone in ρ)
            assert torch.all(r <= plain * 1.05 + 1e-12) and torch.all(r >= plain / 1.05 / 1.05), (start, dtype)


def test_float32_search_falls_back_to_float64_where_rounding_overshoots(monkeypatch):
    """Radii the float32 search finds but float64 CROWN cannot prove are searched again in float64."""
    import prune_unlearn.core.radius as B

    head = _trained_head()
    gen = torch.Generator().manual_seed(13)
    x = torch.rand(6, 4, generator=gen, dtype=F64)
    y = head.forward(x)[1].argmax(1)
    lower, upper = torch.zeros(4, dtype=F64), torch.ones(4, dtype=F64)
    plain = certified_radius(head, x, y, lower, upper, iterations=30, tol=0.0)
    real = B.margin_lower

    def optimistic(h, lo, hi, labels, **kw):  # a float32 "proof" of everything: a lying search
        out, hidden = real(h, lo, hi, labels, **kw)
        return (out.abs() + 1 if h.dtype == torch.float32 else out), hidden

    redone = []

    def spy(h, xs, *args, **kw):  # the module calls itself through its global name for the redo
        redone.append(len(xs))
        return certified_radius(h, xs, *args, **kw)

    monkeypatch.setattr(B, "margin_lower", optimistic)
    monkeypatch.setattr(B, "certified_radius", spy)
    r = certified_radius(head, x, y, lower, upper, iterations=30, tol=0.0, rtol=0.01, search_dtype=torch.float32)
    monkeypatch.undo()
    # one redo, for the points whose lie-found radius float64 CROWN does not prove (some it does: there the
    # whole box is certified)
    assert len(redone) == 1 and redone[0] >= 1
    blo, bhi = torch.maximum(x - r.unsqueeze(1), lower), torch.minimum(x + r.unsqueeze(1), upper)
    assert torch.all(margin_lower_bounds(head, blo, bhi, y) > 0)
    assert torch.all(r > 0) and torch.all(r <= plain * 1.01 + 1e-12)


def test_certified_radius_refuses_bad_search_settings():
    head, _ = _head((4, 8, 3))
    x = torch.full((2, 4), 0.5, dtype=F64)
    y = head.forward(x)[1].argmax(1)
    lo, hi = torch.zeros(4, dtype=F64), torch.ones(4, dtype=F64)
    with pytest.raises(InputValidationError, match="start"):
        certified_radius(head, x, y, lo, hi, start=0.0)
    with pytest.raises(InputValidationError, match="rtol"):
        certified_radius(head, x, y, lo, hi, rtol=-0.1)
    with pytest.raises(InputValidationError, match="search_dtype"):
        certified_radius(head, x, y, lo, hi, search_dtype=torch.float16)
    with pytest.raises(InputValidationError, match="intermediate"):
        certified_radius(head, x, y, lo, hi, intermediate="lp")


@pytest.mark.parametrize("sizes", SHAPES[:2] + SHAPES[3:], ids=SHAPE_IDS[:2] + SHAPE_IDS[3:])
def test_stable_neurons_crown_contains_ibp_and_ibp_mode_is_the_interval_bounds(sizes):
    head, _ = _head(sizes)
    gen = torch.Generator().manual_seed(14)
    x, _, _, lower, upper = _unit_box_points(head, 5, gen)
    r = torch.full((5,), 0.05, dtype=F64)
    ca, ci = stable_neurons(head, x, r, lower, upper, intermediate="crown")
    ia, ii = stable_neurons(head, x, r, lower, upper, intermediate="ibp")
    assert torch.all(ca >= ia) and torch.all(ci >= ii)  # CROWN proves at least what IBP proves
    hidden, _ = ibp_head_bounds(head, (x - r.unsqueeze(1)).clamp(min=lower), (x + r.unsqueeze(1)).clamp(max=upper))
    assert torch.equal(ia, torch.cat([h[0] for h in hidden], dim=1) > 0)
    assert torch.equal(ii, torch.cat([h[1] for h in hidden], dim=1) < 0)
