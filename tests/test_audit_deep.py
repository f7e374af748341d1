"""The audit on heads nobody here trained for it: 2, 4 and 6 hidden layers with constant neurons.

Constant neurons (a zero weight row: dead, or always active with a tiny bias) have an all-zero row in
the region map, so the old probe step divided by zero and the audit false-failed on honest
certificates. Every honest certificate must pass; one changed weight, one edited margin, one removed
patch and one false claim (with every hash recomputed) must each fail.
"""

import copy
import dataclasses
from fractions import Fraction

import numpy as np
import pytest
import torch
from torch import nn

from prune_unlearn import forget
from prune_unlearn.verify.audit import audit
from prune_unlearn.verify.exact import dyadic
from prune_unlearn.verify.probes import boundary_probes


def deep_head(depth: int, width: int = 12, d: int = 10, classes: int = 4, seed: int = 0) -> nn.Sequential:
    """Random ReLU MLP with ``depth`` hidden layers; in every hidden layer one dead neuron, one constant
    active neuron with a tiny bias (the smallest slack of every input: the old probe's trap), and in
    layer 2 on a neuron fed only by the dead one (constant because what feeds it is switched off)."""
    torch.manual_seed(seed)
    layers: list[nn.Module] = [nn.Flatten()]
    sizes = [d] + [width] * depth + [classes]
    for i, (a, b) in enumerate(zip(sizes, sizes[1:])):
        lin = nn.Linear(a, b)
        with torch.no_grad():
            lin.weight.mul_(2.0)
            if i < depth:
                lin.weight[0].zero_()
                lin.bias[0] = -1.0          # dead everywhere
                lin.weight[1].zero_()
                lin.bias[1] = 1e-4          # always active, tiny slack
                if i == 1:
                    lin.weight[2].zero_()
                    lin.weight[2, 0] = 3.0  # fed only by the dead neuron of layer 1
        layers.append(lin)
        if i < depth:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers).eval()


@pytest.fixture(scope="module", params=[2, 4, 6])
def deep(request, one_thread):
    model = deep_head(request.param)
    x = torch.rand(16, 10, generator=torch.Generator().manual_seed(request.param))
    y = model(x).argmax(1)
    return request.param, model, x, y


def _failed(result, name):
    return [c for c in result.failures if c.name == name]


@pytest.mark.parametrize("bound", ["box", "dual", "lp"])
def test_honest_certificates_pass(deep, bound):
    depth, model, x, y = deep
    res = forget(model, x, labels=y, bound=bound, seed=depth, radius=None)
    assert res.report.n_certified_region > 0
    result = audit(res.model, res.certificate, points=x, labels=y, exhaustive=True, locality_samples=500)
    assert result.passed, result.summary()
    probes = next(c for c in result.checks if c.subject.endswith("boundary probes"))
    assert int(probes.subject.split()[0]) > 0 and "constant neuron" in probes.detail
    assert result.counts()["bounds"] == (len({c["region"] for c in res.certificate.claims
                                              if c["proved"] == "region"}), 0)


def test_probes_are_finite_and_cross_despite_constant_neurons(deep):
    depth, model, x, _ = deep
    from prune_unlearn.core.split import split_model

    split = split_model(model)
    ws = [lin.weight.detach().double().numpy() for lin in split.linears]
    bs = [lin.bias.detach().double().numpy() for lin in split.linears]

    def head32(h):
        pre, _ = split.head_forward(torch.as_tensor(h))
        return torch.cat(pre, dim=1).detach().numpy()

    probes = boundary_probes(ws, bs, x.double().numpy(), head32)
    assert probes.constant_skipped >= len(x)  # the tiny-bias neuron is every point's smallest slack
    assert len(probes.inputs) == len(x) and probes.non_finite == 0 and probes.not_crossing == 0
    assert np.isfinite(probes.inputs).all()
    own = head32(x.numpy()) > 0
    after = head32(probes.inputs) > 0
    assert ((own[probes.origin] != after).any(axis=1)).all()
    # just across: the crossed neuron flipped, and the probe is close to its point
    assert (own[probes.origin, probes.neuron] != after[np.arange(len(after)), probes.neuron]).all()


def test_every_tampering_is_caught(deep):
    depth, model, x, y = deep
    res = forget(model, x, labels=y, bound="dual", seed=depth, radius=None)
    patched, cert = res.model, res.certificate
    r = next(c["region"] for c in cert.claims if c["proved"] == "region")

    m1 = copy.deepcopy(patched)  # one changed weight
    with torch.no_grad():
        m1.base[-1].weight[0, 3] += 1e-3
    assert any("weights hash" in c.detail for c in audit(m1, cert, points=x, labels=y).failures)

    regions = copy.deepcopy(cert.regions)  # one edited margin
    regions[r]["margin"] *= 1000
    claims = [dict(c, margin=regions[r]["margin"]) if c["region"] == r else c for c in cert.claims]
    assert _failed(audit(patched, dataclasses.replace(cert, regions=regions, claims=claims), points=x, labels=y),
                   "bounds")

    keep = torch.ones(len(patched.patches), dtype=torch.bool)  # one removed patch
    keep[r] = False
    m3 = patched.select_point_rows(keep).eval()
    assert any("patch-set hash" in c.detail for c in audit(m3, cert, points=x, labels=y).failures)

    m4 = copy.deepcopy(patched)  # one false claim: a smaller patch, every hash recomputed
    with torch.no_grad():
        m4.patches.values[r] *= 0.01
    regions = copy.deepcopy(cert.regions)
    regions[r]["H"] = float(m4.patches.values[r].abs().max())
    c4 = dataclasses.replace(cert, regions=regions, patches_sha256=m4.patches_sha256())
    r4 = audit(m4, c4, lp_samples=len(cert.regions))
    assert any(c.subject == f"region {r}" for c in _failed(r4, "bounds")), r4.summary()
    assert not _failed(r4, "hashes")


