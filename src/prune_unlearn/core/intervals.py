"""Interval bounds through the prefix ``M_p``: the domain box in feature space.

A feature-space region certificate is sound for the original inputs as long as the feature box
contains the image of the input box; interval arithmetic guarantees that. Monotone layers
(ReLU, max-pooling) map bounds elementwise; affine layers (Linear, Conv, average pooling, eval-mode
batch norm) map a centre/radius pair as ``(f(c), |A| r)``.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from ..errors import UnsupportedModelError

__all__ = ["interval_bounds", "interval_feature_box"]


def _affine_abs(layer: nn.Module, radius: torch.Tensor) -> torch.Tensor:
    """Apply the linear part of an affine layer with absolute weights to a radius."""
    if isinstance(layer, nn.Linear):
        return F.linear(radius, layer.weight.abs())
    if isinstance(layer, nn.Conv2d):
        return F.conv2d(radius, layer.weight.abs(), None, layer.stride, layer.padding, layer.dilation, layer.groups)
    if isinstance(layer, nn.Conv1d):
        return F.conv1d(radius, layer.weight.abs(), None, layer.stride, layer.padding, layer.dilation, layer.groups)
    if isinstance(layer, (nn.BatchNorm1d, nn.BatchNorm2d)):
        scale = layer.weight / torch.sqrt(layer.running_var + layer.eps) if layer.affine else \
            1.0 / torch.sqrt(layer.running_var + layer.eps)
        shape = (1, -1) + (1,) * (radius.dim() - 2)
        return radius * scale.abs().view(shape)
    if isinstance(layer, (nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AvgPool1d)):
        return layer(radius)  # non-negative weights
    raise TypeError(type(layer).__name__)


_AFFINE = (nn.Linear, nn.Conv2d, nn.Conv1d, nn.BatchNorm1d, nn.BatchNorm2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d,
           nn.AvgPool1d)
_MONOTONE = (nn.ReLU, nn.MaxPool2d, nn.MaxPool1d, nn.AdaptiveMaxPool2d, nn.Flatten, nn.Unflatten, nn.Identity,
             nn.Dropout,
             nn.Tanh, nn.Sigmoid, nn.LeakyReLU, nn.ELU, nn.Softplus, nn.ReLU6)


@torch.no_grad()
def interval_bounds(module: nn.Module, lower: torch.Tensor, upper: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Elementwise bounds of ``module(x)`` over the box ``lower ≤ x ≤ upper`` (batched), in float64."""
    if isinstance(module, nn.Sequential):
        for child in module:
            lower, upper = interval_bounds(child, lower, upper)
        return lower, upper
    if isinstance(module, _MONOTONE):
        return module(lower), module(upper)
    if isinstance(module, _AFFINE):
        m64 = _as64(module)
        centre, radius = (upper + lower) / 2, (upper - lower) / 2
        c, r = m64(centre), _affine_abs(m64, radius)
        return c - r, c + r
    if type(module).forward is not nn.Module.forward and not list(module.children()) == []:
        return _interval_graph(module, lower, upper)
    raise _unsupported(type(module).__name__)


def _unsupported(what: str) -> UnsupportedModelError:
    return UnsupportedModelError(
        f"Interval propagation does not support {what} in the prefix. HINT: pass "
        "feature_domain=(lower, upper) bounds for the head's inputs, e.g. from the data with a margin."
    )


