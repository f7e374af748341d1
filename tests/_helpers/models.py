"""Tiny seeded models and an independent (autograd + scipy) reference for region facts."""

from __future__ import annotations

import torch
from torch import nn


def tiny_mlp(sizes=(4, 8, 8, 3), seed=0) -> nn.Sequential:
    """Random ReLU MLP ``sizes[0] → … → sizes[-1]`` with a leading Flatten, in eval mode."""
    torch.manual_seed(seed)
    layers: list[nn.Module] = [nn.Flatten()]
    for i, (a, b) in enumerate(zip(sizes, sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers).eval()


class TinyConvNet(nn.Module):
    """A small conv prefix and a Linear/ReLU classifier head, like VGG's split (``head='classifier'``)."""

    def __init__(self, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.features = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.classifier = nn.Sequential(nn.Linear(4 * 4 * 4, 16), nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, 3))

    def forward(self, x):
        return self.classifier(torch.flatten(self.features(x), 1))


def region_problem(sizes=(4, 8, 8, 3), n=12, seed=0):
    """A tiny MLP, ``n`` random points in [0, 1]^d and what a region bound needs: the split, the head, the points'
    regions, a target per point (the label after the prediction), θ = half the points' smallest slack, and the
    unit box. Returns ``(model, split, head, h, regions, targets, theta, lo, hi)``."""
    from prune_unlearn.core.regions import HeadNetwork, point_regions
    from prune_unlearn.core.split import split_model

    model = tiny_mlp(sizes, seed=seed)
    split = split_model(model)
    head = HeadNetwork.from_split(split)
    h = torch.rand(n, sizes[0], generator=torch.Generator().manual_seed(seed))
    pr = point_regions(head, split, h)
    targets = (pr.logits.argmax(1) + 1) % sizes[-1]
    lo = torch.zeros(sizes[0], dtype=torch.float64)
    hi = torch.ones(sizes[0], dtype=torch.float64)
    return model, split, head, h, pr, targets, pr.min_slack / 2, lo, hi


def jacobian_rows(model_fn, h0: torch.Tensor) -> torch.Tensor:
    return torch.autograd.functional.jacobian(model_fn, h0.to(torch.float64))


def reference_region(linears, h0: torch.Tensor):
    """Pre-activations' affine forms at ``h0`` by autograd (independent of masked products).

    Returns ``A`` (N, d), ``c`` (N,), ``W`` (C, d), ``w`` (C,), ``signs`` (N,).
    """
    ws = [lin.weight.detach().double() for lin in linears]
    bs = [lin.bias.detach().double() for lin in linears]

    def hidden(h):
        zs, a = [], h
        for w, b in zip(ws[:-1], bs[:-1]):
            z = a @ w.T + b
            zs.append(z)
            a = torch.relu(z)
        return torch.cat(zs) if zs else h.new_zeros(0)

    def logits(h):
        a = h
        for w, b in zip(ws[:-1], bs[:-1]):
            a = torch.relu(a @ w.T + b)
        return a @ ws[-1].T + bs[-1]

    h0 = h0.double()
    if len(ws) == 1:  # no hidden layer: the region is the whole space
        A = torch.zeros(0, h0.numel(), dtype=torch.float64)
    else:
        A = jacobian_rows(hidden, h0)
    c = hidden(h0) - A @ h0
    W = jacobian_rows(logits, h0)
    w = logits(h0) - W @ h0
    return A, c, W, w, torch.sign(hidden(h0))


def lp_min_margin(A, c, signs, threshold, W, w, values, target, label, lower, upper):
    """Exact ``min (f_t + d_t) − (f_l + d_l)`` over ``{lower ≤ h ≤ upper, s_i z_i(h) ≥ θ}`` with scipy.

    Returns ``(value, argmin)`` or ``(None, None)`` if the region is empty.
    """
    from scipy.optimize import linprog

    obj = (W[target] - W[label]).numpy()
    const = float(w[target] - w[label] + values[target] - values[label])
    A_ub = -(signs.unsqueeze(1) * A).numpy()        # −s_i a_i·h ≤ s_i c_i − θ
    b_ub = (signs * c).numpy() - threshold
    res = linprog(obj, A_ub=A_ub if len(b_ub) else None, b_ub=b_ub if len(b_ub) else None,
                  bounds=list(zip(lower.tolist(), upper.tolist())), method="highs")
    if res.status == 2:
        return None, None
    assert res.status == 0, res.message
    return res.fun + const, torch.tensor(res.x)
