"""Metrics of the paper's Section V: accuracies before/after and exact counts of changed predictions."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["predict", "accuracy", "unlearning_metrics"]


@torch.no_grad()
def predict(model: nn.Module, X: torch.Tensor, batch_size: int = 8192) -> torch.Tensor:
    """Predicted labels of ``model`` on ``X``, in batches (model in eval mode)."""
    was_training = model.training
    model.eval()
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    with torch.no_grad():  # no autograd graph: a conv net's saved activations would not fit in memory
        out = [model(X[i: i + batch_size].to(device)).argmax(dim=1).cpu() for i in range(0, len(X), batch_size)]
    model.train(was_training)
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.int64)


def accuracy(pred: torch.Tensor, y: torch.Tensor) -> float:
    return float((pred == y).float().mean()) if len(y) else float("nan")


def unlearning_metrics(
    base: nn.Module,
    patched: nn.Module,
    *,
    forget_data: tuple[torch.Tensor, torch.Tensor],
    test_data: tuple[torch.Tensor, torch.Tensor] | None = None,
    remaining_data: tuple[torch.Tensor, torch.Tensor] | None = None,
    forget_predictions: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> dict:
    """``A_u``, ``A_tes``, ``A_res`` before/after and the number of changed predictions.

    Keys: ``A_u_before, A_u_after`` and, where the data is given, ``A_tes_before, A_tes_after,
    changed_tes, A_res_before, A_res_after, changed_res``. Accuracies are fractions in [0, 1].
    ``forget_predictions``: the two models' predictions on the forget data when the caller already has them.
    """
    out: dict = {}
    for key, data in (("u", forget_data), ("tes", test_data), ("res", remaining_data)):
        if data is None:
            continue
        X, y = data
        if key == "u" and forget_predictions is not None:
            before, after = forget_predictions
        else:
            before, after = predict(base, X), predict(patched, X)
        out[f"A_{key}_before"] = accuracy(before, y)
        out[f"A_{key}_after"] = accuracy(after, y)
        if key != "u":
            out[f"changed_{key}"] = int((before != after).sum())
    return out