def test_exact_check_has_no_rounding_slack(deep):
    """A margin one float64 step above the exact re-derived one fails; the float just below passes."""
    depth, model, x, y = deep
    res = forget(model, x, labels=y, bound="dual", seed=depth, radius=None)
    cert = res.certificate
    r = next(c["region"] for c in cert.claims if c["proved"] == "region")
    # Find the exact margin by bisection on the claimed value: the audit's verdict flips at it.
    base = audit(res.model, cert)
    assert base.passed

    def with_margin(m):
        regions = copy.deepcopy(cert.regions)
        regions[r]["margin"] = m
        claims = [dict(c, margin=min(c["margin"], m)) if c["region"] == r else c for c in cert.claims]
        return dataclasses.replace(cert, regions=regions, claims=claims)

    from prune_unlearn.verify.exact import ExactHead, exact_leads
    from prune_unlearn.core.split import split_model

    split = split_model(res.model.base)
    ps = res.model.patches
    ws = [lin.weight.detach().numpy() for lin in split.linears]
    bs = [lin.bias.detach().numpy() for lin in split.linears]
    mask = ps.masks()[r: r + 1].numpy()
    lead = min(v for v in exact_leads(ExactHead(ws, bs), mask, np.where(mask, 1, -1),
                                      cert.multipliers[r: r + 1].numpy(), ps.region_threshold[r: r + 1].numpy(),
                                      ps.targets[r: r + 1].numpy(), ps.values[r: r + 1].numpy(), None,
                                      np.zeros(10), np.ones(10))[0] if v is not None)
    below = float(lead)
    if Fraction(below) > lead:
        below = float(np.nextafter(below, -np.inf))
    above = float(np.nextafter(below, np.inf))
    assert Fraction(below) <= lead < Fraction(above)
    assert not [c for c in audit(res.model, with_margin(below)).failures if c.name == "bounds"]
    failed = [c for c in audit(res.model, with_margin(above)).failures if c.name == "bounds"]
    assert [c.subject for c in failed] == [f"region {r}"]


def test_dyadic_is_exact():
    rng = np.random.default_rng(0)
    vals = np.concatenate([rng.standard_normal(50) * 10.0 ** rng.integers(-30, 30, 50), [0.0, -0.0, 5e-324, -1.5,
                                                                                          np.float32(1e-40)]])
    d = dyadic(vals)
    assert [Fraction(v) for v in vals] == list(d.fractions())
    with pytest.raises(ValueError):
        dyadic([1.0, float("nan")])


def test_support_formula_equals_the_dense_formula_bit_for_bit(deep):
    """The audit's screened formula gives the literal B × R × N formula's values exactly, including the gate
    band (fractional supports), zero and NaN pre-activations, and a region with a non-positive λ."""
    from prune_unlearn.verify.probes import support_formula

    depth, model, x, y = deep
    res = forget(model, x, labels=y, bound="dual", seed=depth, radius=None)
    ps = res.model.patches
    gen = torch.Generator().manual_seed(depth)
    h = torch.cat([x, torch.rand(300, x.shape[1], generator=gen)])
    with torch.no_grad():
        pre, _ = res.model.split.head_forward(h)
    z = torch.cat(pre, dim=1)
    own = z[: len(x)]
    lam = ps.gate_lambda[ps.match(own > 0).clamp(min=0)].unsqueeze(1)
    band = own.clone()  # the last slack at half the gate width 1/λ: fractional supports
    band[:, -1] = torch.sign(own[:, -1]) * 0.5 / lam[:, 0]
    zero = own.clone()
    zero[:, -1] = 0.0
    nan = own[:2].clone()
    nan[0, 0] = float("nan")
    z = torch.cat([z, band, zero, nan])
    ps.gate_lambda[0] = 0.0  # a region with λ = 0: its column is evaluated literally
    dense = ps.support_dense(z)
    got = support_formula(ps, z, chunk=37)
    assert torch.equal(torch.isnan(got), torch.isnan(dense))
    assert torch.equal(torch.nan_to_num(got, nan=-1.0), torch.nan_to_num(dense, nan=-1.0))
    assert (dense == 1).any() and ((dense > 0) & (dense < 1)).any()
