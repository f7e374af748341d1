"""A Purchase-like data set and the authors' PurchaseModel (600-256-20), built here.

Purchase-20 is not on this machine. Its features are 600 binary "bought / not bought" flags and its
20 classes are clusters of shoppers, so this draws 20 class prototypes of purchase probabilities
(sparse, Beta-distributed) and samples binary vectors from them; the model is FC(256) as in the
paper's Table II, trained with SGD. Seeded: the same call gives the same data and model.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


def purchase_like(n: int = 20_000, features: int = 600, classes: int = 20, seed: int = 0):
    """``(X float32 (n, 600) in {0, 1}, y int64 (n,))``."""
    rng = np.random.default_rng(seed)
    base = rng.beta(0.3, 3.0, size=features)                      # most items are rarely bought
    protos = np.clip(base * rng.lognormal(0.0, 1.0, size=(classes, features)), 0, 0.9)
    y = rng.integers(0, classes, size=n)
    X = (rng.random((n, features)) < protos[y]).astype(np.float32)
    return torch.from_numpy(X), torch.from_numpy(y.astype(np.int64))


def purchase_model(X, y, *, epochs: int = 10, seed: int = 0) -> nn.Module:
    """FC(256) on ``(X, y)``: Flatten, Linear(600, 256), ReLU, Linear(256, 20); SGD, eval mode."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(X.shape[1], 256), nn.ReLU(), nn.Linear(256, int(y.max()) + 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for idx in torch.randperm(len(X), generator=gen).split(128):
            opt.zero_grad()
            nn.functional.cross_entropy(model(X[idx]), y[idx]).backward()
            opt.step()
    return model.eval()
