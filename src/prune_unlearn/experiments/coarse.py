"""A test network with coarse linear regions: FC(256×256) whose hidden layers are mostly dead ReLUs (issue 11).

Public pretrained MLPs often have many neurons that never fire; their linear regions are then coarse, and a
region-only patch changes the predictions of every input that shares a forgotten point's region. This builds
such a network on purpose: a small ``alive × alive`` Linear/ReLU core is trained with the data set's recipe and
embedded in a 784-256-256-10 shell whose other hidden neurons are dead everywhere on the domain (zero weights,
bias −1, zero outgoing weights). The function, and hence the partition into linear regions, is the core's.
"""

from __future__ import annotations

import torch

from ..core.models import mlp
from .training import train_model

__all__ = ["coarse_mlp", "distinct_patterns"]


def coarse_mlp(X, y, num_classes: int, recipe, *, hidden: int = 256, alive: int = 24, seed: int = 0):
    """A ``d-hidden-hidden-C`` ReLU MLP whose hidden layers hold only ``alive`` live neurons each.

    Returns ``(model, seconds)``; the model is in eval mode.
    """
    torch.manual_seed(seed)
    core = mlp(X.reshape(len(X), -1).shape[1], [alive, alive], num_classes)
    trained = train_model(core, X, y, recipe)
    core = trained.model.eval()
    d = X.reshape(len(X), -1).shape[1]
    shell = mlp(d, [hidden, hidden], num_classes).eval()
    src = [m for m in core.modules() if isinstance(m, torch.nn.Linear)]
    dst = [m for m in shell.modules() if isinstance(m, torch.nn.Linear)]
    gen = torch.Generator().manual_seed(seed)
    live = [torch.randperm(hidden, generator=gen)[:alive] for _ in range(2)]
    with torch.no_grad():
        for layer in dst:
            layer.weight.zero_()
            layer.bias.zero_()
        dst[0].bias.fill_(-1.0)
        dst[1].bias.fill_(-1.0)
        dst[0].weight[live[0]] = src[0].weight
        dst[0].bias[live[0]] = src[0].bias
        dst[1].weight[live[1][:, None], live[0][None, :]] = src[1].weight
        dst[1].bias[live[1]] = src[1].bias
        dst[2].weight[:, live[1]] = src[2].weight
        dst[2].bias.copy_(src[2].bias)
    return shell, trained.seconds


@torch.no_grad()
def distinct_patterns(model, X) -> int:
    """Number of distinct activation patterns (linear regions) among the inputs ``X``."""
    from ..core.regions import pattern_words
    from ..core.split import split_model

    split = split_model(model, None)
    words = []
    for i in range(0, len(X), 4096):
        z, _ = split.head_forward(split.features(X[i:i + 4096]))
        words.append(pattern_words(torch.cat(z, dim=1) > 0))
    return int(torch.unique(torch.cat(words), dim=0).shape[0])
