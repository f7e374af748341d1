"""A user's ONNX classifier as an ``nn.Sequential`` of ``Flatten``/``Linear``/``ReLU`` (the layers PRUNE patches).

Accepted: one input, one output, a chain of ``Gemm``, ``MatMul`` (+ ``Add`` of a bias), ``Relu`` and ``Flatten``
nodes whose weights are initializers (or ``Constant`` nodes). Anything else is refused with an error naming the
operator. The converted module's outputs are checked against onnxruntime on seeded random inputs in [0, 1]
before it is returned, so a model that converts is one that computes what the file says.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import FormatError, UnsupportedModelError

__all__ = ["load_onnx", "ONNX_OPERATORS"]

ONNX_OPERATORS = ("Gemm", "MatMul", "Add", "Relu", "Flatten")
_CHECK_INPUTS = 64
_CHECK_TOL = 1e-4


def _constants(graph) -> dict[str, np.ndarray]:
    from onnx import numpy_helper

    consts = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant":
            value = next((a for a in node.attribute if a.name == "value"), None)
            if value is None:
                raise UnsupportedModelError(f"Constant node {node.name or node.output[0]!r} without a tensor value.")
            consts[node.output[0]] = numpy_helper.to_array(value.t)
    return consts


def _attr(node, name: str, default):
    from onnx import helper

    a = next((a for a in node.attribute if a.name == name), None)
    return default if a is None else helper.get_attribute_value(a)


def _linear(weight: np.ndarray, bias: np.ndarray | None) -> nn.Linear:
    """``y = x @ weight + bias`` (weight: in × out) as an ``nn.Linear``."""
    if weight.ndim != 2:
        raise UnsupportedModelError(f"a weight of shape {weight.shape}; only 2-D weights (Linear layers) are supported.")
    lin = nn.Linear(weight.shape[0], weight.shape[1], bias=True)
    with torch.no_grad():
        lin.weight.copy_(torch.from_numpy(np.ascontiguousarray(weight.T, dtype=np.float32)))
        b = np.zeros(weight.shape[1], np.float32) if bias is None else np.broadcast_to(bias, (weight.shape[1],))
        lin.bias.copy_(torch.from_numpy(np.array(b, dtype=np.float32)))
    return lin


def _layers(graph, consts: dict) -> list[nn.Module]:
    """Walk the single chain from the graph input to its output, turning each node into layers."""
    nodes = [n for n in graph.node if n.op_type != "Constant"]
    for node in nodes:
        if node.op_type not in ONNX_OPERATORS:
            raise UnsupportedModelError(
                f"The ONNX model uses the operator {node.op_type} (node {node.name or node.output[0]!r}); prune "
                f"converts only {', '.join(ONNX_OPERATORS)} (an MLP). HINT: export the classifier's fully connected "
                "part, or save the model with prune_unlearn.save.")
    inputs = [i.name for i in graph.input if i.name not in consts]
    if len(inputs) != 1 or len(graph.output) != 1:
        raise UnsupportedModelError(f"The ONNX model has {len(inputs)} inputs and {len(graph.output)} outputs; "
                                    "prune takes a classifier with one input and one output (the logits).")
    current, layers, pending = inputs[0], [], list(nodes)
    while pending:
        node = next((n for n in pending if current in n.input), None)
        if node is None:
            raise UnsupportedModelError(f"The ONNX graph is not a single chain from {inputs[0]!r} (nothing reads "
                                        f"{current!r}); prune converts sequential MLPs only.")
        pending.remove(node)
        others = [i for i in node.input if i != current]
        if any(o not in consts for o in others):
            raise UnsupportedModelError(f"{node.op_type} node {node.name or node.output[0]!r} combines two computed "
                                        "tensors (a skip connection?); prune converts sequential MLPs only.")
        layers += _convert(node, [consts[o] for o in others], layers)
        current = node.output[0]
    if current != graph.output[0].name:
        raise UnsupportedModelError(f"The ONNX graph's output {graph.output[0].name!r} is not the end of its chain.")
    return layers


def _convert(node, args: list[np.ndarray], layers: list[nn.Module]) -> list[nn.Module]:
    op = node.op_type
    if op == "Relu":
        return [nn.ReLU()]
    if op == "Flatten":
        if _attr(node, "axis", 1) != 1:
            raise UnsupportedModelError("Flatten with axis ≠ 1 is not supported (the batch axis must stay).")
        return [nn.Flatten()]
    if op == "Gemm":
        if _attr(node, "transA", 0):
            raise UnsupportedModelError("Gemm with transA=1 is not supported.")
        w = args[0].T if _attr(node, "transB", 0) else args[0]
        alpha, beta = float(_attr(node, "alpha", 1.0)), float(_attr(node, "beta", 1.0))
        bias = beta * args[1] if len(args) > 1 else None
        return [_linear(alpha * w, bias)]
    if op == "MatMul":
        return [_linear(args[0], None)]
    # Add: a bias on the Linear layer just made
    if not layers or not isinstance(layers[-1], nn.Linear):
        raise UnsupportedModelError(f"Add node {node.name or node.output[0]!r} does not follow a MatMul or Gemm; "
                                    "prune converts only Add as a layer's bias.")
    with torch.no_grad():
        layers[-1].bias += torch.from_numpy(np.array(np.broadcast_to(args[0], layers[-1].bias.shape), np.float32))
    return []


def load_onnx(path: str | Path) -> nn.Sequential:
    """Read an ONNX MLP (see the module docstring) as an ``nn.Sequential`` in eval mode, checked against onnxruntime."""
    import onnx

    path = Path(path)
    if not path.is_file():
        raise FormatError(f"No model file at {path}.")
    try:
        proto = onnx.load(str(path))
        onnx.checker.check_model(proto)
    except Exception as exc:  # noqa: BLE001 - protobuf and checker errors of several types
        raise FormatError(f"{path} is not a valid ONNX model: {type(exc).__name__}: {str(exc).splitlines()[0]}") from None
    graph = proto.graph
    try:
        model = _as_mlp(_layers(graph, _constants(graph))).eval()
    except UnsupportedModelError as exc:
        raise UnsupportedModelError(f"{path}: {exc}") from None
    _check_against_onnxruntime(path, model)
    return model


def _as_mlp(layers: list[nn.Module]) -> nn.Sequential:
    """Flatten, (Linear, ReLU)*, Linear as :func:`prune_unlearn.core.models.mlp` (so a patched model saves and loads
    by its architecture); any other order of the same layers as a plain ``nn.Sequential``."""
    from .models import mlp

    body = [m for m in layers if not isinstance(m, nn.Flatten)]
    flatten_first = all(not isinstance(m, nn.Flatten) for m in layers[1:])
    shape_ok = (len(body) % 2 == 1 and all(isinstance(m, nn.Linear) for m in body[::2])
                and all(isinstance(m, nn.ReLU) for m in body[1::2]))
    if not (flatten_first and shape_ok):
        return nn.Sequential(*layers)
    linears = body[::2]
    model = mlp(linears[0].in_features, [lin.out_features for lin in linears[:-1]], linears[-1].out_features)
    for ours, theirs in zip((m for m in model if isinstance(m, nn.Linear)), linears):
        ours.load_state_dict(theirs.state_dict())
    return model


def _check_against_onnxruntime(path: Path, model: nn.Sequential) -> None:
    import onnxruntime as ort

    first = next(m for m in model if isinstance(m, nn.Linear))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    meta = session.get_inputs()[0]
    shape = [d if isinstance(d, int) and d > 0 else None for d in meta.shape[1:]]
    if any(d is None for d in shape) or not shape:
        shape = [first.in_features]
    x = np.random.default_rng(0).random((_CHECK_INPUTS, *shape), dtype=np.float32)
    theirs = session.run(None, {meta.name: x})[0]
    with torch.no_grad():
        ours = model(torch.from_numpy(x)).numpy()
    if ours.shape != theirs.shape or not np.allclose(ours, theirs, rtol=_CHECK_TOL, atol=_CHECK_TOL):
        raise UnsupportedModelError(f"{path}: the converted model's outputs differ from onnxruntime's (max difference "
                                    f"{float(np.abs(ours - theirs).max()) if ours.shape == theirs.shape else 'shape'}"
                                    "); prune refuses a conversion it cannot vouch for.")