def _interval_graph(module: nn.Module, lower: torch.Tensor, upper: torch.Tensor):
    """IBP through a module with its own ``forward``: trace it with torch.fx, interpret with intervals."""
    import operator

    from torch import fx

    try:
        graph = fx.symbolic_trace(module)
    except Exception as exc:  # noqa: BLE001 - any tracing failure means we cannot propagate
        raise _unsupported(f"{type(module).__name__} (torch.fx cannot trace it: {exc})") from None
    env: dict = {}
    modules = dict(graph.named_modules())

    def val(a):
        return env[a.name] if isinstance(a, fx.Node) else a

    for node in graph.graph.nodes:
        if node.op == "placeholder":
            env[node.name] = (lower, upper)
        elif node.op == "call_module":
            lo, hi = val(node.args[0])
            env[node.name] = interval_bounds(modules[node.target], lo, hi)
        elif node.op in ("call_function", "call_method"):
            fn = node.target
            args = [val(a) for a in node.args]
            iv = args[0]
            rest = args[1:]
            name = fn if isinstance(fn, str) else getattr(fn, "__name__", str(fn))
            if name in ("flatten", "view", "reshape", "relu", "contiguous"):
                op = (lambda t: getattr(t, name)(*rest, **node.kwargs)) if isinstance(fn, str) else \
                    (lambda t: fn(t, *rest, **node.kwargs))
                env[node.name] = (op(iv[0]), op(iv[1]))
            elif fn in (operator.add, torch.add) and len(args) == 2:
                a, b = args
                if isinstance(a, tuple) and isinstance(b, tuple):
                    env[node.name] = (a[0] + b[0], a[1] + b[1])
                else:
                    iv, k = (a, b) if isinstance(a, tuple) else (b, a)
                    env[node.name] = (iv[0] + k, iv[1] + k)
            elif fn in (operator.mul,) and len(args) == 2 and not all(isinstance(a, tuple) for a in args):
                iv, k = (args[0], args[1]) if isinstance(args[0], tuple) else (args[1], args[0])
                lo, hi = iv[0] * k, iv[1] * k
                env[node.name] = (torch.minimum(lo, hi), torch.maximum(lo, hi))
            else:
                raise _unsupported(f"the operation {name!r} (in {type(module).__name__}.forward)")
        elif node.op == "output":
            out = val(node.args[0])
            return out
        else:
            raise _unsupported(f"graph node {node.op} in {type(module).__name__}")
    raise _unsupported(type(module).__name__)


def _as64(module: nn.Module) -> nn.Module:
    import copy

    return copy.deepcopy(module).to(torch.float64)


def interval_feature_box(prefix: nn.Module, lower, upper, input_shape) -> tuple[torch.Tensor, torch.Tensor]:
    """Feature-space domain box: IBP of the input box ``[lower, upper]`` through ``prefix``."""
    shape = (1, *input_shape)
    lo = torch.as_tensor(lower, dtype=torch.float64).expand(shape).clone()
    hi = torch.as_tensor(upper, dtype=torch.float64).expand(shape).clone()
    flo, fhi = interval_bounds(prefix, lo, hi)
    return flo.reshape(-1), fhi.reshape(-1)


# =================================================================================================
# CROWN: linear bound propagation through the Linear/ReLU head ``M_c``
# =================================================================================================
#
# Written here rather than imported: auto_LiRPA (the reference CROWN implementation) cannot be
# installed next to torch 2.13 — it pins torch < 1.13 and numpy < 2 — so the head's bounds are
# computed by this self-contained, batched float64 implementation of CROWN (Zhang et al., 2018,
# "Efficient Neural Network Robustness Certification with General Activation Functions").
#
# Notation: the head has Linear layers ``W_0 … W_{L-1}`` (``HeadNetwork.weights``); hidden layer
# ``i`` holds the pre-activations ``z_i = W_i a_{i-1} + b_i`` (``a_{-1} = h``, ``a_i = ReLU(z_i)``)
# and the logits are ``W_{L-1} a_{L-2} + b_{L-1}``. Every function is batched over P points, each
# with its own box ``lower[p] ≤ h ≤ upper[p]``.
#
# Rounding: bounds are evaluated in float64 and widened outward by ``head_intervals.CROWN_REL_SAFETY`` times the
# absolute size of the terms they sum (the convention of ``confusion._REL_SAFETY``), which covers
# the float64 rounding of the bound evaluation itself (~1e-16 relative per term).
