"""Split a classifier into ``M = M_p ⊕ M_c``: any prefix module, then a head of Linear and ReLU layers.

Patches live in the input space of the head ``M_c`` ("feature space"). The split never copies
weights: the prefix and the head reuse the model's own modules, so the base forward and the
patched forward run the very same float32 operations.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import UnsupportedModelError

# Layers allowed inside the head besides Linear/ReLU: identities at inference time.
_TRANSPARENT = (nn.Dropout, nn.Identity)


@dataclass
class ModelSplit:
    """``prefix`` maps raw inputs to head features; ``linears`` are the head's Linear layers in order."""

    prefix: nn.Module
    linears: list[nn.Linear]
    head_name: str | None

    @property
    def feature_dim(self) -> int:
        return self.linears[0].in_features

    @property
    def num_classes(self) -> int:
        return self.linears[-1].out_features

    @property
    def hidden_sizes(self) -> list[int]:
        return [lin.out_features for lin in self.linears[:-1]]

    def head_forward(self, h: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Run the head on features ``h``; return its hidden pre-activations and the logits."""
        preacts = []
        for lin in self.linears[:-1]:
            z = lin(h)
            preacts.append(z)
            h = torch.relu(z)
        return preacts, self.linears[-1](h)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """``M_p(x)``: the head's input, one row per point."""
        h = self.prefix(x)
        if h.dim() != 2:
            raise UnsupportedModelError(
                f"The prefix before the head outputs shape {tuple(h.shape)}; the head needs (n, features). "
                "HINT: end the prefix with nn.Flatten()."
            )
        return h


def _head_layers(layers: list[tuple[str, nn.Module]], where: str) -> list[nn.Linear]:
    """Check that ``layers`` form Linear (ReLU Linear)*; report every problem at once."""
    problems = []
    seq = []
    for name, layer in layers:
        if isinstance(layer, _TRANSPARENT):
            continue
        if isinstance(layer, (nn.Linear, nn.ReLU)):
            seq.append((name, layer))
        else:
            problems.append(
                f"Layer `{name}` is {type(layer).__name__}; the patched head may contain only Linear and ReLU "
                f"(Dropout/Identity are skipped)."
            )
    if not problems:
        if not seq or not isinstance(seq[0][1], nn.Linear) or not isinstance(seq[-1][1], nn.Linear):
            problems.append(f"The head {where} must start and end with a Linear layer.")
        for (n1, a), (n2, b) in zip(seq, seq[1:]):
            if isinstance(a, nn.Linear) == isinstance(b, nn.Linear):
                problems.append(f"Layers `{n1}` and `{n2}` must alternate between Linear and ReLU.")
    if problems:
        raise UnsupportedModelError(" ".join(problems) + " HINT: pass head='<name>' naming the submodule "
                                    "(or Sequential index) where the Linear/ReLU head begins.")
    linears = [layer for _, layer in seq if isinstance(layer, nn.Linear)]
    return linears


def _shallow_replace(model: nn.Module, dotted: str, new: nn.Module) -> nn.Module:
    """A shallow copy of ``model`` whose submodule ``dotted`` is ``new``; ``model`` itself is untouched."""
    parts = dotted.split(".")
    root = copy.copy(model)
    root._modules = dict(model._modules)
    node = root
    for part in parts[:-1]:
        child = copy.copy(node._modules[part])
        child._modules = dict(child._modules)
        node._modules[part] = child
        node = child
    node._modules[parts[-1]] = new
    return root


def split_model(model: nn.Module, head: str | None = None) -> ModelSplit:
    """Split ``model`` into prefix ``M_p`` and Linear/ReLU head ``M_c``.

    Parameters
    ----------
    model : nn.Module
        The trained classifier. Must be in eval mode when used.
    head : str, optional
        Dotted name of the head submodule, or for an ``nn.Sequential`` the index where the head begins
        (``"3"``). By default an ``nn.Sequential`` is split at the longest trailing run of Linear/ReLU
        layers.
    """
    if not isinstance(model, nn.Module):
        raise UnsupportedModelError(f"Expected a torch.nn.Module, got {type(model).__name__}.")
    if head is None:
        head = (getattr(model, "prune_architecture", None) or {}).get("head")  # recorded by models.vgg16
    if head is None:
        if not isinstance(model, nn.Sequential):
            raise UnsupportedModelError(
                f"Cannot find the Linear/ReLU head of a {type(model).__name__} automatically. HINT: pass "
                "head='<name of the submodule that maps features to logits>', e.g. head='classifier'."
            )
        items = list(model.named_children())
        start = len(items)
        while start > 0 and isinstance(items[start - 1][1], (nn.Linear, nn.ReLU) + _TRANSPARENT):
            start -= 1
        while start < len(items) and not isinstance(items[start][1], nn.Linear):
            start += 1  # the head begins at a Linear layer
        if start >= len(items):
            raise UnsupportedModelError(
                "The model does not end with a Linear layer, so it has no Linear/ReLU head to patch."
            )
        linears = _head_layers(items[start:], "of the Sequential model")
        prefix = nn.Sequential(*[m for _, m in items[:start]]) if start else nn.Identity()
        return ModelSplit(prefix=prefix, linears=linears, head_name=str(start))
    if not isinstance(head, str) or not head:
        raise UnsupportedModelError(f"The 'head' parameter must be a submodule name such as 'classifier'. Got {head!r}.")
    if isinstance(model, nn.Sequential) and head.isdigit():
        items = list(model.named_children())
        start = int(head)
        if start >= len(items):
            raise UnsupportedModelError(f"head={head!r} is past the end of a Sequential with {len(items)} layers.")
        linears = _head_layers(items[start:], f"starting at layer {head}")
        prefix = nn.Sequential(*[m for _, m in items[:start]]) if start else nn.Identity()
        return ModelSplit(prefix=prefix, linears=linears, head_name=head)
    try:
        sub = model.get_submodule(head)
    except AttributeError:
        names = [n for n, _ in model.named_modules() if n][:12]
        raise UnsupportedModelError(
            f"The model has no submodule named {head!r}. Submodules include: {', '.join(names)}."
        ) from None
    layers = list(sub.named_children()) if isinstance(sub, nn.Sequential) else [(head, sub)]
    layers = [(f"{head}.{n}" if isinstance(sub, nn.Sequential) else n, m) for n, m in layers]
    linears = _head_layers(layers, f"`{head}`")
    prefix = _shallow_replace(model, head, nn.Identity())
    return ModelSplit(prefix=prefix, linears=linears, head_name=head)


@torch.no_grad()
def verify_split(model: nn.Module, split: ModelSplit, x: torch.Tensor) -> None:
    """Refuse a split whose ``head(prefix(x))`` is not bit-identical to ``model(x)``."""
    if model.training:
        raise UnsupportedModelError("The model is in training mode. HINT: call model.eval() first.")
    expected = model(x)
    _, got = split.head_forward(split.features(x))
    if expected.shape != got.shape or not torch.equal(expected, got):
        raise UnsupportedModelError(
            "The model's output is not exactly head(prefix(x)): its forward does more after the head "
            "(e.g. a softmax or scaling), or the head name is wrong. HINT: name the last submodule that "
            "produces the logits with head='...'."
        )
